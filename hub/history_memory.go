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

// MemoryHistory is the in-process History: a ring per channel, bounded by
// the channel's history size and TTL, and all channels together by an
// optional byte limit. Its epochs are random, so every restart starts new
// epochs and clients resuming across a restart get a gap signal.
type MemoryHistory struct {
	seed       maphash.Seed
	shards     [historyShards]historyShard
	now        func() time.Time
	shardBytes int64 // limit per shard; 0 means none
}

var (
	_ History          = (*MemoryHistory)(nil)
	_ HistoryInspector = (*MemoryHistory)(nil)
)

type historyShard struct {
	mu       sync.Mutex
	channels map[string]*ring // guarded by mu
	// With a byte limit: the size of the retained messages, and every
	// appended message in order, so that the oldest can go first. An
	// entry whose message has left its ring another way (TTL, the
	// channel's size) is stale and skipped. All guarded by mu.
	bytes    int64
	retained int // messages in the shard's rings
	order    []appended
	trimmed  uint64 // messages dropped for the limit
}

// appended names one appended message: its ring and offset.
type appended struct {
	r   *ring
	off uint64
}

// ring is one channel's history. Guarded by its shard's mu.
type ring struct {
	epoch      string
	head       uint64     // offset of the last appended message
	buf        []*Message // circular; grows to the channel's history size as messages come
	start, n   int        // index of the oldest retained message, count
	lastActive time.Time
}

// NewMemoryHistory returns an empty in-memory history whose channels are
// bounded only by their history size and TTL.
func NewMemoryHistory() *MemoryHistory { return NewMemoryHistoryLimit(0) }

