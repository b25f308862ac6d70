// Package redishistory is a hub.History on Redis Streams: channel history
// that survives a restart of Herald, and that several Herald nodes share
// (a cursor from one node works on another, because the offsets of a
// channel are assigned in Redis, not by the nodes).
//
// Keys, for the prefix P (Config.Prefix) and a channel C:
//
//	P:m:{C}       hash: "epoch", and "head", the last offset assigned
//	P:h:{C}       stream: one entry per retained message, ID "<offset>-0",
//	              fields t (type), d (data), ns (time, Unix nanoseconds)
//	P:k:{C}:<key> string "<epoch> <offset>": a message stored under an
//	              idempotency key, for Config.Duplicates
//
// The braces are a Redis Cluster hash tag: a channel's keys share a slot,
// so the scripts below may touch them together. (Channel names hold no
// braces. A prefix that has some, "{herald}", puts every channel in one
// slot instead.)
//
// Each call is one atomic round trip in the common case, so nodes
// appending to one channel at once get distinct offsets without holes.
// Append is one Lua script (EVALSHA): it increments the head, adds the
// entry, trims the stream, refreshes the keys' expiry and records the
// idempotency key in one step. Since, for a reader in the current epoch,
// is one MULTI/EXEC of HMGET and XREVRANGE; Head one HMGET. A channel
// without a meta hash sends Head and Since to a script too: whichever
// call finds none starts the channel's epoch, from an epoch string the
// calling node proposes (used only then), and drops any stream left from
// an earlier epoch.
//
// Sealing: the offset is known only inside Redis, so Redis stores the
// message's fields, not its envelope. Append seals the caller's message
// once the script has returned its epoch and offset, and every reader
// builds and seals its own message from the stored fields, which give
// back exactly the envelope the appender sealed. No reader ever sees the
// appender's message, sealed or not. (The price: each Since encodes the
// envelopes of the messages it returns.)
//
// Retention: the namespace's Size and TTL apply when reading, as with
// the memory store. The stream physically keeps the last
// min(Size, MaxPerChannel) entries (exact XADD MAXLEN), and a channel's
// keys expire MaxAge plus the namespace's TTL after its last Append, so
// idle channels disappear; a channel that only had Heads expires after
// MaxAge. Keep (the hub calls it for channels with subscribers) gives the
// keys that lifetime again.
//
// Losing history: when Redis loses a channel's keys — it restarted
// without persistence, was flushed, evicted them, or they expired — the
// next Head, Since or Append starts a new epoch, so that every old cursor
// gets a gap rather than a silent match against reused offsets. Keys must
// otherwise never be evicted: run Redis with "maxmemory-policy
// noeviction" (its default). Durability is Redis's: with "appendonly yes"
// and "appendfsync always" an acknowledged Append survives a crash of
// Redis; with "everysec", up to a second of them may not.
//
// Idempotency: a message with a key (hub.Message.Key) is stored once per
// channel within Config.Duplicates, across nodes; Append then returns
// hub.ErrDuplicate with the stored message. A message without a key may
// be stored twice, at two offsets, when the client retries an Append
// whose reply was lost (see goredis.Options.MaxRetries).
//
// Requires Redis 5.0 or later (streams); the tests run 7.0. Cluster, with
// a UniversalClient on a ClusterClient, works through the hash tags;
// reading from replicas does not (a replica may lag behind the head).
package redishistory

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/hub"
)

