package hub

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/broker"
)

// This file is the hub's side of a networked broker (NATS, Redis): which
// channels this node asks the broker for, the order of each channel's
// messages as they come back, and the cluster view.
//
// Interest. With a broker.Subscriber, a channel is subscribed at the broker
// when it gets its first subscriber on this node and unsubscribed when the
// last one leaves (by a worker: sessions close on the engine's goroutines,
// which must not wait on the network), so a node receives only the traffic
// its clients want.
//
// Sequencing. The nodes share one history store, which assigns offsets, so
// offsets agree across nodes; but two nodes
// publishing to one channel can reach a third in either order, and a broker
// that lost its connection loses what was published meanwhile. So every
// channel a node receives goes through a small sequencer: messages are
// handed to the local fan-out strictly in offset order; a message that
// arrives ahead of a missing one waits, and after fillDelay the missing
// ones are read from the shared history. What history no longer holds is
// skipped, and sessions tell their clients with the gap signal. After the
// broker reconnects, every channel is checked against history the same way.

const (
	// fillDelay is how long a message that arrived ahead of a missing one
	// waits for it before history is asked. Reordering between nodes is
	// well under a millisecond on one network.
	fillDelay = 20 * time.Millisecond
	// maxPending bounds the messages a channel holds back while waiting;
	// past it, the fill is not waited for.
	maxPending = 1024
	// fillWorkers read missing messages from history, a few at a time.
	fillWorkers = 4
	// fillTimeout bounds one history read of a fill; fillRetry is the
	// pause before another after it failed.
	fillTimeout = 5 * time.Second
	fillRetry   = time.Second
	// fillRetries bounds the fills in a row that may fail before what
	// arrived is handed on, holes and all.
	fillRetries = 10
	// brokerCallTimeout bounds a broker Unsubscribe, and a subscription
	// to the heartbeats.
	brokerCallTimeout = 5 * time.Second
	// nodesChannel carries the nodes' heartbeats. '$' is not valid in
	// channel names, so no client can subscribe to or publish on it.
	nodesChannel = "$nodes"
	// watchInterval is how often the broker's health is checked for a
	// reconnection.
	watchInterval = 250 * time.Millisecond
)

// remoteChan is one channel this node is subscribed to at the broker.
//
// Lock order: the stripe's op lock → remoteChan.mu → index shard →
// Session.mu; remoteStripe.mu and remote.work.mu are leaves. Nothing that
// holds an index shard or a Session.mu takes remoteChan.mu.
type remoteChan struct {
	name  string
	refs  int           // sessions holding it; guarded by the stripe's mu
	ready chan struct{} // closed once subscribed and primed, or failed
	err   error         // why it failed; written before ready is closed

	mu      sync.Mutex // held while fanning out, so that fan-out is in order
	epoch   string     // position handed to the fan-out; guarded by mu
	last    uint64     // guarded by mu
	primed  bool       // epoch and last are known; guarded by mu
	pending []*Message // arrived ahead of a missing message; guarded by mu
	filling bool       // a fill is queued or running; guarded by mu
	again   bool       // another fill was asked for while filling; guarded by mu
	retries int        // fills in a row that failed; guarded by mu
	gone    bool       // unsubscribed; guarded by mu

	// Guarded by remote.work.mu.
	fillQueued  bool
	fillDue     time.Time
	unsubQueued bool
}

type remoteStripe struct {
	op    sync.Mutex   // orders broker Subscribe and Unsubscribe per channel; held across them
	mu    sync.RWMutex // guards chans and their refs; never held across a network call
	chans map[string]*remoteChan
}

// remote holds the channels subscribed at a networked broker.
type remote struct {
	h       *Hub
	sub     broker.Subscriber // nil: the broker delivers every channel
	seed    maphash.Seed
	stripes [64]remoteStripe

	// work is what the fill and unsubscribe workers have to do. Each
	// channel is queued at most once per kind, so the queues are bounded
	// by the number of channels subscribed.
	work struct {
		mu     sync.Mutex
		fills  []*remoteChan
		unsubs []*remoteChan
	}
	fillWake  chan struct{} // capacity 1
	unsubWake chan struct{} // capacity 1

	held, fills, filled, skipped atomic.Uint64 // see SequencerStats
}

