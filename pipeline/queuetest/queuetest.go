// Package queuetest is the conformance suite every pipeline.Queue passes:
// durable enqueue, one delivery per consumer group, per-key order, retry,
// dead letters with replay and drop, duplicate IDs, and survival of a
// restart of the queue's engine. A queue that is also a DoneStore (or a
// BatchDoneStore) has its marks checked too, across a restart.
package queuetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/pipeline"
)

// Harness gives the suite a queue on a real engine.
type Harness struct {
	// Open returns a queue on the engine, closed by the suite. Every call
	// in one subtest reaches the same stored data.
	Open func(t *testing.T) pipeline.Queue
	// Restart stops the engine and starts it again on the same data (a
	// crash of the process that holds it, when the engine is embedded).
	// Queues opened before are unusable afterwards.
	Restart func(t *testing.T)
}

// wait bounds every wait of the suite.
const wait = 10 * time.Second

// Run runs the suite. newHarness returns a harness on a fresh engine for
// each subtest.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	t.Run("DeliversEachEventOncePerGroupInOrder", func(t *testing.T) { testDelivery(t, newHarness(t)) })
	t.Run("RetriesThenDeadLetters", func(t *testing.T) { testDeadLetters(t, newHarness(t)) })
	t.Run("DuplicateIDsStoredOnce", func(t *testing.T) { testDuplicates(t, newHarness(t)) })
	t.Run("SurvivesRestart", func(t *testing.T) { testRestart(t, newHarness(t)) })
	t.Run("DoneStore", func(t *testing.T) { testDoneStore(t, newHarness(t)) })
	t.Run("SkipsFinishedEvents", func(t *testing.T) { testSkipsFinished(t, newHarness(t)) })
	t.Run("RedeliveredWhileWaitingPublishedOnce", func(t *testing.T) { testRedeliveredWhileWaiting(t, newHarness(t), false) })
	t.Run("RedeliveredWhileWaitingPublishedOnceCheckedOneByOne", func(t *testing.T) { testRedeliveredWhileWaiting(t, newHarness(t), true) })
}

func open(t *testing.T, h Harness) pipeline.Queue {
	t.Helper()
	q := h.Open(t)
	t.Cleanup(func() { q.Close() })
	return q
}

func events(prefix string, n, threads int) []pipeline.Event {
	evs := make([]pipeline.Event, n)
	for i := range evs {
		data, _ := json.Marshal(map[string]any{"thread": fmt.Sprintf("%s-t%d", prefix, i%threads), "n": i})
		evs[i] = pipeline.Event{ID: fmt.Sprintf("%s-%d", prefix, i), Type: "test", Data: data}
	}
	return evs
}

// recorder is a stage that records what it saw, failing as told.
type recorder struct {
	mu   sync.Mutex
	seen []pipeline.Event
	fail func(ev pipeline.Event, try int) error
	try  map[string]int
}

func (r *recorder) Name() string { return "record" }

func (r *recorder) Process(_ context.Context, m *pipeline.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.try == nil {
		r.try = map[string]int{}
	}
	r.try[m.Event.ID]++
	if r.fail != nil {
		if err := r.fail(m.Event, r.try[m.Event.ID]); err != nil {
			return err
		}
	}
	r.seen = append(r.seen, m.Event)
	return nil
}

func (r *recorder) events() []pipeline.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

// run starts a runner of group over q with rec, stopped at cleanup.
func run(t *testing.T, q pipeline.Queue, group string, rec *recorder, cfg pipeline.Config) *pipeline.Runner {
	t.Helper()
	return runWith(t, q, group, rec, cfg, pipeline.SourceConfig{AckWait: 2 * time.Second})
}

// runWith is run with the source configured by scfg.
func runWith(t *testing.T, q pipeline.Queue, group string, rec *recorder, cfg pipeline.Config, scfg pipeline.SourceConfig) *pipeline.Runner {
	t.Helper()
	src, err := q.Source(context.Background(), group, scfg)
	if err != nil {
		t.Fatalf("Source(%s): %v", group, err)
	}
	cfg.Name = group
	cfg.Stages = []pipeline.Stage{rec}
	if cfg.Backoff == 0 {
		cfg.Backoff = 10 * time.Millisecond
	}
	r, err := pipeline.NewRunner(cfg, src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(wait):
			t.Errorf("runner %s did not stop", group)
		}
	})
	return r
}

