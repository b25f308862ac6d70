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
// Delivery. Each subscribed channel is one NATS subscription, and nats.go
// calls a subscription's callback from one goroutine of its own, in the
// order the server sent the messages: the handler is called for one
// channel in publish order and never concurrently, and for different
// channels concurrently. Messages received but not yet handled are
// bounded per channel (Config.PendingMessages, Config.PendingBytes); past
// the bound the newest are dropped, counted and logged. Delivery is
// at-most-once: a node that is disconnected misses what is published
// meanwhile, and reads it from history.
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

	mu      sync.Mutex
	subs    map[string]*chanSub // by channel; guarded by mu
	running sync.WaitGroup      // delivery goroutines not yet exited; Add with mu held and closed false

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
	malformed     atomic.Uint64

	shutdownOnce sync.Once
	stopped      chan struct{} // closed when Shutdown's work is done
}

// chanSub is one channel's subscription.
type chanSub struct {
	channel string
	// sub is nil once the channel was unsubscribed, while the delivery
	// goroutine may still be in the handler; the entry stays in the map
	// until done is closed, so that a new Subscribe of the channel waits
	// for it. Guarded by Broker.mu.
	sub      *natsgo.Subscription
	done     chan struct{} // closed when the delivery goroutine has exited
	exitOnce sync.Once
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
		subs:    make(map[string]*chanSub),
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
// never called twice at once for one channel.
func (b *Broker) Subscribe(ctx context.Context, channel string) error {
	for {
		b.mu.Lock()
		if b.closed.Load() {
			b.mu.Unlock()
			return broker.ErrClosed
		}
		cs := b.subs[channel]
		if cs == nil {
			break // with mu held
		}
		if cs.sub != nil {
			b.mu.Unlock()
			return b.flush(ctx)
		}
		b.mu.Unlock()
		select {
		case <-cs.done:
		case <-ctx.Done():
			return fmt.Errorf("broker/nats: subscribe to %q: previous subscription still delivering: %w", channel, ctx.Err())
		}
	}
	cs := &chanSub{channel: channel, done: make(chan struct{})}
	sub, err := b.nc.Subscribe(Subject(b.cfg.Prefix, channel), func(m *natsgo.Msg) { b.deliver(channel, m) })
	if err != nil {
		b.mu.Unlock()
		return fmt.Errorf("broker/nats: subscribe to %q: %w", channel, err)
	}
	cs.sub = sub
	b.subs[channel] = cs
	b.running.Add(1)
	b.mu.Unlock()

	_ = sub.SetPendingLimits(b.cfg.PendingMessages, b.cfg.PendingBytes)
	sub.SetClosedHandler(func(string) { b.exited(cs) })
	if !sub.IsValid() {
		// Closed before the handler was set (the connection closed):
		// nats.go may not call it. exited runs once either way.
		b.exited(cs)
	}
	if err := b.flush(ctx); err != nil {
		b.unsubscribe(cs)
		return fmt.Errorf("broker/nats: subscribe to %q: %w", channel, err)
	}
	return nil
}

// Unsubscribe removes the channel's subscription. Delivery stops at once,
// but for a handler call in progress; the server learns of it
// asynchronously and Unsubscribe does not wait for it. Unsubscribing a
// channel that is not subscribed does nothing.
func (b *Broker) Unsubscribe(_ context.Context, channel string) error {
	b.mu.Lock()
	cs := b.subs[channel]
	b.mu.Unlock()
	if cs != nil {
		b.unsubscribe(cs)
	}
	return nil
}

// unsubscribe removes cs's subscription if it is still in place.
func (b *Broker) unsubscribe(cs *chanSub) {
	b.mu.Lock()
	sub := cs.sub
	cs.sub = nil
	b.mu.Unlock()
	if sub != nil {
		// It fails only when the subscription or the connection is closed
		// already: either way it is gone.
		_ = sub.Unsubscribe()
	}
}

// exited records that cs's delivery goroutine has exited.
func (b *Broker) exited(cs *chanSub) {
	cs.exitOnce.Do(func() {
		b.mu.Lock()
		if b.subs[cs.channel] == cs {
			delete(b.subs, cs.channel)
		}
		b.mu.Unlock()
		close(cs.done)
		b.running.Done()
	})
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

// deliver is a subscription's callback, called by nats.go from the
// subscription's goroutine.
func (b *Broker) deliver(channel string, nm *natsgo.Msg) {
	if b.closed.Load() {
		return
	}
	m, err := broker.Decode(nm.Data)
	if err == nil && m.Channel != channel {
		err = fmt.Errorf("message of channel %q on the subject of %q", m.Channel, channel)
	}
	if err != nil {
		// Log the first and then every 1000th: a misbehaving publisher
		// must not flood the log.
		if n := b.malformed.Add(1); n == 1 || n%1000 == 0 {
			b.log.Warn("broker/nats: dropped a malformed message",
				"subject", nm.Subject, "size", len(nm.Data), "error", err, "malformed_total", n)
		}
		return
	}
	if h := b.handler.Load(); h != nil {
		(*h)(m)
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
	// handler catches up.
	SlowConsumers uint64
	// Malformed counts received messages that were not in broker's wire
	// form or named another channel than their subject's.
	Malformed uint64
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	return Stats{SlowConsumers: b.slowConsumers.Load(), Malformed: b.malformed.Load()}
}

// Shutdown stops delivery, unsubscribes every channel, sends the server
// what Publish has written (if connected and ctx allows), closes the
// connection, and waits for every handler call in progress to return. It
// is idempotent and safe to call concurrently; it returns ctx.Err() if
// ctx ends first, the work then going on in the background. Publish
// returns broker.ErrClosed from the first call on.
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
	// Subscribe checks closed with mu held: none adds a subscription, or
	// to running, after this.
	b.mu.Lock()
	var subs []*chanSub
	for _, cs := range b.subs {
		subs = append(subs, cs)
	}
	b.mu.Unlock()
	for _, cs := range subs {
		b.unsubscribe(cs)
	}
	if b.Health().Connected && ctx.Err() == nil {
		fctx, cancel := ctx, context.CancelFunc(func() {})
		if _, ok := ctx.Deadline(); !ok {
			fctx, cancel = context.WithTimeout(ctx, roundTripTimeout)
		}
		_ = b.nc.FlushWithContext(fctx)
		cancel()
	}
	b.nc.Close()
	// A delivery goroutine exits once its handler call returns; the
	// connection's own goroutines end on their own after Close.
	b.running.Wait()
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
		b.slowConsumers.Add(1)
		ch, _ := ChannelOf(b.cfg.Prefix, sub.Subject)
		dropped, _ := sub.Dropped()
		b.log.Warn("broker/nats: handler too slow; dropping the channel's newest messages",
			"channel", ch, "dropped_so_far", dropped)
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
