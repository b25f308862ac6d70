package engine

import (
	"sync"
	"time"
)

// Wheel geometry: every connection is checked once per period, spread over
// wheelSlots ticks; lingering connections are checked at every tick.
const (
	wheelSlots   = 64
	minWheelTick = 5 * time.Millisecond
)

// wheel is the engine's one timer for every connection: a hashed wheel of
// slots, each holding the connections whose timers it checks (heartbeat
// due, write stalled too long, client silent too long). A tick visits one
// slot, so each connection is visited once per period and a tick's cost
// is the slot's size, not the number of connections.
type wheel struct {
	e      *Engine
	tick   time.Duration
	slots  []wheelSlot
	done   chan struct{}
	stopMu sync.Once

	lmu       sync.Mutex
	lingering []*Conn // guarded by lmu
}

type wheelSlot struct {
	mu    sync.Mutex
	conns []*Conn // guarded by mu; each conn's slotIdx is its index here
}

// newWheel sizes the wheel so that its period is a quarter of the
// shortest timeout it enforces: heartbeats go out every 1 to 1.25
// intervals, which leaves a WebSocket client most of an interval to answer
// a ping before its read timeout (two intervals).
func newWheel(e *Engine) *wheel {
	period := min(e.cfg.Heartbeat, e.cfg.WriteTimeout) / 4
	tick := max(period/wheelSlots, minWheelTick)
	n := max(int(period/tick), 1)
	return &wheel{e: e, tick: tick, slots: make([]wheelSlot, n), done: make(chan struct{})}
}

func (w *wheel) slot(c *Conn) *wheelSlot { return &w.slots[c.id%uint64(len(w.slots))] }

func (w *wheel) add(c *Conn) {
	s := w.slot(c)
	s.mu.Lock()
	c.slotIdx = len(s.conns)
	s.conns = append(s.conns, c)
	s.mu.Unlock()
}

// remove takes c off the wheel; it is idempotent.
func (w *wheel) remove(c *Conn) {
	s := w.slot(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	i := c.slotIdx
	if i < 0 || i >= len(s.conns) || s.conns[i] != c {
		return
	}
	last := len(s.conns) - 1
	s.conns[i] = s.conns[last]
	s.conns[i].slotIdx = i
	s.conns[last] = nil
	s.conns = s.conns[:last]
	c.slotIdx = -1
	if cap(s.conns) > 64 && len(s.conns) < cap(s.conns)/4 {
		s.conns = append([]*Conn(nil), s.conns...)
	}
}

// all returns every connection on the wheel.
func (w *wheel) all() []*Conn {
	var out []*Conn
	for i := range w.slots {
		s := &w.slots[i]
		s.mu.Lock()
		out = append(out, s.conns...)
		s.mu.Unlock()
	}
	return out
}

// linger has c checked at every tick until it is closed.
func (w *wheel) linger(c *Conn) {
	w.lmu.Lock()
	w.lingering = append(w.lingering, c)
	w.lmu.Unlock()
}

func (w *wheel) stop() { w.stopMu.Do(func() { close(w.done) }) }

// run ticks until stop. Connections are checked without the slot's lock
// held (check takes the connection's lock, and closing a connection takes
// the slot's).
func (w *wheel) run() {
	t := time.NewTicker(w.tick)
	defer t.Stop()
	var visit []*Conn
	next := 0
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
		}
		now := w.e.tick()

		s := &w.slots[next]
		next = (next + 1) % len(w.slots)
		s.mu.Lock()
		visit = append(visit[:0], s.conns...)
		s.mu.Unlock()
		for _, c := range visit {
			c.check(now)
		}

		// Lingering connections: checked every tick, and dropped from the
		// list once closed. linger only appends, so what was added since
		// the snapshot is the list's tail.
		w.lmu.Lock()
		visit = append(visit[:0], w.lingering...)
		w.lmu.Unlock()
		if len(visit) > 0 {
			seen := len(visit)
			kept := visit[:0]
			for _, c := range visit {
				if c.check(now); c.lingering() {
					kept = append(kept, c)
				}
			}
			w.lmu.Lock()
			kept = append(kept, w.lingering[seen:]...)
			clear(w.lingering)
			w.lingering = append(w.lingering[:0], kept...)
			w.lmu.Unlock()
		}
		clear(visit)
		if cap(visit) > 4096 {
			visit = nil
		}
	}
}
