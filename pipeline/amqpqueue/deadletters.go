package amqpqueue

import (
	"context"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldhq/herald/pipeline"
)

// DeadLetters returns group's dead-letter queue, P.dlq.<group>.
//
// A RabbitMQ queue cannot read or delete a message by an ID, only take
// from its head. Each dead letter carries its seq in a header (see
// Queue.nextSeq), and every operation walks the queue from its head: it
// takes messages with basic.get, unacknowledged, acknowledges the ones it
// removes, and gives the others back with basic.nack (requeue), which in a
// classic queue puts each back at its former position, so the order is
// kept. If the process dies in the middle, closing its channel gives them
// back the same way. The cost is a round trip per dead letter up to the
// last one wanted (List stops at limit, Drop at its seq; Replay of all
// reads the whole queue).
//
// While one operation holds dead letters, another does not see them:
// operations on one group's dead letters are serialized within a Queue,
// but running them from several processes at once is not supported (one
// could report a held seq as missing). Stats.Dead does not count held
// dead letters either.
func (q *Queue) DeadLetters(group string) pipeline.DeadLetters {
	return &deadLetters{q: q, group: group}
}

type deadLetters struct {
	q     *Queue
	group string
}

var _ pipeline.DeadLetters = (*deadLetters)(nil)

// walk takes dead letters from the head of the queue until the queue is
// empty or stop (given each in turn) returns true. It returns them with
// the channel holding them; the caller acknowledges the ones it removes
// and calls giveBack. A group without a dead-letter queue has none.
func (d *deadLetters) walk(ctx context.Context, stop func(pipeline.DeadLetter) bool) (*amqp.Channel, []amqp.Delivery, error) {
	if err := checkGroup(d.group); err != nil {
		return nil, nil, err
	}
	ch, err := d.q.channel(ctx)
	if err != nil {
		return nil, nil, err
	}
	var held []amqp.Delivery
	for {
		if err := ctx.Err(); err != nil {
			giveBack(ch)
			return nil, nil, err
		}
		m, ok, err := ch.Get(d.q.dlqQueue(d.group), false)
		if isCode(err, amqp.NotFound) {
			return ch, nil, nil // the channel is closed, and held empty
		}
		if err != nil {
			giveBack(ch)
			return nil, nil, fmt.Errorf("amqpqueue: reading the dead letters of %s: %w", d.group, err)
		}
		if !ok {
			return ch, held, nil
		}
		held = append(held, m)
		if stop(deadLetterOf(d.group, m)) {
			return ch, held, nil
		}
	}
}

// giveBack requeues every message ch holds, in place, and closes it.
func giveBack(ch *amqp.Channel) {
	// Delivery tag 0 with multiple: all outstanding. The broker handles
	// it before the channel's close, which waits for its answer.
	_ = ch.Nack(0, true, true)
	_ = ch.Close()
}

func deadLetterOf(group string, m amqp.Delivery) pipeline.DeadLetter {
	dl := pipeline.DeadLetter{
		Group: group,
		Event: pipeline.Event{ID: m.MessageId, Type: m.Type, Data: m.Body},
		Error: headerString(m.Headers, hdrError),
	}
	if seq, ok := headerInt(m.Headers, hdrSeq); ok {
		dl.Seq = uint64(seq)
	}
	if n, ok := headerInt(m.Headers, hdrAttempts); ok {
		dl.Attempts = int(n)
	}
	if ms, ok := headerInt(m.Headers, hdrAt); ok {
		dl.At = time.UnixMilli(ms)
	}
	return dl
}

// List returns up to limit dead letters (100 when limit is not positive),
// oldest first.
func (d *deadLetters) List(ctx context.Context, limit int) ([]pipeline.DeadLetter, error) {
	if limit <= 0 {
		limit = 100
	}
	mu := d.q.dlqLock(d.group)
	mu.Lock()
	defer mu.Unlock()
	n := 0
	ch, held, err := d.walk(ctx, func(pipeline.DeadLetter) bool { n++; return n >= limit })
	if err != nil {
		return nil, err
	}
	defer giveBack(ch)
	out := make([]pipeline.DeadLetter, len(held))
	for i, m := range held {
		out[i] = deadLetterOf(d.group, m)
	}
	return out, nil
}

