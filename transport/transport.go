// Package transport holds what the subscriber transports (sse, ws, poll,
// iframe) share: reading channels and cursors from a request and opening a
// hub session with the right HTTP error on failure. Each transport is an
// http.Handler over the hub in its own sub-package.
package transport

import (
	"net/http"
	"strings"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
)

// Request is what a subscribe request asks for.
type Request struct {
	Channels []string
	Cursor   hub.Cursor
}

// ParseRequest checks that r is a GET (405 otherwise) and reads the
// channel= parameters and the cursor: the
// Last-Event-ID header, else the cursor= parameter. The header wins because
// a browser's EventSource reconnects to the same URL — with the cursor= it
// started from — adding Last-Event-ID with where it really is. On error it
// has written the HTTP error and returns false.
//
// The Request keeps none of r's memory: it lives as long as the session,
// and r's strings may all be parts of one allocation holding the whole
// request head (the engine's parser reads it so).
func ParseRequest(w http.ResponseWriter, r *http.Request, requireChannel bool) (Request, bool) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		httpx.Error(w, http.StatusMethodNotAllowed, httpx.CodeMethodNotAllowed, "use GET")
		return Request{}, false
	}
	q := r.URL.Query()
	req := Request{Channels: q["channel"]}
	if requireChannel && len(req.Channels) == 0 {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidChannel, "at least one channel= parameter is required")
		return req, false
	}
	for i, ch := range req.Channels {
		if !hub.ValidChannel(ch) {
			httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidChannel, "invalid channel name: "+quote(ch))
			return req, false
		}
		req.Channels[i] = strings.Clone(ch)
	}
	raw := r.Header.Get("Last-Event-Id") // Last-Event-ID, canonically spelled: no conversion
	if raw == "" {
		raw = q.Get("cursor")
	}
	c, err := hub.ParseCursor(strings.Clone(raw))
	if err != nil {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidCursor, "cursor does not parse: expected channel@epoch:offset entries joined by ','")
		return req, false
	}
	req.Cursor = c
	return req, true
}

// quote shortens and quotes a client-supplied string for an error message.
func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return "\"" + s + "\""
}

// Open creates a session for r and subscribes it to req's channels. On
// error it has written the HTTP error and returns nil.
func Open(w http.ResponseWriter, r *http.Request, h *hub.Hub, transport string, req Request, wake func()) *hub.Session {
	s, err := h.NewSession(hub.SessionOptions{Transport: transport, RemoteIP: httpx.ClientIP(r), Wake: wake})
	if err != nil {
		httpx.HubError(w, err)
		return nil
	}
	if len(req.Channels) > 0 {
		if err := s.Subscribe(r.Context(), req.Channels, &req.Cursor); err != nil {
			s.Close(hub.DisconnectBadRequest)
			httpx.HubError(w, err)
			return nil
		}
	}
	return s
}

// AppendChannels appends channel names as a JSON array. Valid channel
// names hold nothing that needs escaping.
func AppendChannels(dst []byte, channels []string) []byte {
	dst = append(dst, '[')
	for i, ch := range channels {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = append(dst, ch...)
		dst = append(dst, '"')
	}
	return append(dst, ']')
}

// AppendGapControl appends {"control":"gap","channels":[...]}, the gap
// signal of the WebSocket and forever-iframe transports.
func AppendGapControl(dst []byte, channels []string) []byte {
	dst = append(dst, `{"control":"gap","channels":`...)
	dst = AppendChannels(dst, channels)
	return append(dst, '}')
}
