// Package nats is a broker.Broker on core NATS (not JetStream: channel
// history lives elsewhere, see history/jshistory). Each Herald node has
// its own connection, subscribes to the channels that have subscribers on
// it (broker.Subscriber), and publishes every message to its channel's
// subject; NATS echoes a node's own messages back to it, so every node
// receives through its handler what it publishes.
//
// Subjects. A channel's messages travel on
//
//	<prefix>.ch.<channel name in base64url, without padding>
//
// ("herald.ch.dGhyZWFkOjQy" for channel "thread:42" under the default
// prefix; see Subject and ChannelOf). Each message's payload is the
// channel message in broker's wire form (broker.Encode, broker.Decode);
// there are no headers. Other services may subscribe to these subjects,
// or to "<prefix>.ch.>" for every channel, and may publish to them in the
// same form: a payload that does not decode, or that names another
// channel than its subject, is counted (Stats.Malformed) and dropped.
//
// Delivery. Each subscribed channel is one NATS subscription, but the
// broker runs a fixed number of goroutines whatever their number: a
// router and Config.Workers workers (see delivery.go); a subscribed
// channel costs about half a KiB (BenchmarkSubscribe). Every subscription
// delivers, in the order the server sent its messages, into one intake
// queue (Config.IntakeMessages); the router sorts the messages into
// per-channel queues, and the workers call the handler, each for one
// channel at a time: the handler is called for one channel in publish
// order and never concurrently, and for different channels concurrently.
// Messages received but not yet handled are bounded per channel
// (Config.PendingMessages, Config.PendingBytes); past the bound the newest
// are dropped, counted and logged. A handler call that blocks holds up its
// channel and one worker, not the other channels, until every worker is
// blocked. If the router itself falls behind the network, the intake
// queue fills and nats.go drops what arrives, counted and logged the same
// way. Delivery is at-most-once: a node that is disconnected misses what
// is published meanwhile, and reads it from history.
//
// Outages. New does not fail when the server is down: the connection
// retries for ever, in the background, so that a node boots during an
// outage of its engine. While disconnected, Publish buffers up to
// Config.ReconnectBufSize bytes (sent when the connection comes back) and
// then fails; Health reports the state. On reconnecting, nats.go sends
// every subscription again before anything else, so subscriptions are
// restored without the hub's help.
package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	neturl "net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/heraldhq/herald/broker"
)

// Broker is a broker.Broker on core NATS. It is safe for concurrent use.
// The zero value is not usable; call New.
type Broker struct {
	cfg    Config
	log    *slog.Logger
	nc     *natsgo.Conn
	engine string // Health.Engine, computed once

	handler atomic.Pointer[broker.Handler]
	closed  atomic.Bool

	// Lock order: mu, then a lane's mu; runq's lock is never held with
	// another. mu is read-locked by the router for every message and
	// write-locked only to add or remove a lane: nats.go serialises
	// subscriptions on its connection lock anyway, so sharding it would
	// not let Subscribe calls run more in parallel.
	mu    sync.RWMutex
	lanes map[string]*lane // by subject; guarded by mu

	intake     chan *natsgo.Msg // every subscription's messages, in arrival order
	runq       *runQueue        // lanes with messages to hand to the handler
	done       chan struct{}    // closed by Shutdown: the router stops
	goroutines sync.WaitGroup   // the router and the workers

	// Connection state, kept by the connection's event handlers so that
	// Health never waits for nats.go's connection lock (held while it
	// dials during an outage).
	state struct {
		mu        sync.Mutex
		connected bool   // guarded by mu
		err       string // last connection error; guarded by mu
		events    int    // handler calls so far; guarded by mu
	}
	reconnects    atomic.Uint64
	slowConsumers atomic.Uint64
	// dropped counts the messages dropped for a full lane, and the
	// intake-full episodes (nats.go does not say how many each lost), for
	// Health.Dropped.
	dropped   atomic.Uint64
	malformed atomic.Uint64

	shutdownOnce sync.Once
	stopped      chan struct{} // closed when Shutdown's work is done
}

