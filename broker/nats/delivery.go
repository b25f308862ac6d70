package nats

import (
	"fmt"
	"sync"

	natsgo "github.com/nats-io/nats.go"

	"github.com/heraldhq/herald/broker"
)

// Delivery with a fixed number of goroutines, whatever the number of
// subscribed channels:
//
//	read loop ─► intake ─► router ─► lane of the channel ─► run queue ─► worker ─► handler
//
//   - Every channel is one nats.go ChanSubscribe into the broker's one
//     intake channel (Config.IntakeMessages). nats.go's read loop pushes
//     each message into it, in the order the server sent them, without
//     blocking: when intake is full it drops the message and reports a
//     slow consumer (onAsyncError). The router only sorts messages, so
//     intake fills only when the router gets too little CPU.
//   - The router, one goroutine, moves each message from intake to its
//     channel's lane, a FIFO bounded by Config.PendingMessages and
//     Config.PendingBytes (the slow-consumer policy, per channel as with
//     nats.go's pending limits), and puts the lane on the run queue if it
//     is not on it or being drained already. It never blocks, so that one
//     slow channel does not fill intake for the others.
//   - Config.Workers workers take lanes from the run queue and call the
//     handler for up to drainBatch of a lane's messages before putting it
//     back at the end of the queue. A lane is on the run queue or with a
//     worker at most once ("scheduled"), so a channel's handler calls
//     keep the order of its lane and never overlap, and a handler call
//     that blocks holds up its channel and one worker only.
//
// A lane outlives its subscription until its last handler call has
// returned: a channel subscribed again meanwhile waits for it (Subscribe),
// and a lane is removed only when nothing refers to it any more.

// drainBatch is how many messages of one lane a worker hands to the
// handler before it lets the lanes waiting behind it go first.
const drainBatch = 64

// lane is one channel's delivery state. It lives in Broker.lanes, under the
// channel's subject, from the first Subscribe until the channel is
// unsubscribed, its last handler call has returned and no Subscribe call
// holds it.
type lane struct {
	channel string // the channel's name
	subject string // Subject(prefix, channel)

	mu sync.Mutex
	// sub is the channel's subscription, nil while not subscribed. Only
	// messages of sub are queued: a message of a previous subscription
	// (still in intake when it was unsubscribed) is dropped. Guarded by mu.
	sub *natsgo.Subscription
	// subscribing is set while a Subscribe call creates sub. Guarded by mu.
	subscribing bool
	// q holds the messages received and not yet handed to the handler,
	// bytes the size of their payloads. Guarded by mu.
	q     fifo[*natsgo.Msg]
	bytes int
	// scheduled is set while the lane is on the run queue or with a
	// worker; while it is clear, q is empty. Guarded by mu.
	scheduled bool
	// idle, if not nil, is closed when scheduled is next cleared: a
	// Subscribe waits on it for the last handler call of the previous
	// subscription. Guarded by mu.
	idle chan struct{}
	// slow is set from the first message dropped for a full q until the
	// next one queued: one slow-consumer episode. dropped counts the
	// messages dropped so, for the log. Guarded by mu.
	slow    bool
	dropped uint64

	// refs counts the Subscribe calls in progress on the lane, which keep
	// it in Broker.lanes. Guarded by Broker.mu.
	refs int
}

// removable reports whether nothing needs l any more. l.mu and Broker.mu
// must be held.
func (l *lane) removable() bool {
	return l.refs == 0 && l.sub == nil && !l.subscribing && !l.scheduled
}

// route is the router: it moves every message from intake to its lane
// until the broker shuts down.
func (b *Broker) route() {
	for {
		select {
		case nm := <-b.intake:
			b.enqueue(nm)
		case <-b.done:
			return
		}
	}
}

// enqueue queues nm on its channel's lane and schedules the lane, or drops
// nm if its subscription is gone or the lane is full. It never blocks on
// the handler.
func (b *Broker) enqueue(nm *natsgo.Msg) {
	b.mu.RLock()
	l := b.lanes[nm.Subject]
	b.mu.RUnlock()
	if l == nil {
		return // unsubscribed since nats.go received it
	}
	l.mu.Lock()
	if l.sub != nm.Sub {
		l.mu.Unlock()
		return // the subscription it came by is gone
	}
	if l.q.len() >= b.cfg.PendingMessages || l.bytes+len(nm.Data) > b.cfg.PendingBytes {
		l.dropped++
		b.dropped.Add(1)
		episode := !l.slow
		l.slow = true
		dropped := l.dropped
		l.mu.Unlock()
		if episode {
			b.slowConsumers.Add(1)
			b.log.Warn("broker/nats: handler too slow; dropping the channel's newest messages",
				"channel", l.channel, "dropped_so_far", dropped)
		}
		return
	}
	l.slow = false
	l.q.push(nm)
	l.bytes += len(nm.Data)
	schedule := !l.scheduled
	l.scheduled = true
	l.mu.Unlock()
	if schedule {
		b.runq.push(l)
	}
}

