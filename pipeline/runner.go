package pipeline

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Runner.
type Config struct {
	// Name is the pipeline's name: its consumer group, its metrics label,
	// and the prefix of its idempotency keys.
	Name string
	// Stages run in order for every event.
	Stages []Stage
	// Lanes is the number of events processed at once. Events with the
	// same order key (the thread) always take the same lane, so they are
	// processed in the order they were queued. Zero means 8.
	Lanes int
	// Attempts is how many times an event is tried before it goes to the
	// dead-letter queue. Zero means 5.
	Attempts int
	// Backoff is the wait before the first retry; it doubles with every
	// retry, up to 5s. Zero means 100ms.
	Backoff time.Duration
	// Done, if set, remembers finished events across restarts (see
	// DoneStore). Without it a redelivered event is kept from subscribers
	// only by the hub's idempotency window, which a restart empties.
	Done DoneStore
	// Logger receives dead-lettered events and queue errors. Nil means
	// slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Lanes <= 0 {
		c.Lanes = 8
	}
	if c.Attempts <= 0 {
		c.Attempts = 5
	}
	if c.Backoff <= 0 {
		c.Backoff = 100 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// maxBackoff caps the wait between retries.
const maxBackoff = 5 * time.Second

// Runner runs one pipeline over one source: it claims events, passes each
// through the stages and acknowledges it once the last stage (the
// publish) succeeded. A failing event is retried in its lane with
// backoff, so that the events of its thread behind it keep their order;
// after Attempts, or at once for a permanent error, it goes to the
// dead-letter queue and its lane moves on.
type Runner struct {
	cfg    Config
	src    Source
	stages []stageCounters
	seed   maphash.Seed

	in, acked, retried, dead, dropped, duplicates atomic.Uint64
}

// stageCounters are one stage's figures: every message counts once in In
// and, when the stage returns, once in Out, Failed or Dropped.
type stageCounters struct {
	stage                    Stage
	in, out, failed, dropped atomic.Uint64
	nanos                    atomic.Int64 // total time in Process
}

// NewRunner returns a runner for cfg over src.
func NewRunner(cfg Config, src Source) (*Runner, error) {
	cfg = cfg.withDefaults()
	if cfg.Name == "" {
		return nil, errors.New("pipeline: a pipeline needs a name")
	}
	if len(cfg.Stages) == 0 {
		return nil, fmt.Errorf("pipeline %s: no stages", cfg.Name)
	}
	r := &Runner{cfg: cfg, src: src, seed: maphash.MakeSeed()}
	r.stages = make([]stageCounters, len(cfg.Stages))
	for i, st := range cfg.Stages {
		r.stages[i].stage = st
	}
	return r, nil
}

// Name returns the pipeline's name.
func (r *Runner) Name() string { return r.cfg.Name }

// Run processes events until ctx ends. Then every lane finishes the
// event it is working on (acknowledging it) and gives the events queued
// behind it back to the queue, in order, so that a thread's order holds
// across restarts; Run returns nil once the lanes are done. Queue errors
// are logged and retried; Run does not stop for them.
//
// Dispatch never waits for a lane: a lane keeps the events of its threads
// in a list (bounded, with the source's prefetch, by the queue's
// in-flight limit), so one slow thread holds up only the threads that
// share its lane.
func (r *Runner) Run(ctx context.Context) error {
	if c, ok := r.src.(io.Closer); ok {
		// Last, after the lanes finished: events claimed ahead go back.
		defer c.Close()
	}
	lanes := make([]*lane, r.cfg.Lanes)
	var wg sync.WaitGroup
	// The event in hand finishes after ctx ends, under a context that
	// ends only when Run's caller gives up entirely: stages bound their
	// own calls (HTTP timeout, queue acknowledgement timeout).
	work := context.WithoutCancel(ctx)
	batch := 16 * r.cfg.Lanes
	// Published events are marked done and acknowledged by the finisher,
	// in batches, while their lanes go on with the next event. What is
	// published but not yet marked is published again after a crash (the
	// idempotency keys then keep subscribers from seeing it twice): at
	// most the batch being marked (maxFinishBatch), this channel's events
	// and one per lane, all published within a mark round trip or two.
	finish := make(chan finished, batch)
	finisherDone := make(chan struct{})
	go func() {
		defer close(finisherDone)
		r.runFinisher(work, finish)
	}()
	for i := range lanes {
		lanes[i] = &lane{signal: make(chan struct{}, 1)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.runLane(ctx, work, lanes[i], finish)
		}()
	}
	defer func() {
		for _, l := range lanes {
			l.close()
		}
		wg.Wait()
		close(finish)
		<-finisherDone
	}()

	errWait := 100 * time.Millisecond
	next := 0
	var batchCheckOff time.Time // batch checks failed: each lane checks its own until then
	for ctx.Err() == nil {
		jobs, err := r.src.Fetch(ctx, batch, time.Second)
		if err != nil {
			if ctx.Err() != nil {
				for _, j := range jobs {
					_ = j.Retry(0)
				}
				return nil
			}
			r.cfg.Logger.Warn("pipeline: fetching events failed; retrying", "pipeline", r.cfg.Name, "err", err)
			select {
			case <-time.After(errWait):
			case <-ctx.Done():
				return nil
			}
			errWait = min(2*errWait, maxBackoff)
			continue
		}
		errWait = 100 * time.Millisecond
		done := r.checkDone(ctx, jobs, &batchCheckOff)
		for n, j := range jobs {
			r.in.Add(1)
			i := next
			if k := j.OrderKey(); k != "" {
				i = int(maphash.String(r.seed, k) % uint64(len(lanes)))
			} else {
				next = (next + 1) % len(lanes)
			}
			lj := laneJob{j: j}
			if done != nil {
				lj.checked, lj.done = true, done[n]
			}
			lanes[i].push(lj)
		}
	}
	return nil
}

// lane is the list of events one lane goroutine works through, in order.
type lane struct {
	signal chan struct{} // capacity 1: the list went non-empty, or closed

	mu     sync.Mutex
	jobs   []laneJob // guarded by mu
	closed bool      // guarded by mu
}

// laneJob is a claimed event and what the DoneStore said of it when its
// batch was claimed.
type laneJob struct {
	j       Job
	checked bool // the batch was checked (BatchDoneStore.DoneMany)
	done    bool // and the event was marked done
}

func (l *lane) push(j laneJob) {
	l.mu.Lock()
	l.jobs = append(l.jobs, j)
	l.mu.Unlock()
	select {
	case l.signal <- struct{}{}:
	default:
	}
}

func (l *lane) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	select {
	case l.signal <- struct{}{}:
	default:
	}
}

