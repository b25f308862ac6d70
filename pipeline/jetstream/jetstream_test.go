package jetstream_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsjs "github.com/nats-io/nats.go/jetstream"

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

// TestDoneMaxAge: the bucket of finished events keeps them for
// DoneMaxAge, by default an hour, never longer than the events themselves.
func TestDoneMaxAge(t *testing.T) {
	nc := embeddedConn(t)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		cfg  jetstream.Config
		want time.Duration
	}{
		{jetstream.Config{}, time.Hour},
		{jetstream.Config{DoneMaxAge: 5 * time.Minute}, 5 * time.Minute},
		{jetstream.Config{MaxAge: 10 * time.Minute}, 10 * time.Minute},
	} {
		if _, err := jetstream.Open(ctx, nc, tc.cfg); err != nil {
			t.Fatal(err)
		}
		kv, err := js.KeyValue(ctx, "herald_done")
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.TTL() != tc.want {
			t.Errorf("Open(%+v): done bucket TTL %v, want %v", tc.cfg, st.TTL(), tc.want)
		}
	}
}
