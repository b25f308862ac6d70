// Package hub is Herald's core: channels, subscriber sessions with bounded
// queues, history with gap-free resume, and publishing through a Broker. It
// knows nothing of HTTP; transports drive sessions.
//
// Lock order: publish stripe → history (internal) → index shard →
// Session.mu. With a networked broker (cluster.go): a remote stripe's op
// lock (held across broker calls) → remoteChan.mu → index shard →
// Session.mu. Hub.connMu is never held with any other lock.
package hub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/broker/memory"
)

// NamespaceConfig holds the settings of one channel namespace.
type NamespaceConfig struct {
	// HistorySize is the number of messages kept per channel. Zero means
	// the default namespace's value (100); negative keeps no history.
	HistorySize int
	// HistoryTTL is how long a message is kept. Zero means the default
	// namespace's value (10 minutes); negative keeps messages until trimmed
	// by size.
	HistoryTTL time.Duration
	// MaxSubscribers caps the subscribers of one channel on this node.
	// Zero means the default namespace's value (no limit).
	MaxSubscribers int
}

func (n NamespaceConfig) historyOptions() HistoryOptions {
	return HistoryOptions{Size: max(n.HistorySize, 0), TTL: max(n.HistoryTTL, 0)}
}

// Config configures a Hub. The zero value is a working single node.
type Config struct {
	// Broker carries messages between nodes. Nil means in-process.
	Broker broker.Broker
	// History keeps recent messages. Nil means in-memory. With a
	// networked broker, every node must use the same store (JetStream,
	// Redis): it numbers each channel's messages for the whole cluster.
	// Nodes with a store each would number them apart, and their
	// subscribers would see other nodes' messages as gaps.
	History History
	// HistoryMaxBytes caps the memory of the in-memory history (when
	// History is nil), all channels together: past it the oldest messages
	// go first, as if their TTL had passed (see NewMemoryHistoryLimit).
	// Zero means 512 MiB, or MinHistoryBytes(MaxMessageBytes) if that is
	// more; negative means no cap beyond each channel's history size and
	// TTL.
	HistoryMaxBytes int64
	// Default applies to channels whose namespace is not in Namespaces.
	Default NamespaceConfig
	// Namespaces overrides settings by namespace (the part of a channel
	// name before the first ':'). Zero fields inherit from Default.
	Namespaces map[string]NamespaceConfig
	// MaxConnections caps sessions on this node. Zero means no limit.
	MaxConnections int
	// MaxConnectionsPerIP caps sessions per client address. Zero means no limit.
	MaxConnectionsPerIP int
	// MaxChannelsPerSession caps the channels of one session. Zero means 32.
	MaxChannelsPerSession int
	// MaxQueueBytes caps a session's outbound queue. Zero means 1 MiB.
	MaxQueueBytes int
	// MaxMessageBytes caps a message's data. Zero means 64 KiB.
	MaxMessageBytes int
	// MaxChannelsPerPublish caps the channels of one publish. Zero means 64.
	MaxChannelsPerPublish int
	// IdempotencyWindow is how long an idempotency key is remembered. Zero
	// means 5 minutes.
	IdempotencyWindow time.Duration
	// IdempotencyMaxKeys caps remembered keys. Zero means 100 000.
	IdempotencyMaxKeys int
	// SweepInterval is how often expired history is dropped. Zero means 30s.
	SweepInterval time.Duration
	// HistoryKeepInterval is how often a History that is a HistoryKeeper
	// is told which channels have subscribers here. Keep it well under the
	// store's head lifetime. Zero means 10 minutes.
	HistoryKeepInterval time.Duration
	// NodeID names this node in the cluster view. Zero means the host
	// name and a random suffix.
	NodeID string
	// NodeHeartbeat is how often a node tells the others (through a
	// networked broker) that it is alive; a node not heard from for three
	// heartbeats leaves the cluster view. Zero means 2s.
	NodeHeartbeat time.Duration
	// Logger receives the hub's logs. Nil means slog.Default().
	Logger *slog.Logger
}