func newRemote(h *Hub) *remote {
	r := &remote{h: h, seed: maphash.MakeSeed(), fillWake: make(chan struct{}, 1), unsubWake: make(chan struct{}, 1)}
	r.sub, _ = h.broker.(broker.Subscriber)
	for i := range r.stripes {
		r.stripes[i].chans = make(map[string]*remoteChan)
	}
	return r
}

func (r *remote) stripe(ch string) *remoteStripe {
	return &r.stripes[maphash.String(r.seed, ch)%uint64(len(r.stripes))]
}

// acquire takes a reference on ch for a session about to subscribe. The
// node's first subscriber of ch subscribes at the broker and learns the
// channel's position in history; others wait until that is done. Errors
// wrap ErrUnavailable (or are ErrShuttingDown, or ctx's).
func (r *remote) acquire(ctx context.Context, ch string) error {
	st := r.stripe(ch)
	st.mu.Lock()
	if rc := st.chans[ch]; rc != nil {
		rc.refs++
		st.mu.Unlock()
		select {
		case <-rc.ready:
			return rc.err // on error, rc has left the map: the reference goes with it
		case <-ctx.Done():
			r.release(ch)
			return ctx.Err()
		}
	}
	// Registered before the broker subscription, so that messages that
	// arrive in between are held (not primed yet) rather than dropped.
	rc := &remoteChan{name: ch, refs: 1, ready: make(chan struct{})}
	st.chans[ch] = rc
	st.mu.Unlock()

	// The op lock orders this subscription after an unsubscribe of the
	// channel that a worker may have under way.
	st.op.Lock()
	defer st.op.Unlock()
	err := r.subscribe(ctx, rc)
	if err != nil {
		st.mu.Lock()
		delete(st.chans, ch)
		st.mu.Unlock()
		rc.mu.Lock()
		rc.gone, rc.pending = true, nil
		rc.mu.Unlock()
		switch {
		case errors.Is(err, broker.ErrClosed):
			err = ErrShuttingDown
		case ctx.Err() == nil:
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	rc.err = err
	close(rc.ready)
	return err
}

// subscribe subscribes rc at the broker and primes it with the channel's
// head in history. The stripe's op lock must be held.
func (r *remote) subscribe(ctx context.Context, rc *remoteChan) error {
	if r.sub != nil {
		if err := r.sub.Subscribe(ctx, rc.name); err != nil {
			return err
		}
	}
	head, err := r.h.history.Head(ctx, rc.name, r.h.namespace(rc.name).historyOptions())
	if err != nil {
		if r.sub != nil {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), brokerCallTimeout)
			_ = r.sub.Unsubscribe(uctx, rc.name)
			cancel()
		}
		return err
	}
	rc.mu.Lock()
	rc.epoch, rc.last, rc.primed = head.Epoch, head.Offset, true
	r.advanceLocked(rc)
	rc.mu.Unlock()
	return nil
}

// release drops a session's reference on ch. The last one queues the
// broker unsubscribe for a worker: a session closes on the engine's poller
// or timer goroutine, which must never wait on the network (or on a lock
// held across it).
func (r *remote) release(ch string) {
	st := r.stripe(ch)
	st.mu.Lock()
	rc := st.chans[ch]
	last := rc != nil && rc.refs == 1
	if rc != nil {
		rc.refs--
	}
	st.mu.Unlock()
	if !last {
		return
	}
	r.work.mu.Lock()
	queued := rc.unsubQueued
	if !queued {
		rc.unsubQueued = true
		r.work.unsubs = append(r.work.unsubs, rc)
	}
	r.work.mu.Unlock()
	if !queued {
		wake(r.unsubWake)
	}
}

