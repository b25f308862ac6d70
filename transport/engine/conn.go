package engine

import (
	"context"
	"net"
	"sync"
	"sync/atomic"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/transport"
)

// Connection states, in order. A connection only moves forward.
const (
	stateOpen    uint8 = iota // streaming
	stateClosing              // the session ended; its goodbye is being written
	stateLinger               // everything is written and the write side shut; waiting for the client's EOF
)

// Limits on what a connection buffers besides its session queue.
const (
	maxControlBytes = 4 << 10 // Control refuses beyond this
	maxOps          = 16      // Go refuses beyond this
	keepItems       = 256     // item slices larger than this are not kept by a writer
)

// Conn is one connection run by the engine. Protocols use its methods from
// Input and from work given to Go.
type Conn struct {
	e              *Engine
	proto          Protocol
	sess           *hub.Session
	id             uint64
	readTimeout    int64 // nanoseconds; 0 means none
	heartbeatEvery int64 // nanoseconds

	sched     atomic.Bool  // queued for (or being handed to) a writer; true until Attach
	lastRead  atomic.Int64 // exact engine clock of the last Touch
	lastWrite atomic.Int64 // engine clock of the last write

	// Guarded by the wheel slot's mu.
	slotIdx int

	mu        sync.Mutex
	fd        int32  // poller mode: the socket, -1 when dead or in goroutine mode; guarded by mu
	gen       uint32 // poller mode: tells a reused fd's events apart; set before the fd is registered
	dead      bool   // the socket is closed; guarded by mu
	state     uint8  // guarded by mu
	outArmed  bool   // poller mode: waiting for writability; guarded by mu
	heartbeat bool   // a heartbeat is due; guarded by mu
	gmode     bool   // goroutine mode; set before the connection can be woken, then fixed
	// since is the engine clock when pending became non-empty (open and
	// closing) or when the connection began to linger; guarded by mu.
	since    int64
	lastBeat int64  // exact engine clock of the last heartbeat; guarded by mu
	pending  []byte // bytes a write left behind; guarded by mu
	ctrl     []byte // protocol bytes to write before the next items; guarded by mu
	x        *connExtra
}

// connExtra holds what few connections need, so that an idle connection
// does not carry it: the goroutine mode's socket, and Go's queue.
type connExtra struct {
	nc        net.Conn      // goroutine mode: the socket
	wakeCh    chan struct{} // goroutine mode: the writer's wake-up
	ops       []func(context.Context)
	opRunning bool // guarded by Conn.mu
}

// extra returns c.x, allocating it. c.mu is held.
func (c *Conn) extra() *connExtra {
	if c.x == nil {
		c.x = new(connExtra)
	}
	return c.x
}

// goroutineMode reports whether c runs on goroutines of its own. The
// answer is fixed before the connection can be woken.
func (c *Conn) goroutineMode() bool { return c.gmode }

// Wake tells the connection that its session has something to write. It
// never blocks and never takes a hub lock: it is the session's Wake.
func (c *Conn) Wake() {
	if !c.sched.CompareAndSwap(false, true) {
		return
	}
	if c.goroutineMode() {
		select {
		case c.x.wakeCh <- struct{}{}:
		default:
		}
		return
	}
	c.e.workers[c.id%uint64(len(c.e.workers))].push(c)
}

// Session returns the connection's hub session.
func (c *Conn) Session() *hub.Session { return c.sess }

// Touch records that the client is alive, resetting the read timeout.
func (c *Conn) Touch() { c.lastRead.Store(c.e.exactNow()) }

// Close ends the connection's session for reason d: the protocol's
// AppendClose is written, then the socket is closed. It does not block.
func (c *Conn) Close(d hub.Disconnect) { c.sess.Close(d) }

// Control queues protocol bytes (a WebSocket pong) to be written ahead of
// the session's next items. It reports false, dropping p, when the
// connection is closing or already holds maxControlBytes of them (a client
// that asks for answers faster than it reads them).
func (c *Conn) Control(p []byte) bool {
	c.mu.Lock()
	if c.dead || c.state != stateOpen || len(c.ctrl)+len(p) > maxControlBytes {
		c.mu.Unlock()
		return false
	}
	c.ctrl = append(c.ctrl, p...)
	c.mu.Unlock()
	c.Wake()
	return true
}

