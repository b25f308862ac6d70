// Package ws is Herald's WebSocket transport: GET /v1/ws upgrades to a
// WebSocket over which the server sends envelopes and controls as text
// frames and the client sends subscribe / unsubscribe ops (see
// docs/protocol.md).
//
// The handshake is net/http's; then the connection runs on the engine
// (package engine): frames are decoded by wsframe's incremental decoder as
// bytes arrive, so a client that trickles half a frame holds no goroutine
// and stalls nobody, and an op that reads history runs on a goroutine that
// exists only while it does.
package ws

import (
	"context"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/transport"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/ws/wsframe"
)

// TransportName is the transport's name in the hub's connection counts.
const TransportName = "ws"

// Config configures a Handler. The zero value works.
type Config struct {
	// Heartbeat is the ping interval; a client that sends no frame (a pong
	// answers each ping) for two intervals, and none in the interval after
	// the last ping, is closed with 1001. Zero means 25s.
	Heartbeat time.Duration
	// WriteTimeout bounds how long written frames may wait for the client
	// to read them; a client that takes longer is disconnected. Zero means
	// 10s. With a shared Engine, the engine's WriteTimeout applies.
	WriteTimeout time.Duration
	// MaxMessageBytes is the largest message a client may send; a larger
	// one closes the connection with 1009 before it is buffered. Zero
	// means 4096.
	MaxMessageBytes int64
	// CheckOrigin reports whether a request's Origin is allowed. Nil allows
	// any origin.
	CheckOrigin func(*http.Request) bool
	// Engine runs the connections after the handshake. Nil gives the
	// handler an engine of its own, which its Shutdown stops.
	Engine *engine.Engine
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

var _ http.Handler = (*Handler)(nil)

// Handler serves GET /v1/ws. It is safe for concurrent use.
type Handler struct {
	hub       *hub.Hub
	cfg       Config
	engine    *engine.Engine
	ownEngine bool
	decoder   wsframe.Config

	mu      sync.Mutex
	closing bool // guarded by mu; no connection starts once set
}

// New returns a WebSocket handler over h.
func New(h *hub.Hub, cfg Config) *Handler {
	cfg = cfg.withDefaults()
	wh := &Handler{
		hub:     h,
		cfg:     cfg,
		engine:  cfg.Engine,
		decoder: wsframe.Config{MaxMessageBytes: int(cfg.MaxMessageBytes), RejectBinary: true},
	}
	if wh.engine == nil {
		ecfg := engine.Config{Heartbeat: cfg.Heartbeat, WriteTimeout: cfg.WriteTimeout}
		e, err := engine.New(ecfg)
		if err != nil { // no epoll instance to be had: goroutine mode cannot fail
			ecfg.Goroutines = true
			e, _ = engine.New(ecfg)
		}
		wh.engine, wh.ownEngine = e, true
	}
	return wh
}

// The upgrade response's fixed header values, shared by every response;
// nothing changes them in place.
var (
	upgradeWebSocket  = []string{"websocket"}
	connectionUpgrade = []string{"Upgrade"}
)

// ServeHTTP checks the request, opens the hub session (replaying from the
// cursor), completes the handshake and hands the connection to the
// engine. Bad input is a JSON HTTP error, never a WebSocket close.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, ok := transport.ParseRequest(w, r, false)
	if !ok {
		return
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest, "expected a WebSocket upgrade request")
		return
	}
	// Header names in their canonical spelling (as net/http stores and
	// writes them) spare a conversion per lookup.
	if r.Header.Get("Sec-Websocket-Version") != "13" {
		w.Header().Set("Sec-Websocket-Version", "13")
		httpx.Error(w, http.StatusUpgradeRequired, httpx.CodeInvalidRequest, "unsupported WebSocket version: want 13")
		return
	}
	key := r.Header.Get("Sec-Websocket-Key")
	if k, err := base64.StdEncoding.DecodeString(key); err != nil || len(k) != 16 {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest, "Sec-WebSocket-Key must be 16 bytes in base64")
		return
	}
	if !h.cfg.CheckOrigin(r) {
		httpx.Error(w, http.StatusForbidden, httpx.CodeForbidden, "origin not allowed")
		return
	}
	h.mu.Lock()
	closing := h.closing
	h.mu.Unlock()
	if closing {
		httpx.HubError(w, hub.ErrShuttingDown)
		return
	}

	p := &protocol{h: h}
	p.dec.Reset(h.decoder)
	c := h.engine.NewConn(p, engine.ConnOptions{Heartbeat: h.cfg.Heartbeat, ReadTimeout: 2 * h.cfg.Heartbeat})
	sess := transport.Open(w, r, h.hub, TransportName, req, c.Wake)
	if sess == nil {
		return
	}
	hd := w.Header()
	hd["Upgrade"] = upgradeWebSocket
	hd["Connection"] = connectionUpgrade
	hd.Set("Sec-Websocket-Accept", wsframe.AcceptKey(key))
	nc, head, buffered, err := transport.Hijack(w, http.StatusSwitchingProtocols)
	if err != nil {
		sess.Close(hub.DisconnectBadRequest)
		httpx.Error(w, http.StatusInternalServerError, httpx.CodeInternal, "connection cannot be upgraded")
		return
	}
	_ = h.engine.Attach(c, sess, nc, head, buffered) // on error Attach has closed both
}

// headerHasToken reports whether a comma-separated header has token,
// case-insensitively.
func headerHasToken(hd http.Header, name, token string) bool {
	for _, v := range hd.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// Shutdown refuses new connections; when the handler owns its engine it
// shuts the engine down, which closes every connection with 1012 (the
// hub's Shutdown normally has done so already) and waits for them to end.
// It is idempotent.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	h.closing = true
	h.mu.Unlock()
	if h.ownEngine {
		return h.engine.Shutdown(ctx)
	}
	return nil
}