// pop returns the next job, or false once the lane is closed and empty.
func (l *lane) pop() (laneJob, bool) {
	for {
		l.mu.Lock()
		if len(l.jobs) > 0 {
			j := l.jobs[0]
			l.jobs[0] = laneJob{}
			l.jobs = l.jobs[1:]
			if len(l.jobs) == 0 {
				l.jobs = nil // let the backing array go
			}
			l.mu.Unlock()
			return j, true
		}
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return laneJob{}, false
		}
		<-l.signal
	}
}

// runLane processes the lane's events until it is closed. Once ctx has
// ended (or one of its events went back to the queue), every event after
// goes back too, in order, unprocessed.
func (r *Runner) runLane(ctx, work context.Context, l *lane, finish chan<- finished) {
	givingBack := false
	for {
		lj, ok := l.pop()
		if !ok {
			return
		}
		if givingBack || ctx.Err() != nil {
			givingBack = true
			_ = lj.j.Retry(0)
			continue
		}
		if !r.process(ctx, work, lj, finish) {
			givingBack = true
		}
	}
}

// process runs one event through the stages, retrying in place, and ends
// its job. The stages and the acknowledgement run under work; a retry's
// wait ends with ctx, when the job goes back to the queue and process
// reports false.
func (r *Runner) process(ctx, work context.Context, lj laneJob, finish chan<- finished) bool {
	j := lj.j
	ev := j.Event()
	key := r.doneKey(ev)
	if r.cfg.Done != nil {
		// Checked on every delivery, not only those counted as
		// redeliveries: after a crash the queue's delivery counts may be
		// older than what was done, and the same event id may come back as
		// a new message (a client resending it, a replayed dead letter).
		done := lj.done
		if !lj.checked || j.Attempt() > 1 {
			// A redelivery may be of an event this pipeline finished
			// since its batch was checked (one that waited in a lane past
			// the queue's claim time), its mark still with the finisher:
			// once what the finisher holds is marked, ask.
			if j.Attempt() > 1 {
				r.waitFinished(finish)
			}
			d, err := r.cfg.Done.Done(work, key)
			done = err == nil && d
		}
		if done {
			r.duplicates.Add(1)
			if err := j.Ack(work); err == nil {
				r.acked.Add(1)
			}
			return true
		}
	}
	backoff := r.cfg.Backoff
	for attempt := j.Attempt(); ; attempt++ {
		err := r.runStages(work, ev)
		switch {
		case err == nil || errors.Is(err, ErrDrop):
			if errors.Is(err, ErrDrop) {
				r.dropped.Add(1)
			}
			finish <- finished{j: j, key: key}
			return true
		case IsPermanent(err) || attempt >= r.cfg.Attempts:
			r.deadLetter(work, j, err, attempt)
			return true
		}
		r.retried.Add(1)
		_ = j.Extend() // the wait below must not let the claim lapse
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			_ = j.Retry(0)
			return false
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// doneKey is the DoneStore key of ev in this pipeline.
func (r *Runner) doneKey(ev Event) string { return r.cfg.Name + ":" + ev.ID }

// doneTimeout bounds asking a DoneStore about a claimed batch, doubled
// each time the store is too slow, up to maxDoneTimeout; batchCheckPause
// is how long batches go unchecked (each lane asks about its own event)
// after the store failed or stayed too slow. The waits together stay well
// inside a claim (the queues' default is 30s).
const (
	doneTimeout     = 2 * time.Second
	maxDoneTimeout  = 8 * time.Second
	batchCheckPause = 30 * time.Second
)

// checkDone asks a BatchDoneStore about every event of a claimed batch
// at once. It returns nil when the DoneStore is not one, did not answer,
// or failed less than batchCheckPause ago (*off): each lane then asks
// about its own event. A store too slow to answer (a server behind with
// its work, under more events than it can take) is asked about the batch
// again with a longer deadline: one request per event instead would add
// to what keeps it behind.
func (r *Runner) checkDone(ctx context.Context, jobs []Job, off *time.Time) []bool {
	bd, ok := r.cfg.Done.(BatchDoneStore)
	if !ok || len(jobs) == 0 || time.Now().Before(*off) {
		return nil
	}
	keys := make([]string, len(jobs))
	for i, j := range jobs {
		keys[i] = r.doneKey(j.Event())
	}
	for timeout := doneTimeout; ; timeout *= 2 {
		lctx, cancel := context.WithTimeout(ctx, timeout)
		done, err := bd.DoneMany(lctx, keys)
		slow := errors.Is(lctx.Err(), context.DeadlineExceeded) // whatever error the store made of it
		cancel()
		if err == nil && len(done) == len(keys) {
			return done
		}
		if ctx.Err() != nil {
			return nil
		}
		if slow && timeout < maxDoneTimeout {
			r.cfg.Logger.Warn("pipeline: checking a batch of events is slow; asking again",
				"pipeline", r.cfg.Name, "events", len(keys), "waited", timeout)
			continue
		}
		*off = time.Now().Add(batchCheckPause)
		r.cfg.Logger.Warn("pipeline: checking a batch of events failed; checking each event for a while",
			"pipeline", r.cfg.Name, "events", len(keys), "pause", batchCheckPause, "err", err)
		return nil
	}
}

// finished is an event its lane is done with: published (or dropped by a
// stage), to be marked done and acknowledged. One without a job is a
// barrier: the finisher closes flushed once everything before it is done.
type finished struct {
	j       Job
	key     string
	flushed chan struct{}
}

// waitFinished returns once the finisher has marked and acknowledged
// every event sent to it before.
func (r *Runner) waitFinished(finish chan<- finished) {
	flushed := make(chan struct{})
	finish <- finished{flushed: flushed}
	<-flushed
}

// maxFinishBatch bounds the events the finisher marks at once.
const maxFinishBatch = 256

// runFinisher marks done and acknowledges the events lanes finished, in
// order, as many at once as have piled up, until finish is closed.
// Acknowledging in the order of finish keeps, for each lane, the order
// its published events were published in (events a lane skips or
// dead-letters it acknowledges itself; none of the queues depends on
// the order of acknowledgements across events).
func (r *Runner) runFinisher(ctx context.Context, finish <-chan finished) {
	batch := make([]finished, 0, maxFinishBatch)
	keys := make([]string, 0, maxFinishBatch)
	for f := range finish {
		batch = append(batch[:0], f)
	more:
		for len(batch) < maxFinishBatch {
			select {
			case f, ok := <-finish:
				if !ok {
					break more
				}
				batch = append(batch, f)
			default:
				break more
			}
		}
		r.finishBatch(ctx, batch, keys[:0])
		for _, f := range batch {
			if f.flushed != nil {
				close(f.flushed)
			}
		}
	}
}

// finishBatch marks batch done, then acknowledges each event: the mark
// comes first, so that an event delivered again after a crash between
// the two is not published again. A failed mark is logged; the event is
// acknowledged all the same (its idempotency key still holds within the
// hub's window).
func (r *Runner) finishBatch(ctx context.Context, batch []finished, keys []string) {
	switch d := r.cfg.Done.(type) {
	case nil:
	case BatchDoneStore:
		for _, f := range batch {
			if f.j != nil {
				keys = append(keys, f.key)
			}
		}
		if len(keys) == 0 {
			break
		}
		if err := d.MarkDoneMany(ctx, keys); err != nil {
			r.cfg.Logger.Warn("pipeline: recording finished events failed", "pipeline", r.cfg.Name, "events", len(keys), "err", err)
		}
	default:
		for _, f := range batch {
			if f.j == nil {
				continue
			}
			if err := d.MarkDone(ctx, f.key); err != nil {
				r.cfg.Logger.Warn("pipeline: recording a finished event failed", "pipeline", r.cfg.Name, "event", f.j.Event().ID, "err", err)
			}
		}
	}
	for _, f := range batch {
		if f.j == nil {
			continue
		}
		if err := f.j.Ack(ctx); err != nil {
			// The queue delivers it again; the DoneStore and the
			// idempotency key keep subscribers from seeing it twice.
			r.cfg.Logger.Warn("pipeline: acknowledging an event failed", "pipeline", r.cfg.Name, "event", f.j.Event().ID, "err", err)
			continue
		}
		r.acked.Add(1)
	}
}

func (r *Runner) deadLetter(ctx context.Context, j Job, reason error, attempts int) {
	ev := j.Event()
	r.cfg.Logger.Warn("pipeline: event dead-lettered", "pipeline", r.cfg.Name, "event", ev.ID,
		"type", ev.Type, "attempts", attempts, "err", reason)
	if err := j.DeadLetter(ctx, reason, attempts); err != nil {
		r.cfg.Logger.Error("pipeline: dead-lettering an event failed; it will be delivered again",
			"pipeline", r.cfg.Name, "event", ev.ID, "err", err)
		_ = j.Retry(r.cfg.Backoff)
		return
	}
	r.dead.Add(1)
}

// runStages passes a fresh Message for ev through every stage.
func (r *Runner) runStages(ctx context.Context, ev Event) error {
	m := &Message{Event: ev, Type: ev.Type, Key: r.doneKey(ev)}
	for i := range r.stages {
		sc := &r.stages[i]
		sc.in.Add(1)
		start := time.Now()
		err := sc.stage.Process(ctx, m)
		sc.nanos.Add(int64(time.Since(start)))
		switch {
		case err == nil:
			sc.out.Add(1)
		case errors.Is(err, ErrDrop):
			sc.dropped.Add(1)
			return err
		default:
			sc.failed.Add(1)
			return fmt.Errorf("%s: %w", sc.stage.Name(), err)
		}
	}
	return nil
}

// Stats are a pipeline's figures since it started.
type Stats struct {
	Pipeline     string       `json:"pipeline"`
	In           uint64       `json:"in"`            // events claimed
	Acked        uint64       `json:"acked"`         // events done (published or dropped)
	Dropped      uint64       `json:"dropped"`       // of Acked, filtered out by a stage
	Retried      uint64       `json:"retried"`       // retries
	Duplicates   uint64       `json:"duplicates"`    // of Acked, redeliveries of events already finished
	DeadLettered uint64       `json:"dead_lettered"` // events given up on
	Stages       []StageStats `json:"stages"`
	Queue        *QueueStats  `json:"queue,omitempty"`
}

// StageStats are one stage's figures. In = Out + Failed + Dropped +
// the messages in the stage right now: anything else is a lost message.
type StageStats struct {
	Stage          string  `json:"stage"`
	In             uint64  `json:"in"`
	Out            uint64  `json:"out"`
	Failed         uint64  `json:"failed"`
	Dropped        uint64  `json:"dropped"`
	SecondsTotal   float64 `json:"seconds_total"`
	MeanLatencySec float64 `json:"mean_latency_seconds"`
}

// Stats returns the runner's counters.
func (r *Runner) Stats() Stats {
	s := Stats{
		Pipeline: r.cfg.Name, In: r.in.Load(), Acked: r.acked.Load(), Dropped: r.dropped.Load(),
		Retried: r.retried.Load(), DeadLettered: r.dead.Load(), Duplicates: r.duplicates.Load(),
	}
	for i := range r.stages {
		sc := &r.stages[i]
		st := StageStats{Stage: sc.stage.Name(), In: sc.in.Load(), Out: sc.out.Load(),
			Failed: sc.failed.Load(), Dropped: sc.dropped.Load(),
			SecondsTotal: time.Duration(sc.nanos.Load()).Seconds()}
		if st.In > 0 {
			st.MeanLatencySec = st.SecondsTotal / float64(st.In)
		}
		s.Stages = append(s.Stages, st)
	}
	return s
}
