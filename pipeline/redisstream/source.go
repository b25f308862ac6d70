package redisstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/pipeline"
)

// source is one pipeline's consumer group, read by this queue's consumer.
//
// Fetch takes, in this order and up to n in all: entries of the group idle
// for longer than AckWait, from any consumer (XAUTOCLAIM: redeliveries,
// their Attempt is the entry's delivery count); new replayed events
// (XREADGROUP on the replay stream, without waiting); new events
// (XREADGROUP on the events stream, waiting up to wait when nothing came
// before). A replay made while Fetch waits is therefore taken by the next
// Fetch.
//
// MaxInFlight bounds the jobs this source handed out and that are not
// ended yet (per process, where JetStream's bound is per group).
type source struct {
	q     *Queue
	group string
	cfg   pipeline.SourceConfig

	inFlight atomic.Int64
	freed    chan struct{} // signalled when a job ends; buffer of one

	mu     sync.Mutex
	cursor map[string]string // stream key → XAUTOCLAIM cursor; guarded by mu
}

var _ pipeline.Source = (*source)(nil)

func newSource(q *Queue, group string, cfg pipeline.SourceConfig) *source {
	return &source{q: q, group: group, cfg: cfg, freed: make(chan struct{}, 1), cursor: map[string]string{}}
}

// Fetch claims up to n events, waiting up to wait for the first one.
func (s *source) Fetch(ctx context.Context, n int, wait time.Duration) ([]pipeline.Job, error) {
	if s.q.closed.Load() {
		return nil, ErrClosed
	}
	deadline := time.Now().Add(wait)
	n = s.room(ctx, n, wait)
	if n == 0 {
		return nil, ctx.Err()
	}
	keys := s.q.groupKeys(s.group)
	var got []*job
	for _, key := range keys {
		js, err := s.reclaim(ctx, key, n-len(got))
		if err != nil {
			return s.partial(ctx, got, err)
		}
		got = append(got, js...)
		if len(got) == n {
			return s.hand(got), nil
		}
	}
	js, err := s.read(ctx, keys[1], n-len(got), -1)
	if err != nil {
		return s.partial(ctx, got, err)
	}
	got = append(got, js...)
	if len(got) == n {
		return s.hand(got), nil
	}
	block := time.Duration(-1) // do not wait
	if left := time.Until(deadline); len(got) == 0 && left > 0 {
		block = max(left, time.Millisecond) // BLOCK 0 would wait forever
	}
	js, err = s.read(ctx, keys[0], n-len(got), block)
	if err != nil {
		return s.partial(ctx, got, err)
	}
	return s.hand(append(got, js...)), nil
}

// room waits, up to wait, until fewer than MaxInFlight jobs are out and
// returns how many of n may be claimed.
func (s *source) room(ctx context.Context, n int, wait time.Duration) int {
	free := func() int { return min(n, s.cfg.MaxInFlight-int(s.inFlight.Load())) }
	if f := free(); f > 0 || wait <= 0 {
		return max(f, 0)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-s.freed:
			if f := free(); f > 0 {
				return f
			}
		case <-t.C:
			return max(free(), 0)
		case <-ctx.Done():
			return 0
		}
	}
}

// hand counts jobs as in flight and returns them as pipeline.Jobs.
func (s *source) hand(js []*job) []pipeline.Job {
	if len(js) == 0 {
		return nil
	}
	s.inFlight.Add(int64(len(js)))
	out := make([]pipeline.Job, len(js))
	for i, j := range js {
		out[i] = j
	}
	return out
}

// release records that a job ended.
func (s *source) release() {
	s.inFlight.Add(-1)
	select {
	case s.freed <- struct{}{}:
	default:
	}
}

// partial ends a Fetch that failed after it claimed got: got is returned
// (the error shows again on the next Fetch); with nothing claimed, the
// error is.
func (s *source) partial(ctx context.Context, got []*job, err error) ([]pipeline.Job, error) {
	if len(got) > 0 {
		return s.hand(got), nil
	}
	return nil, s.failed(ctx, err)
}

