package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
)

// getSSE opens the event stream, resuming from the cursor.
func (s *Subscription) getSSE() (*http.Response, error) {
	cur := s.Cursor()
	q := url.Values{"channel": s.opts.Channels}
	if cur != "" {
		q.Set("cursor", cur)
	}
	req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, s.c.base+"/v1/sse?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if cur != "" {
		req.Header.Set("Last-Event-ID", cur)
	}
	s.c.authorize(req.Header)
	resp, err := s.st.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: SSE answer has Content-Type %q", ErrProtocol, resp.Header.Get("Content-Type"))
	}
	return resp, nil
}

// readSSE reads the event stream body until it ends.
func (s *Subscription) readSSE(body io.Reader) error {
	s.sse.reset(body)
	for {
		ev, err := s.sse.next()
		if err != nil {
			return err
		}
		if err := s.dispatchSSE(ev); err != nil {
			return err
		}
	}
}

// dispatchSSE acts on one block of the event stream.
func (s *Subscription) dispatchSSE(ev *sseEvent) error {
	switch {
	case string(ev.typ) == "gap":
		var g struct {
			Channels []string `json:"channels"`
		}
		if err := json.Unmarshal(ev.data, &g); err != nil {
			return fmt.Errorf("%w: gap event: %v", ErrProtocol, err)
		}
		s.gap(g.Channels)
	case ev.hasData:
		if len(bytes.TrimSpace(ev.data)) == 0 {
			break // nothing to deliver
		}
		if err := decodeEnvelope(ev.data, &s.env); err != nil {
			return fmt.Errorf("%w: SSE event %q: %v", ErrProtocol, ev.typ, err)
		}
		if s.env.hasChannel && !s.env.isControl {
			s.deliver(&s.env)
		}
		// Other JSON is not a message of this protocol version: skip it.
	}
	if ev.hasID && len(ev.id) > 0 {
		// The server's cursor after this block. An id that does not parse
		// is ignored: the cursor built from envelopes stays correct.
		s.mergeCursor(ev.id)
	}
	if ev.hasID && !ev.hasData {
		s.replayed() // the bare "id:" after the replay
	}
	return nil
}
