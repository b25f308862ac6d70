package engine

import "sync"

// worker is one writer goroutine of the poller mode. Connections that
// have something to write queue themselves with push (from their session's
// Wake, from the poller when a blocked socket becomes writable, from the
// wheel for a heartbeat); the worker flushes them in order. A connection
// is queued at most once at a time (Conn.sched), so a queue holds at most
// one entry per connection.
type worker struct {
	e      *Engine
	signal chan struct{} // capacity 1: queue went non-empty
	done   chan struct{}
	once   sync.Once

	mu    sync.Mutex
	queue []*Conn // guarded by mu

	s scratch // owned by the worker goroutine
}

func newWorker(e *Engine) *worker {
	return &worker{e: e, signal: make(chan struct{}, 1), done: make(chan struct{})}
}

// push queues c. It never blocks.
func (w *worker) push(c *Conn) {
	w.mu.Lock()
	w.queue = append(w.queue, c)
	first := len(w.queue) == 1
	w.mu.Unlock()
	if first {
		select {
		case w.signal <- struct{}{}:
		default:
		}
	}
}

func (w *worker) stop() { w.once.Do(func() { close(w.done) }) }

func (w *worker) run() {
	var batch []*Conn
	for {
		select {
		case <-w.signal:
		case <-w.done:
			return
		}
		for {
			w.mu.Lock()
			batch, w.queue = w.queue, batch[:0]
			w.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i, c := range batch {
				c.flush(&w.s)
				batch[i] = nil
			}
			if cap(batch) > 4096 {
				batch = nil
			}
		}
	}
}
