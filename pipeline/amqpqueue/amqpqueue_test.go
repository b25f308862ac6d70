package amqpqueue_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/pipeline"
	"github.com/heraldhq/herald/pipeline/amqpqueue"
	"github.com/heraldhq/herald/pipeline/queuetest"
)

// TestAMQPQueue runs everything against one rabbitmq-server (booting one
// takes seconds): the conformance suite, then this package's own tests.
// Each subtest uses queues of its own prefix; they run one at a time, so
// that the restarts of the shared server (a SIGKILL, then a start on the
// same directory) disturb no other.
func TestAMQPQueue(t *testing.T) {
	b := &broker{}
	b.url, b.restart = testutil.RabbitMQ(t)

	t.Run("Conformance", func(t *testing.T) {
		queuetest.Run(t, func(t *testing.T) queuetest.Harness {
			prefix := b.prefix()
			return queuetest.Harness{
				Open:    func(t *testing.T) pipeline.Queue { return b.open(t, prefix) },
				Restart: func(*testing.T) { b.restart() },
			}
		})
	})
	for _, tc := range []struct {
		name string
		test func(t *testing.T, b *broker)
	}{
		{"RetryRedeliversAfterDelay", testRetry},
		{"CloseGivesEventsBack", testCloseGivesBack},
		{"GroupSeesEventsFromItsCreation", testGroupCreation},
		{"DeadLettersKeepOrder", testDeadLetterOrder},
		{"ReplayReachesOnlyItsGroup", testReplayOwnGroup},
		{"ConcurrentDuplicatesStoredOnce", testConcurrentDuplicates},
		{"ReconnectsAfterBrokerRestart", testReconnect},
		{"ClosedQueueFetchesNothing", testClosed},
		{"RejectsBadNames", testBadNames},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.test(t, b) })
	}
}

// broker is the shared rabbitmq-server.
type broker struct {
	url     string
	restart func()
	n       atomic.Int64
}

// prefix returns a prefix no other subtest uses.
func (b *broker) prefix() string { return fmt.Sprintf("t%d", b.n.Add(1)) }

