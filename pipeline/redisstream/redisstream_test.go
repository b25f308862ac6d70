package redisstream_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/pipeline"
	"github.com/heraldhq/herald/pipeline/queuetest"
	"github.com/heraldhq/herald/pipeline/redisstream"
)

// TestConformance runs the queue suite against a redis-server with an
// append-only file fsynced on every write; Restart kills the server and
// starts it again on the same directory.
func TestConformance(t *testing.T) {
	queuetest.Run(t, func(t *testing.T) queuetest.Harness {
		addr, restart := testutil.Redis(t)
		return queuetest.Harness{
			Open:    func(t *testing.T) pipeline.Queue { return openQueue(t, addr) },
			Restart: func(*testing.T) { restart() },
		}
	})
}

// openQueue returns a queue on the Redis at addr, with its own client
// closed at cleanup.
func openQueue(t *testing.T, addr string) *redisstream.Queue {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := redisstream.Open(ctx, rdb, redisstream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func source(t *testing.T, q *redisstream.Queue, group string, cfg pipeline.SourceConfig) pipeline.Source {
	t.Helper()
	src, err := q.Source(context.Background(), group, cfg)
	if err != nil {
		t.Fatalf("Source(%s): %v", group, err)
	}
	return src
}

func enqueue(t *testing.T, q *redisstream.Queue, ids ...string) {
	t.Helper()
	evs := make([]pipeline.Event, len(ids))
	for i, id := range ids {
		evs[i] = pipeline.Event{ID: id, Type: "test", Data: json.RawMessage(`{"thread":"t"}`)}
	}
	if err := q.Enqueue(context.Background(), evs); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
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

// fetchOne waits until src hands out a job and returns it.
func fetchOne(t *testing.T, src pipeline.Source) pipeline.Job {
	t.Helper()
	var j pipeline.Job
	testutil.Eventually(t, 10*time.Second, func() error {
		jobs := fetch(t, src, 1, 50*time.Millisecond)
		if len(jobs) == 0 {
			return errors.New("no job")
		}
		j = jobs[0]
		return nil
	})
	return j
}

func stats(t *testing.T, q *redisstream.Queue, group string) pipeline.QueueStats {
	t.Helper()
	st, err := q.Stats(context.Background(), group)
	if err != nil {
		t.Fatalf("Stats(%s): %v", group, err)
	}
	return st
}

func TestRetryRedeliversAfterDelay(t *testing.T) {
	addr, _ := testutil.Redis(t)
	q := openQueue(t, addr)
	src := source(t, q, "g", pipeline.SourceConfig{AckWait: 5 * time.Second})
	enqueue(t, q, "e1")

	j := fetchOne(t, src)
	if j.Event().ID != "e1" || j.Attempt() != 1 || j.OrderKey() != `"t"` {
		t.Fatalf("job %+v attempt %d order key %q", j.Event(), j.Attempt(), j.OrderKey())
	}
	if st := stats(t, q, "g"); st.Pending != 0 || st.InFlight != 1 || st.Redelivered != 0 {
		t.Fatalf("stats after the first delivery %+v", st)
	}
	start := time.Now()
	if err := j.Retry(300 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if jobs := fetch(t, src, 1, 0); len(jobs) != 0 {
		t.Fatalf("redelivered at once: %v", jobs[0].Event())
	}
	j = fetchOne(t, src)
	if waited := time.Since(start); waited < 250*time.Millisecond || waited > 4*time.Second {
		t.Fatalf("redelivered after %v, want about 300ms", waited)
	}
	if j.Event().ID != "e1" || j.Attempt() != 2 {
		t.Fatalf("redelivery %+v attempt %d", j.Event(), j.Attempt())
	}
	if st := stats(t, q, "g"); st.InFlight != 1 || st.Redelivered != 1 {
		t.Fatalf("stats after the redelivery %+v", st)
	}
	if err := j.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, q, "g"); st != (pipeline.QueueStats{}) {
		t.Fatalf("stats after the ack %+v", st)
	}
}

func TestExtendKeepsTheClaim(t *testing.T) {
	addr, _ := testutil.Redis(t)
	q1, q2 := openQueue(t, addr), openQueue(t, addr) // two processes
	cfg := pipeline.SourceConfig{AckWait: 300 * time.Millisecond}
	src1, src2 := source(t, q1, "g", cfg), source(t, q2, "g", cfg)
	enqueue(t, q1, "e1")

	j := fetchOne(t, src1)
	for range 6 {
		time.Sleep(100 * time.Millisecond)
		if err := j.Extend(); err != nil {
			t.Fatal(err)
		}
		if jobs := fetch(t, src2, 1, 0); len(jobs) != 0 {
			t.Fatalf("an extended job was given to another consumer (attempt %d)", jobs[0].Attempt())
		}
	}
	// The first consumer stops extending (it died): the other one gets it.
	j2 := fetchOne(t, src2)
	if j2.Event().ID != "e1" || j2.Attempt() != 2 {
		t.Fatalf("reclaimed %+v attempt %d", j2.Event(), j2.Attempt())
	}
	if err := j2.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestReplayReachesOnlyItsGroup(t *testing.T) {
	addr, _ := testutil.Redis(t)
	q := openQueue(t, addr)
	a := source(t, q, "a", pipeline.SourceConfig{})
	b := source(t, q, "b", pipeline.SourceConfig{})
	enqueue(t, q, "e1")

	ja, jb := fetchOne(t, a), fetchOne(t, b)
	if err := ja.DeadLetter(context.Background(), errors.New("boom"), 3); err != nil {
		t.Fatal(err)
	}
	if err := jb.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	dl := q.DeadLetters("a")
	list, err := dl.List(context.Background(), 10)
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if d := list[0]; d.Event.ID != "e1" || d.Error != "boom" || d.Attempts != 3 || d.Group != "a" ||
		time.Since(d.At) > time.Minute || string(d.Event.Data) != `{"thread":"t"}` {
		t.Fatalf("dead letter %+v", d)
	}
	if st := stats(t, q, "a"); st != (pipeline.QueueStats{Dead: 1}) {
		t.Fatalf("stats of a %+v", st)
	}
	if n, err := q.DeadLetters("b").Replay(context.Background(), list[0].Seq); n != 0 || !errors.Is(err, pipeline.ErrNoDeadLetter) {
		t.Fatalf("replaying a's dead letter as b's = %d, %v", n, err)
	}
	if n, err := dl.Replay(context.Background()); n != 1 || err != nil {
		t.Fatalf("Replay() = %d, %v", n, err)
	}

	j := fetchOne(t, a)
	if j.Event().ID != "e1" || j.Attempt() != 1 || j.OrderKey() != `"t"` {
		t.Fatalf("replayed %+v attempt %d order key %q", j.Event(), j.Attempt(), j.OrderKey())
	}
	if err := j.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if jobs := fetch(t, b, 1, 200*time.Millisecond); len(jobs) != 0 {
		t.Fatalf("group b got %v", jobs[0].Event())
	}
	if st := stats(t, q, "a"); st != (pipeline.QueueStats{}) {
		t.Fatalf("stats of a after the replay %+v", st)
	}
	if err := dl.Drop(context.Background(), list[0].Seq); !errors.Is(err, pipeline.ErrNoDeadLetter) {
		t.Fatalf("dropping a replayed dead letter: %v", err)
	}
}

func TestMaxInFlight(t *testing.T) {
	addr, _ := testutil.Redis(t)
	q := openQueue(t, addr)
	src := source(t, q, "g", pipeline.SourceConfig{MaxInFlight: 2})
	enqueue(t, q, "e1", "e2", "e3")

	jobs := fetch(t, src, 10, time.Second)
	if len(jobs) != 2 {
		t.Fatalf("fetched %d jobs, want 2", len(jobs))
	}
	if more := fetch(t, src, 10, 50*time.Millisecond); len(more) != 0 {
		t.Fatalf("fetched %d jobs past MaxInFlight", len(more))
	}
	if err := jobs[0].Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if more := fetch(t, src, 10, time.Second); len(more) != 1 || more[0].Event().ID != "e3" {
		t.Fatalf("after an ack fetched %d jobs, want e3", len(more))
	}
}

func TestDoneStoreSurvivesRestart(t *testing.T) {
	addr, restart := testutil.Redis(t)
	q := openQueue(t, addr)
	ctx := context.Background()
	if done, err := q.Done(ctx, "p:e1"); done || err != nil {
		t.Fatalf("Done before MarkDone = %v, %v", done, err)
	}
	for range 2 {
		if err := q.MarkDone(ctx, "p:e1"); err != nil {
			t.Fatal(err)
		}
	}
	restart()
	q = openQueue(t, addr)
	if done, err := q.Done(ctx, "p:e1"); !done || err != nil {
		t.Fatalf("Done after a restart = %v, %v", done, err)
	}
}

func TestClosedQueueFetchesNothing(t *testing.T) {
	addr, _ := testutil.Redis(t)
	q := openQueue(t, addr)
	src := source(t, q, "g", pipeline.SourceConfig{})
	enqueue(t, q, "e1")
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if jobs, err := src.Fetch(context.Background(), 1, 0); len(jobs) != 0 || !errors.Is(err, redisstream.ErrClosed) {
		t.Fatalf("Fetch after Close = %d jobs, %v", len(jobs), err)
	}
}

func TestSourceRejectsBadNames(t *testing.T) {
	addr, _ := testutil.Redis(t)
	q := openQueue(t, addr)
	for _, name := range []string{"", "a:b", "a b", fmt.Sprintf("%065d", 0)} {
		if _, err := q.Source(context.Background(), name, pipeline.SourceConfig{}); err == nil {
			t.Errorf("Source(%q) succeeded", name)
		}
	}
}

func TestStatsCountPending(t *testing.T) {
	addr, _ := testutil.Redis(t)
	q := openQueue(t, addr)
	early := source(t, q, "early", pipeline.SourceConfig{})
	enqueue(t, q, "e1", "e2", "e3")
	source(t, q, "late", pipeline.SourceConfig{}) // created on a non-empty stream
	for _, g := range []string{"early", "late"} {
		if st := stats(t, q, g); st != (pipeline.QueueStats{Pending: 3}) {
			t.Fatalf("stats of %s %+v", g, st)
		}
	}
	if jobs := fetch(t, early, 2, time.Second); len(jobs) != 2 {
		t.Fatalf("fetched %d jobs, want 2", len(jobs))
	}
	if st := stats(t, q, "early"); st != (pipeline.QueueStats{Pending: 1, InFlight: 2}) {
		t.Fatalf("stats of early after a fetch %+v", st)
	}
	if _, err := q.Stats(context.Background(), "nobody"); err == nil {
		t.Fatal("Stats of a group that does not exist succeeded")
	}

	// After a deletion inside the stream Redis cannot tell the lag: Stats
	// counts the entries.
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	msgs, err := rdb.XRange(context.Background(), "herald:events", "-", "+").Result()
	if err != nil || len(msgs) != 3 {
		t.Fatalf("XRANGE = %d entries, %v", len(msgs), err)
	}
	if err := rdb.XDel(context.Background(), "herald:events", msgs[1].ID).Err(); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, q, "late"); st != (pipeline.QueueStats{Pending: 2}) {
		t.Fatalf("stats of late after a deletion %+v", st)
	}
}
