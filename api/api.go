// Package api serves Herald's HTTP API over the hub: publishing
// (POST /v1/publish, POST /v1/publish/{channel}), events (POST /v1/events),
// status (GET /v1/status), Prometheus metrics (GET /metrics), the
// pipelines' dead letters (/v1/admin/pipelines/{pipeline}/dead-letters…)
// and health (GET /healthz, /readyz).
//
// Access: /healthz and /readyz are open to everyone — load balancers and
// orchestrators probe them without credentials and they reveal nothing.
// Publishing, events, /v1/status, /metrics and the admin routes change or
// reveal server state, so they follow one rule: with no API key configured
// they answer loopback clients only (403 forbidden otherwise), which makes
// a default install safe; with keys configured they require
// "Authorization: Bearer KEY" from every client, loopback included (401
// unauthorized otherwise).
//
// Every error is JSON ({"error":{"code","message"}}), including the 404 and
// 405 answers of the router (see JSONErrors).
package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/pipeline"
	"github.com/heraldhq/herald/transport/engine"
)

// Config configures the API. The zero value works: no API keys (loopback
// only), version "dev", ready unless the hub is shutting down.
type Config struct {
	// APIKeys are the accepted bearer keys. Empty means loopback only.
	APIKeys []string
	// Version is reported by /v1/status and the herald_build_info metric.
	// Empty means "dev".
	Version string
	// Ready, if set, reports whether the server accepts new work;
	// /readyz answers 503 when it returns false or the hub is shutting
	// down.
	Ready func() bool
	// Engine, if set, is reported by /v1/status and /metrics.
	Engine *engine.Engine
	// Events configures POST /v1/events, served when Events.Queue is set.
	Events EventsConfig
	// Pipelines, if set, returns the pipelines' figures for /v1/status and
	// /metrics.
	Pipelines func(ctx context.Context) []pipeline.Stats
	// DeadLetters, if set, serves the dead-letter routes
	// (/v1/admin/pipelines/{pipeline}/dead-letters…): it returns the dead
	// letters of the pipeline named, or false when there is no such
	// pipeline. Nil means no such routes.
	DeadLetters func(pipeline string) (pipeline.DeadLetters, bool)
	// BodyReadTimeout bounds reading a publish body. Zero means 30s.
	BodyReadTimeout time.Duration
	// Logger receives internal errors. Nil means slog.Default().
	Logger *slog.Logger
}

// API is the HTTP API over one hub. It is an http.Handler serving its own
// routes; Register adds the same routes to a shared mux instead.
type API struct {
	hub     *hub.Hub
	cfg     Config
	auth    *authorizer
	log     *slog.Logger
	started time.Time
	stats   func() hub.Stats // h.Stats; replaced by tests
	metrics http.Handler
	handler http.Handler
}

// New returns the API over h.
func New(h *hub.Hub, cfg Config) *API {
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.BodyReadTimeout <= 0 {
		cfg.BodyReadTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Events.MaxEventBytes <= 0 {
		cfg.Events.MaxEventBytes = 64 << 10
	}
	if cfg.Events.MaxBatch <= 0 {
		cfg.Events.MaxBatch = 1000
	}
	if cfg.Events.EnqueueTimeout <= 0 {
		cfg.Events.EnqueueTimeout = 10 * time.Second
	}
	a := &API{
		hub:     h,
		cfg:     cfg,
		auth:    newAuthorizer(cfg.APIKeys),
		log:     cfg.Logger,
		started: time.Now(),
		stats:   h.Stats,
	}
	a.metrics = a.newMetricsHandler()
	mux := http.NewServeMux()
	a.Register(mux)
	a.handler = JSONErrors(mux)
	return a
}

// Register adds the API's routes to mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.Handle("POST /v1/publish", a.protect(http.HandlerFunc(a.publishJSON)))
	// {channel...} so that names holding '/' work; the router's path
	// cleaning means names with "//", "./" or "../" segments must use the
	// JSON form.
	mux.Handle("POST /v1/publish/{channel...}", a.protect(http.HandlerFunc(a.publishRaw)))
	if a.cfg.Events.Queue != nil {
		mux.Handle("POST /v1/events", a.protect(http.HandlerFunc(a.events)))
	}
	if a.cfg.DeadLetters != nil {
		a.registerDeadLetters(mux)
	}
	mux.Handle("GET /v1/status", a.protect(http.HandlerFunc(a.status)))
	mux.Handle("GET /metrics", a.protect(a.metrics))
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /readyz", a.readyz)
}

// ServeHTTP serves the API's routes.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.handler.ServeHTTP(w, r) }

// protect applies the access rule of the package comment.
func (a *API) protect(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.auth.check(w, r) {
			next.ServeHTTP(w, r)
		}
	})
}

func (a *API) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz serves GET /readyz: 200 when this node takes new subscribers and
// publishes; 503 while it shuts down (shutting_down) or while its broker
// cannot reach its engine (engine_unavailable). Existing subscribers stay
// connected during an engine outage; the load balancer only stops sending
// new ones.
func (a *API) readyz(w http.ResponseWriter, _ *http.Request) {
	if !a.ready() {
		w.Header().Set("Retry-After", "5")
		httpx.Error(w, http.StatusServiceUnavailable, httpx.CodeShuttingDown, "server is shutting down")
		return
	}
	if h := a.hub.BrokerHealth(); !h.Connected {
		w.Header().Set("Retry-After", "5")
		httpx.Error(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "broker cannot reach "+h.Engine)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// ready reports whether the server is not shutting down.
func (a *API) ready() bool {
	if a.cfg.Ready != nil && !a.cfg.Ready() {
		return false
	}
	return !a.hub.ShuttingDown()
}

// writeJSON writes v as a JSON answer that caches must not keep.
func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// JSONErrors wraps mux so that the answers it makes itself — 404 for an
// unknown path, 405 (with Allow) for a known path and another method — are
// JSON errors like every other Herald error. Matched routes are served by
// mux unchanged.
func JSONErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(&jsonErrorWriter{ResponseWriter: w}, r)
	})
}

// jsonErrorWriter replaces a 404 or 405 plain-text answer with the JSON
// error; other answers (redirects to the clean path) pass through.
type jsonErrorWriter struct {
	http.ResponseWriter
	swallow bool
}

func (w *jsonErrorWriter) WriteHeader(code int) {
	switch code {
	case http.StatusNotFound:
		w.swallow = true
		httpx.Error(w.ResponseWriter, code, httpx.CodeNotFound, "no such endpoint")
	case http.StatusMethodNotAllowed:
		w.swallow = true
		msg := "method not allowed"
		if allow := w.Header().Get("Allow"); allow != "" {
			msg += "; use " + allow
		}
		httpx.Error(w.ResponseWriter, code, httpx.CodeMethodNotAllowed, msg)
	default:
		w.ResponseWriter.WriteHeader(code)
	}
}

func (w *jsonErrorWriter) Write(b []byte) (int, error) {
	if w.swallow {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

func (w *jsonErrorWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
