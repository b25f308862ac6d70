package hub

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// ItemKind tells what a queued Item carries.
type ItemKind uint8

const (
	// ItemMessage carries a published message (Msg).
	ItemMessage ItemKind = iota
	// ItemGap says messages of Channels were missed: history does not
	// reach back for them. On subscribe it precedes the replay of those
	// channels; in a cluster it may also come live, before the first
	// message after the ones a node could not get back from history.
	ItemGap
	// ItemSubscribed marks the end of replay for Channels; Positions are
	// their positions at that point. Live messages follow.
	ItemSubscribed
	// ItemControl carries transport-specific bytes (Raw) queued by the
	// transport itself, so that they keep their place among messages.
	ItemControl
)

// Item is one entry of a session's outbound queue.
type Item struct {
	Kind      ItemKind
	Msg       *Message
	Channels  []string
	Positions []CursorEntry
	Raw       []byte
}

// SessionOptions describe a new session.
type SessionOptions struct {
	// Transport names the transport ("sse", "ws", "poll", "iframe") for
	// connection counts.
	Transport string
	// RemoteIP is the client's address, for the per-IP connection limit.
	// Empty skips the per-IP limit.
	RemoteIP string
	// Wake is called when the queue goes from empty to non-empty and when
	// the session closes. It may be called with hub locks held (the
	// fan-out holds a channel shard's read lock), so it must not block and
	// must not call into the hub: it typically does a non-blocking send on
	// a channel of capacity 1, or marks the connection ready in an engine.
	Wake func()
}

// Session is one subscriber connection's state in the hub: its channels,
// the last position queued per channel, and its bounded outbound queue.
//
// The hub's fan-out calls deliver, which never blocks: it appends to the
// queue or, when the queue would exceed its byte limit, closes the session
// as a slow consumer. The transport's writer takes queued items with Drain
// after each Wake, writes them, and calls Close when the connection ends.
type Session struct {
	hub       *Hub
	transport string
	remoteIP  string
	wake      func()
	maxBytes  int

	mu       sync.Mutex
	queue    []Item     // guarded by mu
	qbytes   int        // bytes counted in queue and recovery buffers; guarded by mu
	allow    int        // replay bytes allowed over maxBytes until the next Drain; guarded by mu
	subs     subSet     // guarded by mu
	closed   bool       // guarded by mu
	reason   Disconnect // guarded by mu
	released bool       // hub bookkeeping undone; guarded by mu
}

// subState is one channel's state within a session. Guarded by Session.mu.
type subState struct {
	channel    string
	epoch      string
	offset     uint64
	recovering bool
	buf        []*Message // live messages that arrived during recovery
}

