// Package redis is the broker on Redis pub/sub (tested with Redis 7.0;
// sharded pub/sub needs 7.0): every Herald node publishes through Redis and
// subscribes there to the channels its clients want (broker.Subscriber),
// so a node receives only the traffic it needs.
//
// # URL
//
// Config.URL says where Redis is and how to use it:
//
//	redis://[user:password@]host:port[/db][?options]    one server
//	rediss://...                                         the same over TLS
//	unix:///path/to/redis.sock[?options]                 one server, Unix socket
//	redis://host:port?cluster=true&addr=host2:port2...   a Redis Cluster
//
// The broker's own options are
//
//	sharded=true   sharded pub/sub: SPUBLISH and SSUBSCRIBE (Redis 7.0+)
//	               instead of PUBLISH and SUBSCRIBE
//	cluster=true   a Redis Cluster (goredis.ClusterClient); host:port and
//	               every addr= are seed nodes
//
// and every other query parameter is go-redis's (goredis.ParseURL,
// goredis.ParseClusterURL): dial_timeout=2s, protocol=2, pool_size=20 and
// so on; an unknown one is an error. The database number does not matter
// for pub/sub, which Redis keeps server-wide: deployments sharing a Redis
// are told apart by Config.Prefix, not by /db.
//
// # Channels
//
// A Herald channel c travels on the Redis channel
//
//	<prefix>:ch:<c>
//
// where <prefix> is Config.Prefix ("herald" by default) and <c> is the
// channel name as is: Redis channel names are binary-safe, and the hub's
// own channels (named "$…") travel the same way. A message is the bytes of
// broker.Encode. Other services can subscribe to "herald:ch:thread:42", or
// to every channel with PSUBSCRIBE "herald:ch:*" (plain pub/sub only: there
// is no pattern form of SSUBSCRIBE), and decode with broker.Decode.
//
// # Which mode
//
// Plain pub/sub on one server is the simplest and fastest. On a Redis
// Cluster, plain PUBLISH is broadcast to every node of the cluster over the
// cluster bus, whoever subscribes: it does not scale out. Sharded pub/sub
// sends a channel's messages only to the node that owns the channel's hash
// slot and to its replicas, so the cluster's pub/sub traffic is spread
// over its shards; each channel is a Redis channel of its own, so channels
// spread over the slots. The broker then keeps one pub/sub connection per
// master that holds a subscribed channel, and subscribes each channel at
// the master of its slot. Do not put a hash tag ({…}) in Prefix in that
// mode: every channel would fall in one slot. On a single server, sharded
// pub/sub works the same as plain (SPUBLISH needs Redis 7.0) and keeps the
// deployment ready for a cluster.
//
// In cluster mode, the messages of one channel are published through one
// node (the master of the channel's slot) in either mode, so that they
// cannot overtake one another on the cluster bus.
//
// # Delivery
//
// The handler is called from one goroutine per pub/sub connection (one in
// every mode but sharded on a cluster: one per master), so for one channel
// it is called in order and never concurrently. It must not block: while
// it runs, nothing is read from Redis, which buffers the node's messages
// until its client-output-buffer-limit for pub/sub (32 MB by default) and
// then closes the connection; the broker reconnects and what was published
// meanwhile is lost for this node, as during any outage. The hub's handler
// queues and returns.
//
// Publish returns once Redis has accepted the message; Redis delivers it to
// the subscribers it has at that moment, at most once (pub/sub keeps
// nothing). While Redis is unreachable, Publish fails after about 100ms
// (one dial attempt per try, go-redis's 3 retries) or when its context
// ends, and Subscribe fails at once. After an outage the broker subscribes
// again to every channel by itself; Health reports Connected from then on,
// and the hub reads what it missed from history.
//
// Limits: a Redis Cluster resharding or failing over while subscribed is
// not followed in sharded mode — a channel whose slot moves to another node
// stops receiving (the broker logs it) until it is unsubscribed and
// subscribed again.
package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/broker"
)

// ErrNotConnected is wrapped by the errors of Subscribe while the broker
// has no working connection to Redis.
var ErrNotConnected = errors.New("redis broker: not connected to redis")

// Broker is a broker.Broker on Redis pub/sub. It is safe for concurrent use.
type Broker struct {
	cfg      Config
	ep       *endpoint
	rdb      goredis.UniversalClient
	cluster  *goredis.ClusterClient // rdb in cluster mode; nil otherwise
	chPrefix string                 // "<prefix>:ch:"
	log      *slog.Logger

	handler broker.Handler // set by Run before any link starts; read-only after

	closed atomic.Bool
	done   chan struct{} // closed by Shutdown: goroutines stop
	wg     sync.WaitGroup
	once   sync.Once     // the first Shutdown's work
	gone   chan struct{} // closed when every goroutine has returned

	// Lock order: b.mu, then a link's mu. Neither is held across a
	// network call.
	mu      sync.Mutex
	running bool             // Run was called; guarded by mu
	main    *link            // the first link; guarded by mu
	links   map[string]*link // cluster + sharded: one per master, by address; guarded by mu
	subs    map[string]*link // subscribed channel → its link; guarded by mu

	received  atomic.Uint64
	malformed atomic.Uint64
}