// failed returns err for Fetch, recreating the group if Redis lost it (the
// stream was deleted, or Redis restarted without persistence): the
// runner's next Fetch then works.
func (s *source) failed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if strings.HasPrefix(err.Error(), "NOGROUP") {
		if cerr := s.q.createGroup(ctx, s.group); cerr != nil {
			return errors.Join(err, cerr)
		}
	}
	return fmt.Errorf("redisstream: fetch %s: %w", s.group, err)
}

// reclaim claims up to n entries of key idle for longer than AckWait,
// continuing the scan of the pending entries list where the last call
// stopped.
func (s *source) reclaim(ctx context.Context, key string, n int) ([]*job, error) {
	s.mu.Lock()
	start := s.cursor[key]
	s.mu.Unlock()
	if start == "" {
		start = "0-0"
	}
	msgs, next, err := s.q.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: key, Group: s.group, Consumer: s.q.consumer,
		MinIdle: s.cfg.AckWait, Start: start, Count: int64(n),
	}).Result()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.cursor[key] = next
	s.mu.Unlock()
	if len(msgs) == 0 {
		return nil, nil
	}
	// XAUTOCLAIM counted this delivery; XPENDING tells the count.
	cmds := make([]*redis.XPendingExtCmd, len(msgs))
	_, err = s.q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, m := range msgs {
			cmds[i] = p.XPendingExt(ctx, &redis.XPendingExtArgs{
				Stream: key, Group: s.group, Start: m.ID, End: m.ID, Count: 1,
			})
		}
		return nil
	})
	if err != nil {
		// The entries stay claimed by this consumer and come back after
		// AckWait.
		return nil, err
	}
	js := make([]*job, 0, len(msgs))
	for i, m := range msgs {
		attempt := 2
		if p := cmds[i].Val(); len(p) == 1 && p[0].RetryCount > 0 {
			attempt = int(p[0].RetryCount)
		}
		if j := s.newJob(ctx, key, m, attempt); j != nil {
			js = append(js, j)
		}
	}
	return js, nil
}

// read claims up to n new entries of key, waiting up to block for the
// first (not at all when block is negative).
func (s *source) read(ctx context.Context, key string, n int, block time.Duration) ([]*job, error) {
	res, err := s.q.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: s.group, Consumer: s.q.consumer, Streams: []string{key, ">"},
		Count: int64(n), Block: block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var js []*job
	for _, st := range res {
		for _, m := range st.Messages {
			if j := s.newJob(ctx, key, m, 1); j != nil {
				js = append(js, j)
			}
		}
	}
	return js, nil
}

// newJob returns the job of entry m of key, or nil when m is not an event
// (written by something else than Enqueue): it is logged and acknowledged.
func (s *source) newJob(ctx context.Context, key string, m redis.XMessage, attempt int) *job {
	str := func(f string) string { v, _ := m.Values[f].(string); return v }
	id := str(fieldID)
	if raw := str(fieldEvent); raw != "" && id == "" {
		// Written by an application: the whole event as JSON. One that does
		// not decode goes through with its raw text as data, so that the
		// pipeline's parse stage dead-letters it with the reason.
		var ev pipeline.Event
		if json.Unmarshal([]byte(raw), &ev) != nil {
			ev = pipeline.Event{Data: []byte(raw)}
		}
		if ev.ID == "" {
			ev.ID = key + "-" + m.ID // the same on every delivery
		}
		return &job{s: s, key: key, entry: m.ID, ev: ev, attempt: attempt, order: pipeline.OrderKey(ev)}
	}
	if id == "" {
		s.q.cfg.Logger.Warn("redisstream: skipping a stream entry that is not an event",
			"stream", key, "entry", m.ID, "pipeline", s.group)
		_ = s.q.rdb.XAck(ctx, key, s.group, m.ID).Err()
		return nil
	}
	ev := pipeline.Event{ID: id, Type: str(fieldType)}
	if d := str(fieldData); d != "" {
		ev.Data = []byte(d)
	}
	return &job{s: s, key: key, entry: m.ID, ev: ev, attempt: attempt, order: str(fieldOrder)}
}

