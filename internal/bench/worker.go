package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Worker tuning.
const (
	handshakeTimeout  = 15 * time.Second // dial + HTTP response or WebSocket upgrade
	maxHandshakes     = 512              // connection attempts in flight per worker
	progressEvery     = 500 * time.Millisecond
	maxErrorSamples   = 8
	configWait        = 30 * time.Second // a worker gives up when no config arrives
	maxFrameBytes     = 1 << 20
	workerExitGrace   = 10 * time.Second // worker deadline beyond the parent's
	fileLimitHeadroom = 256              // descriptors besides connections
)

// worker holds one worker's subscribers and counters. Its counters are
// atomics written by the connection goroutines and read by the progress
// reporter; the trackers in subs are each owned by one connection
// goroutine until conns.Wait returns.
type worker struct {
	cfg    workerConfig
	run    *Config
	out    *lineWriter
	stderr io.Writer
	subs   []subscriber

	// The goroutine reader's clients; the epoll reader is poller.
	sseClients []*http.Client      // by source address
	wsDialers  []*websocket.Dialer // by source address
	poller     poller              // nil: a goroutine per connection

	slots        chan struct{}  // connection attempts in flight (maxHandshakes)
	conns        sync.WaitGroup // connection goroutines (or event loops) and the dial loop
	allAttempted chan struct{}  // closed when every subscriber connected or failed
	attemptsDone atomic.Int64

	attempted, connected, connectFailed, disconnected atomic.Int64
	firstDial, lastConnect                            atomic.Int64
	delivered, measured                               atomic.Uint64
	misrouted, gaps, other                            atomic.Uint64
	measureFrom, measureTo                            atomic.Int64
	latency, handshake                                Histogram

	errMu sync.Mutex
	errs  []string // guarded by errMu; the first maxErrorSamples problems

	// This process's CPU time, seconds, when the config came, when every
	// subscriber was connected, at start and at finish; set and read by
	// the main goroutine.
	cpuBegin, cpuReady, cpuStart, cpuFinish float64
}

// poller is the epoll reader (reader_epoll_linux.go): it connects and
// reads the subscribers on a few event loops.
type poller interface {
	// start runs the event loops, as part of conns, until ctx ends.
	start(ctx context.Context)
	// open connects s (asynchronously); the caller holds a slot, which is
	// released when the handshake ended.
	open(s *subscriber, t0 time.Time)
}

// subscriber is one connection listening to one channel.
type subscriber struct {
	channel   int    // index into the run's channels
	name      string // channel name
	src       int    // index into the run's source addresses
	node      int    // index into the run's URLs
	connected bool   // set by its goroutine (or event loop) before conns.Wait returns
	track     seqTracker
}