// NewMemoryHistoryLimit returns an empty in-memory history that keeps
// about maxBytes of messages at most, counted as the size of their data
// and wire forms plus a fixed overhead. The limit is shared out evenly
// over 64 shards of the channel space, so one channel can hold at most a
// 64th of it. Past the limit, a shard's oldest messages go first, as if
// their TTL had passed: a client resuming from before them gets a gap
// signal. maxBytes <= 0 means no limit.
func NewMemoryHistoryLimit(maxBytes int64) *MemoryHistory {
	h := &MemoryHistory{seed: maphash.MakeSeed(), now: time.Now}
	if maxBytes > 0 {
		h.shardBytes = max(maxBytes/historyShards, 1)
	}
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

// historyOverhead is what a retained message is counted for beyond its
// bytes: the Message and its slot.
const historyOverhead = 256

// historySize is what m counts for against the byte limit: its data, its
// envelope and the SSE frame built from it, and the overhead. It is an
// estimate: it counts lengths, not the capacity behind them, and the SSE
// frame whether or not an SSE subscriber had it built.
func historySize(m *Message) int64 {
	return int64(len(m.Data) + 2*len(m.Envelope) + len(m.Key) + historyOverhead)
}

// MinHistoryBytes is the smallest limit for NewMemoryHistoryLimit under
// which every 64th of the history can hold one message of maxDataBytes of
// data (with the longest channel name, type and an idempotency key of up
// to 256 bytes). A message that does not fit its 64th is not retained:
// its channel's history restarts after it.
func MinHistoryBytes(maxDataBytes int) int64 {
	const envelope = 600 // the envelope's fixed text, longest channel, type, epoch, offset and time
	return historyShards * (3*int64(maxDataBytes) + 2*envelope + 256 + historyOverhead)
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

// dropOldest drops r's oldest message. s.mu must be held.
func (s *historyShard) dropOldest(r *ring) {
	m := r.buf[r.start]
	r.buf[r.start] = nil
	r.start = (r.start + 1) % len(r.buf)
	r.n--
	s.retained--
	s.bytes -= historySize(m)
}

// expire drops messages older than ttl from the front of r. s.mu must be
// held.
func (s *historyShard) expire(r *ring, now time.Time, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	cutoff := now.Add(-ttl)
	for r.n > 0 && r.buf[r.start].Time.Before(cutoff) {
		s.dropOldest(r)
	}
}

// makeRoom drops r's oldest messages until one more fits within size, and
// grows r's buffer (doubling, up to size) when it is full, so that a
// channel holding one message costs one slot, not size. s.mu must be held.
func (s *historyShard) makeRoom(r *ring, size int) {
	for r.n >= size {
		s.dropOldest(r)
	}
	if r.n < len(r.buf) && len(r.buf) <= size {
		return
	}
	nb := make([]*Message, min(max(2*r.n, 1), size))
	for i := range r.n {
		nb[i] = r.buf[(r.start+i)%len(r.buf)]
	}
	r.buf, r.start = nb, 0
}

// live reports whether a is still retained. s.mu must be held.
func (a appended) live() bool {
	return a.r.n > 0 && a.off > a.r.head-uint64(a.r.n) && a.off <= a.r.head
}

// enforce drops the shard's oldest messages while it is over limit, and
// forgets stale entries of the append order. s.mu must be held.
func (s *historyShard) enforce(limit int64) {
	i := 0
	for ; i < len(s.order); i++ {
		a := s.order[i]
		if !a.live() {
			continue
		}
		if s.bytes <= limit {
			break
		}
		// The shard's oldest appended message still retained is its
		// ring's oldest: a channel's messages leave in the order they came.
		s.dropOldest(a.r)
		s.trimmed++
	}
	clear(s.order[:i])
	s.order = s.order[i:]
	if len(s.order) > 2*s.retained+64 {
		// Stale entries behind a long-lived one: keep the live ones only.
		kept := make([]appended, 0, 2*s.retained+16)
		for _, a := range s.order {
			if a.live() {
				kept = append(kept, a)
			}
		}
		s.order = kept
	}
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
		for r.n > 0 {
			s.dropOldest(r)
		}
		r.buf, r.start = nil, 0
		return nil
	}
	s.expire(r, now, opts.TTL)
	if h.shardBytes > 0 && historySize(m) > h.shardBytes {
		// It alone is over the shard's limit. A ring holds an unbroken run
		// of offsets up to its head, so the channel keeps nothing before it
		// either, rather than the shard losing everything else.
		for r.n > 0 {
			s.dropOldest(r)
			s.trimmed++
		}
		r.buf, r.start = nil, 0
		s.trimmed++
		return nil
	}
	s.makeRoom(r, opts.Size)
	r.buf[(r.start+r.n)%len(r.buf)] = m
	r.n++
	s.retained++
	s.bytes += historySize(m)
	if h.shardBytes > 0 {
		s.order = append(s.order, appended{r: r, off: r.head})
		s.enforce(h.shardBytes)
	}
	return nil
}

// Since implements History.
func (h *MemoryHistory) Since(_ context.Context, ch string, pos Position, opts HistoryOptions) ([]*Message, Position, bool, error) {
	now := h.now()
	s := h.shard(ch)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.get(ch, now)
	s.expire(r, now, opts.TTL)
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
			s.expire(r, now, ttl(ch))
			if r.n == 0 {
				r.buf, r.start = nil, 0 // nothing retained: no slots either
			}
			limit := idle
			if r.head == 0 {
				limit = idleEmpty
			}
			if r.n == 0 && now.Sub(r.lastActive) > limit && !inUse(ch) {
				delete(s.channels, ch)
			}
		}
		if h.shardBytes > 0 {
			s.enforce(h.shardBytes)
		}
		s.mu.Unlock()
	}
}

// MemoryHistoryStats are the in-memory history's figures.
type MemoryHistoryStats struct {
	Channels int   `json:"channels"` // channels it knows (published to or read recently)
	Messages int   `json:"messages"` // messages retained
	Bytes    int64 `json:"bytes"`    // what they count for against the limit
	MaxBytes int64 `json:"max_bytes,omitempty"`
	// Trimmed counts messages dropped for the byte limit before their
	// channel's size or TTL would have dropped them: when it grows, the
	// limit, not the TTL, decides how far back clients can resume.
	Trimmed uint64 `json:"trimmed"`
}

// Stats returns the history's figures, taking each shard's lock in turn.
func (h *MemoryHistory) Stats() MemoryHistoryStats {
	st := MemoryHistoryStats{MaxBytes: h.shardBytes * historyShards}
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		st.Channels += len(s.channels)
		st.Messages += s.retained
		st.Bytes += s.bytes
		st.Trimmed += s.trimmed
		s.mu.Unlock()
	}
	return st
}
