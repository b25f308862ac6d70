// Package app is Herald's composition root: it builds the hub, the API and
// the transports from a config.Config, serves them over one HTTP server,
// and owns start-up order and graceful shutdown.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/api"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/iframe"
	"github.com/heraldhq/herald/transport/poll"
	"github.com/heraldhq/herald/transport/sse"
	"github.com/heraldhq/herald/transport/ws"
)

// HTTP server hardening. Streams (SSE, iframe, WebSocket) live for hours,
// so there is no whole-request read or write timeout: transports bound each
// write themselves and the API bounds body reads.
const (
	// DefaultReadHeaderTimeout bounds reading a request's headers: a client
	// that trickles them (slow-loris) is cut off.
	DefaultReadHeaderTimeout = 5 * time.Second
	// MaxHeaderBytes caps a request's headers.
	MaxHeaderBytes = 64 << 10
	// IdleTimeout closes keep-alive connections idle for this long.
	IdleTimeout = 2 * time.Minute
)

// ErrRunning is returned by Run when the app is already serving, and
// ErrClosed when it has been shut down.
var (
	ErrRunning = errors.New("app: already running")
	ErrClosed  = errors.New("app: shut down")
)

// Option adjusts an App beyond its configuration.
type Option func(*App)

// WithVersion sets the version reported by /v1/status and /metrics.
func WithVersion(v string) Option { return func(a *App) { a.version = v } }

// withReadHeaderTimeout shortens the header timeout (tests).
func withReadHeaderTimeout(d time.Duration) Option {
	return func(a *App) { a.readHeaderTimeout = d }
}

// App is one Herald server: hub, API and transports behind one handler.
type App struct {
	cfg               config.Config
	log               *slog.Logger
	version           string
	readHeaderTimeout time.Duration

	hub     *hub.Hub
	engine  *engine.Engine
	events  *pipelines
	cluster *clusterParts
	ws      *ws.Handler
	handler http.Handler
	streams map[string]http.Handler // the paths the engine serves itself, and their handlers

	draining atomic.Bool // set when Shutdown begins; /readyz answers 503

	mu      sync.Mutex
	srv     *http.Server // guarded by mu; set by Run
	running bool         // guarded by mu
	closed  bool         // guarded by mu; set when Shutdown begins

	shutdownOnce sync.Once
	shutdownDone chan struct{} // closed when the first Shutdown returns
	shutdownErr  error         // set before shutdownDone is closed
}

