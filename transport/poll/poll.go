// Package poll is Herald's long-poll transport: GET /v1/poll answers with
// the messages after the client's cursor at once, or waits for the first
// live one (see docs/protocol.md).
//
// Each request opens a transient hub session and closes it before it
// returns; the handler starts no goroutine.
package poll

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/transport"
)

// Config configures a Handler. The zero value works.
type Config struct {
	// Timeout is the default and the longest wait for a live message
	// (the timeout= parameter may ask for less). Zero means 30s.
	Timeout time.Duration
}

var _ http.Handler = (*Handler)(nil)

// Handler serves GET /v1/poll. It is safe for concurrent use.
type Handler struct {
	hub     *hub.Hub
	timeout time.Duration
}

// New returns a long-poll handler over h.
func New(h *hub.Hub, cfg Config) *Handler {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	return &Handler{hub: h, timeout: cfg.Timeout}
}

// ServeHTTP validates the whole request before it opens a session, then
// answers with what the session queues: at once when there is anything
// after the cursor or a gap, otherwise after the first live message, the
// timeout, or the hub's shutdown. A client that leaves gets no answer.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, ok := transport.ParseRequest(w, r, true)
	if !ok {
		return
	}
	q := r.URL.Query()
	timeout, ok := parseTimeout(q.Get("timeout"), h.timeout)
	if !ok {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest,
			`timeout must be a duration ("30s", "500ms") or a number of seconds, not negative`)
		return
	}
	callback := q.Get("callback")
	if q.Has("callback") && !httpx.ValidCallback(callback) {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidCallback,
			"callback must be a JavaScript identifier path such as a.b_c")
		return
	}

	wake := transport.NewWakeup()
	sess := transport.Open(w, r, h.hub, "poll", req, wake.Wake)
	if sess == nil {
		return
	}
	defer sess.Close(hub.DisconnectNormal)

	ans := answer{cursor: req.Cursor}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var items []hub.Item
	expired := false
	for {
		_, closed := sess.Closed()
		items = sess.Drain(items[:0])
		ans.add(items)
		clear(items)
		if ans.ready() || closed || expired {
			break
		}
		select {
		case <-wake:
		case <-timer.C:
			expired = true
		case <-r.Context().Done():
			return
		}
	}
	if !ans.subscribed {
		// The session closed before its replay was queued (shutdown, or a
		// replay over the queue limit): there is no cursor covering the
		// channels to give, so the client must retry with its own.
		httpx.HubError(w, hub.ErrSessionClosed)
		return
	}

	body := ans.appendTo(make([]byte, 0, ans.size()+len(callback)+4), callback)
	hdr := w.Header()
	if callback != "" {
		hdr.Set("Content-Type", "application/javascript")
	} else {
		hdr.Set("Content-Type", "application/json")
	}
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	if _, err := w.Write(body); err == nil {
		sess.Delivered(len(ans.messages))
	}
}

// parseTimeout reads the timeout= parameter: a Go duration or a number of
// seconds. Empty means max; larger values are capped at max.
func parseTimeout(s string, max time.Duration) (time.Duration, bool) {
	if s == "" {
		return max, true
	}
	if secs, err := strconv.ParseFloat(s, 64); err == nil && !strings.ContainsAny(s, "xXpP_") {
		if math.IsNaN(secs) || secs < 0 {
			return 0, false
		}
		if math.IsInf(secs, 1) || secs >= max.Seconds() {
			return max, true
		}
		return time.Duration(secs * float64(time.Second)), true
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, false
	}
	return min(d, max), true
}

// answer collects a poll's reply from session items.
type answer struct {
	messages   []*hub.Message
	gaps       []string
	cursor     hub.Cursor
	subscribed bool // the Subscribed item arrived: cursor covers every channel
}

func (a *answer) add(items []hub.Item) {
	for i := range items {
		it := &items[i]
		switch it.Kind {
		case hub.ItemMessage:
			a.messages = append(a.messages, it.Msg)
			a.cursor.Set(it.Msg.Channel, hub.Position{Epoch: it.Msg.Epoch, Offset: it.Msg.Offset})
		case hub.ItemGap:
			a.gaps = append(a.gaps, it.Channels...)
		case hub.ItemSubscribed:
			a.subscribed = true
			for _, p := range it.Positions {
				a.cursor.Set(p.Channel, p.Position)
			}
		}
	}
}

// ready reports whether there is something to answer with at once.
func (a *answer) ready() bool { return len(a.messages) > 0 || len(a.gaps) > 0 }

// size estimates the length of the JSON answer.
func (a *answer) size() int {
	n := 64
	for _, m := range a.messages {
		n += len(m.Envelope) + 1
	}
	for _, e := range a.cursor.Entries() {
		n += len(e.Channel) + len(e.Epoch) + 22
	}
	for _, g := range a.gaps {
		n += len(g) + 3
	}
	return n
}

// appendTo appends {"messages":[...],"cursor":"...","gaps":[...]}, wrapped
// as callback(...); when callback is set. Envelopes are the messages'
// shared bytes; channel names and cursors need no escaping.
func (a *answer) appendTo(b []byte, callback string) []byte {
	if callback != "" {
		b = append(b, callback...)
		b = append(b, '(')
	}
	b = append(b, `{"messages":[`...)
	for i, m := range a.messages {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, m.Envelope...)
	}
	b = append(b, `],"cursor":"`...)
	b = a.cursor.AppendTo(b)
	b = append(b, `","gaps":`...)
	b = transport.AppendChannels(b, a.gaps)
	b = append(b, '}')
	if callback != "" {
		b = append(b, ");"...)
	}
	return append(b, '\n')
}
