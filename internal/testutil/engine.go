package testutil

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/heraldhq/herald/transport/engine"
)

// EngineEnv names the environment variable that picks how the transport
// tests run connections: "epoll" (the default; the production path on
// Linux), "goroutines" (the engine's portable mode) or "none" (no engine:
// a goroutine per connection inside net/http, the HTTP/2 path). CI runs
// the transport and client tests under each.
const EngineEnv = "HERALD_TEST_ENGINE"

// Engine returns the engine the transport tests should use, started with
// cfg and shut down when the test ends, or nil for "none".
func Engine(t testing.TB, cfg engine.Config) *engine.Engine {
	t.Helper()
	switch mode := os.Getenv(EngineEnv); mode {
	case "", "epoll":
	case "goroutines":
		cfg.Goroutines = true
	case "none":
		return nil
	default:
		t.Fatalf("%s=%q: want epoll, goroutines or none", EngineEnv, mode)
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
