package client

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/api"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/sse"
	"github.com/heraldhq/herald/transport/ws"
)

// TestIntegrationSlowConsumerResumesFromHistory: a subscriber that stops
// reading is cut off by the server (its queue overflows) while publishing
// goes on unhindered; when it reads again, the client reconnects with its
// cursor and gets every message exactly once, in order, from history.
func TestIntegrationSlowConsumerResumesFromHistory(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			h := testutil.NewHub(t, hub.Config{
				MaxQueueBytes: 128 << 10,
				Default:       hub.NamespaceConfig{HistorySize: 1000},
			})
			eng := testutil.Engine(t, engine.Config{WriteTimeout: 300 * time.Millisecond})
			wsh := ws.New(h, ws.Config{WriteTimeout: 300 * time.Millisecond, Engine: eng})
			mux := http.NewServeMux()
			mux.Handle("/v1/sse", sse.New(h, sse.Config{Retry: 50 * time.Millisecond, WriteTimeout: 300 * time.Millisecond, Engine: eng}))
			mux.Handle("/v1/ws", wsh)
			mux.Handle("/", api.New(h, api.Config{}))
			srv := httptest.NewServer(mux)
			t.Cleanup(func() {
				srv.CloseClientConnections()
				srv.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = wsh.Shutdown(ctx)
			})

			gate := make(chan struct{})
			var (
				mu       sync.Mutex
				offsets  []uint64
				connects int
			)
			c := New(srv.URL)
			sub, err := c.Subscribe(context.Background(), SubscribeOptions{
				Channels:   []string{"hot"},
				Transport:  tr,
				MinBackoff: 20 * time.Millisecond,
				OnConnect: func() {
					mu.Lock()
					connects++
					mu.Unlock()
				},
				OnEvent: func(ev Event) {
					<-gate // the application stalls: the client stops reading
					mu.Lock()
					offsets = append(offsets, ev.Offset)
					mu.Unlock()
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sub.Close() })
			testutil.Eventually(t, 5*time.Second, func() error {
				mu.Lock()
				defer mu.Unlock()
				if connects < 1 {
					return fmt.Errorf("not connected")
				}
				return nil
			})

			// Far more than socket buffers plus the queue limit can hold.
			const total = 400
			data := fmt.Sprintf("%q", strings.Repeat("x", 16<<10))
			pub := New(srv.URL)
			start := time.Now()
			for i := 0; i < total; i++ {
				if _, err := pub.Publish(context.Background(), Publication{Channels: []string{"hot"}, Data: []byte(data)}); err != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
			}
			t.Logf("published %d × 16 KiB in %v while the subscriber stalled", total, time.Since(start))
			testutil.Eventually(t, 10*time.Second, func() error {
				if n := h.Stats().SlowConsumers; n < 1 {
					return fmt.Errorf("slow consumers = %d", n)
				}
				return nil
			})
			close(gate)

			// The replay's messages arrive before the reconnection's
			// "subscribed" marker, so wait for both.
			testutil.Eventually(t, 20*time.Second, func() error {
				mu.Lock()
				defer mu.Unlock()
				if len(offsets) < total {
					return fmt.Errorf("received %d of %d", len(offsets), total)
				}
				if connects < 2 {
					return fmt.Errorf("connects = %d: the client was never cut off", connects)
				}
				return nil
			})
			mu.Lock()
			defer mu.Unlock()
			for i, off := range offsets {
				if off != uint64(i+1) {
					t.Fatalf("event %d has offset %d: loss, duplicate or disorder", i, off)
				}
			}
			if len(offsets) != total {
				t.Fatalf("received %d events, want %d", len(offsets), total)
			}
		})
	}
}
