package hub

import (
	"context"
	"hash/maphash"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
)

const historyShards = 64

// MemoryHistory is the in-process History: a bounded ring per channel. Its
// epochs are random, so every restart starts new epochs and clients resuming
// across a restart get a gap signal.
type MemoryHistory struct {
	seed   maphash.Seed
	shards [historyShards]historyShard
	now    func() time.Time
}

var (
	_ History          = (*MemoryHistory)(nil)
	_ HistoryInspector = (*MemoryHistory)(nil)
)

type historyShard struct {
	mu       sync.Mutex
	channels map[string]*ring // guarded by mu
}

// ring is one channel's history. Guarded by its shard's mu.
type ring struct {
	epoch      string
	head       uint64     // offset of the last appended message
	buf        []*Message // circular, len(buf) is the capacity
	start, n   int        // index of the oldest retained message, count
	lastActive time.Time
}

// NewMemoryHistory returns an empty in-memory history.
func NewMemoryHistory() *MemoryHistory {
	h := &MemoryHistory{seed: maphash.MakeSeed(), now: time.Now}
	for i := range h.shards {
		h.shards[i].channels = make(map[string]*ring)
	}
	return h
}

func (h *MemoryHistory) shard(ch string) *historyShard {
	return &h.shards[maphash.String(h.seed, ch)%historyShards]
}

func newEpoch() string {
	// 40 random bits as 8 base-32 digits.
	return strconv.FormatUint(rand.Uint64()>>24|1<<39, 32)
}

// get returns the channel's ring, creating it. s.mu must be held.
func (s *historyShard) get(ch string, now time.Time) *ring {
	r := s.channels[ch]
	if r == nil {
		r = &ring{epoch: newEpoch()}
		s.channels[ch] = r
	}
	r.lastActive = now
	return r
}

// expire drops messages older than ttl from the front of r.
func (r *ring) expire(now time.Time, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	cutoff := now.Add(-ttl)
	for r.n > 0 {
		m := r.buf[r.start]
		if !m.Time.Before(cutoff) {
			return
		}
		r.buf[r.start] = nil
		r.start = (r.start + 1) % len(r.buf)
		r.n--
	}
}

// resize makes the ring hold size messages, keeping the newest.
func (r *ring) resize(size int) {
	if size == len(r.buf) {
		return
	}
	nb := make([]*Message, size)
	keep := min(r.n, size)
	for i := 0; i < keep; i++ {
		nb[i] = r.buf[(r.start+r.n-keep+i)%len(r.buf)]
	}
	r.buf, r.start, r.n = nb, 0, keep
}

// Append implements History.
func (h *MemoryHistory) Append(_ context.Context, m *Message, opts HistoryOptions) error {
	now := h.now()
	s := h.shard(m.Channel)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.get(m.Channel, now)
	r.head++
	m.Epoch, m.Offset = r.epoch, r.head
	m.Seal()
	if opts.Size <= 0 {
		r.buf, r.start, r.n = nil, 0, 0
		return nil
	}
	r.resize(opts.Size)
	r.expire(now, opts.TTL)
	if r.n == len(r.buf) {
		r.buf[r.start] = nil
		r.start = (r.start + 1) % len(r.buf)
		r.n--
	}
	r.buf[(r.start+r.n)%len(r.buf)] = m
	r.n++
	return nil
}

// Since implements History.
func (h *MemoryHistory) Since(_ context.Context, ch string, pos Position, opts HistoryOptions) ([]*Message, Position, bool, error) {
	now := h.now()
	s := h.shard(ch)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.get(ch, now)
	r.expire(now, opts.TTL)
	head := Position{Epoch: r.epoch, Offset: r.head}
	gap := pos.Epoch != r.epoch || pos.Offset > r.head
	from := uint64(0) // first offset to return
	if !gap {
		if pos.Offset == r.head {
			return nil, head, false, nil
		}
		oldest := r.head - uint64(r.n) + 1 // offset of buf[start]
		if pos.Offset+1 < oldest {
			gap = true
		} else {
			from = pos.Offset + 1
		}
	}
	var out []*Message
	for i := 0; i < r.n; i++ {
		m := r.buf[(r.start+i)%len(r.buf)]
		if m.Offset >= from {
			out = append(out, m)
		}
	}
	return out, head, gap, nil
}

// Head implements History.
func (h *MemoryHistory) Head(_ context.Context, ch string, _ HistoryOptions) (Position, error) {
	s := h.shard(ch)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.get(ch, h.now())
	return Position{Epoch: r.epoch, Offset: r.head}, nil
}

// Inspect implements HistoryInspector.
func (h *MemoryHistory) Inspect(ch string) (ChannelHistory, bool) {
	s := h.shard(ch)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.channels[ch]
	if r == nil {
		return ChannelHistory{}, false
	}
	return ChannelHistory{Epoch: r.epoch, Head: r.head, Retained: r.n}, true
}

// Sweep drops expired messages and forgets channels that retain nothing,
// are not in use (inUse reports false) and have been idle for longer than
// idle — or, for channels never published to, longer than idleEmpty, so
// that subscribing to many names that nobody publishes to does not pin
// memory. A forgotten channel starts a new epoch if it is used again (a
// client resuming it gets a gap signal: conservative, never silent).
func (h *MemoryHistory) Sweep(ttl func(ch string) time.Duration, idle, idleEmpty time.Duration, inUse func(ch string) bool) {
	now := h.now()
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		for ch, r := range s.channels {
			r.expire(now, ttl(ch))
			limit := idle
			if r.head == 0 {
				limit = idleEmpty
			}
			if r.n == 0 && now.Sub(r.lastActive) > limit && !inUse(ch) {
				delete(s.channels, ch)
			}
		}
		s.mu.Unlock()
	}
}