// Subscribe adds channels to the session. For each channel with an entry in
// cur it replays what the client missed (after a gap item when history does
// not reach back); other channels start live. Live messages that arrive
// during the replay are queued after it, without duplicates. It returns a
// *ChannelError for a bad or full channel, ErrTooManyChannels, or
// ErrSessionClosed; on error no channel of the call stays subscribed.
func (s *Session) Subscribe(ctx context.Context, channels []string, cur *Cursor) error {
	h := s.hub
	var fresh []string
	for _, ch := range channels {
		if !ValidChannel(ch) {
			return &ChannelError{Channel: ch, Err: ErrInvalidChannel}
		}
		if !slices.Contains(fresh, ch) {
			fresh = append(fresh, ch)
		}
	}

	if h.remote != nil && !h.BrokerHealth().Connected {
		// The engine is away: answer now rather than wait for it.
		return fmt.Errorf("%w: broker disconnected", ErrUnavailable)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrSessionClosed
	}
	fresh = slices.DeleteFunc(fresh, func(ch string) bool { return s.subs.get(ch) != nil })
	if s.subs.len()+len(fresh) > h.cfg.MaxChannelsPerSession {
		s.mu.Unlock()
		return ErrTooManyChannels
	}
	for i, ch := range fresh {
		// A copy: the caller's string may be a slice of a whole request
		// line, which the session would otherwise keep alive.
		fresh[i] = strings.Clone(ch)
		s.subs.add(&subState{channel: fresh[i], recovering: true})
	}
	s.mu.Unlock()

	// Register first, then read history: a message published in between is
	// both buffered live and in history, and the offset check drops one.
	for i, ch := range fresh {
		ok, err := h.join(ctx, ch, s)
		if err != nil {
			s.rollback(fresh[:i], fresh)
			return &ChannelError{Channel: ch, Err: err}
		}
		if !ok {
			s.rollback(fresh[:i], fresh)
			return &ChannelError{Channel: ch, Err: ErrChannelFull}
		}
	}
	// A Close that ran before the adds may have missed them; undo them here.
	// (A Close after this check sees fresh in s.subs and removes them.)
	if _, closed := s.Closed(); closed {
		for _, ch := range fresh {
			h.leave(ch, s)
		}
		return ErrSessionClosed
	}

	type recovery struct {
		msgs []*Message
		head Position
		from Position // position the client has; zero when live-from-now
		gap  bool
		has  bool
	}
	rec := make([]recovery, len(fresh))
	for i, ch := range fresh {
		opts := h.namespace(ch).historyOptions()
		var err error
		if pos, ok := cursorGet(cur, ch); ok {
			rec[i].has, rec[i].from = true, pos
			rec[i].msgs, rec[i].head, rec[i].gap, err = h.history.Since(ctx, ch, pos, opts)
		} else {
			rec[i].head, err = h.history.Head(ctx, ch, opts)
		}
		if err != nil {
			s.rollback(fresh, fresh)
			return &ChannelError{Channel: ch, Err: fmt.Errorf("%w: %w", ErrUnavailable, err)}
		}
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrSessionClosed
	}
	wasEmpty := len(s.queue) == 0
	var gaps []string
	for i, ch := range fresh {
		if rec[i].gap {
			gaps = append(gaps, ch)
		}
	}
	if len(gaps) > 0 {
		s.queue = append(s.queue, Item{Kind: ItemGap, Channels: gaps})
		s.qbytes += listCost(gaps)
	}
	positions := make([]CursorEntry, 0, len(fresh))
	replay := 0
	for i, ch := range fresh {
		st := s.subs.get(ch)
		r := &rec[i]
		switch {
		case r.gap:
			st.epoch, st.offset = r.head.Epoch, 0
		case r.has:
			st.epoch, st.offset = r.from.Epoch, r.from.Offset
		default:
			st.epoch, st.offset = r.head.Epoch, r.head.Offset
			// Keep live messages that raced with the head read.
			if len(st.buf) > 0 && st.buf[0].Epoch == st.epoch && st.buf[0].Offset <= st.offset {
				st.offset = st.buf[0].Offset - 1
			}
		}
		st.recovering = false
		for _, m := range r.msgs {
			if s.pushLocked(st, m) {
				replay += m.Size()
			}
		}
		if r.gap && st.epoch == r.head.Epoch {
			// Everything up to the head was replayed or is reported lost.
			st.offset = max(st.offset, r.head.Offset)
		}
		for _, m := range st.buf {
			s.qbytes -= m.Size()
			s.gapIfSkippedLocked(st, m)
			s.pushLocked(st, m)
		}
		st.buf = nil
		positions = append(positions, CursorEntry{Channel: ch, Position: Position{Epoch: st.epoch, Offset: st.offset}})
	}
	s.queue = append(s.queue, Item{Kind: ItemSubscribed, Channels: fresh, Positions: positions})
	s.qbytes += listCost(fresh)
	// History is bounded by the namespace, so one replay may exceed the
	// queue limit; it must not make resuming impossible. The allowance is
	// the largest replay since the last Drain, not a sum, so a client that
	// stops reading cannot grow its queue by subscribing again and again.
	s.allow = max(s.allow, replay)
	overflow := s.overLimitLocked()
	if overflow {
		s.overflowLocked()
	}
	s.mu.Unlock()
	if wasEmpty || overflow {
		s.wake()
	}
	return nil
}