// unsubscribeLoop is the unsubscribe worker, owned by the hub.
func (r *remote) unsubscribeLoop() {
	for {
		r.work.mu.Lock()
		rc := popLocked(&r.work.unsubs)
		if rc != nil {
			rc.unsubQueued = false
		}
		r.work.mu.Unlock()
		if rc == nil {
			if !r.idle(r.unsubWake) {
				return
			}
			continue
		}
		r.unsubscribe(rc)
	}
}

// unsubscribe drops rc at the broker unless a session took it again.
func (r *remote) unsubscribe(rc *remoteChan) {
	st := r.stripe(rc.name)
	st.op.Lock()
	defer st.op.Unlock()
	st.mu.Lock()
	if rc.refs > 0 || st.chans[rc.name] != rc {
		// Taken again meanwhile (still wanted, still subscribed), or
		// already gone.
		st.mu.Unlock()
		return
	}
	delete(st.chans, rc.name)
	st.mu.Unlock()
	rc.mu.Lock()
	rc.gone, rc.pending = true, nil
	rc.mu.Unlock()
	if r.sub != nil {
		ctx, cancel := context.WithTimeout(context.Background(), brokerCallTimeout)
		defer cancel()
		if err := r.sub.Unsubscribe(ctx, rc.name); err != nil {
			r.h.log.Warn("hub: broker unsubscribe failed", "channel", rc.name, "err", err)
		}
	}
}

// lookup returns the subscribed channel ch, or nil.
func (r *remote) lookup(ch string) *remoteChan {
	st := r.stripe(ch)
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.chans[ch]
}

// all returns every subscribed channel.
func (r *remote) all() []*remoteChan {
	var out []*remoteChan
	for i := range r.stripes {
		st := &r.stripes[i]
		st.mu.RLock()
		for _, rc := range st.chans {
			out = append(out, rc)
		}
		st.mu.RUnlock()
	}
	return out
}

