// Package redisstream is Herald's event queue on Redis Streams (Redis 7.0
// or later): one stream holds the events, each pipeline is a consumer
// group of it, and each pipeline has a dead-letter stream of its own.
//
// Keys, all starting with Config.Prefix (P, "herald:events" by default):
//
//	P                  the events (XADD; fields id, type, data, order)
//	P:id:<event id>    marks an event ID seen within the duplicate window
//	P:replay:<group>   events replayed from group's dead letters; only
//	                   group has a consumer group on it
//	P:dlq:<group>      group's dead letters, entry IDs "<seq>-0"
//	P:dlq:<group>:seq  the counter those seqs come from
//	P:done:<key>       DoneStore marks
//
// Durability: Redis answers a write once it is in memory. Whether an
// acknowledged event survives a crash of Redis depends on the server's
// persistence settings: with "appendonly yes" and "appendfsync always"
// (what the tests run) Redis writes and fsyncs its append-only file before
// it replies, so Enqueue returning nil means the events are on disk; with
// the common "appendfsync everysec" up to a second of acknowledged events
// can be lost, and with RDB snapshots only, everything since the last
// snapshot. Keys must never be evicted: run Redis with
// "maxmemory-policy noeviction" (its default).
//
// Redis Cluster: the scripts and XREADGROUP touch several of the keys
// above at once, so they must share a hash slot. Put a hash tag in the
// prefix ("{herald}:events"): every key starts with it.
package redisstream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/pipeline"
)

// Config configures a Queue. The zero value works.
type Config struct {
	// Prefix starts every key (see the package comment). Zero means
	// "herald:events".
	Prefix string
	// MaxLen bounds the events stream: every XADD trims it to about MaxLen
	// entries (MAXLEN ~), dropping the oldest. Redis keeps acknowledged
	// entries until they are trimmed, and it cannot trim only what every
	// group has acknowledged, so a bound by count is what keeps memory in
	// check. The price: a group that falls more than MaxLen events behind
	// (or a pipeline created late) silently misses the oldest ones, and
	// an in-flight event that gets trimmed is never delivered again.
	// Size it to hold several hours of traffic. The "~" lets Redis trim
	// whole macro-nodes, which is much cheaper than an exact bound; the
	// stream may exceed MaxLen by a node's worth. Zero means 1,000,000.
	MaxLen int64
	// DeadLetterMaxLen bounds each group's dead-letter and replay streams
	// the same way. Zero means 100,000.
	DeadLetterMaxLen int64
	// Duplicates is the window within which an event ID is stored once.
	// Zero means 2 minutes.
	Duplicates time.Duration
	// DoneMaxAge is how long the DoneStore remembers a finished event: as
	// long as an event can be delivered again. Zero means 24h.
	DoneMaxAge time.Duration
	// Logger receives entries the queue cannot decode and cleanup
	// failures. Nil means slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "herald:events"
	}
	if c.MaxLen <= 0 {
		c.MaxLen = 1_000_000
	}
	if c.DeadLetterMaxLen <= 0 {
		c.DeadLetterMaxLen = 100_000
	}
	if c.Duplicates <= 0 {
		c.Duplicates = 2 * time.Minute
	}
	if c.DoneMaxAge <= 0 {
		c.DoneMaxAge = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Stream entry fields.
const (
	fieldEvent    = "event" // an application's entry: the event as JSON
	fieldID       = "id"
	fieldType     = "type"
	fieldData     = "data"
	fieldOrder    = "order"
	fieldGroup    = "group"
	fieldError    = "error"
	fieldAttempts = "attempts"
	fieldAt       = "at" // dead-lettered at, Unix milliseconds
)

// opTimeout bounds the Redis calls of the methods that take no context
// (Job.Retry, Job.Extend, Close).
const opTimeout = 5 * time.Second

// ErrClosed is returned by Fetch after the queue was closed.
var ErrClosed = errors.New("redisstream: queue closed")

// Queue is a pipeline.Queue and pipeline.DoneStore on Redis Streams. It is
// safe for concurrent use.
type Queue struct {
	cfg      Config
	rdb      redis.UniversalClient
	consumer string // this queue's consumer name in every group

	closed atomic.Bool
	mu     sync.Mutex
	groups map[string]bool // groups this queue made a Source for; guarded by mu
}

var (
	_ pipeline.Queue          = (*Queue)(nil)
	_ pipeline.BatchDoneStore = (*Queue)(nil)
)

// Open checks that rdb reaches a Redis 7.0 or later and returns the queue.
// The queue does not own rdb: its owner closes it after Close.
func Open(ctx context.Context, rdb redis.UniversalClient, cfg Config) (*Queue, error) {
	cfg = cfg.withDefaults()
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return nil, fmt.Errorf("redisstream: %w", err)
	}
	if v, ok := serverVersion(info); ok && v < 7 {
		return nil, fmt.Errorf("redisstream: Redis %s is too old: the queue needs 7.0 or later", infoField(info, "redis_version"))
	}
	return &Queue{cfg: cfg, rdb: rdb, consumer: consumerName(), groups: map[string]bool{}}, nil
}