// open returns a queue on the broker with prefix, closed at cleanup.
func (b *broker) open(t *testing.T, prefix string) *amqpqueue.Queue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := amqpqueue.Open(ctx, amqpqueue.Config{URL: b.url, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func source(t *testing.T, q *amqpqueue.Queue, group string, cfg pipeline.SourceConfig) pipeline.Source {
	t.Helper()
	src, err := q.Source(context.Background(), group, cfg)
	if err != nil {
		t.Fatalf("Source(%s): %v", group, err)
	}
	t.Cleanup(func() { src.(interface{ Close() error }).Close() })
	return src
}

func enqueue(t *testing.T, q *amqpqueue.Queue, ids ...string) {
	t.Helper()
	if err := q.Enqueue(context.Background(), events(ids...)); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
}

func events(ids ...string) []pipeline.Event {
	evs := make([]pipeline.Event, len(ids))
	for i, id := range ids {
		evs[i] = pipeline.Event{ID: id, Type: "test", Data: json.RawMessage(`{"thread":"t"}`)}
	}
	return evs
}

// fetch fetches up to n jobs, waiting up to wait.
func fetch(t *testing.T, src pipeline.Source, n int, wait time.Duration) []pipeline.Job {
	t.Helper()
	jobs, err := src.Fetch(context.Background(), n, wait)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return jobs
}

// fetchIDs fetches until it has n jobs and returns them with their IDs.
func fetchIDs(t *testing.T, src pipeline.Source, n int) ([]pipeline.Job, []string) {
	t.Helper()
	var jobs []pipeline.Job
	testutil.Eventually(t, 10*time.Second, func() error {
		jobs = append(jobs, fetch(t, src, n-len(jobs), 50*time.Millisecond)...)
		if len(jobs) < n {
			return fmt.Errorf("%d of %d jobs", len(jobs), n)
		}
		return nil
	})
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.Event().ID
	}
	return jobs, ids
}

func fetchOne(t *testing.T, src pipeline.Source) pipeline.Job {
	t.Helper()
	jobs, _ := fetchIDs(t, src, 1)
	return jobs[0]
}

func ack(t *testing.T, jobs ...pipeline.Job) {
	t.Helper()
	for _, j := range jobs {
		if err := j.Ack(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func stats(t *testing.T, q *amqpqueue.Queue, group string) pipeline.QueueStats {
	t.Helper()
	st, err := q.Stats(context.Background(), group)
	if err != nil {
		t.Fatalf("Stats(%s): %v", group, err)
	}
	return st
}

// eventuallyStats waits until group's stats are want.
func eventuallyStats(t *testing.T, q *amqpqueue.Queue, group string, want pipeline.QueueStats) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := stats(t, q, group); st != want {
			return fmt.Errorf("stats of %s %+v, want %+v", group, st, want)
		}
		return nil
	})
}

func testRetry(t *testing.T, b *broker) {
	q := b.open(t, b.prefix())
	src := source(t, q, "g", pipeline.SourceConfig{})
	enqueue(t, q, "e1")

	j := fetchOne(t, src)
	if j.Event().ID != "e1" || j.Attempt() != 1 || j.OrderKey() != `"t"` || string(j.Event().Data) != `{"thread":"t"}` {
		t.Fatalf("job %+v attempt %d order key %q", j.Event(), j.Attempt(), j.OrderKey())
	}
	eventuallyStats(t, q, "g", pipeline.QueueStats{InFlight: 1})
	start := time.Now()
	if err := j.Retry(300 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if jobs := fetch(t, src, 1, 100*time.Millisecond); len(jobs) != 0 {
		t.Fatalf("redelivered at once: %v", jobs[0].Event())
	}
	j = fetchOne(t, src)
	if waited := time.Since(start); waited < 250*time.Millisecond || waited > 4*time.Second {
		t.Fatalf("redelivered after %v, want about 300ms", waited)
	}
	if j.Event().ID != "e1" || j.Attempt() != 2 {
		t.Fatalf("redelivery %+v attempt %d", j.Event(), j.Attempt())
	}
	eventuallyStats(t, q, "g", pipeline.QueueStats{InFlight: 1, Redelivered: 1})
	ack(t, j)
	eventuallyStats(t, q, "g", pipeline.QueueStats{})
}

// testCloseGivesBack: closing a source gives back the events it fetched
// ahead and those it handed out without ending them, in order.
func testCloseGivesBack(t *testing.T, b *broker) {
	q := b.open(t, b.prefix())
	src, err := q.Source(context.Background(), "g", pipeline.SourceConfig{MaxInFlight: 2})
	if err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, "e1", "e2", "e3")
	fetchOne(t, src) // e1, not ended; e2 prefetched
	eventuallyStats(t, q, "g", pipeline.QueueStats{Pending: 1, InFlight: 2})
	if err := src.(interface{ Close() error }).Close(); err != nil {
		t.Fatal(err)
	}
	eventuallyStats(t, q, "g", pipeline.QueueStats{Pending: 3})
	_, ids := fetchIDs(t, source(t, q, "g", pipeline.SourceConfig{}), 3)
	if fmt.Sprint(ids) != "[e1 e2 e3]" {
		t.Fatalf("after Close the next source got %v", ids)
	}
}

func testGroupCreation(t *testing.T, b *broker) {
	q := b.open(t, b.prefix())
	early := source(t, q, "early", pipeline.SourceConfig{})
	enqueue(t, q, "e1")
	late := source(t, q, "late", pipeline.SourceConfig{})
	enqueue(t, q, "e2")
	if _, ids := fetchIDs(t, early, 2); fmt.Sprint(ids) != "[e1 e2]" {
		t.Fatalf("early got %v", ids)
	}
	if _, ids := fetchIDs(t, late, 1); fmt.Sprint(ids) != "[e2]" {
		t.Fatalf("late got %v", ids)
	}
	if jobs := fetch(t, late, 1, 100*time.Millisecond); len(jobs) != 0 {
		t.Fatalf("late also got %v", jobs[0].Event())
	}
	if _, err := q.Stats(context.Background(), "nobody"); err == nil {
		t.Fatal("Stats of a group that does not exist succeeded")
	}
}

// deadLetter makes dead letters of ids in group.
func deadLetter(t *testing.T, src pipeline.Source, ids ...string) {
	t.Helper()
	jobs, got := fetchIDs(t, src, len(ids))
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("fetched %v, want %v", got, ids)
	}
	for i, j := range jobs {
		if err := j.DeadLetter(context.Background(), fmt.Errorf("failure %d", i), i+1); err != nil {
			t.Fatal(err)
		}
	}
}

