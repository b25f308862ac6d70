// Package engine runs subscriber connections after their HTTP handshake
// without a goroutine per connection.
//
// A transport's handler does the handshake with net/http, opens the hub
// session, hijacks the connection and gives it to the engine with Attach.
// From then on the engine owns the socket:
//
//   - a poller goroutine waits for input on every connection at once
//     (epoll on Linux) and hands the bytes to the connection's Protocol;
//   - the session's Wake puts the connection on one of a few workers'
//     queues; the worker drains the session, encodes the items into one
//     Batch (per-connection bytes plus the messages' shared wire bytes)
//     and writes it with one non-blocking vectored write. Only a socket
//     that would block keeps its unsent bytes, until the poller reports it
//     writable;
//   - one timer wheel goroutine sends heartbeats and enforces the write,
//     read and close timeouts of every connection.
//
// An idle connection is a socket, a Conn and its hub session: no
// goroutine, no buffer. A Protocol that must do blocking work for a client
// (a WebSocket subscribe reading history) runs it with Conn.Go, on a
// goroutine that exists only while there is such work.
//
// Where the operating system offers no epoll the engine runs each
// connection on goroutines of its own instead, with the same Protocol and
// the same behaviour (see Config.Goroutines).
package engine

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/transport"
)

// Config configures an Engine. The zero value works.
type Config struct {
	// Heartbeat is how long a connection may stay silent before the
	// protocol's heartbeat is written: a silent connection hears from the
	// server at least every Heartbeat plus a wheel period (Heartbeat/2 at
	// most). Zero means 25s.
	Heartbeat time.Duration
	// WriteTimeout is how long a connection's unsent bytes may wait for the
	// client to read them before the connection is closed as broken.
	// Zero means 10s.
	WriteTimeout time.Duration
	// CloseGrace is how long a connection whose last bytes are written
	// waits for the client to close its side before the socket is closed.
	// Zero means 1s.
	CloseGrace time.Duration
	// Workers is the number of writer goroutines. Zero means GOMAXPROCS.
	Workers int
	// Goroutines runs every connection on goroutines of its own (a reader
	// and a writer) instead of the poller and workers. It is forced where
	// epoll is not available and meant for comparison and debugging
	// elsewhere.
	Goroutines bool
	// Logger receives the engine's logs. Nil means slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Heartbeat <= 0 {
		c.Heartbeat = 25 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.CloseGrace <= 0 {
		c.CloseGrace = time.Second
	}
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if !pollerSupported {
		c.Goroutines = true
	}
	return c
}

// Protocol is a transport's part of a connection: it encodes what the
// session queues (transport.Encoder, called by the writer under the
// connection's lock, one call at a time) and reads what the client sends.
type Protocol interface {
	transport.Encoder
	// Input is given the bytes the client sent, in order and in pieces of
	// any size, on the engine's reader. It must not block: work that may
	// block goes to Conn.Go. p is valid only during the call.
	Input(c *Conn, p []byte)
}

// ErrClosed is returned by Attach once Shutdown has begun.
var ErrClosed = errors.New("engine: shut down")

// errKilled is attachGoroutines' way to say that it closed the connection
// itself.
var errKilled = errors.New("engine: connection closed while attaching")

// Stats are an engine's counters.
type Stats struct {
	// Connections is the number of connections the engine holds.
	Connections int64
	// Blocked is the number of connections with unsent bytes waiting for
	// the client to read. Only epoll mode counts them: in goroutine mode a
	// write simply blocks its connection's writer.
	Blocked int64
	// Writes counts vectored writes; Heartbeats the heartbeats written.
	Writes     uint64
	Heartbeats uint64
}

// Engine runs attached connections. It is safe for concurrent use.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	poller  *poller // nil in goroutine mode
	workers []*worker
	wheel   *wheel

	conns      atomic.Int64
	blocked    atomic.Int64
	writes     atomic.Uint64
	heartbeats atomic.Uint64
	nextID     atomic.Uint64
	clock      atomic.Int64 // coarse monotonic nanoseconds, advanced by the wheel

	ctx    context.Context // ended by Shutdown; Conn.Go work runs under it
	cancel context.CancelFunc
	start  time.Time

	mu      sync.Mutex
	closing bool           // guarded by mu; Attach and Go refuse once set
	wg      sync.WaitGroup // every goroutine the engine starts; Add under mu with !closing, or before New returns
	live    int            // attached connections not yet dead; guarded by mu
	idle    chan struct{}  // closed when closing and live is 0; guarded by mu
}

