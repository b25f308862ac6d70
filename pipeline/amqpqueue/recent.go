package amqpqueue

import (
	"context"
	"sync"
	"time"
)

// recentIDs is the duplicate window: the event IDs this process enqueued
// within the window, at most max of them. An ID is reserved (pending)
// while its publish waits for the broker's confirm, so that a concurrent
// Enqueue of the same ID waits for the outcome instead of publishing it a
// second time; it is committed once confirmed, or released if not.
type recentIDs struct {
	window time.Duration
	max    int

	mu    sync.Mutex
	ids   map[string]*idEntry // guarded by mu
	order []*idEntry          // entries by reservation time, oldest first; guarded by mu
}

type idEntry struct {
	id      string
	at      time.Time     // when committed
	pending bool          // reserved, not yet committed or released
	done    chan struct{} // closed when committed or released
	gone    bool          // released or evicted: no longer in ids
}

func newRecentIDs(window time.Duration, max int) *recentIDs {
	return &recentIDs{window: window, max: max, ids: map[string]*idEntry{}}
}

// reserve returns, for each of ids, a reserved entry when the ID is new or
// nil when it is a duplicate: committed within the window, or earlier in
// ids. It waits for the IDs another caller holds pending. The caller
// commits or releases every entry it gets.
func (r *recentIDs) reserve(ctx context.Context, ids []string) ([]*idEntry, error) {
	for {
		r.mu.Lock()
		r.expire(time.Now())
		var wait *idEntry
		for _, id := range ids {
			if e := r.ids[id]; e != nil && e.pending {
				wait = e
				break
			}
		}
		if wait == nil {
			out := make([]*idEntry, len(ids))
			for i, id := range ids {
				if r.ids[id] != nil {
					continue // a duplicate: committed, or reserved at an earlier index
				}
				e := &idEntry{id: id, pending: true, done: make(chan struct{})}
				r.ids[id] = e
				r.order = append(r.order, e)
				out[i] = e
			}
			r.mu.Unlock()
			return out, nil
		}
		r.mu.Unlock()
		select {
		case <-wait.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// commit records that e was stored: its ID is a duplicate for the window.
func (r *recentIDs) commit(e *idEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e.pending = false
	e.at = time.Now()
	close(e.done)
}

// release forgets e, whose publish failed.
func (r *recentIDs) release(e *idEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e.pending = false
	e.gone = true
	if r.ids[e.id] == e {
		delete(r.ids, e.id)
	}
	close(e.done)
}

// expire drops the committed entries older than the window, and the
// oldest ones past max. A pending entry at the head stops it for now.
// r.mu must be held.
func (r *recentIDs) expire(now time.Time) {
	n := 0
	for _, e := range r.order {
		if !e.gone {
			if e.pending || (now.Sub(e.at) < r.window && len(r.ids) <= r.max) {
				break
			}
			e.gone = true
			delete(r.ids, e.id)
		}
		n++
	}
	if n > 0 {
		clear(r.order[:n])
		r.order = r.order[n:]
	}
}