// New builds the server cfg describes (cfg is given Defaults and must pass
// Validate). Nothing listens until Run; call Shutdown to release the hub
// if Run is never called.
func New(cfg config.Config, log *slog.Logger, opts ...Option) (*App, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("app: invalid configuration: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	a := &App{
		cfg:               cfg,
		log:               log,
		version:           "dev",
		readHeaderTimeout: DefaultReadHeaderTimeout,
		shutdownDone:      make(chan struct{}),
	}
	for _, o := range opts {
		o(a)
	}
	// NATS first: the event queue lives there, and the channel history
	// with history: jetstream.
	ev, err := connectNATS(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("app: starting the event queue: %w", err)
	}
	hcfg := cfg.HubConfig(log)
	if cfg.History == "jetstream" {
		if hcfg.History, err = ev.history(context.Background(), cfg); err != nil {
			_ = ev.close()
			return nil, fmt.Errorf("app: opening the channel history: %w", err)
		}
	}
	cl, err := openCluster(cfg, log)
	if err != nil {
		_ = ev.close()
		return nil, fmt.Errorf("app: connecting the broker (%s): %w", cfg.BrokerKind(), err)
	}
	a.cluster = cl
	if cl.broker != nil {
		hcfg.Broker = cl.broker
	}
	if cl.history != nil {
		hcfg.History = cl.history
	}
	h, err := hub.New(hcfg)
	if err != nil {
		_ = ev.close()
		_ = cl.close()
		return nil, fmt.Errorf("app: starting the hub: %w", err)
	}
	a.hub = h
	if err := cl.serve(h); err != nil {
		_ = h.Shutdown(context.Background())
		_ = ev.close()
		_ = cl.close()
		return nil, fmt.Errorf("app: %w", err)
	}

	eng, err := engine.New(engine.Config{
		Heartbeat:    min(cfg.SSE.Heartbeat, cfg.WS.Heartbeat, cfg.Iframe.Heartbeat),
		WriteTimeout: cfg.WriteTimeout,
		Goroutines:   cfg.Engine == "goroutines",
		Logger:       log,
	})
	if err != nil {
		_ = h.Shutdown(context.Background())
		_ = ev.close()
		a.cluster.stopServing()
		_ = cl.close()
		return nil, fmt.Errorf("app: starting the connection engine: %w", err)
	}
	a.engine = eng

	if err := ev.openQueue(context.Background(), cfg, h, log); err != nil {
		_ = eng.Shutdown(context.Background())
		_ = h.Shutdown(context.Background())
		_ = ev.close()
		a.cluster.stopServing()
		_ = cl.close()
		return nil, fmt.Errorf("app: starting the event pipelines: %w", err)
	}
	a.events = ev

	a.ws = ws.New(h, ws.Config{
		Engine:          eng,
		Heartbeat:       cfg.WS.Heartbeat,
		WriteTimeout:    cfg.WriteTimeout,
		MaxMessageBytes: int64(cfg.WS.MaxMessageBytes),
		CheckOrigin:     originChecker(cfg.WS.AllowedOrigins),
	})
	apiHandler := api.New(h, api.Config{
		Engine:  eng,
		APIKeys: cfg.APIKeys,
		Version: a.version,
		Ready:   func() bool { return !a.draining.Load() },
		Logger:  log,
		Events: api.EventsConfig{
			Queue:         ev.queue,
			Validate:      validateEvent(cfg.Events.EnforceTypes),
			MaxEventBytes: cfg.Events.MaxEventBytes,
			MaxBatch:      cfg.Events.MaxBatch,
		},
		Pipelines:   ev.stats,
		DeadLetters: ev.deadLetters,
	})

	mux := http.NewServeMux()
	apiHandler.Register(mux)
	// Transports check the method themselves (405 JSON with Allow: GET).
	a.streams = map[string]http.Handler{
		"/v1/sse": sse.New(h, sse.Config{
			Heartbeat:    cfg.SSE.Heartbeat,
			Retry:        cfg.SSE.Retry,
			WriteTimeout: cfg.WriteTimeout,
			WriteDelay:   cfg.WriteDelay,
			Engine:       eng,
		}),
		"/v1/ws": a.ws,
		"/v1/iframe": iframe.New(h, iframe.Config{
			Heartbeat:    cfg.Iframe.Heartbeat,
			WriteTimeout: cfg.WriteTimeout,
			WriteDelay:   cfg.WriteDelay,
			Engine:       eng,
		}),
	}
	for path, sh := range a.streams {
		mux.Handle(path, sh)
	}
	mux.Handle("/v1/poll", poll.New(h, poll.Config{Timeout: cfg.Poll.Timeout}))
	a.handler = api.JSONErrors(mux)
	return a, nil
}

// engineHandler serves the requests the engine accepts itself: GETs for
// exactly one of the stream paths, which the mux routes to a.streams, so
// they go there straight, without two walks of the mux's routing tree
// (JSONErrors' and the mux's) per subscribe.
func (a *App) engineHandler(w http.ResponseWriter, r *http.Request) {
	if sh := a.streams[r.URL.Path]; sh != nil {
		r.Pattern = r.URL.Path // as the mux would set it
		sh.ServeHTTP(w, r)
		return
	}
	a.handler.ServeHTTP(w, r)
}

// Handler returns the server's HTTP handler: the API (/v1/publish…,
// /v1/status, /metrics, /healthz, /readyz) and the transports (/v1/sse,
// /v1/ws, /v1/poll, /v1/iframe).
func (a *App) Handler() http.Handler { return a.handler }

// Hub returns the app's hub.
func (a *App) Hub() *hub.Hub { return a.hub }