func listIDs(t *testing.T, dl pipeline.DeadLetters, limit int) ([]pipeline.DeadLetter, string) {
	t.Helper()
	list, err := dl.List(context.Background(), limit)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range list {
		ids = append(ids, d.Event.ID)
	}
	return list, fmt.Sprint(ids)
}

// testDeadLetterOrder: removing dead letters from the middle keeps the
// order of the others, and each operation finds what it must.
func testDeadLetterOrder(t *testing.T, b *broker) {
	q := b.open(t, b.prefix())
	src := source(t, q, "g", pipeline.SourceConfig{})
	enqueue(t, q, "e1", "e2", "e3", "e4", "e5")
	deadLetter(t, src, "e1", "e2", "e3", "e4", "e5")
	dl := q.DeadLetters("g")
	ctx := context.Background()

	list, ids := listIDs(t, dl, 0)
	if ids != "[e1 e2 e3 e4 e5]" {
		t.Fatalf("List = %s", ids)
	}
	for i, d := range list {
		if d.Error != fmt.Sprintf("failure %d", i) || d.Attempts != i+1 || d.Group != "g" || time.Since(d.At) > time.Minute {
			t.Fatalf("dead letter %d: %+v", i, d)
		}
		if i > 0 && d.Seq <= list[i-1].Seq {
			t.Fatalf("seqs not increasing: %d after %d", d.Seq, list[i-1].Seq)
		}
	}
	if st := stats(t, q, "g"); st != (pipeline.QueueStats{Dead: 5}) {
		t.Fatalf("stats %+v", st)
	}
	if _, ids := listIDs(t, dl, 2); ids != "[e1 e2]" {
		t.Fatalf("List(2) = %s", ids)
	}
	if err := dl.Drop(ctx, list[2].Seq); err != nil {
		t.Fatal(err)
	}
	if err := dl.Drop(ctx, list[2].Seq); !errors.Is(err, pipeline.ErrNoDeadLetter) {
		t.Fatalf("dropping a dropped dead letter: %v", err)
	}
	// Replay stops at the first seq that fails: e4 is replayed, e3 is gone.
	if n, err := dl.Replay(ctx, list[3].Seq, list[2].Seq, list[0].Seq); n != 1 || !errors.Is(err, pipeline.ErrNoDeadLetter) {
		t.Fatalf("Replay(e4, e3, e1) = %d, %v", n, err)
	}
	if _, ids := listIDs(t, dl, 0); ids != "[e1 e2 e5]" {
		t.Fatalf("List after Drop(e3) and Replay(e4) = %s", ids)
	}
	if n, err := dl.Replay(ctx); n != 3 || err != nil {
		t.Fatalf("Replay() = %d, %v", n, err)
	}
	if _, ids := listIDs(t, dl, 0); ids != "[]" {
		t.Fatalf("List after Replay() = %s", ids)
	}
	jobs, ids2 := fetchIDs(t, src, 4)
	if fmt.Sprint(ids2) != "[e4 e1 e2 e5]" {
		t.Fatalf("replayed %v", ids2)
	}
	for _, j := range jobs {
		if j.Attempt() != 1 || j.OrderKey() != `"t"` {
			t.Fatalf("replayed %+v attempt %d order key %q", j.Event(), j.Attempt(), j.OrderKey())
		}
	}
	ack(t, jobs...)
	eventuallyStats(t, q, "g", pipeline.QueueStats{})
}