// rollback undoes a failed Subscribe: registered channels leave the index,
// all of fresh leave the session.
func (s *Session) rollback(registered, fresh []string) {
	for _, ch := range registered {
		s.hub.leave(ch, s)
	}
	s.mu.Lock()
	for _, ch := range fresh {
		if st := s.subs.get(ch); st != nil {
			for _, m := range st.buf {
				s.qbytes -= m.Size()
			}
			s.subs.remove(ch)
		}
	}
	s.mu.Unlock()
}

// Unsubscribe removes ch from the session, with any of its messages still
// queued. It reports false if the session did not have ch.
func (s *Session) Unsubscribe(ch string) bool {
	s.mu.Lock()
	st := s.subs.get(ch)
	if st == nil || s.closed {
		s.mu.Unlock()
		return false
	}
	for _, m := range st.buf {
		s.qbytes -= m.Size()
	}
	s.subs.remove(ch)
	// Messages of ch still queued are dropped: a later subscribe with a
	// cursor replays from history, and keeping them would deliver twice.
	s.queue = slices.DeleteFunc(s.queue, func(it Item) bool {
		if it.Kind == ItemMessage && it.Msg.Channel == ch {
			s.qbytes -= it.Msg.Size()
			return true
		}
		return false
	})
	s.mu.Unlock()
	s.hub.leave(ch, s)
	return true
}

// Channels returns the session's channels, in no particular order.
func (s *Session) Channels() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, s.subs.len())
	for _, st := range s.subs.list {
		out = append(out, st.channel)
	}
	return out
}

// deliver is the fan-out's entry point. It never blocks and reports whether
// the message was queued.
func (s *Session) deliver(m *Message) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	st := s.subs.get(m.Channel)
	if st == nil {
		s.mu.Unlock()
		return false
	}
	if st.recovering {
		st.buf = append(st.buf, m)
		s.qbytes += m.Size()
		overflow := s.overLimitLocked()
		if overflow {
			s.overflowLocked()
		}
		s.mu.Unlock()
		if overflow {
			s.wake()
		}
		return !overflow
	}
	wasEmpty := len(s.queue) == 0
	s.gapIfSkippedLocked(st, m)
	if !s.pushLocked(st, m) {
		s.mu.Unlock()
		return false
	}
	overflow := s.overLimitLocked()
	if overflow {
		s.overflowLocked()
	}
	s.mu.Unlock()
	if wasEmpty || overflow {
		s.wake()
	}
	return !overflow
}

// gapIfSkippedLocked queues a gap signal when m, about to be queued, does
// not follow the last message queued for its channel: the node's
// sequencer skipped messages that history no longer holds, or history was
// lost (a new epoch). Only a cluster's offsets can jump live. s.mu must be
// held.
func (s *Session) gapIfSkippedLocked(st *subState, m *Message) {
	if !s.hub.sequenced() || st.epoch == "" {
		return
	}
	if m.Epoch != st.epoch || m.Offset > st.offset+1 {
		s.queue = append(s.queue, Item{Kind: ItemGap, Channels: []string{st.channel}})
		s.qbytes += listCost([]string{st.channel})
	}
}

// pushLocked queues m unless the session already has it. s.mu must be held.
func (s *Session) pushLocked(st *subState, m *Message) bool {
	if m.Epoch == st.epoch && m.Offset <= st.offset {
		return false
	}
	st.epoch, st.offset = m.Epoch, m.Offset
	s.queue = append(s.queue, Item{Kind: ItemMessage, Msg: m})
	s.qbytes += m.Size()
	return true
}

// itemCost is what any queued item counts for beyond its payload, so that
// floods of small items (controls, gap and subscribed markers) are bounded
// by the queue limit too.
const itemCost = 64

// listCost is the queue cost of an item that names channels.
func listCost(channels []string) int {
	n := itemCost
	for _, ch := range channels {
		n += len(ch) + 3
	}
	return n
}

// overLimitLocked reports whether the queue holds more than it may.
// s.mu must be held.
func (s *Session) overLimitLocked() bool { return s.qbytes > s.maxBytes+s.allow }

// overflowLocked closes the session as a slow consumer and drops its queue.
// It does not touch the index (the fan-out may hold a shard lock): the
// transport's Close does that. s.mu must be held.
func (s *Session) overflowLocked() {
	s.closed = true
	s.reason = DisconnectSlowConsumer
	s.dropQueueLocked()
	s.hub.stats.slowConsumers.Add(1)
}

