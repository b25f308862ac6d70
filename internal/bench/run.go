package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Parent tuning.
const (
	startDelay     = 50 * time.Millisecond // between the start message and the first publish
	resultWait     = 30 * time.Second      // for every worker's result after finish
	stopWait       = 10 * time.Second      // for workers to exit after their stdin closed
	runMargin      = 30 * time.Second      // added to the hard time limit
	progressPeriod = time.Second
)

// runner is the parent side of a run. It is used by one goroutine (run's);
// the reader goroutines only send on events.
type runner struct {
	cfg     *Config
	stderr  io.Writer
	began   time.Time
	workers []*workerState
	events  chan workerEvent
	quit    chan struct{} // closed by stop: readers discard from then on
	readers sync.WaitGroup
	pub     *publisher // nil in idle mode

	phase         string
	lastPrint     time.Time
	lastDelivered uint64
}

// workerState is what the parent knows of one worker.
type workerState struct {
	id     int
	h      workerHandle
	in     *lineWriter
	cfg    workerConfig
	last   *workerStats // latest progress or ready
	ready  bool
	result *workerStats
	exited bool
}

// workerEvent is one line from a worker, or its end (msg nil).
type workerEvent struct {
	id  int
	msg *workerMsg
	err error // why the stream ended, when msg is nil
}

// hardLimit bounds a whole run.
func (c *Config) hardLimit() time.Duration {
	return c.ConnectWithin + c.Warmup + c.Duration + c.Drain + publishTimeout + resultWait + runMargin
}

// run carries out one bench run and returns its report. The report is
// non-nil (partial) with an error too when the run got past connecting.
func run(ctx context.Context, cfg *Config, stderr io.Writer) (*Report, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.hardLimit())
	defer cancel()
	r := &runner{cfg: cfg, stderr: stderr, began: time.Now(), events: make(chan workerEvent, 64), quit: make(chan struct{})}
	rep := newReport(cfg)

	// A bad pid stops the run before it starts; a server that goes away
	// during the run only costs the server figures.
	var idle, connected, startSample, end serverSample
	var serverErr error
	sample := func(s *serverSample) {
		if len(cfg.ServerPIDs) > 0 && serverErr == nil {
			*s, serverErr = sampleServer(cfg.ServerPIDs)
		}
	}
	if sample(&idle); serverErr != nil {
		return nil, serverErr
	}

	err := r.startWorkers(ctx)
	defer r.stop()
	if err != nil {
		return nil, err
	}
	r.phase = "connect"
	if err := r.await(ctx, time.Now().Add(cfg.ConnectWithin), r.allReady); err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	sample(&connected)
	startSample = connected
	parentStart := processCPU()

	start := time.Now().Add(startDelay)
	from := start.Add(cfg.Warmup)
	to := from.Add(cfg.Duration)
	if cfg.Rate == 0 {
		from = to // idle mode: nothing to time
	}
	info := &startInfo{StartNS: start.UnixNano(), MeasureFromNS: from.UnixNano(), MeasureToNS: to.UnixNano()}
	if err := r.broadcast(parentMsg{Type: msgStart, Start: info}); err != nil {
		return nil, err
	}

	var published []channelPublished
	if cfg.Rate > 0 {
		r.pub = newPublisher(cfg)
		pubDone := make(chan struct{})
		pubCtx, stopPub := context.WithCancel(ctx)
		go func() {
			defer close(pubDone)
			r.pub.run(pubCtx, start, to)
		}()
		r.phase = "run"
		err := r.await(ctx, to, nil)
		if err == nil {
			err = r.await(ctx, to.Add(publishTimeout+time.Second), func() bool { return isClosed(pubDone) })
		}
		stopPub()
		<-pubDone
		if err != nil {
			return nil, fmt.Errorf("publishing: %w", err)
		}
		r.phase = "drain"
		if err := r.await(ctx, time.Now().Add(cfg.Drain), nil); err != nil {
			return nil, fmt.Errorf("draining: %w", err)
		}
		published = r.pub.published()
	} else {
		r.phase = "hold"
		if err := r.await(ctx, to, nil); err != nil {
			return nil, fmt.Errorf("holding: %w", err)
		}
	}
	runEnd := time.Now()
	sample(&end)
	parentEnd := processCPU()

	r.phase = "finish"
	if err := r.broadcast(parentMsg{Type: msgFinish, Published: published}); err != nil {
		return nil, err
	}
	if err := r.await(ctx, time.Now().Add(resultWait), r.allResults); err != nil {
		return nil, fmt.Errorf("collecting results: %w", err)
	}

	rep.fill(r, start, runEnd)
	rep.fillClient(r, parentStart, parentEnd)
	switch {
	case serverErr != nil:
		rep.Errors = append(rep.Errors, fmt.Sprintf("%v (no server figures)", serverErr))
	case len(cfg.ServerPIDs) > 0:
		rep.fillServer(cfg.ServerPIDs, idle, connected, startSample, end)
	}
	rep.judge()
	return rep, nil
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// startWorkers starts the workers, gives each its share of subscribers
// (a contiguous block of the global numbering) and starts its reader.
func (r *runner) startWorkers(ctx context.Context) error {
	n := min(r.cfg.Workers, r.cfg.Subscribers)
	deadline := time.Now().Add(r.cfg.hardLimit() + workerExitGrace)
	for i := range n {
		first := i * r.cfg.Subscribers / n
		count := (i+1)*r.cfg.Subscribers/n - first
		h, err := startWorker(ctx, r.cfg.InProcess, r.stderr)
		if err != nil {
			return fmt.Errorf("starting worker %d: %w", i, err)
		}
		ws := &workerState{id: i, h: h, in: &lineWriter{w: h.In()}, cfg: workerConfig{
			ID:          i,
			Run:         *r.cfg,
			First:       first,
			Count:       count,
			ConnectRate: r.cfg.ConnectRate * float64(count) / float64(r.cfg.Subscribers),
			DeadlineNS:  deadline.UnixNano(),
		}}
		r.workers = append(r.workers, ws)
		r.readers.Add(1)
		go r.read(ws)
		if err := ws.in.send(parentMsg{Type: msgConfig, Config: &ws.cfg}); err != nil {
			return fmt.Errorf("configuring worker %d: %w", i, err)
		}
	}
	return nil
}