// receive takes a message from the broker. It never blocks on the network.
func (r *remote) receive(m *Message) {
	rc := r.lookup(m.Channel)
	if rc == nil {
		return // unsubscribed meanwhile
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	switch {
	case rc.gone:
	case !rc.primed:
		// The channel's position is being read: hold (bounded).
		if len(rc.pending) < maxPending {
			rc.hold(m)
		}
	case m.Epoch == rc.epoch && m.Offset <= rc.last:
		// Already handed on (a replay of history, or a broker redelivery).
	case m.Epoch == rc.epoch && m.Offset == rc.last+1 && len(rc.pending) == 0:
		rc.last = m.Offset
		r.h.index.fanout(m)
	case m.Epoch != rc.epoch && m.Offset == 1 && len(rc.pending) == 0:
		// The first message of a new epoch: history was lost. Sessions
		// see the epoch change and send the gap signal.
		rc.epoch, rc.last = m.Epoch, 1
		r.h.index.fanout(m)
	default:
		r.held.Add(1)
		rc.hold(m)
		r.advanceLocked(rc)
	}
}

// hold keeps m, which arrived ahead of a missing message: messages of the
// channel's current epoch by offset, then those of other epochs. It
// reports false when m was held already. rc.mu must be held.
func (rc *remoteChan) hold(m *Message) bool {
	key := func(x *Message) (int, uint64) {
		if x.Epoch == rc.epoch {
			return 0, x.Offset
		}
		return 1, x.Offset
	}
	i, found := slices.BinarySearchFunc(rc.pending, m, func(a, b *Message) int {
		ea, oa := key(a)
		eb, ob := key(b)
		if c := cmp.Compare(ea, eb); c != 0 {
			return c
		}
		if c := cmp.Compare(oa, ob); c != 0 || a.Epoch == b.Epoch {
			return c
		}
		return cmp.Compare(a.Epoch, b.Epoch)
	})
	if found {
		return false
	}
	rc.pending = slices.Insert(rc.pending, i, m)
	return true
}

// advanceLocked hands on the held messages that are next in order and, if
// a hole remains, queues a fill (or, past maxPending, skips the hole).
// rc.mu must be held.
func (r *remote) advanceLocked(rc *remoteChan) {
	n := 0
	for _, m := range rc.pending {
		if m.Epoch == rc.epoch && m.Offset <= rc.last {
			n++
			continue
		}
		if m.Epoch != rc.epoch || m.Offset != rc.last+1 {
			break
		}
		rc.last = m.Offset
		r.h.index.fanout(m)
		n++
	}
	rc.pending = rc.pending[n:]
	if len(rc.pending) == 0 {
		rc.pending = nil
		return
	}
	if len(rc.pending) > maxPending {
		r.h.log.Warn("hub: gave up waiting for missing messages", "channel", rc.name, "from", rc.last+1)
		rc.skipLocked(r.h)
		return
	}
	r.queueFill(rc, fillDelay)
}

// skipLocked hands on every held message of the current epoch in order,
// skipping holes (which sessions report as gaps), and drops the others.
// rc.mu must be held.
func (rc *remoteChan) skipLocked(h *Hub) {
	for _, m := range rc.pending {
		if m.Epoch == rc.epoch && m.Offset > rc.last {
			h.remote.skipped.Add(m.Offset - rc.last - 1)
			rc.last = m.Offset
			h.index.fanout(m)
		}
	}
	rc.pending = nil
}

// queueFill asks a fill worker to read rc's missing messages from history
// after delay; if a fill is already under way, it runs again after.
// rc.mu must be held.
func (r *remote) queueFill(rc *remoteChan, delay time.Duration) {
	if rc.filling {
		rc.again = true
		return
	}
	rc.filling = true
	r.work.mu.Lock()
	if !rc.fillQueued {
		rc.fillQueued = true
		rc.fillDue = time.Now().Add(delay)
		r.work.fills = append(r.work.fills, rc)
	}
	r.work.mu.Unlock()
	wake(r.fillWake)
}

// popLocked takes the first channel of a work queue, or nil. r.work.mu
// must be held.
func popLocked(q *[]*remoteChan) *remoteChan {
	if len(*q) == 0 {
		return nil
	}
	rc := (*q)[0]
	(*q)[0] = nil
	*q = (*q)[1:]
	return rc
}

// idle waits for a worker's wake signal; it reports false when the hub
// stops.
func (r *remote) idle(wake chan struct{}) bool {
	select {
	case <-r.h.done:
		return false
	case <-wake:
		return true
	}
}

// wake signals a worker without blocking.
func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// fillLoop is a fill worker, owned by the hub.
func (r *remote) fillLoop() {
	for {
		r.work.mu.Lock()
		rc := popLocked(&r.work.fills)
		var due time.Time
		if rc != nil {
			rc.fillQueued, due = false, rc.fillDue
		}
		r.work.mu.Unlock()
		if rc == nil {
			if !r.idle(r.fillWake) {
				return
			}
			continue
		}
		// Give a message that is merely late the time to arrive.
		if d := time.Until(due); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-r.h.done:
				t.Stop()
				return
			case <-t.C:
			}
		}
		r.fill(rc)
	}
}