// Defaults returns c with every zero field set to its documented default.
func (c Config) Defaults() Config {
	if c.Default.HistorySize == 0 {
		c.Default.HistorySize = 100
	}
	if c.Default.HistoryTTL == 0 {
		c.Default.HistoryTTL = 10 * time.Minute
	}
	ns := make(map[string]NamespaceConfig, len(c.Namespaces))
	for name, n := range c.Namespaces {
		if n.HistorySize == 0 {
			n.HistorySize = c.Default.HistorySize
		}
		if n.HistoryTTL == 0 {
			n.HistoryTTL = c.Default.HistoryTTL
		}
		if n.MaxSubscribers == 0 {
			n.MaxSubscribers = c.Default.MaxSubscribers
		}
		ns[name] = n
	}
	c.Namespaces = ns
	setDefault(&c.MaxChannelsPerSession, 32)
	setDefault(&c.MaxQueueBytes, 1<<20)
	setDefault(&c.MaxMessageBytes, 64<<10)
	if c.HistoryMaxBytes == 0 {
		c.HistoryMaxBytes = max(512<<20, MinHistoryBytes(c.MaxMessageBytes))
	}
	setDefault(&c.MaxChannelsPerPublish, 64)
	setDefault(&c.IdempotencyMaxKeys, 100_000)
	setDefault(&c.IdempotencyWindow, 5*time.Minute)
	setDefault(&c.SweepInterval, 30*time.Second)
	setDefault(&c.HistoryKeepInterval, 10*time.Minute)
	setDefault(&c.NodeHeartbeat, 2*time.Second)
	if c.NodeID == "" {
		c.NodeID = defaultNodeID()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func setDefault[T int | time.Duration](v *T, d T) {
	if *v == 0 {
		*v = d
	}
}

// Hub routes published messages to subscriber sessions.
type Hub struct {
	cfg     Config
	broker  broker.Broker
	history History
	index   *index
	idem    *idempotency
	log     *slog.Logger
	started time.Time

	stripeSeed maphash.Seed
	stripes    [256]sync.Mutex // serialise append+publish per channel

	closing atomic.Bool // set when Shutdown begins; publishes are refused

	remote *remote // nil with the in-process broker
	nodes  cluster

	connMu       sync.Mutex
	sessions     map[*Session]struct{} // guarded by connMu
	perIP        map[string]int        // guarded by connMu
	perTransport map[string]int        // guarded by connMu
	shutting     bool                  // guarded by connMu

	stats struct {
		published, delivered, dropped, slowConsumers atomic.Uint64
	}

	done     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// New returns a running hub. Call Shutdown to stop it.
func New(cfg Config) (*Hub, error) {
	cfg = cfg.Defaults()
	h := &Hub{
		cfg:          cfg,
		broker:       cfg.Broker,
		history:      cfg.History,
		index:        newIndex(),
		idem:         newIdempotency(cfg.IdempotencyWindow, cfg.IdempotencyMaxKeys),
		log:          cfg.Logger,
		started:      time.Now(),
		stripeSeed:   maphash.MakeSeed(),
		sessions:     make(map[*Session]struct{}),
		perIP:        make(map[string]int),
		perTransport: make(map[string]int),
		done:         make(chan struct{}),
	}
	if h.broker == nil {
		h.broker = memory.New()
	}
	if h.history == nil {
		h.history = NewMemoryHistoryLimit(cfg.HistoryMaxBytes)
	}
	h.nodes.nodes = make(map[string]NodeInfo)
	if _, local := h.broker.(*memory.Broker); !local {
		h.remote = newRemote(h)
	}
	if err := h.broker.Run(h.handle); err != nil {
		return nil, err
	}
	if h.remote != nil {
		for range fillWorkers {
			h.goFunc(h.remote.fillLoop)
		}
		h.goFunc(h.remote.unsubscribeLoop)
		h.goFunc(h.watchLoop)
	}
	if hk, ok := h.history.(HistoryKeeper); ok {
		h.goFunc(func() { h.keepLoop(hk) })
	}
	if mh, ok := h.history.(*MemoryHistory); ok {
		h.goFunc(func() { h.sweepLoop(mh) })
	}
	return h, nil
}

// goFunc runs fn in a goroutine owned by the hub: Shutdown waits for it.
func (h *Hub) goFunc(fn func()) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		fn()
	}()
}

func (h *Hub) sweepLoop(mh *MemoryHistory) {
	t := time.NewTicker(h.cfg.SweepInterval)
	defer t.Stop()
	ttl := func(ch string) time.Duration { return max(h.namespace(ch).HistoryTTL, 0) }
	inUse := func(ch string) bool { return h.index.count(ch) > 0 }
	idle := max(h.cfg.Default.HistoryTTL, 10*time.Minute)
	for {
		select {
		case <-h.done:
			return
		case <-t.C:
			mh.Sweep(ttl, idle, 2*h.cfg.SweepInterval, inUse)
		}
	}
}

// keepLoop tells hk, every HistoryKeepInterval, which channels have
// subscribers on this node (see HistoryKeeper). A pass stops early after
// keepMaxFailures failures in a row (the store is down: the next pass
// tries again), and at once when the hub shuts down.
func (h *Hub) keepLoop(hk HistoryKeeper) {
	t := time.NewTicker(h.cfg.HistoryKeepInterval)
	defer t.Stop()
	// base ends with the hub (or this loop): a Keep in flight stops then.
	base, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-h.done:
			cancel()
		case <-base.Done():
		}
	}()
	for {
		select {
		case <-base.Done():
			return
		case <-t.C:
		}
		var chans []string
		h.index.visit(func(ch string, n int) {
			if n > 0 {
				chans = append(chans, ch)
			}
		})
		failed, inARow := 0, 0
		var last error
		for _, ch := range chans {
			if base.Err() != nil {
				return
			}
			ctx, cancelCall := context.WithTimeout(base, brokerCallTimeout)
			err := hk.Keep(ctx, ch, h.namespace(ch).historyOptions())
			cancelCall()
			if err == nil {
				inARow = 0
				continue
			}
			failed, inARow, last = failed+1, inARow+1, err
			if inARow == keepMaxFailures {
				break
			}
		}
		if failed > 0 && base.Err() == nil {
			h.log.Warn("hub: keeping quiet channels' history failed; trying again at the next pass",
				"failed", failed, "channels", len(chans), "err", last)
		}
	}
}

