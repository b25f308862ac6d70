package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Transport is the connection a subscription uses.
type Transport string

// Transports.
const (
	SSE       Transport = "sse"
	WebSocket Transport = "ws"
)

// Event is one message received on a subscription.
type Event struct {
	Channel string
	Epoch   string
	Offset  uint64
	Type    string
	// Data is the published JSON value. It belongs to the event and may be
	// kept after OnEvent returns.
	Data json.RawMessage
	// Time is the publish time; zero if the server sent none.
	Time time.Time
}

// SubscribeOptions describe a subscription.
type SubscribeOptions struct {
	// Channels to subscribe to; at least one.
	Channels []string
	// Transport is the connection to use. Zero means SSE.
	Transport Transport
	// Cursor is where to resume (a value of Subscription.Cursor); the
	// server replays what came after it. Empty means live from now.
	Cursor string
	// LocalAddr is the IP address to connect from, e.g. "127.0.0.2".
	// Empty lets the system choose.
	LocalAddr string

	// Callbacks run on the subscription's goroutine, in order, and must not
	// block long: while one runs, nothing is read from the connection.

	// OnEvent receives each message, in order, with no duplicate.
	OnEvent func(Event)
	// OnGap says history did not reach back far enough for channels:
	// messages were missed there. The messages still in history follow.
	OnGap func(channels []string)
	// OnConnect is called after each (re)connection's replay of missed
	// messages is complete; live messages follow.
	OnConnect func()
	// OnDisconnect is called each time an established connection ends,
	// with the reason (ErrClosed after Close).
	OnDisconnect func(err error)

	// MinBackoff and MaxBackoff bound the wait before a reconnection,
	// which doubles after each failed attempt and is jittered. Zero means
	// 100ms and 5s. A server's SSE "retry:" hint raises the minimum.
	MinBackoff, MaxBackoff time.Duration
	// NoReconnect ends the subscription when its first connection ends.
	NoReconnect bool
}

// Subscription is a running subscription. It keeps one connection open,
// reconnecting with its cursor after the connection drops so that no
// message is missed or repeated, until Close, the end of its context, or an
// error that reconnecting cannot fix.
type Subscription struct {
	c      *Client
	st     *streamer
	opts   SubscribeOptions // normalized; Channels is a private copy
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
	err    error // written before done is closed

	mu  sync.Mutex
	cur cursorState // written by the goroutine under mu; see cursorState

	// Owned by the subscription's goroutine.
	sse       sseParser
	env       envelope
	buf       []byte   // WebSocket frame buffer
	types     []string // interned event types
	connected bool     // this connection's replay is complete
	confirmed []bool   // WebSocket: channels the server confirmed, by index in opts.Channels
	dupes     uint64   // messages dropped as already seen (for tests)
}

// Defaults of SubscribeOptions.
const (
	defaultMinBackoff = 100 * time.Millisecond
	defaultMaxBackoff = 5 * time.Second
	// maxTypes bounds the interned event types of a subscription.
	maxTypes = 32
)

// Subscribe starts a subscription and returns once its first connection is
// established (an SSE response of 200, an upgraded WebSocket). It returns
// the first attempt's error otherwise — an *Error when the server refused.
// ctx bounds the whole subscription, not only this call.
func (c *Client) Subscribe(ctx context.Context, opts SubscribeOptions) (*Subscription, error) {
	if len(opts.Channels) == 0 {
		return nil, errors.New("client: no channels to subscribe to")
	}
	switch opts.Transport {
	case "":
		opts.Transport = SSE
	case SSE, WebSocket:
	default:
		return nil, fmt.Errorf("client: unknown transport %q", opts.Transport)
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = defaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = defaultMaxBackoff
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	opts.Channels = slices.Clone(opts.Channels)

	st, err := c.streamer(opts.LocalAddr)
	if err != nil {
		return nil, err
	}
	s := &Subscription{
		c:         c,
		st:        st,
		opts:      opts,
		done:      make(chan struct{}),
		confirmed: make([]bool, len(opts.Channels)),
	}
	if !s.cur.merge([]byte(opts.Cursor), s.internChannel) {
		s.cur.raw = opts.Cursor // the server will say what is wrong with it
	}
	s.ctx, s.cancel = context.WithCancelCause(ctx)

	ready := make(chan error, 1)
	go s.run(ready)
	if err := <-ready; err != nil {
		<-s.done
		return nil, err
	}
	return s, nil
}

// Cursor returns the subscription's cursor: the position, per channel,
// after the last message delivered or announced by the server. A message
// counts once OnEvent has returned for it, so inside OnEvent the cursor
// does not yet cover that message, and after Close (or Done) it covers
// every message delivered. Pass it as SubscribeOptions.Cursor to resume.
func (s *Subscription) Cursor() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.cur.appendTo(nil))
}

// Close stops the subscription and waits until its goroutine has returned.
// It is safe to call more than once and from any goroutine but the
// subscription's callbacks.
func (s *Subscription) Close() error {
	s.cancel(ErrClosed)
	<-s.done
	return nil
}

