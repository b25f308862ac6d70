package jetstream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
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

// slowBatchStore is the queue's done store whose first batch check takes
// longer than the Runner waits, as a server far behind would; it counts
// the batch checks and the checks of single events.
type slowBatchStore struct {
	pipeline.BatchDoneStore
	slowed     atomic.Bool
	many, ones atomic.Int32
}

func (s *slowBatchStore) DoneMany(ctx context.Context, keys []string) ([]bool, error) {
	s.many.Add(1)
	if s.slowed.CompareAndSwap(false, true) {
		<-ctx.Done()
		return nil, fmt.Errorf("slow store: %w", ctx.Err())
	}
	return s.BatchDoneStore.DoneMany(ctx, keys)
}

func (s *slowBatchStore) Done(ctx context.Context, key string) (bool, error) {
	s.ones.Add(1)
	return s.BatchDoneStore.Done(ctx, key)
}

// TestRunnerAsksASlowStoreAboutTheBatchAgain: a batch check that times
// out is asked again with a longer deadline, not replaced by a check per
// event (which, for a store slow because it is overloaded, multiplies the
// load: at 20 000 events/s offered, that turned a backlog into 30 s of
// one request per event).
func TestRunnerAsksASlowStoreAboutTheBatchAgain(t *testing.T) {
	q := openQueue(t)
	src, err := q.Source(t.Context(), "p", pipeline.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	store := &slowBatchStore{BatchDoneStore: q}
	var seen sync.Map
	stage := stageFunc(func(_ context.Context, m *pipeline.Message) error {
		seen.Store(m.Event.ID, true)
		return nil
	})
	r, err := pipeline.NewRunner(pipeline.Config{Name: "p", Stages: []pipeline.Stage{stage}, Done: store}, src)
	if err != nil {
		t.Fatal(err)
	}
	var evs []pipeline.Event
	for i := range 20 {
		evs = append(evs, threadEvent(fmt.Sprintf("e-%d", i), fmt.Sprintf("t%d", i%4)))
	}
	if err := q.Enqueue(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { defer close(stopped); r.Run(ctx) }()
	defer func() { cancel(); <-stopped }()
	deadline := time.Now().Add(20 * time.Second)
	for n := 0; n < len(evs); {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events processed", n, len(evs))
		}
		time.Sleep(50 * time.Millisecond)
		n = 0
		seen.Range(func(any, any) bool { n++; return true })
	}
	if many, ones := store.many.Load(), store.ones.Load(); many < 2 || ones != 0 {
		t.Fatalf("%d batch checks and %d single checks; want the batch asked again and no single checks", many, ones)
	}
}