// Go runs fn, one at a time and in order for this connection, on a
// goroutine that exists only while the connection has such work. fn gets
// a context that ends when the engine shuts down. Go reports false,
// without running fn, when the connection is closed or already has
// maxOps functions waiting.
func (c *Conn) Go(fn func(context.Context)) bool {
	c.mu.Lock()
	x := c.extra()
	if c.dead || c.state != stateOpen || len(x.ops) >= maxOps {
		c.mu.Unlock()
		return false
	}
	x.ops = append(x.ops, fn)
	start := !x.opRunning
	x.opRunning = true
	c.mu.Unlock()
	if start && !c.e.goTracked(c.runOps) {
		c.mu.Lock()
		x.ops, x.opRunning = nil, false
		c.mu.Unlock()
		return false
	}
	return true
}

func (c *Conn) runOps() {
	for {
		c.mu.Lock()
		x := c.x
		if len(x.ops) == 0 || c.dead {
			x.ops, x.opRunning = nil, false
			c.mu.Unlock()
			return
		}
		fn := x.ops[0]
		x.ops[0] = nil
		x.ops = x.ops[1:]
		c.mu.Unlock()
		fn(c.e.ctx)
	}
}

// scratch is a writer's reusable memory: a worker's in poller mode, a
// connection writer's in goroutine mode.
type scratch struct {
	batch transport.Batch
	items []hub.Item
	segs  [][]byte
	io    ioScratch
}

func (s *scratch) reset() {
	clear(s.items)
	if cap(s.items) > keepItems {
		s.items = nil
	}
	s.items = s.items[:0]
	clear(s.segs)
	s.segs = s.segs[:0]
	s.batch.Reset()
}

// flush writes what the connection has to write: bytes a previous write
// left, then its control bytes and every queued item in one batch (with
// the protocol's goodbye when the session has ended, or a heartbeat when
// one is due and nothing else goes out). In poller mode writes never block
// and run under c.mu; in goroutine mode they block, outside c.mu.
func (c *Conn) flush(s *scratch) {
	c.sched.Store(false) // a wake-up from now on schedules another flush
	defer s.reset()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead || c.state == stateLinger {
		return
	}
	if len(c.pending) > 0 {
		if err := c.writePendingLocked(); err != nil {
			c.killLocked(hub.DisconnectWriteError)
			return
		}
		if len(c.pending) > 0 {
			return // still blocked: the poller wakes us when writable
		}
	}
	if c.state == stateClosing {
		c.lingerLocked()
		return
	}

	b := &s.batch
	b.Buf = append(b.Buf, c.ctrl...)
	c.ctrl = nil // rare (the opening, pongs): not worth keeping while idle
	s.items = c.sess.Drain(s.items)
	delivered := 0
	for i := range s.items {
		if s.items[i].Kind == hub.ItemMessage {
			delivered++
		}
		c.proto.AppendItem(b, &s.items[i])
	}
	if d, closed := c.sess.Closed(); closed {
		b.Buf = c.proto.AppendClose(b.Buf, d)
		c.state = stateClosing
	} else if c.heartbeat && (b.Len() == 0 || c.readTimeout > 0) {
		// With a read timeout the heartbeat is what the client answers
		// (a WebSocket ping), so it goes out even among other bytes.
		b.Buf = c.proto.AppendHeartbeat(b.Buf)
		c.lastBeat = c.e.exactNow()
		c.e.heartbeats.Add(1)
	}
	c.heartbeat = false
	if b.Len() > 0 {
		s.segs = b.Segments(s.segs)
		var err error
		if c.goroutineMode() {
			err = c.writeBlocking(s.segs)
		} else {
			err = c.writeLocked(s)
		}
		if err != nil {
			c.killLocked(hub.DisconnectWriteError)
			return
		}
		if c.dead { // goroutine mode: killed while c.mu was released
			return
		}
		c.e.writes.Add(1)
		c.lastWrite.Store(c.e.now())
	}
	c.sess.Delivered(delivered)
	if c.state == stateClosing && len(c.pending) == 0 {
		c.lingerLocked()
	}
}