// fill reads from history what rc is missing and hands it on in order.
func (r *remote) fill(rc *remoteChan) {
	rc.mu.Lock()
	if rc.gone || !rc.primed {
		rc.filling, rc.again = false, false
		rc.mu.Unlock()
		return
	}
	pos := Position{Epoch: rc.epoch, Offset: rc.last}
	rc.again = false
	rc.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), fillTimeout)
	msgs, head, gap, err := r.h.history.Since(ctx, rc.name, pos, r.h.namespace(rc.name).historyOptions())
	cancel()
	r.fills.Add(1)

	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.filling = false
	if rc.gone {
		return
	}
	if err != nil {
		// History is unreachable (the engine restarts, say): try again
		// a little later, holding what arrived, up to maxPending.
		rc.again = false
		if rc.retries++; rc.retries > fillRetries || len(rc.pending) > maxPending {
			r.h.log.Warn("hub: reading missing messages from history failed; skipping them", "channel", rc.name, "err", err)
			rc.retries = 0
			rc.skipLocked(r.h)
			return
		}
		r.h.log.Debug("hub: reading missing messages from history failed; retrying", "channel", rc.name, "err", err)
		r.queueFill(rc, fillRetry)
		return
	}
	rc.retries = 0
	if gap && head.Epoch != rc.epoch {
		rc.epoch, rc.last = head.Epoch, 0
	}
	// Now rc.epoch is head's. Held messages of other epochs are from
	// before a loss of history: drop them; those left are in offset order.
	rc.pending = slices.DeleteFunc(rc.pending, func(m *Message) bool { return m.Epoch != rc.epoch })
	for _, m := range msgs {
		if m.Epoch == rc.epoch && m.Offset > rc.last {
			if rc.hold(m) {
				r.filled.Add(1) // the broker had not brought it
			}
		}
	}
	// Everything up to head, in order; what neither history nor the
	// broker brought is lost, and the sessions say so.
	n := 0
	for _, m := range rc.pending {
		if m.Offset > head.Offset {
			break
		}
		if m.Offset > rc.last {
			r.skipped.Add(m.Offset - rc.last - 1)
			rc.last = m.Offset
			r.h.index.fanout(m)
		}
		n++
	}
	rc.pending = rc.pending[n:]
	if head.Offset > rc.last {
		r.skipped.Add(head.Offset - rc.last)
		rc.last = head.Offset
	}
	again := rc.again
	rc.again = false
	r.advanceLocked(rc)
	if again && !rc.filling {
		r.queueFill(rc, 0)
	}
}

// resync checks every subscribed channel against history, after the broker
// reconnected: what was published meanwhile is handed on.
func (r *remote) resync() {
	for _, rc := range r.all() {
		rc.mu.Lock()
		if rc.primed && !rc.gone {
			r.queueFill(rc, 0)
		}
		rc.mu.Unlock()
	}
}

// ---- cluster view ----

// NodeInfo is one node of the cluster as last heard from.
type NodeInfo struct {
	ID          string        `json:"id"`
	Self        bool          `json:"self,omitempty"`
	Connections int           `json:"connections"`
	Subscribers int           `json:"subscribers"`
	Broker      broker.Health `json:"broker"`
	Started     time.Time     `json:"started"`
	LastSeen    time.Time     `json:"last_seen"`
}

// nodeBeat is the heartbeat a node publishes on nodesChannel.
type nodeBeat struct {
	ID          string        `json:"id"`
	Connections int           `json:"connections"`
	Subscribers int           `json:"subscribers"`
	Broker      broker.Health `json:"broker"`
	Started     time.Time     `json:"started"`
}

// cluster tracks the nodes heard from.
type cluster struct {
	mu    sync.Mutex
	nodes map[string]NodeInfo // guarded by mu
}

// maxNodes bounds the nodes remembered; past it, those not heard from
// recently are forgotten at once.
const maxNodes = 1024

func (c *cluster) seen(b nodeBeat, now time.Time, maxAge time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.nodes) >= maxNodes {
		for id, n := range c.nodes {
			if now.Sub(n.LastSeen) > maxAge {
				delete(c.nodes, id)
			}
		}
		if len(c.nodes) >= maxNodes {
			return
		}
	}
	c.nodes[b.ID] = NodeInfo{ID: b.ID, Connections: b.Connections, Subscribers: b.Subscribers,
		Broker: b.Broker, Started: b.Started, LastSeen: now}
}

// list returns the nodes heard from within maxAge, and forgets the others.
func (c *cluster) list(now time.Time, maxAge time.Duration) []NodeInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]NodeInfo, 0, len(c.nodes))
	for id, n := range c.nodes {
		if now.Sub(n.LastSeen) > maxAge {
			delete(c.nodes, id)
			continue
		}
		out = append(out, n)
	}
	return out
}