// serverVersion returns the major version in an INFO server reply.
func serverVersion(info string) (int, bool) {
	major, _, _ := strings.Cut(infoField(info, "redis_version"), ".")
	v, err := strconv.Atoi(major)
	return v, err == nil
}

func infoField(info, name string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// consumerName is unique per queue, hence per process: host, pid and a
// random part (a restarted process gets a new name; its predecessor's
// unacknowledged entries are reclaimed after AckWait).
func consumerName() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

func (q *Queue) streamKey() string             { return q.cfg.Prefix }
func (q *Queue) idKey(eventID string) string   { return q.cfg.Prefix + ":id:" + eventID }
func (q *Queue) replayKey(group string) string { return q.cfg.Prefix + ":replay:" + group }
func (q *Queue) dlqKey(group string) string    { return q.cfg.Prefix + ":dlq:" + group }
func (q *Queue) dlqSeqKey(group string) string { return q.cfg.Prefix + ":dlq:" + group + ":seq" }
func (q *Queue) doneKey(key string) string     { return q.cfg.Prefix + ":done:" + key }
func (q *Queue) groupKeys(group string) [2]string {
	return [2]string{q.streamKey(), q.replayKey(group)}
}

// enqueueScript appends the events whose ID key does not exist and sets
// that key with the duplicate window as expiry, atomically. The check
// comes first and the mark after the XADD, so that a failed XADD leaves
// no mark behind.
//
// KEYS[1] is the stream, KEYS[2..] the events' ID keys; ARGV[1] the window
// in milliseconds, ARGV[2] MaxLen, then id, type, data, order per event.
var enqueueScript = redis.NewScript(`
local added = 0
for i = 2, #KEYS do
	local a = 3 + (i - 2) * 4
	if redis.call('EXISTS', KEYS[i]) == 0 then
		redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
			'id', ARGV[a], 'type', ARGV[a+1], 'data', ARGV[a+2], 'order', ARGV[a+3])
		redis.call('SET', KEYS[i], '1', 'PX', ARGV[1])
		added = added + 1
	end
end
return added
`)

// enqueueBatch is how many events one script call appends: a script
// blocks Redis while it runs.
const enqueueBatch = 128

// Enqueue appends events in order, skipping those whose ID was enqueued
// within the duplicate window. Each script call is atomic; when Enqueue
// fails part way the events before are stored, and enqueueing the same
// events again stores only the rest.
func (q *Queue) Enqueue(ctx context.Context, events []pipeline.Event) error {
	for _, ev := range events {
		if ev.ID == "" {
			return errors.New("redisstream: event without an ID")
		}
	}
	window := strconv.FormatInt(q.cfg.Duplicates.Milliseconds(), 10)
	for len(events) > 0 {
		batch := events[:min(len(events), enqueueBatch)]
		events = events[len(batch):]
		keys := make([]string, 0, 1+len(batch))
		args := make([]any, 0, 2+4*len(batch))
		keys = append(keys, q.streamKey())
		args = append(args, window, q.cfg.MaxLen)
		for _, ev := range batch {
			keys = append(keys, q.idKey(ev.ID))
			args = append(args, ev.ID, ev.Type, []byte(ev.Data), pipeline.OrderKey(ev))
		}
		if err := enqueueScript.Run(ctx, q.rdb, keys, args...).Err(); err != nil {
			return fmt.Errorf("redisstream: enqueue: %w", err)
		}
	}
	return nil
}

// Source creates group on the events stream and on its replay stream (at
// the start of each, like JetStream's deliver-all: a new pipeline also
// gets the events still in the stream) and returns its source.
func (q *Queue) Source(ctx context.Context, group string, cfg pipeline.SourceConfig) (pipeline.Source, error) {
	if err := pipeline.CheckName(group); err != nil {
		return nil, fmt.Errorf("redisstream: pipeline name %w", err)
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	if err := q.createGroup(ctx, group); err != nil {
		return nil, err
	}
	q.mu.Lock()
	q.groups[group] = true
	q.mu.Unlock()
	return newSource(q, group, cfg), nil
}

// createGroup creates group on its streams, and the streams if need be.
func (q *Queue) createGroup(ctx context.Context, group string) error {
	for _, key := range q.groupKeys(group) {
		err := q.rdb.XGroupCreateMkStream(ctx, key, group, "0").Err()
		if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("redisstream: consumer group %s on %s: %w", group, key, err)
		}
	}
	return nil
}

// pendingCap bounds the entries Stats counts one by one: when Redis
// cannot tell a group's lag, and for the redelivered figure.
const pendingCap = 10_000

// Stats reads group's figures: Pending is the lag Redis reports for the
// group on its two streams, InFlight their pending entries lists,
// Redelivered the entries there delivered more than once, Dead the length
// of the dead-letter stream. Pending and Redelivered are counted entry by
// entry, up to 10,000, when Redis cannot report them directly.
func (q *Queue) Stats(ctx context.Context, group string) (pipeline.QueueStats, error) {
	var st pipeline.QueueStats
	for _, key := range q.groupKeys(group) {
		groups, err := q.rdb.XInfoGroups(ctx, key).Result()
		if err != nil {
			if strings.Contains(err.Error(), "no such key") {
				return st, fmt.Errorf("redisstream: no pipeline %s", group)
			}
			return st, fmt.Errorf("redisstream: stats of %s: %w", group, err)
		}
		i := slices.IndexFunc(groups, func(g redis.XInfoGroup) bool { return g.Name == group })
		if i < 0 {
			return st, fmt.Errorf("redisstream: no pipeline %s", group)
		}
		g := groups[i]
		lag := g.Lag
		if lag < 0 {
			if lag, err = q.countAfter(ctx, key, g.LastDeliveredID); err != nil {
				return st, fmt.Errorf("redisstream: stats of %s: %w", group, err)
			}
		}
		st.Pending += uint64(lag)
		st.InFlight += uint64(g.Pending)
		if g.Pending > 0 {
			n, err := q.countRedelivered(ctx, key, group)
			if err != nil {
				return st, fmt.Errorf("redisstream: stats of %s: %w", group, err)
			}
			st.Redelivered += n
		}
	}
	dead, err := q.rdb.XLen(ctx, q.dlqKey(group)).Result()
	if err != nil {
		return st, fmt.Errorf("redisstream: stats of %s: %w", group, err)
	}
	st.Dead = uint64(dead)
	return st, nil
}

// countAfter counts the entries of key after id, up to pendingCap.
func (q *Queue) countAfter(ctx context.Context, key, id string) (int64, error) {
	msgs, err := q.rdb.XRangeN(ctx, key, "("+id, "+", pendingCap).Result()
	return int64(len(msgs)), err
}

// countRedelivered counts group's pending entries on key delivered more
// than once, looking at up to pendingCap entries.
func (q *Queue) countRedelivered(ctx context.Context, key, group string) (uint64, error) {
	var n uint64
	start := "-"
	for seen := 0; seen < pendingCap; {
		page, err := q.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: key, Group: group, Start: start, End: "+", Count: 1000,
		}).Result()
		if err != nil {
			return n, err
		}
		for _, p := range page {
			if p.RetryCount > 1 {
				n++
			}
		}
		seen += len(page)
		if len(page) < 1000 {
			break
		}
		start = "(" + page[len(page)-1].ID
	}
	return n, nil
}