// New starts an engine: its poller, workers and timer wheel.
func New(cfg Config) (*Engine, error) {
	cfg = cfg.withDefaults()
	e := &Engine{cfg: cfg, log: cfg.Logger, start: time.Now(), idle: make(chan struct{})}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if !cfg.Goroutines {
		p, err := newPoller(e)
		if err != nil {
			return nil, err
		}
		e.poller = p
		e.workers = make([]*worker, cfg.Workers)
		for i := range e.workers {
			e.workers[i] = newWorker(e)
		}
	}
	e.wheel = newWheel(e)
	if e.poller != nil {
		e.wg.Add(1)
		go func() { defer e.wg.Done(); e.poller.run() }()
		for _, w := range e.workers {
			e.wg.Add(1)
			go func() { defer e.wg.Done(); w.run() }()
		}
	}
	e.wg.Add(1)
	go func() { defer e.wg.Done(); e.wheel.run() }()
	return e, nil
}

// now returns the engine's coarse clock: nanoseconds since New, advanced
// by the wheel at every tick and by writers.
func (e *Engine) now() int64 { return e.clock.Load() }

// exactNow returns the engine clock's exact reading, without advancing
// the coarse clock. It is for the rare stamps a timeout is decided on: a
// coarse stamp taken while the wheel was late would be older than the
// event it records.
func (e *Engine) exactNow() int64 { return int64(time.Since(e.start)) }

// tick advances the coarse clock and returns it.
func (e *Engine) tick() int64 {
	t := e.exactNow()
	e.clock.Store(t)
	return t
}

// wallDeadline returns the wall-clock time d from now, for net.Conn
// deadlines.
func (e *Engine) wallDeadline(d time.Duration) time.Time { return time.Now().Add(d) }

// Closing reports whether Shutdown has begun: Attach would fail.
func (e *Engine) Closing() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closing
}

// Mode returns "epoll" or "goroutines".
func (e *Engine) Mode() string {
	if e.poller != nil {
		return "epoll"
	}
	return "goroutines"
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	return Stats{
		Connections: e.conns.Load(),
		Blocked:     e.blocked.Load(),
		Writes:      e.writes.Load(),
		Heartbeats:  e.heartbeats.Load(),
	}
}

// ConnOptions describe a connection.
type ConnOptions struct {
	// Heartbeat, when positive, replaces Config.Heartbeat for this
	// connection. The wheel checks connections about every
	// min(Config.Heartbeat, Config.WriteTimeout)/4, so a shorter one is
	// honoured only to that precision.
	Heartbeat time.Duration
	// ReadTimeout, when positive, closes the connection with
	// hub.DisconnectTimeout when the protocol has not called Conn.Touch for
	// that long and not since the last heartbeat, sent at least
	// ReadTimeout-Heartbeat ago. The heartbeat is then what the client
	// must answer (a WebSocket ping), so it is sent every Heartbeat even on
	// a busy connection. Counting from the heartbeat means a server that
	// fell behind (a late wheel sends a late heartbeat) does not blame the
	// client for it.
	ReadTimeout time.Duration
}

// NewConn returns a connection for proto, not yet attached. Its Wake is
// the session's Wake: open the session with it, then Attach. Wake-ups
// before Attach are remembered.
func (e *Engine) NewConn(proto Protocol, opts ConnOptions) *Conn {
	c := &Conn{e: e, proto: proto, fd: -1, slotIdx: -1, id: e.nextID.Add(1),
		readTimeout: int64(opts.ReadTimeout), heartbeatEvery: int64(e.cfg.Heartbeat)}
	if opts.Heartbeat > 0 {
		c.heartbeatEvery = int64(opts.Heartbeat)
	}
	c.sched.Store(true) // nothing runs before Attach
	return c
}