// BrokerHealth returns the broker's health. The in-process broker is always
// connected.
func (h *Hub) BrokerHealth() broker.Health {
	if hr, ok := h.broker.(broker.HealthReporter); ok {
		return hr.Health()
	}
	return broker.Health{Connected: true, Engine: "memory"}
}

// NodeID returns this node's id.
func (h *Hub) NodeID() string { return h.cfg.NodeID }

// Nodes returns the nodes of the cluster heard from recently, this one
// first, then by id. With the in-process broker it is this node alone.
func (h *Hub) Nodes() []NodeInfo {
	st := h.Stats()
	self := NodeInfo{ID: h.cfg.NodeID, Self: true, Connections: st.Connections, Subscribers: st.Subscribers,
		Broker: h.BrokerHealth(), Started: h.started, LastSeen: time.Now()}
	out := []NodeInfo{self}
	if h.remote == nil {
		return out
	}
	for _, n := range h.nodes.list(time.Now(), 3*h.cfg.NodeHeartbeat) {
		if n.ID != h.cfg.NodeID {
			out = append(out, n)
		}
	}
	slices.SortFunc(out[1:], func(a, b NodeInfo) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

// receiveBeat records another node's heartbeat.
func (h *Hub) receiveBeat(m *broker.Message) {
	var b nodeBeat
	if err := json.Unmarshal(m.Data, &b); err != nil || b.ID == "" {
		return
	}
	h.nodes.seen(b, time.Now(), 3*h.cfg.NodeHeartbeat)
}

// watchLoop, with a networked broker, publishes this node's heartbeat,
// keeps the heartbeat channel subscribed, and resyncs every channel after
// the broker reconnects.
func (h *Hub) watchLoop() {
	t := time.NewTicker(min(h.cfg.NodeHeartbeat, watchInterval))
	defer t.Stop()
	hr, _ := h.broker.(broker.HealthReporter)
	var reconnects, dropped uint64
	if hr != nil {
		hl := hr.Health()
		reconnects, dropped = hl.Reconnects, hl.Dropped
	}
	subscribed := false
	var lastBeat time.Time
	for {
		if !subscribed {
			subscribed = h.subscribeBeats()
		}
		if hr != nil {
			// A new connection, however short the outage was: what was
			// published meanwhile never reached this node.
			switch hl := hr.Health(); {
			case hl.Connected && hl.Reconnects != reconnects:
				reconnects, dropped = hl.Reconnects, hl.Dropped
				h.log.Info("hub: broker reconnected; checking channels against history")
				h.remote.resync()
			case hl.Dropped != dropped:
				// The last messages of a burst may be among them, with
				// nothing after to reveal the hole.
				dropped = hl.Dropped
				h.log.Warn("hub: the broker dropped messages (slow consumer); checking channels against history")
				h.remote.resync()
			}
		}
		if time.Since(lastBeat) >= h.cfg.NodeHeartbeat {
			h.beat()
			lastBeat = time.Now()
		}
		select {
		case <-h.done:
			return
		case <-t.C:
		}
	}
}

func (h *Hub) subscribeBeats() bool {
	if h.remote.sub == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), brokerCallTimeout)
	defer cancel()
	if err := h.remote.sub.Subscribe(ctx, nodesChannel); err != nil {
		h.log.Warn("hub: subscribing to the nodes' heartbeats failed; retrying", "err", err)
		return false
	}
	return true
}

func (h *Hub) beat() {
	st := h.Stats()
	data, err := json.Marshal(nodeBeat{ID: h.cfg.NodeID, Connections: st.Connections, Subscribers: st.Subscribers,
		Broker: h.BrokerHealth(), Started: h.started})
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.NodeHeartbeat)
	defer cancel()
	err = h.broker.Publish(ctx, &broker.Message{Channel: nodesChannel, Type: "node", Data: data, Time: time.Now()})
	if err != nil && !errors.Is(err, broker.ErrClosed) {
		h.log.Debug("hub: heartbeat not published", "err", err)
	}
}