// Done is closed when the subscription has stopped.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns why the subscription stopped: nil while it runs or after
// Close, the context's error after its context ended, otherwise the error
// that reconnecting cannot fix (an *Error, ErrProtocol, a WebSocket close
// code that forbids reconnecting, or the last error with NoReconnect).
func (s *Subscription) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// run is the subscription's goroutine: it connects, reads until the
// connection ends, and reconnects. The first attempt's outcome goes to
// ready.
func (s *Subscription) run(ready chan<- error) {
	defer close(s.done)
	defer s.cancel(nil) // release the context's resources
	reported, failed := false, false
	attempt := 0
	for {
		err := s.session(func(err error) {
			if !reported {
				reported, failed = true, err != nil
				ready <- err
			}
		})
		if failed {
			s.err = err // Subscribe returns it
			return
		}
		if s.ctx.Err() != nil {
			s.finish(context.Cause(s.ctx))
			return
		}
		if s.connected {
			attempt = 0 // the connection worked: start the backoff over
		}
		if s.opts.NoReconnect || !retryable(err) {
			s.finish(err)
			return
		}
		t := time.NewTimer(s.backoff(attempt, err))
		select {
		case <-s.ctx.Done():
			t.Stop()
			s.finish(context.Cause(s.ctx))
			return
		case <-t.C:
		}
		attempt++
	}
}

// finish records why the subscription stopped.
func (s *Subscription) finish(err error) {
	if errors.Is(err, ErrClosed) {
		err = nil
	}
	s.err = err
}

// session makes one connection and reads it until it ends. opened is
// called with the outcome of connecting. It returns why the connection
// could not be made or why it ended.
func (s *Subscription) session(opened func(error)) error {
	s.connected = false
	clear(s.confirmed)
	if s.opts.Transport == WebSocket {
		conn, err := s.dialWS()
		opened(err)
		if err != nil {
			return err
		}
		err = s.readWS(conn)
		s.disconnected(err)
		return err
	}
	resp, err := s.getSSE()
	opened(err)
	if err != nil {
		return err
	}
	err = s.readSSE(resp.Body)
	_ = resp.Body.Close()
	s.disconnected(err)
	return err
}

// disconnected reports the end of an established connection.
func (s *Subscription) disconnected(err error) {
	if s.ctx.Err() != nil {
		err = context.Cause(s.ctx)
	}
	if s.opts.OnDisconnect != nil {
		s.opts.OnDisconnect(err)
	}
}

// retryable reports whether reconnecting after err may help.
func retryable(err error) bool {
	var he *Error
	var ce *closeError
	switch {
	case errors.As(err, &he):
		return he.temporary()
	case errors.As(err, &ce):
		return ce.reconnect()
	case errors.Is(err, ErrProtocol):
		return false
	}
	return true // network errors, the end of a stream
}

// backoff returns the wait before reconnection attempt (0 for the first
// after a working connection): exponential from the minimum — or the
// server's retry hint — up to the maximum, with jitter in [d/2, d).
func (s *Subscription) backoff(attempt int, err error) time.Duration {
	base := max(s.opts.MinBackoff, s.sse.retry)
	ceil := max(s.opts.MaxBackoff, base)
	d := base
	for i := 0; i < attempt && d < ceil; i++ {
		d *= 2
	}
	d = min(d, ceil)
	d = d/2 + rand.N(d-d/2+1)
	var he *Error
	if errors.As(err, &he) && he.retryAfter > d {
		d = he.retryAfter
	}
	return d
}

// internChannel returns ch as a string, reusing the subscription's copy of
// the name when there is one.
func (s *Subscription) internChannel(ch []byte) string {
	for _, name := range s.opts.Channels {
		if name == string(ch) {
			return name
		}
	}
	return string(ch)
}

// internType returns typ as a string, reusing a previous one.
func (s *Subscription) internType(typ []byte) string {
	for _, t := range s.types {
		if t == string(typ) {
			return t
		}
	}
	t := string(typ)
	if len(s.types) < maxTypes {
		s.types = append(s.types, t)
	}
	return t
}

// deliver hands the decoded envelope e to OnEvent, unless it was already
// seen, then advances the cursor past it.
func (s *Subscription) deliver(e *envelope) {
	i := s.cur.index(e.channel)
	ev := Event{Offset: e.offset}
	if i >= 0 {
		p := &s.cur.entries[i]
		ev.Channel = p.channel
		if p.epoch == string(e.epoch) {
			if e.offset <= p.offset {
				s.dupes++
				return
			}
			ev.Epoch = p.epoch
		}
	} else {
		ev.Channel = s.internChannel(e.channel)
	}
	if ev.Epoch == "" {
		ev.Epoch = string(e.epoch)
	}
	if s.opts.OnEvent != nil {
		if len(e.typ) == 0 {
			ev.Type = "message"
		} else {
			ev.Type = s.internType(e.typ)
		}
		ev.Data = slices.Clone(e.data)
		ev.Time = parseTime(e.time)
		s.opts.OnEvent(ev)
	}
	s.mu.Lock()
	if i < 0 {
		s.cur.entries = append(s.cur.entries, position{channel: ev.Channel, epoch: ev.Epoch, offset: ev.Offset})
		s.cur.raw = ""
	} else {
		s.cur.entries[i].epoch, s.cur.entries[i].offset = ev.Epoch, ev.Offset
	}
	s.mu.Unlock()
}

// mergeCursor records a cursor sent by the server.
func (s *Subscription) mergeCursor(text []byte) {
	s.mu.Lock()
	s.cur.merge(text, s.internChannel)
	s.mu.Unlock()
}

// gap reports a gap for channels.
func (s *Subscription) gap(channels []string) {
	if s.opts.OnGap != nil && len(channels) > 0 {
		s.opts.OnGap(channels)
	}
}

// replayed marks this connection's replay as complete.
func (s *Subscription) replayed() {
	if s.connected {
		return
	}
	s.connected = true
	if s.opts.OnConnect != nil {
		s.opts.OnConnect()
	}
}