// Config configures a History. The zero value works.
type Config struct {
	// Prefix starts every key (see the package comment). Zero means
	// "herald".
	Prefix string
	// MaxPerChannel is the most messages Redis keeps per channel, whatever
	// the namespace's history_size; keep it at least the largest one.
	// Zero means 1000.
	MaxPerChannel int64
	// MaxAge is how long a channel's keys outlive its last Append, beyond
	// the namespace's TTL: the head (epoch and offset) stays that long
	// after the last message expired, so that a client that had
	// everything resumes without a gap. Zero means 24h.
	MaxAge time.Duration
	// Duplicates is the window within which a message with an idempotency
	// key (hub.Message.Key) is stored once. Redis keeps one small key per
	// message and window. Zero means 2 minutes.
	Duplicates time.Duration
}

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "herald"
	}
	if c.MaxPerChannel == 0 {
		c.MaxPerChannel = 1000
	}
	if c.MaxAge == 0 {
		c.MaxAge = 24 * time.Hour
	}
	if c.Duplicates == 0 {
		c.Duplicates = 2 * time.Minute
	}
	return c
}

// validate reports every problem of c, defaults applied.
func (c Config) validate() error {
	var errs []error
	if c.MaxPerChannel < 0 {
		errs = append(errs, fmt.Errorf("MaxPerChannel %d is negative", c.MaxPerChannel))
	}
	if c.MaxAge < time.Millisecond {
		errs = append(errs, fmt.Errorf("MaxAge %v is less than a millisecond", c.MaxAge))
	}
	if c.Duplicates < time.Millisecond {
		errs = append(errs, fmt.Errorf("Duplicates %v is less than a millisecond", c.Duplicates))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redishistory: config: %w", err)
	}
	return nil
}

// History is a hub.History on Redis. It holds no state of its own besides
// the client: every answer comes from Redis. It is safe for concurrent
// use.
type History struct {
	cfg Config
	rdb goredis.UniversalClient

	owned     bool // Close closes rdb: Open created it
	closeOnce sync.Once
	closeErr  error
}

var _ hub.History = (*History)(nil)

// New returns a History on rdb, which the caller keeps and closes. It
// checks cfg and loads the scripts, so that a Redis that is unreachable
// or cannot run them fails here.
func New(ctx context.Context, rdb goredis.UniversalClient, cfg Config) (*History, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	for _, s := range scripts {
		if err := s.Load(ctx, rdb).Err(); err != nil {
			return nil, fmt.Errorf("redishistory: loading scripts: %w", err)
		}
	}
	return &History{cfg: cfg, rdb: rdb}, nil
}

// Open connects to the Redis at rawURL ("redis://[user:password@]host:port/db",
// "rediss://…" for TLS, or "unix://…"; see goredis.ParseURL) and returns a
// History on it that Close disconnects.
func Open(ctx context.Context, rawURL string, cfg Config) (*History, error) {
	opts, err := goredis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redishistory: %w", err)
	}
	rdb := goredis.NewClient(opts)
	h, err := New(ctx, rdb, cfg)
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	h.owned = true
	return h, nil
}

// Close disconnects from Redis if Open connected; a History from New
// leaves its client alone. It is idempotent.
func (h *History) Close() error {
	h.closeOnce.Do(func() {
		if h.owned {
			h.closeErr = h.rdb.Close()
		}
	})
	return h.closeErr
}

// Keys of a channel; see the package comment.
func (h *History) metaKey(ch string) string   { return h.cfg.Prefix + ":m:{" + ch + "}" }
func (h *History) streamKey(ch string) string { return h.cfg.Prefix + ":h:{" + ch + "}" }
func (h *History) idemKey(ch, key string) string {
	return h.cfg.Prefix + ":k:{" + ch + "}:" + key
}

// newEpoch returns an epoch to propose for a channel that has none: 40
// random bits as 8 base-32 digits, as the memory store's.
func newEpoch() string {
	return strconv.FormatUint(rand.Uint64()>>24|1<<39, 32)
}