var (
	_ broker.Broker         = (*Broker)(nil)
	_ broker.Shutdowner     = (*Broker)(nil)
	_ broker.Subscriber     = (*Broker)(nil)
	_ broker.HealthReporter = (*Broker)(nil)
)

// roundTripTimeout bounds Subscribe's wait for the server, and Shutdown's
// flush, when their context has no deadline: nats.go needs one.
const roundTripTimeout = 5 * time.Second

// New returns a broker connected, or connecting, to the NATS server(s) at
// url (comma-separated URLs; credentials may be in them). Empty url means
// nats://127.0.0.1:4222.
//
// New does not fail when no server can be reached: the connection keeps
// trying in the background (nats.go's RetryOnFailedConnect, with unlimited
// reconnects), Health reports Connected false meanwhile, Publish buffers
// as during any outage and Subscribe waits for the connection within its
// context. New fails only for an invalid config or URL. The broker owns
// the connection: Shutdown closes it.
func New(url string, cfg Config) (*Broker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if url == "" {
		url = natsgo.DefaultURL
	}
	b := &Broker{
		cfg:     cfg,
		log:     cfg.Logger,
		engine:  engineName(url),
		lanes:   make(map[string]*lane),
		intake:  make(chan *natsgo.Msg, cfg.IntakeMessages),
		runq:    newRunQueue(),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	name := "herald"
	if cfg.NodeID != "" {
		name += "-" + cfg.NodeID
	}
	bufSize := cfg.ReconnectBufSize
	if bufSize < 0 {
		bufSize = -1
	}
	opts := []natsgo.Option{
		natsgo.Name(name),
		natsgo.MaxReconnects(-1),
		natsgo.RetryOnFailedConnect(true),
		natsgo.ReconnectWait(cfg.ReconnectWait),
		natsgo.ReconnectJitter(cfg.ReconnectJitter, cfg.ReconnectJitter),
		natsgo.ReconnectBufSize(bufSize),
		natsgo.FlusherTimeout(cfg.WriteTimeout),
		natsgo.PingInterval(cfg.PingInterval),
		natsgo.MaxPingsOutstanding(maxPingsOutstanding),
		// The handlers run on nats.go's callback goroutine, one at a
		// time, in the order of the events. They use the *Conn they are
		// given, never b.nc: the first may run before New sets it.
		natsgo.ConnectHandler(b.onConnect),
		natsgo.ReconnectHandler(b.onReconnect),
		natsgo.DisconnectErrHandler(b.onDisconnect),
		natsgo.ReconnectErrHandler(b.onReconnectErr),
		natsgo.ClosedHandler(b.onClosed),
		natsgo.ErrorHandler(b.onAsyncError),
	}
	nc, err := natsgo.Connect(url, append(opts, cfg.Options...)...)
	if err != nil {
		return nil, fmt.Errorf("broker/nats: connect to %s: %w", strings.TrimPrefix(b.engine, "nats "), err)
	}
	b.nc = nc
	// The connect handler reports a connection made within Connect a
	// moment later; set the state now unless an event came first.
	connected := nc.IsConnected()
	b.state.mu.Lock()
	if b.state.events == 0 {
		b.state.connected = connected
	}
	b.state.mu.Unlock()
	b.goroutines.Go(b.route)
	for range cfg.Workers {
		b.goroutines.Go(b.work)
	}
	return b, nil
}

// Run registers the handler that receives every message of the channels
// this node subscribed to, its own included.
func (b *Broker) Run(h broker.Handler) error {
	if b.closed.Load() {
		return broker.ErrClosed
	}
	b.handler.Store(&h)
	return nil
}

// bufPool holds encoding buffers: nats.go copies what it publishes.
var bufPool = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBuf is the largest buffer put back in bufPool.
const maxPooledBuf = 256 << 10

// Publish sends m to its channel's subject. It returns once the message
// is in the connection's write buffer (or, while disconnected, in the
// reconnect buffer): it does not wait for the server. It fails with
// broker.ErrClosed after Shutdown, with ctx's error if ctx has ended, and
// with an error wrapping natsgo.ErrReconnectBufExceeded while
// disconnected with a full reconnect buffer.
//
// Publish does not watch ctx once it has started: it may block for up to
// Config.WriteTimeout on a server that stopped reading, and, during an
// outage, for as long as nats.go holds its connection lock to dial a
// server (nats.go's dial timeout, 2s), which is immediate when the
// server's host refuses the connection.
func (b *Broker) Publish(ctx context.Context, m *broker.Message) error {
	if b.closed.Load() {
		return broker.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	bp := bufPool.Get().(*[]byte)
	buf := broker.AppendEncode((*bp)[:0], m)
	err := b.nc.Publish(Subject(b.cfg.Prefix, m.Channel), buf)
	if cap(buf) <= maxPooledBuf {
		*bp = buf
		bufPool.Put(bp)
	}
	if err != nil {
		if b.closed.Load() {
			return broker.ErrClosed
		}
		return fmt.Errorf("broker/nats: publish to %q: %w", m.Channel, err)
	}
	return nil
}

// Subscribe subscribes this node to channel and returns once the server
// has the subscription (a round trip), or when ctx ends; without a
// deadline in ctx it waits at most 5s. During an outage it waits for the
// connection to come back. On error the channel is not subscribed.
// Subscribing a subscribed channel only waits for the round trip.
//
// If the channel's previous subscription is still handing a message to
// the handler, Subscribe waits for that call to return: the handler is
// never called twice at once for one channel, and never for a message of
// the previous subscription once Subscribe has returned.
//
// Subscribe and Unsubscribe calls for one channel must not overlap (the
// hub serialises them, see broker.Subscriber).
func (b *Broker) Subscribe(ctx context.Context, channel string) error {
	subject := Subject(b.cfg.Prefix, channel)
	b.mu.Lock()
	if b.closed.Load() {
		b.mu.Unlock()
		return broker.ErrClosed
	}
	l := b.lanes[subject]
	if l == nil {
		l = &lane{channel: channel, subject: subject}
		b.lanes[subject] = l
	}
	l.refs++
	b.mu.Unlock()
	defer b.unref(l)

	for {
		l.mu.Lock()
		if l.sub != nil || l.subscribing {
			l.mu.Unlock()
			if err := b.flush(ctx); err != nil {
				return fmt.Errorf("broker/nats: subscribe to %q: %w", channel, err)
			}
			return nil
		}
		if !l.scheduled {
			l.subscribing = true
			l.mu.Unlock()
			break
		}
		if l.idle == nil {
			l.idle = make(chan struct{})
		}
		idle := l.idle
		l.mu.Unlock()
		select {
		case <-idle:
		case <-b.done:
			return broker.ErrClosed // the workers have stopped: idle may never close
		case <-ctx.Done():
			return fmt.Errorf("broker/nats: subscribe to %q: previous subscription still delivering: %w", channel, ctx.Err())
		}
	}
	sub, err := b.nc.ChanSubscribe(subject, b.intake)
	l.mu.Lock()
	l.subscribing = false
	if err == nil {
		l.sub = sub
	}
	l.mu.Unlock()
	if err != nil {
		if b.closed.Load() {
			return broker.ErrClosed
		}
		return fmt.Errorf("broker/nats: subscribe to %q: %w", channel, err)
	}
	if err := b.flush(ctx); err != nil {
		b.unsubscribe(l, sub)
		if b.closed.Load() {
			return broker.ErrClosed
		}
		return fmt.Errorf("broker/nats: subscribe to %q: %w", channel, err)
	}
	return nil
}

// unref releases a reference Subscribe took on l.
func (b *Broker) unref(l *lane) {
	b.mu.Lock()
	l.refs--
	l.mu.Lock()
	if l.removable() && b.lanes[l.subject] == l {
		delete(b.lanes, l.subject)
	}
	l.mu.Unlock()
	b.mu.Unlock()
}

// Unsubscribe removes the channel's subscription. Delivery stops at once,
// but for a handler call in progress: the messages received and not yet
// handled are dropped. The server learns of it asynchronously and
// Unsubscribe does not wait for it. Unsubscribing a channel that is not
// subscribed does nothing.
func (b *Broker) Unsubscribe(_ context.Context, channel string) error {
	b.mu.RLock()
	l := b.lanes[Subject(b.cfg.Prefix, channel)]
	b.mu.RUnlock()
	if l != nil {
		b.unsubscribe(l, nil)
	}
	return nil
}

// unsubscribe removes l's subscription, if it is only (when only is not
// nil), and drops l's queued messages.
func (b *Broker) unsubscribe(l *lane, only *natsgo.Subscription) {
	l.mu.Lock()
	sub := l.sub
	if sub == nil || (only != nil && sub != only) {
		l.mu.Unlock()
		return
	}
	l.sub = nil
	l.q.reset()
	l.bytes, l.slow = 0, false
	l.mu.Unlock()
	// It fails only when the subscription or the connection is closed
	// already: either way it is gone.
	_ = sub.Unsubscribe()
	b.removeLane(l)
}

// flush waits until the server has processed everything sent so far.
func (b *Broker) flush(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, roundTripTimeout)
		defer cancel()
	}
	for {
		err := b.nc.FlushWithContext(ctx)
		// A flush in flight when the connection drops fails with
		// ErrConnectionClosed, although the connection is only
		// reconnecting: try again, it waits for the reconnection.
		if !errors.Is(err, natsgo.ErrConnectionClosed) || b.nc.IsClosed() {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Health reports the connection's state as the connection's event
// handlers last recorded it. It does not touch the network or nats.go's
// locks.
func (b *Broker) Health() broker.Health {
	b.state.mu.Lock()
	defer b.state.mu.Unlock()
	h := broker.Health{
		Connected:  b.state.connected,
		Engine:     b.engine,
		Reconnects: b.reconnects.Load(),
		Dropped:    b.dropped.Load(),
	}
	if !h.Connected {
		h.Err = b.state.err
	}
	return h
}

// Stats counts messages the broker dropped.
type Stats struct {
	// SlowConsumers counts the episodes in which a channel's handler fell
	// behind past Config.PendingMessages or Config.PendingBytes and the
	// channel's newest messages were dropped; an episode ends when the
	// handler catches up. It also counts, per channel, the episodes in
	// which the broker's intake queue was full (its router fell behind the
	// network) and nats.go dropped the channel's messages.
	SlowConsumers uint64
	// Malformed counts received messages that were not in broker's wire
	// form or named another channel than their subject's.
	Malformed uint64
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	return Stats{SlowConsumers: b.slowConsumers.Load(), Malformed: b.malformed.Load()}
}

// Shutdown stops delivery, sends the server what Publish has written (if
// connected and ctx allows), closes the connection (which ends every
// subscription), and waits for every handler call in progress to return
// and the broker's goroutines to exit. It is idempotent and safe to call
// concurrently; it returns ctx.Err() if ctx ends first, the work then
// going on in the background. Publish returns broker.ErrClosed from the
// first call on, and the handler is not called again once Shutdown has
// returned nil.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.closed.Store(true)
	b.shutdownOnce.Do(func() { go b.shutdown(ctx) })
	select {
	case <-b.stopped:
		return nil
	default:
	}
	select {
	case <-b.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// shutdown does Shutdown's work, with the first caller's ctx. It runs on a
// goroutine of its own, which ends when every handler call has returned.
func (b *Broker) shutdown(ctx context.Context) {
	defer close(b.stopped)
	// closed is set: the workers hand nothing more to the handler. Stop
	// them and the router now; messages still queued are dropped.
	b.runq.close()
	close(b.done)
	if b.Health().Connected && ctx.Err() == nil {
		fctx, cancel := ctx, context.CancelFunc(func() {})
		if _, ok := ctx.Deadline(); !ok {
			fctx, cancel = context.WithTimeout(ctx, roundTripTimeout)
		}
		_ = b.nc.FlushWithContext(fctx)
		cancel()
	}
	// Close removes every subscription: nats.go delivers nothing into
	// intake afterwards. Its own goroutines end on their own.
	b.nc.Close()
	// A worker exits once its handler call returns.
	b.goroutines.Wait()
}

// ---- connection event handlers ----

// setState records a connection event.
func (b *Broker) setState(connected bool, err string) {
	b.state.mu.Lock()
	b.state.events++
	b.state.connected = connected
	if err != "" || connected {
		b.state.err = err
	}
	b.state.mu.Unlock()
}

func (b *Broker) onConnect(nc *natsgo.Conn) {
	b.setState(true, "")
	b.log.Info("broker/nats: connected", "server", nc.ConnectedUrlRedacted())
}

func (b *Broker) onReconnect(nc *natsgo.Conn) {
	n := b.reconnects.Add(1)
	b.setState(true, "")
	b.log.Info("broker/nats: reconnected; subscriptions restored", "server", nc.ConnectedUrlRedacted(), "reconnects", n)
}

func (b *Broker) onDisconnect(_ *natsgo.Conn, err error) {
	msg := "disconnected"
	if err != nil {
		msg = "disconnected: " + err.Error()
	}
	b.setState(false, msg)
	if !b.closed.Load() {
		b.log.Warn("broker/nats: disconnected; reconnecting", "error", err)
	}
}

func (b *Broker) onReconnectErr(_ *natsgo.Conn, err error) {
	if err == nil {
		return
	}
	b.setState(false, err.Error())
	b.log.Debug("broker/nats: reconnect attempt failed", "error", err)
}

func (b *Broker) onClosed(nc *natsgo.Conn) {
	b.setState(false, "connection closed")
	if !b.closed.Load() {
		// Only Shutdown should close it: retries are unlimited.
		b.log.Error("broker/nats: connection closed", "error", nc.LastError())
	}
}

func (b *Broker) onAsyncError(_ *natsgo.Conn, sub *natsgo.Subscription, err error) {
	if errors.Is(err, natsgo.ErrSlowConsumer) && sub != nil {
		// Every subscription delivers into intake: it was full. nats.go
		// reports it once per subscription until one of its messages
		// gets in again.
		if b.closed.Load() {
			return // the router has stopped
		}
		b.slowConsumers.Add(1)
		b.dropped.Add(1)
		ch, _ := ChannelOf(b.cfg.Prefix, sub.Subject)
		dropped, _ := sub.Dropped()
		b.log.Warn("broker/nats: intake queue full (delivery behind the network); dropping the channel's newest messages",
			"channel", ch, "dropped_so_far", dropped, "intake_messages", b.cfg.IntakeMessages)
		return
	}
	var subject string
	if sub != nil {
		subject = sub.Subject
	}
	b.log.Error("broker/nats: asynchronous error", "subject", subject, "error", err)
}

// engineName is Health.Engine for url: "nats " and the server URLs,
// without credentials.
func engineName(url string) string {
	var servers []string
	for s := range strings.SplitSeq(url, ",") {
		s = strings.TrimSpace(s)
		if !strings.Contains(s, "://") {
			s = "nats://" + s // as nats.go reads it
		}
		u, err := neturl.Parse(s)
		if err != nil || u.Host == "" {
			servers = append(servers, "(invalid URL)")
			continue
		}
		servers = append(servers, (&neturl.URL{Scheme: u.Scheme, Host: u.Host}).String())
	}
	return "nats " + strings.Join(servers, ",")
}
