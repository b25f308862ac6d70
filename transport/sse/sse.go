// Package sse is the EventSource (Server-Sent Events) transport:
// GET /v1/sse?channel=A&channel=B[&cursor=C], as described in
// docs/protocol.md. The cursor rides in each event's "id:" field, so a
// browser that reconnects sends it back as Last-Event-ID by itself.
package sse

import (
	"net/http"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/transport"
	"github.com/heraldhq/herald/transport/engine"
)

// TransportName is the transport's name in the hub's connection counts.
const TransportName = "sse"

// Config configures the SSE handler. The zero value works.
type Config struct {
	// Heartbeat is the interval of ":" comment lines on an otherwise
	// silent stream. Zero means 25s.
	Heartbeat time.Duration
	// Retry is the reconnection delay sent first as "retry:". On shutdown
	// the server sends it again, with jitter, before closing. Zero means 2s.
	Retry time.Duration
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

// withDefaults sets Retry's default; transport.Stream applies the
// defaults of Heartbeat and WriteTimeout.
func (c Config) withDefaults() Config {
	if c.Retry <= 0 {
		c.Retry = 2 * time.Second
	}
	return c
}

// Handler serves GET /v1/sse, on the engine when it has one.
type Handler struct {
	hub *hub.Hub
	cfg Config
}

var _ http.Handler = (*Handler)(nil)

// New returns an SSE handler over h.
func New(h *hub.Hub, cfg Config) *Handler {
	return &Handler{hub: h, cfg: cfg.withDefaults()}
}

// The stream's response header values, shared by every response (as
// Header.Set would store them, without an allocation each). Nothing
// changes a value in place; a handler that sets another replaces the slice.
var (
	contentType = []string{"text/event-stream"}
	noCache     = []string{"no-cache"}
	noBuffering = []string{"no"}
)

// ServeHTTP subscribes the connection to the requested channels, replays
// what its cursor missed and streams until the client leaves, the hub
// closes the session, or a write fails.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, ok := transport.ParseRequest(w, r, true)
	if !ok {
		return
	}
	hd := w.Header()
	hd["Content-Type"] = contentType
	hd["Cache-Control"] = noCache
	hd["X-Accel-Buffering"] = noBuffering
	engine.ServeStream(h.cfg.Engine, w, r, engine.StreamRequest{
		Hub:       h.hub,
		Transport: TransportName,
		Request:   req,
		Options: transport.StreamOptions{
			Encoder:      newEncoder(req, h.cfg.Retry),
			Heartbeat:    h.cfg.Heartbeat,
			WriteTimeout: h.cfg.WriteTimeout,
			WriteDelay:   h.cfg.WriteDelay,
		},
	})
}
