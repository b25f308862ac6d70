package testutil

import (
	"context"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/heraldhq/herald/transport/engine"
)

// EngineEnv names the environment variable that picks how the transport
// tests run connections: "epoll" (the default; the production path on
// Linux, where the engine also accepts the connections and serves the
// subscribe handshakes itself, see Listen), "epoll-nethttp" (the same
// engine behind net/http's accept and hijack, as a connection that net/http
// already serves ends up), "goroutines" (the engine's portable mode) or
// "none" (no engine: a goroutine per connection inside net/http, the
// HTTP/2 path). CI runs the transport and client tests under each.
const EngineEnv = "HERALD_TEST_ENGINE"

// Engine returns the engine the transport tests should use, started with
// cfg and shut down when the test ends, or nil for "none".
func Engine(t testing.TB, cfg engine.Config) *engine.Engine {
	t.Helper()
	switch mode := os.Getenv(EngineEnv); mode {
	case "", "epoll", "epoll-nethttp":
	case "goroutines":
		cfg.Goroutines = true
	case "none":
		return nil
	default:
		t.Fatalf("%s=%q: want epoll, epoll-nethttp, goroutines or none", EngineEnv, mode)
	}
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("engine shutdown: %v", err)
		}
	})
	return e
}

// Listen returns ln wrapped by e.Listen, so that the engine accepts the
// connections and serves the handshakes of paths with h itself, as
// herald serve does. With no engine, in goroutine mode, or when
// HERALD_TEST_ENGINE is "epoll-nethttp", it returns ln: net/http accepts.
func Listen(e *engine.Engine, ln net.Listener, h http.Handler, paths ...string) net.Listener {
	if e == nil || os.Getenv(EngineEnv) == "epoll-nethttp" {
		return ln
	}
	return e.Listen(ln, engine.ListenConfig{Handler: h, Paths: paths})
}