// millis returns d in whole milliseconds, at least 1: what PEXPIRE and
// SET PX accept.
func millis(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// Append implements hub.History: one script assigns the epoch and the
// next offset and stores the message's fields; Append then seals m.
func (h *History) Append(ctx context.Context, m *hub.Message, opts hub.HistoryOptions) error {
	keys := []string{h.metaKey(m.Channel), h.streamKey(m.Channel)}
	args := []any{
		newEpoch(),
		millis(h.cfg.MaxAge + max(opts.TTL, 0)),
		min(int64(max(opts.Size, 0)), h.cfg.MaxPerChannel),
		m.Type,
		[]byte(m.Data),
		m.Time.UnixNano(),
	}
	if m.Key != "" {
		keys = append(keys, h.idemKey(m.Channel, m.Key))
		args = append(args, millis(h.cfg.Duplicates))
	}
	res, err := appendScript.Run(ctx, h.rdb, keys, args...).Slice()
	if err != nil {
		return fmt.Errorf("redishistory: %s: %w", m.Channel, err)
	}
	if len(res) < 3 {
		return fmt.Errorf("redishistory: %s: append: unexpected reply %v", m.Channel, res)
	}
	dup, err1 := replyInt(res[0])
	epoch, err2 := replyString(res[1])
	off, err3 := replyInt(res[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return fmt.Errorf("redishistory: %s: append: %w", m.Channel, err)
	}
	if dup == 0 {
		m.Epoch, m.Offset = epoch, uint64(off)
		m.Seal()
		return nil
	}
	return duplicate(m, epoch, uint64(off), res[3:], opts)
}

// duplicate makes m the message stored before under its key, at epoch
// and off, from the stored fields (rest, empty when it is no longer in
// the stream), and returns hub.ErrDuplicate. A message that is no longer
// retained, physically or by the namespace's TTL, gets Offset 0.
func duplicate(m *hub.Message, epoch string, off uint64, rest []any, opts hub.HistoryOptions) error {
	m.Epoch, m.Offset = epoch, 0
	if off == 0 || len(rest) == 0 {
		return hub.ErrDuplicate
	}
	orig, err := decodeFields(m.Channel, epoch, off, rest[0])
	if err != nil {
		return fmt.Errorf("redishistory: %s: reading the original of a duplicate: %w", m.Channel, err)
	}
	if opts.TTL > 0 && orig.Time.Before(time.Now().Add(-opts.TTL)) {
		return hub.ErrDuplicate
	}
	m.Message = orig.Message
	return hub.ErrDuplicate
}

var _ hub.HistoryKeeper = (*History)(nil)

// Keep implements hub.HistoryKeeper: it gives the channel's keys, if they
// still exist, the lifetime an Append would (MaxAge plus the namespace's
// TTL), so that a quiet channel with subscribers keeps its epoch and head.
func (h *History) Keep(ctx context.Context, ch string, opts hub.HistoryOptions) error {
	ttl := time.Duration(millis(h.cfg.MaxAge+max(opts.TTL, 0))) * time.Millisecond
	_, err := h.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.PExpire(ctx, h.metaKey(ch), ttl)
		p.PExpire(ctx, h.streamKey(ch), ttl)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redishistory: %s: keep: %w", ch, err)
	}
	return nil
}

// Head implements hub.History. It reads the channel's meta hash, and runs
// the head script only when there is none, to start the epoch.
func (h *History) Head(ctx context.Context, ch string, _ hub.HistoryOptions) (hub.Position, error) {
	vals, err := h.rdb.HMGet(ctx, h.metaKey(ch), "epoch", "head").Result()
	if err != nil {
		return hub.Position{}, fmt.Errorf("redishistory: %s: %w", ch, err)
	}
	if vals[0] != nil {
		head, err := replyHead(vals)
		if err != nil {
			return hub.Position{}, fmt.Errorf("redishistory: %s: head: %w", ch, err)
		}
		return head, nil
	}
	res, err := headScript.Run(ctx, h.rdb, []string{h.metaKey(ch), h.streamKey(ch)},
		newEpoch(), millis(h.cfg.MaxAge)).Slice()
	if err != nil {
		return hub.Position{}, fmt.Errorf("redishistory: %s: %w", ch, err)
	}
	head, err := replyHead(res)
	if err != nil {
		return hub.Position{}, fmt.Errorf("redishistory: %s: head: %w", ch, err)
	}
	return head, nil
}

// Since implements hub.History.
//
// A reader in the channel's current epoch, at or behind the head (the
// common case), is served by one MULTI/EXEC: the meta hash, and the
// newest Size entries after pos (XREVRANGE … COUNT Size). Anything else —
// a channel without an epoch, a position from another epoch or past the
// head — goes through the since script, which starts the epoch if needed
// and picks the entries to return. (A plain read is the cheaper one:
// returning many entries through Lua costs Redis about three times as
// much CPU.) Since then drops the messages past the TTL and decides about
// the gap.
func (h *History) Since(ctx context.Context, ch string, pos hub.Position, opts hub.HistoryOptions) ([]*hub.Message, hub.Position, bool, error) {
	size := max(opts.Size, 0)
	head, entries, ok, err := h.sinceCurrent(ctx, ch, pos, size)
	if err != nil {
		return nil, hub.Position{}, false, fmt.Errorf("redishistory: %s: %w", ch, err)
	}
	newestFirst := true
	if !ok {
		res, err := sinceScript.Run(ctx, h.rdb, []string{h.metaKey(ch), h.streamKey(ch)},
			newEpoch(), millis(h.cfg.MaxAge), pos.Epoch, pos.Offset, size).Slice()
		if err != nil {
			return nil, hub.Position{}, false, fmt.Errorf("redishistory: %s: %w", ch, err)
		}
		if head, err = replyHead(res); err != nil {
			return nil, hub.Position{}, false, fmt.Errorf("redishistory: %s: since: %w", ch, err)
		}
		entries, newestFirst = nil, false
		if len(res) > 2 {
			entries = res[2]
		}
	}
	gap := pos.Epoch != head.Epoch || pos.Offset > head.Offset
	if !gap && pos.Offset == head.Offset {
		return nil, head, false, nil
	}
	var msgs []*hub.Message
	if entries != nil {
		if msgs, err = decodeEntries(ch, head.Epoch, entries, newestFirst); err != nil {
			return nil, hub.Position{}, false, fmt.Errorf("redishistory: %s: since: %w", ch, err)
		}
	}
	// Keep the last Size offsets (the stream may hold older entries when
	// the last Appends kept nothing) and, like the memory store, drop
	// from the oldest while expired.
	var cutoff time.Time
	if opts.TTL > 0 {
		cutoff = time.Now().Add(-opts.TTL)
	}
	i := 0
	for i < len(msgs) && (head.Offset-msgs[i].Offset >= uint64(size) || msgs[i].Time.Before(cutoff)) {
		i++
	}
	msgs = msgs[i:]
	if !gap {
		first := head.Offset + 1 // the oldest retained offset after pos
		if len(msgs) > 0 {
			first = msgs[0].Offset
		}
		gap = pos.Offset+1 < first
	}
	if len(msgs) == 0 {
		msgs = nil
	}
	return msgs, head, gap, nil
}

// sinceCurrent reads, in one MULTI/EXEC, the channel's head and its
// newest size entries after pos. ok is false, and nothing is returned,
// unless the channel has an epoch, pos is in it and pos is not past the
// head.
func (h *History) sinceCurrent(ctx context.Context, ch string, pos hub.Position, size int) (head hub.Position, entries any, ok bool, err error) {
	if pos.Epoch == "" {
		return head, nil, false, nil
	}
	var meta *goredis.SliceCmd
	var xrev *goredis.Cmd
	_, err = h.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		meta = p.HMGet(ctx, h.metaKey(ch), "epoch", "head")
		if size > 0 && pos.Offset < math.MaxUint64 {
			xrev = p.Do(ctx, "XREVRANGE", h.streamKey(ch), "+", strconv.FormatUint(pos.Offset+1, 10)+"-0", "COUNT", size)
		}
		return nil
	})
	if err != nil {
		return head, nil, false, err
	}
	vals := meta.Val()
	if vals[0] == nil || vals[0] != pos.Epoch {
		return head, nil, false, nil
	}
	if head, err = replyHead(vals); err != nil {
		return head, nil, false, err
	}
	if pos.Offset > head.Offset {
		return head, nil, false, nil
	}
	if xrev != nil {
		entries = xrev.Val()
	}
	return head, entries, true, nil
}