func testReplayOwnGroup(t *testing.T, b *broker) {
	q := b.open(t, b.prefix())
	a := source(t, q, "a", pipeline.SourceConfig{})
	bs := source(t, q, "b", pipeline.SourceConfig{})
	enqueue(t, q, "e1")
	deadLetter(t, a, "e1")
	ack(t, fetchOne(t, bs))

	list, _ := listIDs(t, q.DeadLetters("a"), 0)
	if n, err := q.DeadLetters("b").Replay(context.Background(), list[0].Seq); n != 0 || !errors.Is(err, pipeline.ErrNoDeadLetter) {
		t.Fatalf("replaying a's dead letter as b's = %d, %v", n, err)
	}
	if err := q.DeadLetters("nobody").Drop(context.Background(), list[0].Seq); !errors.Is(err, pipeline.ErrNoDeadLetter) {
		t.Fatalf("dropping from a group without dead letters: %v", err)
	}
	if n, err := q.DeadLetters("a").Replay(context.Background()); n != 1 || err != nil {
		t.Fatalf("Replay() = %d, %v", n, err)
	}
	ack(t, fetchOne(t, a))
	if jobs := fetch(t, bs, 1, 200*time.Millisecond); len(jobs) != 0 {
		t.Fatalf("group b got %v", jobs[0].Event())
	}
}

// testConcurrentDuplicates: Enqueue calls racing with the same IDs store
// each once, and an ID repeated within one call too.
func testConcurrentDuplicates(t *testing.T, b *broker) {
	q := b.open(t, b.prefix())
	src := source(t, q, "g", pipeline.SourceConfig{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := q.Enqueue(context.Background(), events("e1", "e2", "e1", "e3")); err != nil {
				t.Errorf("Enqueue: %v", err)
			}
		})
	}
	wg.Wait()
	jobs, ids := fetchIDs(t, src, 3)
	if fmt.Sprint(ids) != "[e1 e2 e3]" {
		t.Fatalf("got %v", ids)
	}
	ack(t, jobs...)
	if jobs := fetch(t, src, 1, 200*time.Millisecond); len(jobs) != 0 {
		t.Fatalf("a duplicate was stored: %v", jobs[0].Event())
	}
}

// testReconnect: a queue outlives a restart of the broker; the calls
// during the outage fail, the next ones reconnect.
func testReconnect(t *testing.T, b *broker) {
	q := b.open(t, b.prefix())
	src := source(t, q, "g", pipeline.SourceConfig{})
	enqueue(t, q, "e1")
	ack(t, fetchOne(t, src))
	b.restart()
	testutil.Eventually(t, 10*time.Second, func() error {
		return q.Enqueue(context.Background(), events("e2"))
	})
	// e1 may come again: its acknowledgement (which the broker does not
	// answer) may not have reached the disk before the crash.
	testutil.Eventually(t, 10*time.Second, func() error {
		jobs, err := src.Fetch(context.Background(), 1, 100*time.Millisecond)
		if err != nil {
			return err
		}
		if len(jobs) == 0 {
			return errors.New("no job")
		}
		ack(t, jobs[0])
		if id := jobs[0].Event().ID; id != "e2" {
			return fmt.Errorf("got %s", id)
		}
		return nil
	})
	eventuallyStats(t, q, "g", pipeline.QueueStats{})
}

func testClosed(t *testing.T, b *broker) {
	q := b.open(t, b.prefix())
	src := source(t, q, "g", pipeline.SourceConfig{})
	enqueue(t, q, "e1")
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if jobs, err := src.Fetch(context.Background(), 1, 0); len(jobs) != 0 || !errors.Is(err, amqpqueue.ErrClosed) {
		t.Fatalf("Fetch after Close = %d jobs, %v", len(jobs), err)
	}
	if err := q.Enqueue(context.Background(), events("e2")); !errors.Is(err, amqpqueue.ErrClosed) {
		t.Fatalf("Enqueue after Close: %v", err)
	}
}

func testBadNames(t *testing.T, b *broker) {
	q := b.open(t, b.prefix())
	for _, name := range []string{"", "a.b", "a b", fmt.Sprintf("%065d", 0)} {
		if _, err := q.Source(context.Background(), name, pipeline.SourceConfig{}); err == nil {
			t.Errorf("Source(%q) succeeded", name)
		}
	}
	if err := q.Enqueue(context.Background(), []pipeline.Event{{Type: "test"}}); err == nil {
		t.Error("Enqueue of an event without an ID succeeded")
	}
}