// runWorker is a worker process's (or in-process worker's) whole life:
// read the config from in, connect, report ready, run, report the result.
// It returns the process exit code.
func runWorker(ctx context.Context, in io.ReadCloser, out, stderr io.Writer) int {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lw := &lineWriter{w: out}
	fail := func(err error) int {
		_ = lw.send(workerMsg{Type: msgError, Error: err.Error()})
		fmt.Fprintf(stderr, "herald bench worker: %v\n", err)
		return 1
	}

	// The stdin reader is the parent's voice; EOF means the parent is gone.
	msgs := make(chan parentMsg)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer cancel()
		sc := newLineScanner(in)
		for sc.Scan() {
			var m parentMsg
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				fmt.Fprintf(stderr, "herald bench worker: bad message from parent: %v\n", err)
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Closing in unblocks the reader if the parent has not closed its end.
	defer func() {
		cancel()
		in.Close()
		select {
		case <-readerDone:
		case <-time.After(time.Second): // a terminal stdin may not unblock; the process is exiting
		}
	}()

	var cfg workerConfig
	select {
	case m := <-msgs:
		if m.Type != msgConfig || m.Config == nil {
			return fail(fmt.Errorf("first message is %q, want config", m.Type))
		}
		cfg = *m.Config
	case <-ctx.Done():
		return 1
	case <-time.After(configWait):
		return fail(errors.New("no config from the parent"))
	}
	ctx, cancelDeadline := context.WithDeadline(ctx, time.Unix(0, cfg.DeadlineNS))
	defer cancelDeadline()

	if limit, err := raiseFileLimit(); err == nil && limit < uint64(cfg.Count+fileLimitHeadroom) {
		return fail(fmt.Errorf("open files limit %d is too low for %d connections; use more --workers", limit, cfg.Count))
	}
	w, err := newWorker(cfg, lw, stderr)
	if err != nil {
		return fail(err)
	}
	return w.main(ctx, msgs)
}

func newWorker(cfg workerConfig, out *lineWriter, stderr io.Writer) (*worker, error) {
	run := &cfg.Run
	w := &worker{cfg: cfg, run: run, out: out, stderr: stderr, allAttempted: make(chan struct{}),
		slots: make(chan struct{}, maxHandshakes), cpuBegin: processCPU()}
	w.measureFrom.Store(-1)
	w.subs = make([]subscriber, cfg.Count)
	for k := range w.subs {
		g := cfg.First + k
		c := g % run.Channels
		w.subs[k] = subscriber{channel: c, name: run.channelName(c), src: g % len(run.SourceIPs), node: run.subscriberNode(g)}
	}
	if run.Reader == "epoll" {
		p, err := newEpollReader(w)
		if err != nil {
			return nil, fmt.Errorf("epoll reader: %w", err)
		}
		w.poller = p
		return w, nil
	}
	for _, ip := range run.SourceIPs {
		d := sourceDialer(ip)
		switch run.Transport {
		case "sse":
			w.sseClients = append(w.sseClients, &http.Client{Transport: &http.Transport{
				Proxy:                 nil,
				DialContext:           d.DialContext,
				MaxConnsPerHost:       0,
				DisableKeepAlives:     true,
				DisableCompression:    true,
				ResponseHeaderTimeout: handshakeTimeout,
				WriteBufferSize:       1024,
				ReadBufferSize:        2048,
			}})
		case "ws":
			w.wsDialers = append(w.wsDialers, &websocket.Dialer{
				NetDialContext:   d.DialContext,
				HandshakeTimeout: handshakeTimeout,
				ReadBufferSize:   2048,
				WriteBufferSize:  512,
			})
		}
	}
	if len(w.sseClients) == 0 && len(w.wsDialers) == 0 {
		return nil, fmt.Errorf("no transport for %q", run.Transport)
	}
	return w, nil
}

// sourceDialer dials from ip. Linux picks the port at connect time
// (IP_BIND_ADDRESS_NO_PORT), so a source address is not limited to one
// connection per ephemeral port across all destinations.
func sourceDialer(ip netip.Addr) *net.Dialer {
	return &net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)),
		Timeout:   handshakeTimeout,
		Control:   bindNoPort,
	}
}

// main runs the worker after its config arrived.
func (w *worker) main(ctx context.Context, msgs <-chan parentMsg) int {
	connCtx, closeConns := context.WithCancel(ctx)
	defer closeConns()

	if w.poller != nil {
		w.poller.start(connCtx)
	}
	w.conns.Add(1)
	go func() {
		defer w.conns.Done()
		w.dialLoop(connCtx)
	}()

	// The progress reporter runs until the result is sent.
	progressCtx, stopProgress := context.WithCancel(ctx)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-progressCtx.Done():
				return
			case <-t.C:
				if w.out.send(workerMsg{Type: msgProgress, Stats: w.stats()}) != nil {
					return
				}
			}
		}
	}()
	stop := func() {
		closeConns()
		w.conns.Wait()
		stopProgress()
		<-progressDone
	}

	if w.cfg.Count == 0 {
		close(w.allAttempted)
	}
	select {
	case <-w.allAttempted:
	case <-ctx.Done():
		stop()
		return 1
	}
	w.cpuReady = processCPU()
	if w.out.send(workerMsg{Type: msgReady, Stats: w.stats()}) != nil {
		stop()
		return 1
	}

	for {
		select {
		case <-ctx.Done():
			stop()
			return 1
		case m := <-msgs:
			switch m.Type {
			case msgStart:
				w.cpuStart = processCPU()
				if m.Start != nil {
					w.measureTo.Store(m.Start.MeasureToNS)
					w.measureFrom.Store(m.Start.MeasureFromNS)
				}
			case msgFinish:
				w.cpuFinish = processCPU()
				stop()
				res := w.result(m.Published)
				if err := w.out.send(workerMsg{Type: msgResult, Stats: res}); err != nil {
					return 1
				}
				return 0
			}
		}
	}
}