// Run serves on ln until ctx is done, then shuts down gracefully within
// the configured shutdown_timeout. It logs one line saying where it
// listens. It returns nil after a clean shutdown, the shutdown's error
// (context.DeadlineExceeded when time ran out), or the error that stopped
// serving. Run takes ownership of ln.
func (a *App) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: a.readHeaderTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.mu.Lock()
	switch {
	case a.closed:
		a.mu.Unlock()
		ln.Close()
		return ErrClosed
	case a.running:
		a.mu.Unlock()
		ln.Close()
		return ErrRunning
	}
	a.running, a.srv = true, srv
	a.mu.Unlock()

	// The engine accepts the connections and serves the subscribe
	// handshakes itself; net/http gets the rest.
	lc := engine.ListenConfig{
		Handler:       http.HandlerFunc(a.engineHandler),
		Paths:         slices.Sorted(maps.Keys(a.streams)),
		HeaderTimeout: a.readHeaderTimeout,
		Logger:        a.log,
	}
	if a.cfg.History != "memory" || a.cfg.BrokerKind() != "memory" {
		// A subscribe reads history, and may subscribe at the broker,
		// over the network: not on the accepting goroutine.
		lc.Workers = subscribeWorkers
	}
	ln = a.engine.Listen(ln, lc)
	a.events.start()
	a.log.Info("herald listening on http://"+ln.Addr().String(), "version", a.version,
		"node", a.hub.NodeID(), "broker", a.hub.BrokerHealth().Engine, "history", a.cfg.History)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if a.cfg.DebugListen != "" {
		stop, err := startDebug(a.cfg.DebugListen, a.log)
		if err != nil {
			a.log.Error("debug server not started", "addr", a.cfg.DebugListen, "err", err)
		} else {
			defer stop()
		}
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
		// A listener failure, or Shutdown called by someone else.
		if !errors.Is(serveErr, http.ErrServerClosed) {
			a.log.Error("serving failed", "err", serveErr)
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ShutdownTimeout)
	defer cancel()
	err := a.Shutdown(sctx)
	if serveErr == nil {
		serveErr = <-served // returns ErrServerClosed once Shutdown began
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return errors.Join(serveErr, err)
}

// Shutdown stops the server gracefully: /readyz turns 503, the listener
// closes, the hub closes every session (SSE and iframe clients get a retry
// hint, WebSocket clients close code 1012, polls answer), the WebSocket
// handler's connections end, and in-flight requests finish. It waits for
// all of it until ctx ends, then closes what is left and returns
// ctx.Err(). It is idempotent: later calls wait for the first one and
// return its result.
func (a *App) Shutdown(ctx context.Context) error {
	a.shutdownOnce.Do(func() {
		a.shutdownErr = a.shutdown(ctx)
		close(a.shutdownDone)
	})
	select {
	case <-a.shutdownDone:
		return a.shutdownErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *App) shutdown(ctx context.Context) error {
	start := time.Now()
	a.draining.Store(true)
	a.mu.Lock()
	a.closed = true
	srv := a.srv
	a.mu.Unlock()

	// Stop accepting first; srv.Shutdown then waits for active requests,
	// which the hub's shutdown below ends.
	var httpDone chan error
	if srv != nil {
		httpDone = make(chan error, 1)
		go func() { httpDone <- srv.Shutdown(ctx) }()
	}
	var errs []error
	// The pipelines finish the events in hand (publishing them) before the
	// hub closes.
	if err := a.events.stop(ctx); err != nil {
		errs = append(errs, fmt.Errorf("pipelines: %w", err))
	}
	a.cluster.stopServing()
	if err := a.hub.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("hub: %w", err))
	}
	if err := a.cluster.close(); err != nil {
		errs = append(errs, fmt.Errorf("history: %w", err))
	}
	if err := a.ws.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("websocket: %w", err))
	}
	if err := a.engine.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("connections: %w", err))
	}
	if httpDone != nil {
		if err := <-httpDone; err != nil {
			errs = append(errs, fmt.Errorf("http: %w", err))
		}
	}
	if err := a.events.close(); err != nil {
		errs = append(errs, fmt.Errorf("event queue: %w", err))
	}
	if ctx.Err() != nil {
		// Out of time: cut whatever is left.
		if srv != nil {
			srv.Close()
		}
		a.log.Warn("shutdown deadline reached; connections closed", "after", time.Since(start).Round(time.Millisecond))
		return ctx.Err()
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	a.log.Info("herald stopped", "after", time.Since(start).Round(time.Millisecond))
	return nil
}