// ---- replies ----

// replyHead reads the {epoch, head} that every script's reply starts with.
func replyHead(res []any) (hub.Position, error) {
	if len(res) < 2 {
		return hub.Position{}, fmt.Errorf("unexpected reply %v", res)
	}
	epoch, err := replyString(res[0])
	if err != nil {
		return hub.Position{}, err
	}
	off, err := replyInt(res[1])
	if err != nil {
		return hub.Position{}, err
	}
	return hub.Position{Epoch: epoch, Offset: uint64(off)}, nil
}

func replyString(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("got %T %v, want a string", v, v)
	}
	return s, nil
}

func replyInt(v any) (int64, error) {
	switch v := v.(type) {
	case int64:
		if v >= 0 {
			return v, nil
		}
	case string: // the head as HMGET returns it
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			return n, nil
		}
	}
	return 0, fmt.Errorf("got %T %v, want a count", v, v)
}

// decodeEntries turns the reply of XRANGE, or of XREVRANGE (newestFirst),
// into sealed messages of ch, oldest first.
func decodeEntries(ch, epoch string, v any, newestFirst bool) ([]*hub.Message, error) {
	entries, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("entries: got %T, want an array", v)
	}
	msgs := make([]*hub.Message, 0, len(entries))
	for i := range entries {
		e := entries[i]
		if newestFirst {
			e = entries[len(entries)-1-i]
		}
		pair, ok := e.([]any)
		if !ok || len(pair) != 2 {
			return nil, fmt.Errorf("entry: got %v, want [id fields]", e)
		}
		id, err := replyString(pair[0])
		if err != nil {
			return nil, fmt.Errorf("entry ID: %w", err)
		}
		off, err := entryOffset(id)
		if err != nil {
			return nil, err
		}
		m, err := decodeFields(ch, epoch, off, pair[1])
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// entryOffset reads the offset from a stream entry ID "<offset>-0".
func entryOffset(id string) (uint64, error) {
	s, _, _ := strings.Cut(id, "-")
	off, err := strconv.ParseUint(s, 10, 64)
	if err != nil || off == 0 {
		return 0, fmt.Errorf("entry ID %q is not <offset>-0", id)
	}
	return off, nil
}

// decodeFields rebuilds and seals the message at epoch and off from an
// entry's fields.
func decodeFields(ch, epoch string, off uint64, v any) (*hub.Message, error) {
	fields, ok := v.([]any)
	if !ok || len(fields)%2 != 0 {
		return nil, fmt.Errorf("entry %d: fields %v", off, v)
	}
	m := &hub.Message{Message: broker.Message{Channel: ch, Epoch: epoch, Offset: off}}
	var seen int
	for i := 0; i < len(fields); i += 2 {
		name, _ := fields[i].(string)
		value, ok := fields[i+1].(string)
		if !ok {
			return nil, fmt.Errorf("entry %d: field %q: got %T", off, name, fields[i+1])
		}
		switch name {
		case "t":
			m.Type = value
		case "d":
			m.Data = []byte(value)
		case "ns":
			ns, err := strconv.ParseInt(value, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("entry %d: time %q", off, value)
			}
			m.Time = time.Unix(0, ns)
		default:
			continue
		}
		seen++
	}
	if seen != 3 {
		return nil, fmt.Errorf("entry %d: fields %v, want t, d and ns", off, fields)
	}
	m.Seal()
	return m, nil
}
