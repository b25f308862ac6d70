// Package testutil holds helpers shared by Herald's tests.
package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
)

// Eventually calls fn until it returns nil or timeout passes, then fails
// the test with fn's last error. Use it instead of sleeps.
func Eventually(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %v: %v", timeout, err)
		}
		time.Sleep(wait)
		wait = min(wait*2, 50*time.Millisecond)
	}
}

// NewHub starts a hub and shuts it down when the test ends.
func NewHub(t testing.TB, cfg hub.Config) *hub.Hub {
	t.Helper()
	h, err := hub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Errorf("hub shutdown: %v", err)
		}
	})
	return h
}