// job is one claimed stream entry.
type job struct {
	s       *source
	key     string // the stream the entry is in
	entry   string // its entry ID
	ev      pipeline.Event
	attempt int
	order   string
	ended   atomic.Bool
}

var _ pipeline.Job = (*job)(nil)

func (j *job) Event() pipeline.Event { return j.ev }
func (j *job) Attempt() int          { return j.attempt }
func (j *job) OrderKey() string      { return j.order }

// end releases the job's in-flight slot, once.
func (j *job) end() {
	if j.ended.CompareAndSwap(false, true) {
		j.s.release()
	}
}

// Ack acknowledges the entry (XACK), confirmed when it returns nil. An
// entry no longer pending (acknowledged by a consumer that reclaimed it)
// is acknowledged too.
func (j *job) Ack(ctx context.Context) error {
	if err := j.s.q.rdb.XAck(ctx, j.key, j.s.group, j.entry).Err(); err != nil {
		return fmt.Errorf("redisstream: ack %s: %w", j.ev.ID, err)
	}
	j.end()
	return nil
}

// Retry leaves the entry pending and sets its idle time (XCLAIM ... IDLE,
// to this consumer, without counting a delivery) to AckWait-delay, so that
// a Fetch reclaims it once delay has passed. Redis does not accept an idle
// time in the future, so a delay longer than AckWait waits AckWait.
func (j *job) Retry(delay time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	idle := max(j.s.cfg.AckWait-delay, 0)
	err := j.s.q.rdb.Do(ctx, "XCLAIM", j.key, j.s.group, j.s.q.consumer, 0, j.entry,
		"IDLE", idle.Milliseconds(), "JUSTID").Err()
	if err != nil {
		return fmt.Errorf("redisstream: retry %s: %w", j.ev.ID, err)
	}
	j.end()
	return nil
}

// Extend resets the entry's idle time (XCLAIM to this consumer, JUSTID:
// not counted as a delivery), so that it is not reclaimed for another
// AckWait.
func (j *job) Extend() error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	ids, err := j.s.q.rdb.XClaimJustID(ctx, &redis.XClaimArgs{
		Stream: j.key, Group: j.s.group, Consumer: j.s.q.consumer, Messages: []string{j.entry},
	}).Result()
	if err != nil {
		return fmt.Errorf("redisstream: extend %s: %w", j.ev.ID, err)
	}
	if len(ids) == 0 {
		return fmt.Errorf("redisstream: extend %s: no longer pending", j.ev.ID)
	}
	return nil
}

// deadLetterScript appends a dead letter with the next seq of its group
// as entry ID "<seq>-0" and acknowledges the event, atomically.
//
// KEYS: dead-letter stream, seq counter, the event's stream; ARGV: group,
// entry ID, DeadLetterMaxLen, then the dead letter's fields and values.
var deadLetterScript = redis.NewScript(`
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], string.format('%d-0', seq), unpack(ARGV, 4))
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
return seq
`)

// DeadLetter appends the event to the group's dead-letter stream and
// acknowledges it, in one step.
func (j *job) DeadLetter(ctx context.Context, reason error, attempts int) error {
	q, group := j.s.q, j.s.group
	msg := ""
	if reason != nil {
		msg = reason.Error()
	}
	err := deadLetterScript.Run(ctx, q.rdb,
		[]string{q.dlqKey(group), q.dlqSeqKey(group), j.key},
		group, j.entry, q.cfg.DeadLetterMaxLen,
		fieldID, j.ev.ID, fieldType, j.ev.Type, fieldData, []byte(j.ev.Data), fieldOrder, j.order,
		fieldGroup, group, fieldError, msg, fieldAttempts, attempts,
		fieldAt, time.Now().UnixMilli(),
	).Err()
	if err != nil {
		return fmt.Errorf("redisstream: dead letter %s: %w", j.ev.ID, err)
	}
	j.end()
	return nil
}