// writeBlocking writes segs in goroutine mode: c.mu is released for the
// write, so that the wheel and the reader are never stuck behind a client
// that does not read; the write is bounded by Config.WriteTimeout.
func (c *Conn) writeBlocking(segs [][]byte) error {
	nc := c.x.nc
	c.mu.Unlock()
	defer c.mu.Lock()
	if err := nc.SetWriteDeadline(c.e.wallDeadline(c.e.cfg.WriteTimeout)); err != nil {
		return err
	}
	bufs := net.Buffers(segs)
	_, err := bufs.WriteTo(nc)
	return err
}

// kill closes the connection at once: the session ends with reason d
// (unless it ended already) and the socket is closed.
func (c *Conn) kill(d hub.Disconnect) {
	c.mu.Lock()
	c.killLocked(d)
	c.mu.Unlock()
}

func (c *Conn) killLocked(d hub.Disconnect) {
	if c.dead {
		return
	}
	c.dead = true
	c.sess.Close(d) // no-op when the session already ended: the first reason wins
	if c.goroutineMode() {
		c.x.nc.Close()
		select { // the writer ends on its next wake-up
		case c.x.wakeCh <- struct{}{}:
		default:
		}
	} else {
		c.e.poller.detachLocked(c)
	}
	if len(c.pending) > 0 {
		c.e.blocked.Add(-1)
	}
	c.pending, c.ctrl = nil, nil
	if c.x != nil {
		c.x.ops = nil
	}
	c.e.wheel.remove(c)
	c.e.forget(c)
}

// lingerLocked shuts the write side once everything is written: the
// client reads the end of the stream, then closes its side, and the poller
// (or reader) closes the socket on that EOF; the wheel closes it after
// Config.CloseGrace otherwise. Closing at once could reset the connection
// while the last bytes are in flight, if the client sent anything unread.
func (c *Conn) lingerLocked() {
	c.state = stateLinger
	c.since = c.e.now()
	var err error
	if c.goroutineMode() {
		if cw, ok := c.x.nc.(interface{ CloseWrite() error }); ok {
			err = cw.CloseWrite()
		} else {
			c.killLocked(hub.DisconnectNormal)
			return
		}
	} else {
		err = shutdownWrite(int(c.fd))
	}
	if err != nil {
		c.killLocked(hub.DisconnectNormal)
		return
	}
	c.e.wheel.linger(c)
}

// input hands bytes the client sent to the protocol while the connection
// is open; afterwards input is discarded.
func (c *Conn) input(p []byte) {
	c.mu.Lock()
	open := !c.dead && c.state == stateOpen
	c.mu.Unlock()
	if open {
		c.proto.Input(c, p)
	}
}

// check runs the connection's timers; the wheel calls it about every
// wheel period, and every tick while the connection lingers.
func (c *Conn) check(now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return
	}
	cfg := &c.e.cfg
	switch {
	case c.state == stateLinger:
		if now-c.since >= int64(cfg.CloseGrace) {
			c.killLocked(hub.DisconnectNormal)
		}
	case len(c.pending) > 0 && now-c.since >= int64(cfg.WriteTimeout):
		c.killLocked(hub.DisconnectWriteError)
	case c.state != stateOpen:
	case c.silent(now) && !c.inputWaitingLocked():
		// Bytes waiting in the socket are the client's answer, not yet
		// read by a poller that fell behind: not a reason to close it.
		c.sess.Close(hub.DisconnectTimeout) // wakes the writer, which says goodbye
	case now-c.lastWrite.Load() >= c.heartbeatEvery,
		c.readTimeout > 0 && now-c.lastBeat >= c.heartbeatEvery:
		c.heartbeat = true
		c.Wake()
	}
}

// silent reports whether the client has run out of time to answer: it
// has said nothing for the read timeout, nor since the last heartbeat,
// which went out at least the read timeout less a heartbeat ago. c.mu is
// held.
func (c *Conn) silent(now int64) bool {
	if c.readTimeout <= 0 {
		return false
	}
	last := c.lastRead.Load()
	return now-last >= c.readTimeout && last < c.lastBeat &&
		now-c.lastBeat >= c.readTimeout-c.heartbeatEvery
}

// lingering reports whether the wheel should keep checking c every tick.
func (c *Conn) lingering() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.dead && c.state == stateLinger
}