var (
	_ broker.Broker         = (*Broker)(nil)
	_ broker.Shutdowner     = (*Broker)(nil)
	_ broker.Subscriber     = (*Broker)(nil)
	_ broker.HealthReporter = (*Broker)(nil)
)

// New returns a broker for cfg. It does not connect: Run does, and keeps
// trying in the background while Redis is unreachable (see Health).
func New(cfg Config) (*Broker, error) {
	cfg = cfg.withDefaults()
	ep, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	b := &Broker{
		cfg:      cfg,
		ep:       ep,
		chPrefix: cfg.Prefix + ":ch:",
		log:      cfg.Logger,
		done:     make(chan struct{}),
		gone:     make(chan struct{}),
		links:    make(map[string]*link),
		subs:     make(map[string]*link),
	}
	if ep.cluster {
		b.cluster = goredis.NewClusterClient(ep.copts)
		b.rdb = b.cluster
	} else {
		b.rdb = goredis.NewClient(ep.opts)
	}
	return b, nil
}

// Channel returns the Redis channel on which the Herald channel ch travels.
func (b *Broker) Channel(ch string) string { return b.chPrefix + ch }

// Run registers the handler and starts receiving. It does not wait for
// Redis.
func (b *Broker) Run(h broker.Handler) error {
	if h == nil {
		return errors.New("redis broker: Run with a nil handler")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed.Load():
		return broker.ErrClosed
	case b.running:
		return errors.New("redis broker: Run called twice")
	}
	b.handler = h
	b.running = true
	// The first link carries every subscription, except with sharded
	// pub/sub on a cluster, where it only watches the cluster's health
	// (Health) until a channel is subscribed on a master.
	sharded := b.ep.sharded && b.cluster == nil
	var ps *goredis.PubSub
	if sharded {
		ps = b.rdb.SSubscribe(context.Background())
	} else {
		ps = b.rdb.Subscribe(context.Background()) // connects on first use
	}
	b.main = b.newLink(ps, sharded, b.ep.engine)
	return nil
}

// Publish sends m to every node subscribed to m.Channel, this one included
// if it is. It returns once Redis has accepted it, an error wrapping ctx's
// if ctx ends first, and broker.ErrClosed after Shutdown.
func (b *Broker) Publish(ctx context.Context, m *broker.Message) error {
	if b.closed.Load() {
		return broker.ErrClosed
	}
	rch := b.chPrefix + m.Channel
	payload := broker.Encode(m)
	var err error
	switch {
	case b.ep.sharded:
		// The cluster client routes SPUBLISH to the slot's master.
		err = b.rdb.SPublish(ctx, rch, payload).Err()
	case b.cluster != nil:
		// go-redis sends PUBLISH, which names no key, to any node, so
		// that two messages of one channel could take different paths:
		// pin each channel to its slot's master.
		var node *goredis.Client
		if node, err = b.cluster.MasterForKey(ctx, rch); err == nil {
			err = node.Publish(ctx, rch, payload).Err()
		}
	default:
		err = b.rdb.Publish(ctx, rch, payload).Err()
	}
	if err != nil {
		if b.closed.Load() {
			return broker.ErrClosed
		}
		return fmt.Errorf("redis broker: publishing to %s: %w", m.Channel, err)
	}
	return nil
}

// Subscribe subscribes this node to ch and returns once Redis has
// confirmed it: from then on every message published to ch reaches the
// handler. While Redis is unreachable it fails at once with an error
// wrapping ErrNotConnected (on a first connection still under way, it
// waits for it, up to ctx). Run must have been called.
func (b *Broker) Subscribe(ctx context.Context, ch string) error {
	rch := b.chPrefix + ch
	l, err := b.linkFor(ctx, rch)
	if err != nil {
		return fmt.Errorf("redis broker: subscribing to %s: %w", ch, err)
	}
	if err := l.subscribe(ctx, rch); err != nil {
		if b.closed.Load() {
			return broker.ErrClosed
		}
		return fmt.Errorf("redis broker: subscribing to %s: %w", ch, err)
	}
	b.mu.Lock()
	b.subs[ch] = l
	b.mu.Unlock()
	return nil
}

// Unsubscribe stops the delivery of ch to this node. Messages already on
// their way may still reach the handler. It fails only after Shutdown:
// if Redis is unreachable, the subscription is not restored with the
// others when it comes back.
func (b *Broker) Unsubscribe(ctx context.Context, ch string) error {
	b.mu.Lock()
	l := b.subs[ch]
	delete(b.subs, ch)
	b.mu.Unlock()
	if b.closed.Load() {
		return broker.ErrClosed
	}
	if l != nil {
		l.unsubscribe(ctx, b.chPrefix+ch)
	}
	return nil
}