// dialLoop starts one goroutine per subscriber (or hands it to the
// poller), paced by the connect rate and bounded by maxHandshakes attempts
// in flight.
func (w *worker) dialLoop(ctx context.Context) {
	sem := w.slots
	start := time.Now()
	w.firstDial.Store(start.UnixNano())
	var pace *time.Timer
	defer func() {
		if pace != nil {
			pace.Stop()
		}
	}()
	for k := range w.subs {
		if w.cfg.ConnectRate > 0 {
			due := start.Add(time.Duration(float64(k) / w.cfg.ConnectRate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				if pace == nil {
					pace = time.NewTimer(d)
				} else {
					pace.Reset(d)
				}
				select {
				case <-pace.C:
				case <-ctx.Done():
				}
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			// Count the rest as failed so that nobody waits for them.
			for range len(w.subs) - k {
				w.connectFailed.Add(1)
				w.attemptDone()
			}
			return
		}
		w.attempted.Add(1)
		if w.poller != nil {
			w.poller.open(&w.subs[k], time.Now())
			continue
		}
		w.conns.Add(1)
		go func(s *subscriber) {
			defer w.conns.Done()
			w.serve(ctx, s, sem)
		}(&w.subs[k])
	}
}

func (w *worker) attemptDone() {
	if w.attemptsDone.Add(1) == int64(len(w.subs)) {
		close(w.allAttempted)
	}
}

// serve connects s, releases its handshake slot, and reads until ctx ends
// or the server closes the connection.
func (w *worker) serve(ctx context.Context, s *subscriber, sem <-chan struct{}) {
	t0 := time.Now()
	var read func() error
	var err error
	switch w.run.Transport {
	case "sse":
		read, err = w.connectSSE(ctx, s)
	default:
		read, err = w.connectWS(ctx, s)
	}
	<-sem
	if err != nil {
		w.connectFailure(err)
		return
	}
	now := time.Now()
	w.handshake.Record(int64(now.Sub(t0)))
	s.connected = true
	w.connected.Add(1)
	storeMax(&w.lastConnect, now.UnixNano())
	w.attemptDone()

	err = read()
	if ctx.Err() == nil {
		w.disconnected.Add(1)
		w.noteError("disconnected: %v", err)
	}
}

// connectFailure counts a subscriber that did not connect.
func (w *worker) connectFailure(err error) {
	w.connectFailed.Add(1)
	w.noteError("connect: %v", err)
	w.attemptDone()
}

func storeMax(a *atomic.Int64, v int64) {
	for {
		cur := a.Load()
		if v <= cur || a.CompareAndSwap(cur, v) {
			return
		}
	}
}

// onData handles one message as received at now: an envelope or a bare
// payload.
func (w *worker) onData(s *subscriber, data []byte, now int64) {
	if ch, ok := envelopeChannel(data); ok && string(ch) != s.name {
		w.misrouted.Add(1)
		return
	}
	seq, ts, ok := parsePayload(data)
	if !ok {
		w.other.Add(1)
		return
	}
	s.track.Observe(seq)
	w.delivered.Add(1)
	if ts >= w.measureFrom.Load() && ts < w.measureTo.Load() {
		w.latency.Record(now - ts)
		w.measured.Add(1)
	}
}

func (w *worker) noteError(format string, a ...any) {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	if len(w.errs) < maxErrorSamples {
		w.errs = append(w.errs, fmt.Sprintf(format, a...))
	}
}

// stats snapshots the counters.
func (w *worker) stats() *workerStats {
	st := &workerStats{
		Attempted:     w.attempted.Load(),
		Connected:     w.connected.Load(),
		ConnectFailed: w.connectFailed.Load(),
		Disconnected:  w.disconnected.Load(),
		FirstDialNS:   w.firstDial.Load(),
		LastConnectNS: w.lastConnect.Load(),
		Delivered:     w.delivered.Load(),
		Measured:      w.measured.Load(),
		Latency:       &w.latency,
		Handshake:     &w.handshake,
		Misrouted:     w.misrouted.Load(),
		Gaps:          w.gaps.Load(),
		Other:         w.other.Load(),
		CPUS:          processCPU(),
	}
	w.errMu.Lock()
	st.Errors = append([]string(nil), w.errs...)
	w.errMu.Unlock()
	return st
}

// result compares every connected subscriber's tracker with what was
// published. The connection goroutines must have ended.
func (w *worker) result(published []channelPublished) *workerStats {
	st := w.stats()
	st.CPUBeginS, st.CPUReadyS, st.CPUStartS, st.CPUFinishS = w.cpuBegin, w.cpuReady, w.cpuStart, w.cpuFinish
	for k := range w.subs {
		s := &w.subs[k]
		if !s.connected {
			continue
		}
		var p channelPublished
		if s.channel < len(published) {
			p = published[s.channel]
		}
		v := s.track.Verdict(p.Max, p.Failed)
		var failedInRange uint64
		for _, f := range p.Failed {
			if f >= 1 && f <= p.Max {
				failedInRange++
			}
		}
		st.Expected += p.Max - failedInRange
		st.Lost += v.Lost
		st.Duplicates += v.Duplicates
		st.OutOfOrder += v.OutOfOrder
		st.Unexpected += v.Unexpected
		st.ReceivedFailed += v.ReceivedFailed
	}
	return st
}
