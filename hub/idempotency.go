package hub

import (
	"context"
	"sync"
	"time"
)

// idempotency remembers the answer to each publish that carried an
// idempotency key, for a window, so a retried publish delivers nothing new.
// It holds at most max keys; the oldest go first.
type idempotency struct {
	window time.Duration
	max    int

	mu      sync.Mutex
	entries map[string]*idemEntry // guarded by mu
	order   []idemRef             // insertion order, for expiry; guarded by mu
	head    int                   // first live element of order; guarded by mu
}

type idemEntry struct {
	done    chan struct{} // closed when results/err are set
	results []PublishResult
	err     error
	expires time.Time
}

type idemRef struct {
	key   string
	entry *idemEntry
}

func newIdempotency(window time.Duration, max int) *idempotency {
	return &idempotency{window: window, max: max, entries: make(map[string]*idemEntry)}
}

// begin returns the entry for key and whether the caller owns it (must
// publish and call finish). A non-owner waits on entry.done.
func (c *idempotency) begin(key string, now time.Time) (*idemEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
	if e := c.entries[key]; e != nil {
		return e, false
	}
	e := &idemEntry{done: make(chan struct{}), expires: now.Add(c.window)}
	c.entries[key] = e
	c.order = append(c.order, idemRef{key: key, entry: e})
	for len(c.entries) > c.max {
		c.evictOldestLocked()
	}
	return e, true
}

// finish records the outcome. A failed publish forgets the key so that a
// retry publishes again.
func (c *idempotency) finish(key string, e *idemEntry, results []PublishResult, err error) {
	c.mu.Lock()
	e.results, e.err = results, err
	if err != nil && c.entries[key] == e {
		delete(c.entries, key)
	}
	c.mu.Unlock()
	close(e.done)
}

// wait returns the outcome of a publish owned by another caller.
func (e *idemEntry) wait(ctx context.Context) ([]PublishResult, error) {
	select {
	case <-e.done:
		return e.results, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *idempotency) expireLocked(now time.Time) {
	for c.head < len(c.order) && !c.order[c.head].entry.expires.After(now) {
		c.evictOldestLocked()
	}
}

func (c *idempotency) evictOldestLocked() {
	if c.head >= len(c.order) {
		return
	}
	ref := c.order[c.head]
	c.order[c.head] = idemRef{}
	c.head++
	if c.entries[ref.key] == ref.entry {
		delete(c.entries, ref.key)
	}
	if c.head > 1024 && c.head*2 > len(c.order) {
		c.order = append(c.order[:0], c.order[c.head:]...)
		c.head = 0
	}
}

func (c *idempotency) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