// Close stops the queue's sources from returning jobs and removes this
// queue's consumer from the groups where it holds no pending entry (a
// consumer with pending entries stays, for them to be reclaimed). It does
// not close the client.
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	q.mu.Lock()
	groups := make([]string, 0, len(q.groups))
	for g := range q.groups {
		groups = append(groups, g)
	}
	q.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, g := range groups {
		for _, key := range q.groupKeys(g) {
			err := delConsumerScript.Run(ctx, q.rdb, []string{key}, g, q.consumer).Err()
			if err != nil && !errors.Is(err, redis.Nil) {
				q.cfg.Logger.Warn("redisstream: removing a consumer failed", "pipeline", g, "consumer", q.consumer, "err", err)
			}
		}
	}
	return nil
}

// delConsumerScript deletes consumer ARGV[2] from group ARGV[1] of stream
// KEYS[1] if it holds no pending entry.
var delConsumerScript = redis.NewScript(`
local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if ok and #p == 0 then
	redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return 0
`)

// Done reports whether key was marked done.
func (q *Queue) Done(ctx context.Context, key string) (bool, error) {
	n, err := q.rdb.Exists(ctx, q.doneKey(key)).Result()
	if err != nil {
		return false, fmt.Errorf("redisstream: done: %w", err)
	}
	return n > 0, nil
}

// DoneMany reports for each key whether it was marked done, in one round
// trip (a pipeline of EXISTS).
func (q *Queue) DoneMany(ctx context.Context, keys []string) ([]bool, error) {
	cmds := make([]*redis.IntCmd, len(keys))
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Exists(ctx, q.doneKey(k))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redisstream: done: %w", err)
	}
	done := make([]bool, len(keys))
	for i, c := range cmds {
		done[i] = c.Val() > 0
	}
	return done, nil
}

// MarkDoneMany marks every key as MarkDone does, in one round trip.
func (q *Queue) MarkDoneMany(ctx context.Context, keys []string) error {
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.SetNX(ctx, q.doneKey(k), 1, q.cfg.DoneMaxAge)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstream: mark done: %w", err)
	}
	return nil
}

// MarkDone marks key done for DoneMaxAge (SET NX EX). Like Enqueue, the
// mark survives a crash of Redis when its append-only file is fsynced on
// every write.
func (q *Queue) MarkDone(ctx context.Context, key string) error {
	if err := q.rdb.SetNX(ctx, q.doneKey(key), 1, q.cfg.DoneMaxAge).Err(); err != nil {
		return fmt.Errorf("redisstream: mark done: %w", err)
	}
	return nil
}