// Attach takes over nc, a connection hijacked from net/http whose session
// is sess (opened with c.Wake). It writes head (the HTTP response head)
// and the protocol's opening, then whatever the session queues; buffered
// is input the client sent after its request that net/http had already
// read. Attach keeps head and appends to it: the caller must not use it
// again. On error nothing is written, and sess and nc are closed.
func (e *Engine) Attach(c *Conn, sess *hub.Session, nc net.Conn, head, buffered []byte) error {
	c.sess = sess
	if pc, ok := nc.(*prefixConn); ok {
		// A connection the engine handed to net/http (Listen): what net/http
		// has not read of the replayed bytes follows what it had buffered.
		buffered = append(buffered, pc.prefix...)
		nc = pc.Conn
	}
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		sess.Close(hub.DisconnectShutdown)
		nc.Close()
		return ErrClosed
	}
	e.live++
	e.conns.Add(1)
	e.mu.Unlock()

	now := e.now()
	c.lastRead.Store(now)
	c.lastWrite.Store(now)
	c.lastBeat = now
	if c.ctrl == nil {
		c.ctrl = head // the caller's (transport.Hijack's) to give: no copy
	} else {
		c.ctrl = append(c.ctrl, head...)
	}
	c.ctrl = c.proto.AppendOpen(c.ctrl)
	// Input net/http had already read goes to the protocol before the
	// reader starts, so that it comes first and never concurrently with
	// what the reader reads. The wheel knows c before any reader can close
	// it, so that closing always takes it off the wheel.
	if len(buffered) > 0 {
		c.proto.Input(c, buffered)
	}
	e.wheel.add(c)
	var err error
	if rc, ok := nc.(*rawConn); ok && e.poller != nil { // accepted by an engine (Listen): the socket as it is
		err = e.poller.attachFD(c, rc.take())
	} else if rc, ok := nc.(*rawConn); ok { // accepted by an engine, run by one in goroutine mode
		var gc net.Conn
		if gc, err = rc.netConn(); err == nil {
			nc = gc
			err = attachGoroutines(c, nc)
		}
	} else if _, ok := nc.(syscall.Conn); ok && e.poller != nil {
		err = e.poller.attach(c, nc)
	} else { // no descriptor to poll (a wrapped connection): goroutine mode
		err = attachGoroutines(c, nc)
	}
	if errors.Is(err, errKilled) {
		return ErrClosed // c is closed and forgotten already
	}
	if err != nil {
		e.wheel.remove(c)
		e.forget(c)
		sess.Close(hub.DisconnectWriteError)
		nc.Close()
		return err
	}
	if e.Closing() { // Shutdown may have missed c
		sess.Close(hub.DisconnectShutdown)
	}
	if c.goroutineMode() {
		c.sched.Store(false)
		c.Wake()
		return nil
	}
	// The first write (the response head, the opening, any replay) goes
	// out from here rather than from a worker: one goroutine hand-off less
	// per connection, which is most of the cost of a reconnection storm.
	s := scratchPool.Get().(*scratch)
	c.flush(s) // clears sched: later wake-ups go to the workers
	scratchPool.Put(s)
	return nil
}

// scratchPool holds the scratch of writes made outside the workers.
var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// forget removes a dead connection from the engine's books.
func (e *Engine) forget(c *Conn) {
	e.mu.Lock()
	e.live--
	e.conns.Add(-1)
	if e.closing && e.live == 0 {
		select {
		case <-e.idle:
		default:
			close(e.idle)
		}
	}
	e.mu.Unlock()
}

// goTracked runs fn on a new goroutine that Shutdown waits for, unless
// Shutdown has begun.
func (e *Engine) goTracked(fn func()) bool {
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		return false
	}
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		fn()
	}()
	return true
}

// Shutdown refuses new connections and closes every connection's session
// with hub.DisconnectShutdown (the hub's Shutdown normally has done so
// already), so that each writes its protocol's goodbye; it waits for the
// connections to end, then stops the engine's goroutines. When ctx ends
// first it closes the remaining sockets at once and returns ctx.Err(). It
// is idempotent.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	first := !e.closing
	e.closing = true
	if e.live == 0 {
		select {
		case <-e.idle:
		default:
			close(e.idle)
		}
	}
	e.mu.Unlock()
	if first {
		e.cancel()
	}
	// A connection attaching now sees closing after it joins the wheel
	// and closes its own session.
	conns := e.wheel.all()
	for _, c := range conns {
		c.sess.Close(hub.DisconnectShutdown)
	}
	var err error
	select {
	case <-e.idle:
	case <-ctx.Done():
		err = ctx.Err()
		for _, c := range conns {
			c.kill(hub.DisconnectShutdown)
		}
	}
	if first {
		e.wheel.stop()
		if e.poller != nil {
			e.poller.stop()
			for _, w := range e.workers {
				w.stop()
			}
		}
		e.wg.Wait()
		if e.poller != nil {
			e.poller.close()
		}
	}
	return err
}
