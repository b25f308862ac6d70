package jetstream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/heraldhq/herald/pipeline"
	"github.com/heraldhq/herald/pipeline/jetstream"
)

// stageFunc is a stage made of a function.
type stageFunc func(context.Context, *pipeline.Message) error

func (stageFunc) Name() string                                             { return "test" }
func (f stageFunc) Process(ctx context.Context, m *pipeline.Message) error { return f(ctx, m) }

// embeddedConn starts an embedded NATS server with JetStream, stopped at
// the end of the test, and returns a connection to it.
func embeddedConn(t *testing.T) *nats.Conn {
	t.Helper()
	ns, err := jetstream.Embedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := jetstream.ConnectEmbedded(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func openQueue(t *testing.T) *jetstream.Queue {
	t.Helper()
	q, err := jetstream.Open(t.Context(), embeddedConn(t), jetstream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func threadEvent(id, thread string) pipeline.Event {
	d, _ := json.Marshal(map[string]string{"thread": thread})
	return pipeline.Event{ID: id, Type: "test", Data: d}
}

// TestRunnerSlowThreadHoldsOnlyItsLane: a thread whose events are slow
// (and many) holds up its own lane, not the others: events of other
// threads are done while the slow one is still being worked on.
func TestRunnerSlowThreadHoldsOnlyItsLane(t *testing.T) {
	q := openQueue(t)
	src, err := q.Source(t.Context(), "p", pipeline.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	done := map[string]time.Time{}
	slowDone := make(chan struct{})
	stage := stageFunc(func(_ context.Context, m *pipeline.Message) error {
		if m.Event.ID == "slow" {
			time.Sleep(2 * time.Second)
		}
		mu.Lock()
		done[m.Event.ID] = time.Now()
		mu.Unlock()
		if m.Event.ID == "slow" {
			close(slowDone)
		}
		return nil
	})
	r, err := pipeline.NewRunner(pipeline.Config{Name: "p", Stages: []pipeline.Stage{stage}, Lanes: 64}, src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { defer close(stopped); r.Run(ctx) }()
	defer func() { cancel(); <-stopped }()

	evs := []pipeline.Event{threadEvent("slow", "x")}
	for i := range 100 { // more than a lane used to hold
		evs = append(evs, threadEvent(fmt.Sprintf("x-%d", i), "x"))
	}
	for i := range 10 {
		evs = append(evs, threadEvent(fmt.Sprintf("other-%d", i), fmt.Sprintf("t%d", i)))
	}
	if err := q.Enqueue(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	select {
	case <-slowDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow event never ran")
	}
	mu.Lock()
	defer mu.Unlock()
	others := 0
	for i := range 10 {
		if _, ok := done[fmt.Sprintf("other-%d", i)]; ok {
			others++
		}
	}
	// With 64 lanes, most other threads have lanes of their own.
	if others < 5 {
		t.Fatalf("only %d of 10 other threads' events were done while the slow one ran", others)
	}
	if at, ok := done["x-0"]; ok && at.Before(done["slow"]) {
		t.Fatal("an event of the slow thread ran before the slow one ended: order broken")
	}
}
