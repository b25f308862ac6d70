package hub

import (
	"context"
	"hash/maphash"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

const historyShards = 64

// MemoryHistory is the in-process History: a ring per channel, bounded by
// the channel's history size and TTL, and all channels together by an
// optional byte limit. Its epochs are random, so every restart starts new
// epochs and clients resuming across a restart get a gap signal.
//
// Lock order: trimMu, then a shard's mu (all of them in index order, to
// compact the fifo), then fifoMu. trimMu is never taken with a shard lock
// held; it serialises the goroutines that take entries out of the fifo.
type MemoryHistory struct {
	seed     maphash.Seed
	shards   [historyShards]historyShard
	now      func() time.Time
	maxBytes int64 // 0: no limit

	// What the rings retain, changed under the shards' locks.
	bytes, retained atomic.Int64
	trimmed         atomic.Uint64 // messages dropped for the limit

	// With a limit: every appended message in order, so that the oldest
	// go first. An entry whose message has left its ring another way (TTL,
	// the channel's size) is stale: skipped, and pruned by Sweep.
	trimMu sync.Mutex
	fifoMu sync.Mutex
	fifo   []appended // guarded by fifoMu; fifo[next:] are the entries
	next   int        // guarded by fifoMu
}

var (
	_ History          = (*MemoryHistory)(nil)
	_ HistoryInspector = (*MemoryHistory)(nil)
)

type historyShard struct {
	mu       sync.Mutex
	channels map[string]*ring // guarded by mu
}

// appended names one appended message: its shard, ring and offset.
type appended struct {
	s   *historyShard
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
// about maxBytes of messages at most, all channels together, counted as
// the size of their data and wire forms plus a fixed overhead. Past the
// limit the oldest messages go first, whatever their channel, as if their
// TTL had passed: a client resuming from before them gets a gap signal.
// maxBytes <= 0 means no limit.
func NewMemoryHistoryLimit(maxBytes int64) *MemoryHistory {
	h := &MemoryHistory{seed: maphash.MakeSeed(), now: time.Now, maxBytes: max(maxBytes, 0)}
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

// MinHistoryBytes is the smallest limit for NewMemoryHistoryLimit that
// holds one message of maxDataBytes of data (with the longest channel
// name and type, and an idempotency key of up to 256 bytes). A message
// over the limit is not retained: its channel's history restarts after it.
func MinHistoryBytes(maxDataBytes int) int64 {
	const envelope = 600 // the envelope's fixed text, longest channel, type, epoch, offset and time
	return 3*int64(maxDataBytes) + 2*envelope + 256 + historyOverhead
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

// dropOldest drops r's oldest message. r's shard's mu must be held.
func (h *MemoryHistory) dropOldest(r *ring) {
	m := r.buf[r.start]
	r.buf[r.start] = nil
	r.start = (r.start + 1) % len(r.buf)
	r.n--
	h.retained.Add(-1)
	h.bytes.Add(-historySize(m))
}

// empty drops all of r's messages and its slots. r's shard's mu must be
// held.
func (h *MemoryHistory) empty(r *ring) {
	for r.n > 0 {
		h.dropOldest(r)
	}
	r.buf, r.start = nil, 0
}

// expire drops messages older than ttl from the front of r. r's shard's
// mu must be held.
func (h *MemoryHistory) expire(r *ring, now time.Time, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	cutoff := now.Add(-ttl)
	for r.n > 0 && r.buf[r.start].Time.Before(cutoff) {
		h.dropOldest(r)
	}
}

// makeRoom drops r's oldest messages until one more fits within size, and
// grows r's buffer (doubling, up to size) when it is full, so that a
// channel holding one message costs one slot, not size. r's shard's mu
// must be held.
func (h *MemoryHistory) makeRoom(r *ring, size int) {
	for r.n >= size {
		h.dropOldest(r)
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

// live reports whether a is still retained. a.s.mu must be held.
func (a appended) live() bool {
	return a.r.n > 0 && a.off > a.r.head-uint64(a.r.n) && a.off <= a.r.head
}

// trimLocked drops the oldest messages while the history is over its
// limit. trimMu must be held, and no shard lock.
func (h *MemoryHistory) trimLocked() {
	for h.bytes.Load() > h.maxBytes {
		h.fifoMu.Lock()
		if h.next == len(h.fifo) {
			h.fifoMu.Unlock()
			return
		}
		a := h.fifo[h.next]
		h.popFront()
		h.fifoMu.Unlock()
		a.s.mu.Lock()
		if a.live() {
			// The oldest appended message still retained is its ring's
			// oldest: a channel's messages leave in the order they came.
			h.dropOldest(a.r)
			h.trimmed.Add(1)
		}
		a.s.mu.Unlock()
	}
}

// popFront forgets the fifo's front entry, and moves the rest to the
// start of the array once the forgotten ones are the larger part, into a
// smaller array if the fifo has shrunk. fifoMu must be held.
func (h *MemoryHistory) popFront() {
	h.fifo[h.next] = appended{}
	h.next++
	if h.next < 1024 || 2*h.next < len(h.fifo) {
		return
	}
	rest := h.fifo[h.next:]
	if n := len(rest); cap(h.fifo) > 4*n+1024 {
		h.fifo = append(make([]appended, 0, 2*n+1024), rest...)
	} else {
		copy(h.fifo, rest)
		clear(h.fifo[n:])
		h.fifo = h.fifo[:n]
	}
	h.next = 0
}

// fifoSlack is how many stale fifo entries beyond twice the retained
// messages make pruneLocked compact the fifo (a variable for tests).
var fifoSlack int64 = 1024

// pruneLocked forgets the stale entries of the fifo: those at its front,
// and, when stale entries behind a long-lived one outnumber the retained
// messages, all of them (holding every shard's lock for that pass).
// trimMu must be held, and no shard lock.
func (h *MemoryHistory) pruneLocked() {
	for {
		h.fifoMu.Lock()
		if h.next == len(h.fifo) {
			h.fifo, h.next = nil, 0
			h.fifoMu.Unlock()
			return
		}
		a := h.fifo[h.next]
		h.fifoMu.Unlock()
		a.s.mu.Lock()
		live := a.live()
		a.s.mu.Unlock()
		if live {
			break
		}
		h.fifoMu.Lock()
		h.popFront() // still a: only trimMu's holder takes entries out
		h.fifoMu.Unlock()
	}
	h.fifoMu.Lock()
	n := len(h.fifo) - h.next
	h.fifoMu.Unlock()
	if int64(n) <= 2*h.retained.Load()+fifoSlack {
		return
	}
	for i := range h.shards {
		h.shards[i].mu.Lock()
	}
	h.fifoMu.Lock()
	kept := make([]appended, 0, h.retained.Load()+fifoSlack)
	for _, a := range h.fifo[h.next:] {
		if a.live() {
			kept = append(kept, a)
		}
	}
	h.fifo, h.next = kept, 0
	h.fifoMu.Unlock()
	for i := range h.shards {
		h.shards[i].mu.Unlock()
	}
}

// Append implements History. Past the limit, the appender drops the
// oldest messages itself (waiting for another doing the same), so that
// the history is within its limit when Append returns, give or take the
// appends still under way.
func (h *MemoryHistory) Append(_ context.Context, m *Message, opts HistoryOptions) error {
	over, stale := h.append(m, opts)
	if stale && h.trimMu.TryLock() {
		// Stale entries pile up behind a long-lived one between sweeps.
		h.pruneLocked()
		h.trimLocked()
		h.trimMu.Unlock()
	}
	if over {
		h.trimMu.Lock()
		h.trimLocked()
		h.trimMu.Unlock()
	}
	return nil
}

// append appends m and reports whether the history is over its limit,
// and whether the fifo holds many more entries than retained messages.
func (h *MemoryHistory) append(m *Message, opts HistoryOptions) (over, stale bool) {
	now := h.now()
	s := h.shard(m.Channel)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.get(m.Channel, now)
	r.head++
	m.Epoch, m.Offset = r.epoch, r.head
	m.Seal()
	if opts.Size <= 0 {
		h.empty(r)
		return false, false
	}
	h.expire(r, now, opts.TTL)
	size := historySize(m)
	if h.maxBytes > 0 && size > h.maxBytes {
		// It alone is over the limit. A ring holds an unbroken run of
		// offsets up to its head, so the channel keeps nothing before it.
		h.trimmed.Add(uint64(r.n) + 1)
		h.empty(r)
		return false, false
	}
	h.makeRoom(r, opts.Size)
	r.buf[(r.start+r.n)%len(r.buf)] = m
	r.n++
	h.retained.Add(1)
	if h.maxBytes == 0 {
		h.bytes.Add(size)
		return false, false
	}
	h.fifoMu.Lock()
	h.fifo = append(h.fifo, appended{s: s, r: r, off: r.head})
	stale = int64(len(h.fifo)-h.next) > 2*h.retained.Load()+fifoSlack
	h.fifoMu.Unlock()
	return h.bytes.Add(size) > h.maxBytes, stale
}

// Since implements History.
func (h *MemoryHistory) Since(_ context.Context, ch string, pos Position, opts HistoryOptions) ([]*Message, Position, bool, error) {
	now := h.now()
	s := h.shard(ch)
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.get(ch, now)
	h.expire(r, now, opts.TTL)
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
			h.expire(r, now, ttl(ch))
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
		s.mu.Unlock()
	}
	if h.maxBytes > 0 {
		h.trimMu.Lock()
		h.pruneLocked()
		h.trimLocked()
		h.trimMu.Unlock()
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
	st := MemoryHistoryStats{MaxBytes: h.maxBytes, Messages: int(h.retained.Load()),
		Bytes: h.bytes.Load(), Trimmed: h.trimmed.Load()}
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		st.Channels += len(s.channels)
		s.mu.Unlock()
	}
	return st
}
