package redisstream

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/pipeline"
)

// DeadLetters returns group's dead-letter queue: the stream P:dlq:<group>,
// whose entry IDs are "<seq>-0".
func (q *Queue) DeadLetters(group string) pipeline.DeadLetters {
	return &deadLetters{q: q, group: group}
}

type deadLetters struct {
	q     *Queue
	group string
}

var _ pipeline.DeadLetters = (*deadLetters)(nil)

func entryID(seq uint64) string { return strconv.FormatUint(seq, 10) + "-0" }

// List returns up to limit dead letters (100 when limit is not positive),
// oldest first.
func (d *deadLetters) List(ctx context.Context, limit int) ([]pipeline.DeadLetter, error) {
	if limit <= 0 {
		limit = 100
	}
	msgs, err := d.q.rdb.XRangeN(ctx, d.q.dlqKey(d.group), "-", "+", int64(limit)).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstream: dead letters of %s: %w", d.group, err)
	}
	out := make([]pipeline.DeadLetter, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, deadLetterOf(d.group, m))
	}
	return out, nil
}

func deadLetterOf(group string, m redis.XMessage) pipeline.DeadLetter {
	str := func(f string) string { v, _ := m.Values[f].(string); return v }
	dl := pipeline.DeadLetter{
		Group: group,
		Event: pipeline.Event{ID: str(fieldID), Type: str(fieldType)},
		Error: str(fieldError),
	}
	if s := str(fieldData); s != "" {
		dl.Event.Data = []byte(s)
	}
	seq, _, _ := strings.Cut(m.ID, "-")
	dl.Seq, _ = strconv.ParseUint(seq, 10, 64)
	dl.Attempts, _ = strconv.Atoi(str(fieldAttempts))
	if ms, err := strconv.ParseInt(str(fieldAt), 10, 64); err == nil {
		dl.At = time.UnixMilli(ms)
	}
	return dl
}

// replayScript moves dead letter ARGV[1] of KEYS[1] to the replay stream
// KEYS[2] (trimmed to ARGV[2]) as a new event, atomically. It returns 0
// when there is no such dead letter.
var replayScript = redis.NewScript(`
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then
	return 0
end
local f, ev = e[1][2], {}
for i = 1, #f, 2 do
	if f[i] == 'id' or f[i] == 'type' or f[i] == 'data' or f[i] == 'order' then
		ev[#ev + 1] = f[i]
		ev[#ev + 1] = f[i + 1]
	end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ev))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
`)

// Replay moves the dead letters seqs (all when seqs is empty) to the
// group's replay stream, which only this group reads: other pipelines do
// not see the event again. Each move is atomic; a replayed event is a new
// delivery (Attempt 1) and is not subject to the duplicate window. Replay
// stops at the first seq that fails; one naming no dead letter of the
// group fails with an error wrapping pipeline.ErrNoDeadLetter.
func (d *deadLetters) Replay(ctx context.Context, seqs ...uint64) (int, error) {
	if len(seqs) == 0 {
		all, err := d.allSeqs(ctx)
		if err != nil {
			return 0, err
		}
		seqs = all
	}
	keys := []string{d.q.dlqKey(d.group), d.q.replayKey(d.group)}
	n := 0
	for _, seq := range seqs {
		moved, err := replayScript.Run(ctx, d.q.rdb, keys, entryID(seq), d.q.cfg.DeadLetterMaxLen).Int()
		if err != nil {
			return n, fmt.Errorf("redisstream: replay dead letter %d of %s: %w", seq, d.group, err)
		}
		if moved == 0 {
			return n, fmt.Errorf("redisstream: replay dead letter %d of %s: %w", seq, d.group, pipeline.ErrNoDeadLetter)
		}
		n++
	}
	return n, nil
}

// allSeqs returns the seqs of every dead letter of the group.
func (d *deadLetters) allSeqs(ctx context.Context) ([]uint64, error) {
	var seqs []uint64
	start := "-"
	for {
		msgs, err := d.q.rdb.XRangeN(ctx, d.q.dlqKey(d.group), start, "+", 1000).Result()
		if err != nil {
			return nil, fmt.Errorf("redisstream: dead letters of %s: %w", d.group, err)
		}
		for _, m := range msgs {
			seqs = append(seqs, deadLetterOf(d.group, m).Seq)
		}
		if len(msgs) < 1000 {
			return seqs, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// Drop deletes dead letter seq (XDEL). It returns an error wrapping
// pipeline.ErrNoDeadLetter when the group has no such dead letter.
func (d *deadLetters) Drop(ctx context.Context, seq uint64) error {
	n, err := d.q.rdb.XDel(ctx, d.q.dlqKey(d.group), entryID(seq)).Result()
	if err != nil {
		return fmt.Errorf("redisstream: drop dead letter %d of %s: %w", seq, d.group, err)
	}
	if n == 0 {
		return fmt.Errorf("redisstream: drop dead letter %d of %s: %w", seq, d.group, pipeline.ErrNoDeadLetter)
	}
	return nil
}