// keepMaxFailures ends a keepLoop pass.
const keepMaxFailures = 5

// namespace returns the settings that apply to channel ch.
func (h *Hub) namespace(ch string) NamespaceConfig {
	if len(h.cfg.Namespaces) > 0 {
		if n, ok := h.cfg.Namespaces[Namespace(ch)]; ok {
			return n
		}
	}
	return h.cfg.Default
}

// Config returns the hub's configuration with defaults applied.
func (h *Hub) Config() Config { return h.cfg }

// Publication is one publish request: the same message to several channels.
type Publication struct {
	Channels       []string
	Type           string          // empty means DefaultType
	Data           json.RawMessage // any JSON value; empty means null
	IdempotencyKey string          // optional
}

// PublishResult is the position a publish got in one channel.
type PublishResult struct {
	Channel string `json:"channel"`
	Epoch   string `json:"epoch"`
	Offset  uint64 `json:"offset"`
}

// Publish validates p and publishes it to each of its channels, in order.
// A repeated idempotency key within the window returns the first answer and
// publishes nothing. Errors: ErrNoChannels, ErrTooManyChannels, a
// *ChannelError, ErrInvalidType, ErrInvalidData, ErrMessageTooLarge, or the
// history's or broker's error.
func (h *Hub) Publish(ctx context.Context, p Publication) ([]PublishResult, error) {
	if len(p.Channels) == 0 {
		return nil, ErrNoChannels
	}
	if len(p.Channels) > h.cfg.MaxChannelsPerPublish {
		return nil, ErrTooManyChannels
	}
	channels := make([]string, 0, len(p.Channels))
	for _, ch := range p.Channels {
		if !ValidChannel(ch) {
			return nil, &ChannelError{Channel: ch, Err: ErrInvalidChannel}
		}
		if !slices.Contains(channels, ch) {
			channels = append(channels, ch)
		}
	}
	typ := p.Type
	if typ == "" {
		typ = DefaultType
	}
	if !ValidType(typ) {
		return nil, ErrInvalidType
	}
	if len(p.Data) > h.cfg.MaxMessageBytes {
		return nil, ErrMessageTooLarge
	}
	data, err := NormalizeData(p.Data)
	if err != nil {
		return nil, err
	}
	if len(data) > h.cfg.MaxMessageBytes {
		return nil, ErrMessageTooLarge
	}

	if p.IdempotencyKey != "" {
		e, owner := h.idem.begin(p.IdempotencyKey, time.Now())
		if !owner {
			return e.wait(ctx)
		}
		results, err := h.publish(ctx, channels, typ, data, p.IdempotencyKey)
		h.idem.finish(p.IdempotencyKey, e, results, err)
		return results, err
	}
	return h.publish(ctx, channels, typ, data, "")
}

func (h *Hub) publish(ctx context.Context, channels []string, typ string, data json.RawMessage, key string) ([]PublishResult, error) {
	now := time.Now()
	var st *stamp
	if len(channels) > 1 {
		st = newStamp(now)
	}
	results := make([]PublishResult, 0, len(channels))
	for _, ch := range channels {
		m := &Message{Message: broker.Message{Channel: ch, Type: typ, Data: data, Time: now}, Key: key, stamp: st}
		if err := h.publishOne(ctx, m); err != nil {
			return results, &ChannelError{Channel: ch, Err: err}
		}
		results = append(results, PublishResult{Channel: ch, Epoch: m.Epoch, Offset: m.Offset})
	}
	return results, nil
}