func (s *Session) dropQueueLocked() {
	var n uint64
	for _, it := range s.queue {
		if it.Kind == ItemMessage {
			n++
		}
	}
	for _, st := range s.subs.list {
		n += uint64(len(st.buf))
		st.buf = nil
	}
	s.hub.stats.dropped.Add(n)
	s.queue, s.qbytes = nil, 0
}

// Enqueue queues transport-specific bytes behind what is already queued.
// It reports false if the session is closed.
func (s *Session) Enqueue(raw []byte) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	wasEmpty := len(s.queue) == 0
	s.queue = append(s.queue, Item{Kind: ItemControl, Raw: raw})
	s.qbytes += len(raw) + itemCost
	overflow := s.overLimitLocked()
	if overflow {
		s.overflowLocked()
	}
	s.mu.Unlock()
	if wasEmpty || overflow {
		s.wake()
	}
	return !overflow
}

// Drain appends every queued item to dst, empties the queue and returns
// dst. Called by the transport's writer only.
func (s *Session) Drain(dst []Item) []Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	dst = append(dst, s.queue...)
	if cap(s.queue) > 256 {
		s.queue = nil // do not keep a burst's memory while idle
	} else {
		clear(s.queue)
		s.queue = s.queue[:0]
	}
	s.qbytes, s.allow = 0, 0
	for _, st := range s.subs.list {
		for _, m := range st.buf {
			s.qbytes += m.Size()
		}
	}
	return dst
}

// Pending reports whether items are queued.
func (s *Session) Pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) > 0
}

// Closed reports whether the session is closed, and why.
func (s *Session) Closed() (Disconnect, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason, s.closed
}

// Close ends the session with reason d (the first reason given wins),
// removes it from every channel and from the hub's connection counts, and
// wakes the writer. It is idempotent; transports call it when their
// connection ends.
func (s *Session) Close(d Disconnect) {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.reason = d
	}
	if s.released {
		s.mu.Unlock()
		return
	}
	s.released = true
	s.dropQueueLocked()
	chans := make([]string, 0, s.subs.len())
	for _, st := range s.subs.list {
		chans = append(chans, st.channel)
	}
	s.subs = subSet{}
	s.mu.Unlock()
	for _, ch := range chans {
		s.hub.leave(ch, s)
	}
	s.hub.release(s)
	s.wake()
}

// Delivered records that the transport wrote n messages to the client.
func (s *Session) Delivered(n int) {
	if n > 0 {
		s.hub.stats.delivered.Add(uint64(n))
	}
}

func cursorGet(c *Cursor, ch string) (Position, bool) {
	if c == nil {
		return Position{}, false
	}
	return c.Get(ch)
}

// subSet is a session's channels. Most sessions have one or a few, and a
// map costs about 250 bytes even for one, so channels are kept in a slice
// and indexed by a map only past subSetIndexAt.
type subSet struct {
	list   []*subState
	byName map[string]*subState // nil until len(list) > subSetIndexAt
}

const subSetIndexAt = 16

func (ss *subSet) len() int { return len(ss.list) }

func (ss *subSet) get(ch string) *subState {
	if ss.byName != nil {
		return ss.byName[ch]
	}
	for _, st := range ss.list {
		if st.channel == ch {
			return st
		}
	}
	return nil
}

func (ss *subSet) add(st *subState) {
	ss.list = append(ss.list, st)
	switch {
	case ss.byName != nil:
		ss.byName[st.channel] = st
	case len(ss.list) > subSetIndexAt:
		ss.byName = make(map[string]*subState, len(ss.list))
		for _, x := range ss.list {
			ss.byName[x.channel] = x
		}
	}
}

func (ss *subSet) remove(ch string) {
	i := slices.IndexFunc(ss.list, func(st *subState) bool { return st.channel == ch })
	if i < 0 {
		return
	}
	ss.list = slices.Delete(ss.list, i, i+1)
	if ss.byName != nil {
		delete(ss.byName, ch)
	}
}