// read forwards one worker's lines as events until its stdout ends. After
// stop it keeps reading (so the worker never blocks writing) and discards.
func (r *runner) read(ws *workerState) {
	defer r.readers.Done()
	forward := func(ev workerEvent) {
		select {
		case r.events <- ev:
		case <-r.quit:
		}
	}
	sc := newLineScanner(ws.h.Out())
	for sc.Scan() {
		var m workerMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			forward(workerEvent{id: ws.id, err: fmt.Errorf("bad line from worker: %v", err)})
			continue
		}
		forward(workerEvent{id: ws.id, msg: &m})
	}
	err := sc.Err()
	if err == nil {
		err = io.EOF
	}
	forward(workerEvent{id: ws.id, err: err})
}

// stop closes every worker's stdin, waits for them (killing stragglers)
// and for the readers. It is idempotent.
func (r *runner) stop() {
	select {
	case <-r.quit:
		return
	default:
	}
	close(r.quit)
	for _, ws := range r.workers {
		_ = ws.h.In().Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopWait)
	defer cancel()
	for _, ws := range r.workers {
		_ = ws.h.Wait(ctx)
	}
	r.readers.Wait()
}

func (r *runner) broadcast(m parentMsg) error {
	for _, ws := range r.workers {
		if err := ws.in.send(m); err != nil {
			return fmt.Errorf("worker %d: %w", ws.id, err)
		}
	}
	return nil
}

func (r *runner) allReady() bool {
	for _, ws := range r.workers {
		if !ws.ready {
			return false
		}
	}
	return true
}

func (r *runner) allResults() bool {
	for _, ws := range r.workers {
		if ws.result == nil {
			return false
		}
	}
	return true
}

// errDeadline is returned by await when done did not hold in time.
var errDeadline = errors.New("timed out")

// await handles worker events and prints progress until done holds (nil
// done: until deadline, which is then no error). A worker error or exit
// before its result is an error.
func (r *runner) await(ctx context.Context, deadline time.Time, done func() bool) error {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	tick := time.NewTicker(progressPeriod)
	defer tick.Stop()
	for {
		if done != nil && done() {
			return nil
		}
		select {
		case ev := <-r.events:
			if err := r.handle(ev); err != nil {
				return err
			}
		case <-tick.C:
			r.progress()
		case <-timer.C:
			if done == nil {
				return nil
			}
			return errDeadline
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *runner) handle(ev workerEvent) error {
	ws := r.workers[ev.id]
	if ev.msg == nil {
		if ev.err != nil && !errors.Is(ev.err, io.EOF) {
			return fmt.Errorf("worker %d: %w", ev.id, ev.err)
		}
		ws.exited = true
		if ws.result == nil {
			return fmt.Errorf("worker %d exited before reporting its result", ev.id)
		}
		return nil
	}
	switch ev.msg.Type {
	case msgProgress:
		ws.last = ev.msg.Stats
	case msgReady:
		ws.last = ev.msg.Stats
		ws.ready = true
	case msgResult:
		ws.last = ev.msg.Stats
		ws.result = ev.msg.Stats
	case msgError:
		return fmt.Errorf("worker %d: %s", ev.id, ev.msg.Error)
	}
	return nil
}

// totals sums the workers' latest figures.
func (r *runner) totals() (t workerStats, lat *Histogram) {
	lat = new(Histogram)
	for _, ws := range r.workers {
		s := ws.last
		if s == nil {
			continue
		}
		t.Attempted += s.Attempted
		t.Connected += s.Connected
		t.ConnectFailed += s.ConnectFailed
		t.Disconnected += s.Disconnected
		t.Delivered += s.Delivered
		t.Measured += s.Measured
		lat.Merge(s.Latency)
	}
	return t, lat
}

// progress prints one line on stderr.
func (r *runner) progress() {
	if !r.cfg.Progress {
		return
	}
	now := time.Now()
	t, lat := r.totals()
	line := fmt.Sprintf("bench %6.1fs %-7s %d/%d connected", now.Sub(r.began).Seconds(), r.phase, t.Connected, r.cfg.Subscribers)
	if t.ConnectFailed > 0 {
		line += fmt.Sprintf(", %d failed", t.ConnectFailed)
	}
	if t.Disconnected > 0 {
		line += fmt.Sprintf(", %d disconnected", t.Disconnected)
	}
	if r.pub != nil {
		rate := 0.0
		if !r.lastPrint.IsZero() {
			rate = float64(t.Delivered-r.lastDelivered) / now.Sub(r.lastPrint).Seconds()
		}
		line += fmt.Sprintf("  %.0f delivered/s  p99 %s  published %d", rate, fmtNanos(lat.Quantile(0.99)), r.pub.ok.Load())
		if f := r.pub.failed.Load(); f > 0 {
			line += fmt.Sprintf(" (%d failed)", f)
		}
		if b := r.pub.behind.Load(); b > 0 {
			line += fmt.Sprintf(" (%d behind)", b)
		}
	}
	r.lastPrint, r.lastDelivered = now, t.Delivered
	fmt.Fprintln(r.stderr, line)
}