// publishOne appends m to history and hands it to the broker, holding the
// channel's stripe so that offsets reach the broker in order.
func (h *Hub) publishOne(ctx context.Context, m *Message) error {
	if h.closing.Load() {
		return ErrShuttingDown
	}
	mu := &h.stripes[maphash.String(h.stripeSeed, m.Channel)%uint64(len(h.stripes))]
	mu.Lock()
	defer mu.Unlock()
	if err := h.history.Append(ctx, m, h.namespace(m.Channel).historyOptions()); err != nil {
		if !errors.Is(err, ErrDuplicate) {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		// Stored before under the same key. The earlier publish may have
		// failed after storing it, before anyone was told: hand the stored
		// message to the broker again (sessions skip offsets they already
		// have). Offset 0: the original is no longer retained.
		if m.Offset == 0 {
			return nil
		}
	}
	if m.Envelope == nil {
		return errors.New("hub: history store did not seal the message")
	}
	h.stats.published.Add(1)
	if h.remote == nil {
		// The in-process broker would hand m's fields straight back to
		// handle, which copies them into a new Message: fan out m itself,
		// whose SSE frame the history then shares.
		h.index.fanout(m)
		return nil
	}
	if err := h.broker.Publish(ctx, &m.Message); err != nil {
		if errors.Is(err, broker.ErrClosed) {
			return ErrShuttingDown
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

// handle receives every message from the broker and fans it out to local
// sessions.
func (h *Hub) handle(bm *broker.Message) {
	switch {
	case h.remote == nil:
		// publishOne fans out this node's messages itself; this is for a
		// message published to the in-process broker by someone else.
		h.index.fanout(newMessage(bm))
	case bm.Channel == nodesChannel:
		h.receiveBeat(bm)
	default:
		h.remote.receive(newMessage(bm))
	}
}

// join registers s as a subscriber of ch on this node: at the broker first
// when it is the node's first subscriber of ch, then in the index. It
// reports false when the channel is full.
func (h *Hub) join(ctx context.Context, ch string, s *Session) (bool, error) {
	if h.remote != nil {
		if err := h.remote.acquire(ctx, ch); err != nil {
			return false, err
		}
	}
	if !h.index.add(ch, s, h.namespace(ch).MaxSubscribers) {
		if h.remote != nil {
			h.remote.release(ch)
		}
		return false, nil
	}
	return true, nil
}

// leave undoes join.
func (h *Hub) leave(ch string, s *Session) {
	if h.index.remove(ch, s) && h.remote != nil {
		h.remote.release(ch)
	}
}

// sequenced reports whether messages reach sessions in offsets that agree
// across nodes, so that a jump in offsets is a gap to report.
func (h *Hub) sequenced() bool { return h.remote != nil }

// defaultNodeID is the host name and a random suffix.
func defaultNodeID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "herald"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// NewSession registers a subscriber connection. It fails with
// ErrShuttingDown, ErrTooManyConnections or ErrTooManyConnectionsFromIP.
func (h *Hub) NewSession(opts SessionOptions) (*Session, error) {
	wake := opts.Wake
	if wake == nil {
		wake = func() {}
	}
	s := &Session{hub: h, transport: opts.Transport, remoteIP: opts.RemoteIP, wake: wake, maxBytes: h.cfg.MaxQueueBytes}
	h.connMu.Lock()
	defer h.connMu.Unlock()
	switch {
	case h.shutting:
		return nil, ErrShuttingDown
	case h.cfg.MaxConnections > 0 && len(h.sessions) >= h.cfg.MaxConnections:
		return nil, ErrTooManyConnections
	case opts.RemoteIP != "" && h.cfg.MaxConnectionsPerIP > 0 && h.perIP[opts.RemoteIP] >= h.cfg.MaxConnectionsPerIP:
		return nil, ErrTooManyConnectionsFromIP
	}
	h.sessions[s] = struct{}{}
	if opts.RemoteIP != "" {
		h.perIP[opts.RemoteIP]++
	}
	h.perTransport[opts.Transport]++
	return s, nil
}

// release undoes NewSession's bookkeeping; called once per session by Close.
func (h *Hub) release(s *Session) {
	h.connMu.Lock()
	defer h.connMu.Unlock()
	delete(h.sessions, s)
	if s.remoteIP != "" {
		if h.perIP[s.remoteIP]--; h.perIP[s.remoteIP] <= 0 {
			delete(h.perIP, s.remoteIP)
		}
	}
	h.perTransport[s.transport]--
}

// Stats is a snapshot of the hub's figures.
type Stats struct {
	Uptime          time.Duration
	Connections     int
	ByTransport     map[string]int
	Channels        int // channels with at least one subscriber here
	Subscribers     int // channel subscriptions, summed over channels
	Published       uint64
	Delivered       uint64
	Dropped         uint64
	SlowConsumers   uint64
	IdempotencyKeys int
	// History is the in-memory history's figures; nil with another store.
	History *MemoryHistoryStats
	// Sequencer is what the node's sequencer did with a networked broker
	// (zero otherwise).
	Sequencer SequencerStats
}

// SequencerStats count the messages a node's sequencer handled out of
// the ordinary: held back behind a missing one, read from history to fill
// a hole, or given up (gone from history: subscribers got a gap signal).
type SequencerStats struct {
	Held    uint64 `json:"held"`
	Fills   uint64 `json:"fills"`  // history reads
	Filled  uint64 `json:"filled"` // messages handed on from history
	Skipped uint64 `json:"skipped"`
}

// Stats returns the hub's current figures.
func (h *Hub) Stats() Stats {
	st := Stats{
		Uptime:          time.Since(h.started),
		ByTransport:     make(map[string]int),
		Published:       h.stats.published.Load(),
		Delivered:       h.stats.delivered.Load(),
		Dropped:         h.stats.dropped.Load(),
		SlowConsumers:   h.stats.slowConsumers.Load(),
		IdempotencyKeys: h.idem.len(),
	}
	if mh, ok := h.history.(*MemoryHistory); ok {
		hs := mh.Stats()
		st.History = &hs
	}
	if r := h.remote; r != nil {
		st.Sequencer = SequencerStats{Held: r.held.Load(), Fills: r.fills.Load(), Filled: r.filled.Load(), Skipped: r.skipped.Load()}
	}
	h.connMu.Lock()
	st.Connections = len(h.sessions)
	for t, n := range h.perTransport {
		if n > 0 {
			st.ByTransport[t] = n
		}
	}
	h.connMu.Unlock()
	h.index.visit(func(_ string, n int) {
		st.Channels++
		st.Subscribers += n
	})
	return st
}

// ChannelStats describes one channel on this node.
type ChannelStats struct {
	Channel     string          `json:"channel"`
	Subscribers int             `json:"subscribers"`
	History     *ChannelHistory `json:"history,omitempty"`
}

// Channel returns the figures of one channel.
func (h *Hub) Channel(ch string) ChannelStats {
	cs := ChannelStats{Channel: ch, Subscribers: h.index.count(ch)}
	if in, ok := h.history.(HistoryInspector); ok {
		if hist, ok := in.Inspect(ch); ok {
			cs.History = &hist
		}
	}
	return cs
}

// ChannelsWithPrefix returns the figures of the subscribed channels whose
// names start with prefix, sorted by name, at most limit of them.
func (h *Hub) ChannelsWithPrefix(prefix string, limit int) []ChannelStats {
	var names []string
	h.index.visit(func(ch string, _ int) {
		if strings.HasPrefix(ch, prefix) {
			names = append(names, ch)
		}
	})
	slices.Sort(names)
	if limit > 0 && len(names) > limit {
		names = names[:limit]
	}
	out := make([]ChannelStats, 0, len(names))
	for _, ch := range names {
		out = append(out, h.Channel(ch))
	}
	return out
}

// ShuttingDown reports whether Shutdown has begun.
func (h *Hub) ShuttingDown() bool {
	h.connMu.Lock()
	defer h.connMu.Unlock()
	return h.shutting
}

// Shutdown refuses new sessions, closes every session with
// DisconnectShutdown (their transports tell clients to come back), stops
// the hub's goroutines and the broker. It is idempotent and returns
// ctx.Err() if ctx ends first.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.closing.Store(true)
	h.connMu.Lock()
	h.shutting = true
	sessions := make([]*Session, 0, len(h.sessions))
	for s := range h.sessions {
		sessions = append(sessions, s)
	}
	h.connMu.Unlock()
	for _, s := range sessions {
		s.Close(DisconnectShutdown)
	}
	h.stopOnce.Do(func() { close(h.done) })
	var err error
	if sd, ok := h.broker.(broker.Shutdowner); ok {
		err = sd.Shutdown(ctx)
	}
	waited := make(chan struct{})
	go func() { h.wg.Wait(); close(waited) }()
	select {
	case <-waited:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
