// Package iframe is the forever-iframe transport:
// GET /v1/iframe?channel=A[&cursor=C][&callback=fn], as described in
// docs/protocol.md. The response is an HTML page that never ends: padding
// first, so that browsers render it progressively, then one <script> per
// event calling the page's parent.
package iframe

import (
	"net/http"
	"strings"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/transport"
	"github.com/heraldhq/herald/transport/engine"
)

// TransportName is the transport's name in the hub's connection counts.
const TransportName = "iframe"

// DefaultCallback is the function called when the request names none.
const DefaultCallback = "parent.herald"

// Config configures the iframe handler. The zero value works.
type Config struct {
	// Heartbeat is the interval of empty HTML comments on an otherwise
	// silent stream. Zero means 25s.
	Heartbeat time.Duration
	// WriteTimeout bounds each write: a write that takes longer ends the
	// connection. Zero means 10s.
	WriteTimeout time.Duration
	// WriteDelay, when positive, lets messages gather for this long after
	// a wake-up so that they leave in one write (fewer system calls, up to
	// WriteDelay more latency). Zero writes at once. It applies to
	// connections served without the engine.
	WriteDelay time.Duration
	// Engine, when set, runs HTTP/1.x connections after the handshake
	// (WriteTimeout is then the engine's). Nil serves every
	// connection on its own goroutine.
	Engine *engine.Engine
}

// Handler serves GET /v1/iframe, on the engine when it has one.
type Handler struct {
	hub *hub.Hub
	cfg Config
}

var _ http.Handler = (*Handler)(nil)

// New returns a forever-iframe handler over h.
func New(h *hub.Hub, cfg Config) *Handler {
	return &Handler{hub: h, cfg: cfg} // transport.Stream applies the defaults
}

// ServeHTTP subscribes the connection to the requested channels, replays
// what its cursor missed and streams until the client leaves, the hub
// closes the session, or a write fails.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, ok := transport.ParseRequest(w, r, true)
	if !ok {
		return
	}
	callback := DefaultCallback
	if q := r.URL.Query(); q.Has("callback") {
		callback = strings.Clone(q.Get("callback")) // kept for the session, not the request head with it
		if !httpx.ValidCallback(callback) {
			httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidCallback,
				"callback must be a JavaScript identifier path such as parent.herald")
			return
		}
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no")
	hd.Set("X-Content-Type-Options", "nosniff")
	engine.ServeStream(h.cfg.Engine, w, r, engine.StreamRequest{
		Hub:       h.hub,
		Transport: TransportName,
		Request:   req,
		Options: transport.StreamOptions{
			Encoder:      newEncoder(req, callback),
			Heartbeat:    h.cfg.Heartbeat,
			WriteTimeout: h.cfg.WriteTimeout,
			WriteDelay:   h.cfg.WriteDelay,
		},
	})
}
