package transport

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/heraldhq/herald/hub"
)

// Encoder turns one streaming transport's session items into bytes. Each
// connection has its own Encoder, which may keep per-connection state (the
// SSE cursor, the iframe callback name). Its methods are called only from
// the connection's writer, one at a time, and never block: they append to
// dst and return it.
//
// Message bytes must come from the message's shared encodings (Envelope,
// SSE()): an Encoder adds per-connection parts around them but never
// re-encodes a message.
type Encoder interface {
	// AppendOpen appends what the stream starts with (a retry hint,
	// padding). It is called once, before any item.
	AppendOpen(dst []byte) []byte
	// AppendItem adds the wire form of one queued item to b: bytes of its
	// own to b.Buf, the message's shared encodings with b.Share.
	AppendItem(b *Batch, it *hub.Item)
	// AppendHeartbeat appends a keep-alive that clients ignore.
	AppendHeartbeat(dst []byte) []byte
	// AppendClose appends what the stream ends with when the hub closed
	// the session for reason d (for SSE on shutdown: a retry hint). It may
	// append nothing.
	AppendClose(dst []byte, d hub.Disconnect) []byte
}

// Wakeup is the signal from a session to its writer: a channel of capacity
// one that Wake fills without blocking. Pass w.Wake as the session's Wake
// and w as StreamOptions.Wake.
type Wakeup chan struct{}

// NewWakeup returns an empty Wakeup.
func NewWakeup() Wakeup { return make(Wakeup, 1) }

// Wake signals the writer. It never blocks; wake-ups coalesce.
func (w Wakeup) Wake() {
	select {
	case w <- struct{}{}:
	default:
	}
}

// StreamOptions configure Stream.
type StreamOptions struct {
	// Encoder encodes the stream. Required.
	Encoder Encoder
	// Wake receives the session's wake-ups. Required.
	Wake <-chan struct{}
	// Heartbeat is how long the stream may stay silent before a heartbeat
	// is written. Zero means 25s.
	Heartbeat time.Duration
	// WriteTimeout bounds each write; a write that takes longer ends the
	// connection. Zero means 10s.
	WriteTimeout time.Duration
	// WriteDelay, when positive, makes the writer wait this long after a
	// wake-up before it drains the queue, so that messages arriving
	// meanwhile leave in the same write: fewer system calls on both ends
	// for up to WriteDelay more latency. Zero writes at once.
	WriteDelay time.Duration
}

// Item slices larger than this are not kept between drains, so that an
// idle connection does not hold a burst's memory.
const keepItems = 1024

// Stream is the writer loop shared by the streaming transports (SSE,
// forever-iframe). The caller has opened sess (with a Wake feeding
// opts.Wake) and set the response headers; Stream writes the stream's
// opening, then, each time the session wakes it, drains every queued item,
// encodes them into one buffer and writes and flushes them at once. It
// writes a heartbeat when the stream has been silent for opts.Heartbeat.
//
// Stream returns when ctx ends (the client left), a write fails or takes
// longer than opts.WriteTimeout, or the hub closes the session (slow
// consumer, shutdown — after writing the encoder's closing bytes). It always
// closes sess before returning and returns the reason the session ended
// with. A writer blocked in a write when the hub closes its session (a
// client that stopped reading) notices when that write ends: at the latest
// after opts.WriteTimeout. It runs on the caller's goroutine and starts
// none.
func Stream(ctx context.Context, w http.ResponseWriter, rc *http.ResponseController, sess *hub.Session, opts StreamOptions) hub.Disconnect {
	defer sess.Close(hub.DisconnectNormal) // no-op if already closed: the first reason wins

	heartbeat := opts.Heartbeat
	if heartbeat <= 0 {
		heartbeat = 25 * time.Second
	}
	writeTimeout := opts.WriteTimeout
	if writeTimeout <= 0 {
		writeTimeout = 10 * time.Second
	}
	enc := opts.Encoder
	// The write deadline is moved forward only once half of it is spent:
	// re-arming a runtime timer on every write costs more than the write's
	// own bookkeeping, and a stalled client is still cut off after between
	// writeTimeout/2 and writeTimeout.
	var deadline time.Time
	write := func(segs [][]byte) error {
		if now := time.Now(); deadline.Sub(now) < writeTimeout/2 {
			deadline = now.Add(writeTimeout)
			if err := rc.SetWriteDeadline(deadline); err != nil && !errors.Is(err, http.ErrNotSupported) {
				return err
			}
		}
		for _, p := range segs {
			if _, err := w.Write(p); err != nil {
				return err
			}
		}
		return rc.Flush()
	}

	// The ticker is never reset (that too would re-arm a timer per write):
	// a tick writes a heartbeat only if nothing was written since the last
	// tick, so a silent stream hears from the server at least every
	// 2×heartbeat and a busy one gets no heartbeats at all.
	ticker := time.NewTicker(heartbeat)
	defer ticker.Stop()
	wrote := false
	var delay *time.Timer
	if opts.WriteDelay > 0 {
		delay = time.NewTimer(opts.WriteDelay)
		delay.Stop()
		defer delay.Stop()
	}
	var b Batch
	b.Buf = enc.AppendOpen(make([]byte, 0, 4096))
	var items []hub.Item
	var segs [][]byte
	for {
		items = sess.Drain(items[:0])
		delivered := 0
		for i := range items {
			if items[i].Kind == hub.ItemMessage {
				delivered++
			}
			enc.AppendItem(&b, &items[i])
		}
		clear(items) // drop message references until the next drain
		if cap(items) > keepItems {
			items = nil
		}
		if b.Len() > 0 {
			segs = b.Segments(segs[:0])
			err := write(segs)
			clear(segs)
			b.Reset()
			if err != nil {
				sess.Close(hub.DisconnectWriteError)
				d, _ := sess.Closed()
				return d
			}
			sess.Delivered(delivered)
			wrote = true
		}

		if d, closed := sess.Closed(); closed {
			// The hub closed the session (its queue is already dropped):
			// say goodbye if the transport has something to say, and end.
			if b.Buf = enc.AppendClose(b.Buf, d); b.Len() > 0 {
				_ = write(b.Segments(segs[:0]))
			}
			return d
		}

		select {
		case <-ctx.Done():
			sess.Close(hub.DisconnectNormal)
			d, _ := sess.Closed()
			return d
		case <-opts.Wake:
			if delay != nil {
				delay.Reset(opts.WriteDelay)
				select {
				case <-delay.C:
				case <-ctx.Done():
				}
			}
		case <-ticker.C:
			if !wrote {
				b.Buf = enc.AppendHeartbeat(b.Buf)
			}
			wrote = false
		}
	}
}