// linkFor returns the link on which to subscribe the Redis channel rch,
// starting it if needed.
func (b *Broker) linkFor(ctx context.Context, rch string) (*link, error) {
	b.mu.Lock()
	closed, running, main := b.closed.Load(), b.running, b.main
	b.mu.Unlock()
	switch {
	case closed:
		return nil, broker.ErrClosed
	case !running:
		return nil, errors.New("Subscribe before Run")
	case !b.ep.sharded || b.cluster == nil:
		return main, nil
	}
	// Sharded pub/sub on a cluster: SSUBSCRIBE at the slot's master.
	node, err := b.cluster.MasterForKey(ctx, rch)
	if err != nil {
		return nil, notConnected(err)
	}
	addr := node.Options().Addr
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return nil, broker.ErrClosed
	}
	l := b.links[addr]
	if l == nil {
		l = b.newLink(node.SSubscribe(context.Background()), true, addr)
		b.links[addr] = l
	}
	return l, nil
}

// subscribedAt returns the link holding the Redis channel rch, or nil.
func (b *Broker) subscribedAt(rch string) *link {
	ch, ok := strings.CutPrefix(rch, b.chPrefix)
	if !ok {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs[ch]
}

// deliver decodes a message read from Redis and hands it to the handler.
// It runs on a link's receive loop.
func (b *Broker) deliver(msg *goredis.Message) {
	ch, ok := strings.CutPrefix(msg.Channel, b.chPrefix)
	m, err := broker.Decode([]byte(msg.Payload))
	if err == nil && (!ok || m.Channel != ch) {
		err = fmt.Errorf("message for channel %q on Redis channel %q", m.Channel, msg.Channel)
	}
	if err != nil {
		// Count and drop; log the 1st, 2nd, 4th, 8th… so that a flood
		// of garbage does not flood the log.
		if n := b.malformed.Add(1); n&(n-1) == 0 {
			b.log.Warn("redis broker: malformed message dropped", "channel", msg.Channel,
				"bytes", len(msg.Payload), "err", err, "malformed", n)
		}
		return
	}
	if b.closed.Load() {
		return // Shutdown returned: the handler must not be called
	}
	b.received.Add(1)
	b.handler(m)
}

// Health reports the state of the broker's pub/sub connections: Connected
// if every one is up (subscriptions restored). It does not touch the
// network. Dropped stays zero: the broker drops nothing itself, and what
// Redis drops for a client that falls behind (its pub/sub output limit)
// comes with a closed connection, counted in Reconnects.
func (b *Broker) Health() broker.Health {
	h := broker.Health{Engine: b.ep.engine}
	b.mu.Lock()
	var links []*link
	if b.main != nil {
		links = append(links, b.main)
	}
	for _, l := range b.links {
		links = append(links, l)
	}
	b.mu.Unlock()
	switch {
	case b.closed.Load():
		h.Err = "shut down"
	case len(links) == 0:
		h.Err = "not running"
	default:
		h.Connected = true
	}
	for _, l := range links {
		up, reconnects, err := l.state()
		h.Reconnects += reconnects
		if !up {
			h.Connected = false
			if h.Err == "" && err != nil {
				h.Err = err.Error()
			}
		}
	}
	return h
}

// Stats are the broker's counters since New.
type Stats struct {
	Received  uint64 // messages handed to the handler
	Malformed uint64 // messages dropped: not broker.Encode's, or on the wrong channel
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	return Stats{Received: b.received.Load(), Malformed: b.malformed.Load()}
}

// Shutdown stops delivery and closes the connections. It is idempotent,
// and returns ctx.Err() if ctx ends before the receive loops have returned
// (one may be inside a handler call); the broker is closed either way.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.once.Do(func() {
		b.mu.Lock()
		b.closed.Store(true)
		close(b.done)
		b.mu.Unlock()
		// Closing may wait for a dial under way: off the caller's path.
		go func() {
			b.mu.Lock()
			var pss []*goredis.PubSub
			if b.main != nil {
				pss = append(pss, b.main.ps)
			}
			for _, l := range b.links {
				pss = append(pss, l.ps)
			}
			b.mu.Unlock()
			for _, ps := range pss {
				_ = ps.Close()
			}
			_ = b.rdb.Close()
			b.wg.Wait()
			close(b.gone)
		}()
	})
	select {
	case <-b.gone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// goFunc runs fn on a goroutine that Shutdown waits for. b.mu must be
// held and b not closed.
func (b *Broker) goFunc(fn func()) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		fn()
	}()
}

func (b *Broker) stopping() bool { return b.closed.Load() }