// Replay publishes the dead letters seqs (all when seqs is empty) to the
// group's own queue through the default exchange, so that no other
// pipeline sees them again, each confirmed, then removes them from the
// dead letters. A replayed event is a new delivery (Attempt 1), not
// subject to the duplicate window, and goes behind the events queued
// before it. Replay stops at the first seq that fails; one naming no dead
// letter of the group fails with an error wrapping
// pipeline.ErrNoDeadLetter. If removing a replayed dead letter fails (the
// channel closed), it is replayed but stays a dead letter, and Replay
// returns an error that does not count it.
func (d *deadLetters) Replay(ctx context.Context, seqs ...uint64) (int, error) {
	mu := d.q.dlqLock(d.group)
	mu.Lock()
	defer mu.Unlock()
	all := len(seqs) == 0
	want := make(map[uint64]bool, len(seqs))
	for _, seq := range seqs {
		want[seq] = true
	}
	seen := map[uint64]bool{}
	ch, held, err := d.walk(ctx, func(dl pipeline.DeadLetter) bool {
		if want[dl.Seq] {
			seen[dl.Seq] = true
		}
		return !all && len(seen) == len(want)
	})
	if err != nil {
		return 0, err
	}
	defer giveBack(ch)
	found := map[uint64]amqp.Delivery{}
	for _, m := range held {
		seq := deadLetterOf(d.group, m).Seq
		if _, dup := found[seq]; dup || !(all || want[seq]) {
			continue
		}
		found[seq] = m
		if all {
			seqs = append(seqs, seq)
		}
	}
	if len(found) > 0 {
		// The group's queue must exist, or the broker drops the replay.
		if err := d.q.declareGroup(ctx, d.group); err != nil {
			return 0, err
		}
	}
	n := 0
	for _, seq := range seqs {
		m, ok := found[seq]
		if !ok {
			return n, fmt.Errorf("amqpqueue: replay dead letter %d of %s: %w", seq, d.group, pipeline.ErrNoDeadLetter)
		}
		delete(found, seq) // the same seq twice: the second is gone
		ev := pipeline.Event{ID: m.MessageId, Type: m.Type, Data: m.Body}
		if err := d.q.publish(ctx, "", d.q.groupQueue(d.group), []amqp.Publishing{eventPublishing(ev)}, nil); err != nil {
			return n, fmt.Errorf("amqpqueue: replay dead letter %d of %s: %w", seq, d.group, err)
		}
		if err := m.Ack(false); err != nil {
			return n, fmt.Errorf("amqpqueue: replay dead letter %d of %s: replayed, but removing it failed: %w", seq, d.group, err)
		}
		n++
	}
	return n, nil
}

// Drop removes dead letter seq for good. It returns an error wrapping
// pipeline.ErrNoDeadLetter when the group has no such dead letter.
func (d *deadLetters) Drop(ctx context.Context, seq uint64) error {
	mu := d.q.dlqLock(d.group)
	mu.Lock()
	defer mu.Unlock()
	ch, held, err := d.walk(ctx, func(dl pipeline.DeadLetter) bool { return dl.Seq == seq })
	if err != nil {
		return err
	}
	defer giveBack(ch)
	if len(held) == 0 || deadLetterOf(d.group, held[len(held)-1]).Seq != seq {
		return fmt.Errorf("amqpqueue: drop dead letter %d of %s: %w", seq, d.group, pipeline.ErrNoDeadLetter)
	}
	if err := held[len(held)-1].Ack(false); err != nil {
		return fmt.Errorf("amqpqueue: drop dead letter %d of %s: %w", seq, d.group, err)
	}
	return nil
}