func eventually(t *testing.T, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func enqueue(t *testing.T, q pipeline.Queue, evs []pipeline.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := q.Enqueue(ctx, evs); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
}

// checkOnceInOrder checks that got holds each of want once and the events
// of each thread in want's order.
func checkOnceInOrder(t *testing.T, got, want []pipeline.Event) {
	t.Helper()
	count := map[string]int{}
	for _, ev := range got {
		count[ev.ID]++
	}
	for _, ev := range want {
		if count[ev.ID] != 1 {
			t.Fatalf("event %s seen %d times", ev.ID, count[ev.ID])
		}
	}
	if len(got) != len(want) {
		t.Fatalf("saw %d events, want %d", len(got), len(want))
	}
	last := map[string]int{}
	for _, ev := range got {
		var d struct {
			Thread string `json:"thread"`
			N      int    `json:"n"`
		}
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatalf("event %s: data %s: %v", ev.ID, ev.Data, err)
		}
		if prev, ok := last[d.Thread]; ok && d.N < prev {
			t.Fatalf("thread %s: event %d after %d", d.Thread, d.N, prev)
		}
		last[d.Thread] = d.N
	}
}

func testDelivery(t *testing.T, h Harness) {
	q := open(t, h)
	evs := events("e", 300, 7)
	// Two groups, created before the events: each sees every event once.
	a, b := &recorder{}, &recorder{}
	run(t, q, "a", a, pipeline.Config{Lanes: 4})
	run(t, q, "b", b, pipeline.Config{Lanes: 1})
	enqueue(t, q, evs[:150])
	enqueue(t, q, evs[150:])
	for name, rec := range map[string]*recorder{"a": a, "b": b} {
		eventually(t, "group "+name, func() error {
			if n := len(rec.events()); n < len(evs) {
				return fmt.Errorf("%d of %d events", n, len(evs))
			}
			return nil
		})
		checkOnceInOrder(t, rec.events(), evs)
	}
	eventually(t, "nothing pending or in flight", func() error {
		st, err := q.Stats(context.Background(), "a")
		if err != nil {
			return err
		}
		if st.Pending != 0 || st.InFlight != 0 || st.Dead != 0 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
}

func testDeadLetters(t *testing.T, h Harness) {
	q := open(t, h)
	errFlaky := errors.New("flaky")
	poisoned := true
	var mu sync.Mutex
	rec := &recorder{fail: func(ev pipeline.Event, try int) error {
		mu.Lock()
		defer mu.Unlock()
		switch ev.ID {
		case "flaky":
			if try < 3 {
				return errFlaky
			}
		case "poison":
			if poisoned {
				return errFlaky
			}
		case "bad":
			if poisoned {
				return pipeline.Permanentf("data.thread: required string is missing")
			}
		}
		return nil
	}}
	r := run(t, q, "p", rec, pipeline.Config{Lanes: 1, Attempts: 3})
	enqueue(t, q, []pipeline.Event{
		{ID: "poison", Type: "test", Data: json.RawMessage(`{"thread":"t"}`)},
		{ID: "flaky", Type: "test", Data: json.RawMessage(`{"thread":"t"}`)},
		{ID: "bad", Type: "test", Data: json.RawMessage(`{}`)},
		{ID: "after", Type: "test", Data: json.RawMessage(`{"thread":"t"}`)},
	})
	// The poison event does not block the ones behind it for good.
	eventually(t, "flaky and after processed", func() error {
		ids := map[string]bool{}
		for _, ev := range rec.events() {
			ids[ev.ID] = true
		}
		if !ids["flaky"] || !ids["after"] {
			return fmt.Errorf("seen %v", ids)
		}
		return nil
	})
	dl := q.DeadLetters("p")
	var list []pipeline.DeadLetter
	eventually(t, "two dead letters", func() error {
		var err error
		list, err = dl.List(context.Background(), 10)
		if err != nil {
			return err
		}
		if len(list) != 2 {
			return fmt.Errorf("%d dead letters: %+v", len(list), list)
		}
		return nil
	})
	byID := map[string]pipeline.DeadLetter{}
	for _, d := range list {
		byID[d.Event.ID] = d
	}
	if d := byID["poison"]; d.Attempts != 3 || d.Group != "p" || string(d.Event.Data) != `{"thread":"t"}` {
		t.Fatalf("poison dead letter %+v", d)
	}
	if d := byID["bad"]; d.Attempts != 1 || d.Error == "" {
		t.Fatalf("bad dead letter %+v (a permanent error is not retried)", d)
	}
	// The stage saw "after" before the runner acknowledged it.
	eventually(t, "two acknowledged, two dead-lettered", func() error {
		if st := r.Stats(); st.DeadLettered != 2 || st.Acked != 2 {
			return fmt.Errorf("runner stats %+v", st)
		}
		return nil
	})

	// Replay one (it now succeeds), drop the other.
	mu.Lock()
	poisoned = false
	mu.Unlock()
	if n, err := dl.Replay(context.Background(), byID["poison"].Seq); n != 1 || err != nil {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	if err := dl.Drop(context.Background(), byID["bad"].Seq); err != nil {
		t.Fatalf("Drop: %v", err)
	}
	eventually(t, "poison replayed", func() error {
		for _, ev := range rec.events() {
			if ev.ID == "poison" {
				return nil
			}
		}
		return errors.New("not yet")
	})
	list, err := dl.List(context.Background(), 10)
	if err != nil || len(list) != 0 {
		t.Fatalf("dead letters after replay and drop: %+v, %v", list, err)
	}
	if err := dl.Drop(context.Background(), byID["bad"].Seq); !errors.Is(err, pipeline.ErrNoDeadLetter) {
		t.Fatalf("dropping a dropped dead letter: %v, want pipeline.ErrNoDeadLetter", err)
	}
}

func testDuplicates(t *testing.T, h Harness) {
	q := open(t, h)
	rec := &recorder{}
	run(t, q, "d", rec, pipeline.Config{})
	evs := events("dup", 5, 1)
	enqueue(t, q, evs)
	enqueue(t, q, evs) // a client retrying its POST
	enqueue(t, q, events("other", 1, 1))
	want := append(evs, events("other", 1, 1)...)
	eventually(t, "every event", func() error {
		if n := len(rec.events()); n < len(want) {
			return fmt.Errorf("%d of %d", n, len(want))
		}
		return nil
	})
	// A stored duplicate would be delivered right after the others: give
	// it a moment to show.
	time.Sleep(100 * time.Millisecond)
	checkOnceInOrder(t, rec.events(), want)
}

func testRestart(t *testing.T, h Harness) {
	q := h.Open(t)
	if _, err := q.Source(context.Background(), "r", pipeline.SourceConfig{}); err != nil {
		t.Fatal(err)
	}
	evs := events("r", 50, 3)
	enqueue(t, q, evs)
	q.Close()
	h.Restart(t)
	q = open(t, h)
	rec := &recorder{}
	run(t, q, "r", rec, pipeline.Config{Lanes: 2})
	eventually(t, "all events after the restart", func() error {
		if n := len(rec.events()); n < len(evs) {
			return fmt.Errorf("%d of %d", n, len(evs))
		}
		return nil
	})
	checkOnceInOrder(t, rec.events(), evs)
}

// doneStore returns q as a DoneStore, or skips: the queue keeps no marks
// (RabbitMQ's pipelines use another engine's).
func doneStore(t *testing.T, q pipeline.Queue) pipeline.DoneStore {
	t.Helper()
	ds, ok := q.(pipeline.DoneStore)
	if !ok {
		t.Skipf("%T is not a DoneStore: it keeps no marks of finished events", q)
	}
	return ds
}

// testDoneStore checks marks one by one and in batches (over 1 000 keys,
// with repeats), and that they survive a restart of the engine.
func testDoneStore(t *testing.T, h Harness) {
	q := open(t, h)
	ds := doneStore(t, q)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	keys := make([]string, 2500)
	var marked []string
	for i := range keys {
		keys[i] = fmt.Sprintf("p:evt-%d", i)
		if i%3 == 0 {
			marked = append(marked, keys[i])
		}
	}
	if done, err := ds.Done(ctx, keys[0]); err != nil || done {
		t.Fatalf("Done before any mark = %v, %v", done, err)
	}
	if err := ds.MarkDone(ctx, keys[0]); err != nil {
		t.Fatalf("MarkDone: %v", err)
	}
	bds, batch := ds.(pipeline.BatchDoneStore)
	if batch {
		if err := bds.MarkDoneMany(ctx, marked[1:]); err != nil {
			t.Fatalf("MarkDoneMany: %v", err)
		}
	} else {
		for _, k := range marked[1:] {
			if err := ds.MarkDone(ctx, k); err != nil {
				t.Fatalf("MarkDone: %v", err)
			}
		}
	}
	check := func(ds pipeline.DoneStore) {
		t.Helper()
		for _, i := range []int{0, 1, 2, 3, 2499} {
			if done, err := ds.Done(ctx, keys[i]); err != nil || done != (i%3 == 0) {
				t.Fatalf("Done(%s) = %v, %v", keys[i], done, err)
			}
		}
		bds, ok := ds.(pipeline.BatchDoneStore)
		if !ok {
			return
		}
		ask := append(slices.Clone(keys), keys[3], keys[4], "p:never")
		done, err := bds.DoneMany(ctx, ask)
		if err != nil || len(done) != len(ask) {
			t.Fatalf("DoneMany(%d keys) = %d answers, %v", len(ask), len(done), err)
		}
		for i, k := range ask {
			want := i < len(keys) && i%3 == 0 || k == keys[3]
			if done[i] != want {
				t.Fatalf("DoneMany: %s is %v, want %v", k, done[i], want)
			}
		}
		if done, err := bds.DoneMany(ctx, []string{"p:never", "p:nor-this"}); err != nil || len(done) != 2 || done[0] || done[1] {
			t.Fatalf("DoneMany of keys never marked = %v, %v", done, err)
		}
	}
	check(ds)
	q.Close()
	h.Restart(t)
	check(doneStore(t, open(t, h)))
}

// testSkipsFinishedEvents checks that a runner acknowledges, without
// processing, the events its DoneStore has marked for its pipeline.
func testSkipsFinished(t *testing.T, h Harness) {
	q := open(t, h)
	ds := doneStore(t, q)
	evs := events("fin", 20, 2)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var want []pipeline.Event
	for i, ev := range evs {
		if i%4 == 1 {
			if err := ds.MarkDone(ctx, "f:"+ev.ID); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want = append(want, ev)
	}
	// The same ids finished by another pipeline count for nothing here.
	if err := ds.MarkDone(ctx, "other:"+evs[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Source(ctx, "f", pipeline.SourceConfig{}); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, evs)
	rec := &recorder{}
	r := run(t, q, "f", rec, pipeline.Config{Lanes: 2, Done: ds})
	eventually(t, "every event acknowledged", func() error {
		st := r.Stats()
		if st.Acked != uint64(len(evs)) || st.Duplicates != uint64(len(evs)-len(want)) {
			return fmt.Errorf("acked %d, duplicates %d", st.Acked, st.Duplicates)
		}
		return nil
	})
	checkOnceInOrder(t, rec.events(), want)
	// What the runner finished is marked now.
	for _, ev := range want {
		if done, err := ds.Done(ctx, "f:"+ev.ID); err != nil || !done {
			t.Fatalf("Done(f:%s) after processing = %v, %v", ev.ID, done, err)
		}
	}
}

// testRedeliveredWhileWaiting holds a thread's first event in its stage
// past the claim time, so that the queue delivers it and the events
// queued behind it again: a runner with a DoneStore processes each once.
// oneByOne hides the store's batch methods.
func testRedeliveredWhileWaiting(t *testing.T, h Harness, oneByOne bool) {
	q := open(t, h)
	ds := doneStore(t, q)
	if oneByOne {
		ds = struct{ pipeline.DoneStore }{ds}
	}
	evs := events("wait", 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := q.Source(ctx, "w", pipeline.SourceConfig{AckWait: time.Second}); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, evs)
	rec := &recorder{fail: func(ev pipeline.Event, try int) error {
		if ev.ID == evs[0].ID && try == 1 {
			time.Sleep(2500 * time.Millisecond) // past the claim time of everything queued
		}
		return nil
	}}
	r := runWith(t, q, "w", rec, pipeline.Config{Lanes: 1, Done: ds}, pipeline.SourceConfig{AckWait: time.Second})
	eventually(t, "every event and a redelivery acknowledged", func() error {
		st := r.Stats()
		if st.Acked < uint64(len(evs)) || st.Duplicates == 0 {
			return fmt.Errorf("acked %d, duplicates %d", st.Acked, st.Duplicates)
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // a duplicate publish would follow at once
	checkOnceInOrder(t, rec.events(), evs)
}