// work is a worker: it drains the lanes of the run queue until the broker
// shuts down.
func (b *Broker) work() {
	for {
		l := b.runq.pop()
		if l == nil {
			return
		}
		b.drain(l)
	}
}

// drain hands up to drainBatch of l's messages to the handler, then puts
// l back on the run queue if more are waiting, or clears l.scheduled.
func (b *Broker) drain(l *lane) {
	for range drainBatch {
		l.mu.Lock()
		nm, ok := l.q.pop()
		if ok {
			l.bytes -= len(nm.Data)
		}
		l.mu.Unlock()
		if !ok {
			break
		}
		b.deliver(l.channel, nm)
	}
	l.mu.Lock()
	if l.q.len() > 0 {
		l.mu.Unlock()
		b.runq.push(l) // still scheduled: its turn again after the others
		return
	}
	l.scheduled = false
	if l.idle != nil {
		close(l.idle)
		l.idle = nil
	}
	unsubscribed := l.sub == nil
	l.mu.Unlock()
	if unsubscribed {
		b.removeLane(l)
	}
}

// removeLane removes l from Broker.lanes if nothing needs it any more.
func (b *Broker) removeLane(l *lane) {
	b.mu.Lock()
	l.mu.Lock()
	if l.removable() && b.lanes[l.subject] == l {
		delete(b.lanes, l.subject)
	}
	l.mu.Unlock()
	b.mu.Unlock()
}

// deliver decodes nm and hands it to the handler, or counts and drops it
// if it is not a message of channel. It is called by a worker.
func (b *Broker) deliver(channel string, nm *natsgo.Msg) {
	if b.closed.Load() {
		return
	}
	m, err := broker.Decode(nm.Data)
	if err == nil && m.Channel != channel {
		err = fmt.Errorf("message of channel %q on the subject of %q", m.Channel, channel)
	}
	if err != nil {
		// Log the first and then every 1000th: a misbehaving publisher
		// must not flood the log.
		if n := b.malformed.Add(1); n == 1 || n%1000 == 0 {
			b.log.Warn("broker/nats: dropped a malformed message",
				"subject", nm.Subject, "size", len(nm.Data), "error", err, "malformed_total", n)
		}
		return
	}
	if h := b.handler.Load(); h != nil {
		(*h)(m)
	}
}

// runQueue is the FIFO of scheduled lanes that the workers take from. It is
// unbounded, but holds each lane at most once.
type runQueue struct {
	mu     sync.Mutex
	cond   sync.Cond   // signalled on push and close; L is &mu
	lanes  fifo[*lane] // guarded by mu
	closed bool        // guarded by mu
}

func newRunQueue() *runQueue {
	q := &runQueue{}
	q.cond.L = &q.mu
	return q
}

// push appends l, which the caller has just scheduled.
func (q *runQueue) push(l *lane) {
	q.mu.Lock()
	q.lanes.push(l)
	q.mu.Unlock()
	q.cond.Signal()
}

// pop waits for a lane and removes it, or returns nil once q is closed.
func (q *runQueue) pop() *lane {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed && q.lanes.len() == 0 {
		q.cond.Wait()
	}
	if q.closed {
		return nil
	}
	l, _ := q.lanes.pop()
	return l
}

// close makes every pop return nil, at once.
func (q *runQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.lanes = fifo[*lane]{}
	q.mu.Unlock()
	q.cond.Broadcast()
}

// fifo is a first-in first-out queue on a slice. The zero value is empty.
type fifo[T any] struct {
	buf  []T
	head int // buf[head:] are queued
}

// maxIdleCap is the largest backing array an empty fifo keeps: a lane that
// had a burst gives the memory back once it has caught up.
const maxIdleCap = 16

func (f *fifo[T]) len() int { return len(f.buf) - f.head }

func (f *fifo[T]) push(v T) {
	if f.head > 0 && len(f.buf) == cap(f.buf) && f.head >= len(f.buf)/2 {
		// Reuse the consumed front rather than grow.
		n := copy(f.buf, f.buf[f.head:])
		clear(f.buf[n:])
		f.buf, f.head = f.buf[:n], 0
	}
	f.buf = append(f.buf, v)
}

func (f *fifo[T]) pop() (T, bool) {
	var zero T
	if f.head == len(f.buf) {
		return zero, false
	}
	v := f.buf[f.head]
	f.buf[f.head] = zero
	f.head++
	if f.head == len(f.buf) {
		f.head = 0
		f.buf = f.buf[:0]
		if cap(f.buf) > maxIdleCap {
			f.buf = nil
		}
	}
	return v, true
}

// reset empties f and releases its memory.
func (f *fifo[T]) reset() { *f = fifo[T]{} }
