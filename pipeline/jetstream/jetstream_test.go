package jetstream_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/heraldhq/herald/pipeline"
	"github.com/heraldhq/herald/pipeline/jetstream"
	"github.com/heraldhq/herald/pipeline/queuetest"
)

// TestConformance runs the queue suite against an embedded NATS server
// with JetStream storing in a temporary directory; Restart shuts the
// server down and starts a new one on the same directory.
func TestConformance(t *testing.T) {
	queuetest.Run(t, func(t *testing.T) queuetest.Harness {
		dir := t.TempDir()
		var ns *server.Server
		start := func(t *testing.T) {
			var err error
			if ns, err = jetstream.Embedded(dir); err != nil {
				t.Fatal(err)
			}
		}
		stop := func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
		start(t)
		t.Cleanup(func() { stop() })
		return queuetest.Harness{
			Open: func(t *testing.T) pipeline.Queue {
				nc, err := jetstream.ConnectEmbedded(ns)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(nc.Close)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				q, err := jetstream.Open(ctx, nc, jetstream.Config{})
				if err != nil {
					t.Fatal(err)
				}
				return q
			},
			Restart: func(t *testing.T) {
				stop()
				start(t)
			},
		}
	})
}
