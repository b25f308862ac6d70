// Package ws is Herald's WebSocket transport: GET /v1/ws upgrades to a
// WebSocket over which the server sends envelopes and controls as text
// frames and the client sends subscribe / unsubscribe ops (see
// docs/protocol.md).
//
// Each connection has two goroutines, both tracked by the Handler: the
// writer (the request's own goroutine after the upgrade) drains the hub
// session's queue, pings, and owns the end of the connection; the reader
// reads client frames and turns ops into session calls.
package ws

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/transport"
)

// Config configures a Handler. The zero value works.
type Config struct {
	// Heartbeat is the ping interval; a client that sends no pong (or any
	// other frame) within two intervals is closed. Zero means 25s.
	Heartbeat time.Duration
	// WriteTimeout bounds each frame write; a write that takes longer ends
	// the connection. Zero means 10s.
	WriteTimeout time.Duration
	// MaxMessageBytes is the largest frame a client may send; a larger one
	// closes the connection with 1009. Zero means 4096.
	MaxMessageBytes int64
	// CheckOrigin reports whether a request's Origin is allowed. Nil allows
	// any origin.
	CheckOrigin func(*http.Request) bool
}

// withDefaults returns c with every zero (or negative) field set to its
// documented default.
func (c Config) withDefaults() Config {
	if c.Heartbeat <= 0 {
		c.Heartbeat = 25 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 4096
	}
	if c.CheckOrigin == nil {
		c.CheckOrigin = func(*http.Request) bool { return true }
	}
	return c
}

// closeGrace is how long the writer waits for the client to answer its
// close frame before it closes the socket.
const closeGrace = time.Second

var _ http.Handler = (*Handler)(nil)

// Handler serves GET /v1/ws. It is safe for concurrent use.
type Handler struct {
	hub      *hub.Hub
	cfg      Config
	upgrader websocket.Upgrader

	mu       sync.Mutex
	closing  bool                         // guarded by mu; no connection starts once set
	wg       sync.WaitGroup               // connection goroutines; Add only under mu with !closing
	sockets  map[*websocket.Conn]struct{} // upgraded connections; guarded by mu
	done     chan struct{}                // closed by Shutdown
	doneOnce sync.Once
}

// New returns a WebSocket handler over h.
func New(h *hub.Hub, cfg Config) *Handler {
	cfg = cfg.withDefaults()
	return &Handler{
		hub: h,
		cfg: cfg,
		upgrader: websocket.Upgrader{
			// The origin is checked before the session opens.
			CheckOrigin: func(*http.Request) bool { return true },
			// Idle connections hold no write buffer.
			WriteBufferPool: &sync.Pool{},
			Error:           upgradeError,
		},
		done:    make(chan struct{}),
		sockets: make(map[*websocket.Conn]struct{}),
	}
}

// upgradeError writes a failed handshake as Herald's JSON error.
func upgradeError(w http.ResponseWriter, _ *http.Request, status int, reason error) {
	code := httpx.CodeInvalidRequest
	switch status {
	case http.StatusMethodNotAllowed:
		code = httpx.CodeMethodNotAllowed
	case http.StatusForbidden:
		code = httpx.CodeForbidden
	case http.StatusInternalServerError:
		code = httpx.CodeInternal
	}
	httpx.Error(w, status, code, reason.Error())
}

// ServeHTTP checks the request, opens the hub session (replaying from the
// cursor), upgrades, and runs the connection until it ends. Bad input is a
// JSON HTTP error, never a WebSocket close.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, ok := transport.ParseRequest(w, r, false)
	if !ok {
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest, "expected a WebSocket upgrade request")
		return
	}
	if !h.cfg.CheckOrigin(r) {
		httpx.Error(w, http.StatusForbidden, httpx.CodeForbidden, "origin not allowed")
		return
	}
	if !h.track() {
		httpx.HubError(w, hub.ErrShuttingDown)
		return
	}
	defer h.wg.Done()

	c := newConn(h)
	sess := transport.Open(w, r, h.hub, "ws", req, c.notify)
	if sess == nil {
		return
	}
	ws, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		sess.Close(hub.DisconnectBadRequest) // Upgrade has answered the request
		return
	}
	h.mu.Lock()
	h.sockets[ws] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.sockets, ws)
		h.mu.Unlock()
	}()
	c.serve(r.Context(), sess, ws)
}

// track counts a new connection goroutine unless Shutdown has begun.
func (h *Handler) track() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.wg.Add(1)
	return true
}

// goFunc runs fn in a goroutine that Shutdown waits for. The caller is a
// tracked goroutine, so the WaitGroup cannot be at zero here.
func (h *Handler) goFunc(fn func()) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		fn()
	}()
}

// Shutdown refuses new connections, closes every open one with 1012 (the
// hub's Shutdown normally has done so already by closing their sessions),
// and waits for every connection goroutine to end. It is idempotent. If ctx
// ends first — a client that stopped reading keeps its writer in a write —
// it closes the remaining sockets (http.Server does not know hijacked
// connections), so their goroutines end promptly, and returns ctx.Err().
func (h *Handler) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	h.closing = true
	h.mu.Unlock()
	h.doneOnce.Do(func() { close(h.done) })
	waited := make(chan struct{})
	go func() { h.wg.Wait(); close(waited) }()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
		h.mu.Lock()
		for ws := range h.sockets {
			ws.NetConn().Close()
		}
		h.mu.Unlock()
		return ctx.Err()
	}
}
