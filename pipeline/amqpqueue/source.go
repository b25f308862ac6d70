package amqpqueue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldhq/herald/pipeline"
)

// source is one pipeline's consumer of its group's queue, on a channel of
// its own with prefetch MaxInFlight and manual acknowledgements. It starts
// consuming at the first Fetch. The broker pushes up to the prefetch
// ahead; a goroutine moves those deliveries into a buffer from which Fetch
// returns what is there as soon as there is something.
//
// Several sources of one group (in one process or several) share the
// queue's events round-robin, each event going to one of them.
type source struct {
	q        *Queue
	group    string
	prefetch int

	mu     sync.Mutex
	sess   *session             // the consumer, or nil before the first Fetch and after it ended; guarded by mu
	timers map[*job]*time.Timer // delayed retries; guarded by mu
	closed bool                 // guarded by mu
	wg     sync.WaitGroup       // the sessions' pump goroutines

	out   atomic.Int64 // jobs handed out and not ended
	outRe atomic.Int64 // of out, redeliveries
}

var (
	_ pipeline.Source = (*source)(nil)
	_ io.Closer       = (*source)(nil)
)

func newSource(q *Queue, group string, prefetch int) *source {
	return &source{q: q, group: group, prefetch: prefetch, timers: map[*job]*time.Timer{}}
}

// session is one channel consuming the group's queue.
type session struct {
	ch     *amqp.Channel
	msgs   chan amqp.Delivery // deliveries not yet fetched; closed when the consumer ended
	stop   chan struct{}      // closed by Close to end the pump
	closed chan *amqp.Error   // the channel's close reason
}

// session returns the live session, starting one when there is none.
func (s *source) session(ctx context.Context) (*session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.q.closed.Load() {
		return nil, ErrClosed
	}
	if s.sess != nil {
		return s.sess, nil
	}
	// Declared again: the broker may have lost them (a new node, a
	// deleted queue). Declaring what exists is cheap.
	if err := s.q.declareGroup(ctx, s.group); err != nil {
		return nil, err
	}
	ch, err := s.q.channel(ctx)
	if err != nil {
		return nil, err
	}
	sess := &session{
		ch:     ch,
		msgs:   make(chan amqp.Delivery, s.prefetch),
		stop:   make(chan struct{}),
		closed: ch.NotifyClose(make(chan *amqp.Error, 1)),
	}
	if err := ch.Qos(s.prefetch, 0, false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("amqpqueue: prefetch of %s: %w", s.group, err)
	}
	// Not ConsumeWithContext: it cancels the consumer when ctx (this
	// Fetch's) ends, and that basic.cancel would race Close's
	// channel.close for the channel's one RPC slot.
	deliveries, err := ch.Consume(s.q.groupQueue(s.group), "", false, false, false, false, nil)
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("amqpqueue: consuming %s: %w", s.q.groupQueue(s.group), err)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		sess.pump(deliveries)
	}()
	s.sess = sess
	return sess, nil
}

// pump moves deliveries into sess.msgs until the consumer ends or Close
// stops it. The buffer holds the prefetch, so it never fills: the broker
// sends no more unacknowledged messages than that.
func (sess *session) pump(deliveries <-chan amqp.Delivery) {
	defer close(sess.msgs)
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return
			}
			select {
			case sess.msgs <- d:
			case <-sess.stop:
				return
			}
		case <-sess.stop:
			return
		}
	}
}

// ended forgets sess, whose consumer ended, and returns why.
func (s *source) ended(sess *session) error {
	s.mu.Lock()
	if s.sess == sess {
		s.sess = nil
	}
	s.mu.Unlock()
	sess.ch.Close()
	reason := "the channel closed"
	select {
	case e, ok := <-sess.closed:
		if ok && e != nil {
			reason = e.Error()
		}
	default:
	}
	return fmt.Errorf("amqpqueue: consumer of %s ended (%s); it restarts at the next Fetch", s.group, reason)
}

// Fetch claims up to n events, waiting up to wait for the first one.
func (s *source) Fetch(ctx context.Context, n int, wait time.Duration) ([]pipeline.Job, error) {
	sess, err := s.session(ctx)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(max(wait, time.Millisecond))
	defer t.Stop()
	var jobs []pipeline.Job
	for len(jobs) == 0 {
		select {
		case d, ok := <-sess.msgs:
			if !ok {
				return nil, s.ended(sess)
			}
			if j := s.newJob(d); j != nil {
				jobs = append(jobs, j)
			}
		case <-t.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	for len(jobs) < n {
		select {
		case d, ok := <-sess.msgs:
			if !ok {
				return jobs, nil // the next Fetch reports it
			}
			if j := s.newJob(d); j != nil {
				jobs = append(jobs, j)
			}
		default:
			return jobs, nil
		}
	}
	return jobs, nil
}

// inFlight returns the events the source holds: handed out and not ended,
// or pushed by the broker and not fetched yet; and of those handed out,
// the redeliveries.
func (s *source) inFlight() (in, redelivered uint64) {
	s.mu.Lock()
	buffered := 0
	if s.sess != nil {
		buffered = len(s.sess.msgs)
	}
	s.mu.Unlock()
	return uint64(max(s.out.Load(), 0)) + uint64(buffered), uint64(max(s.outRe.Load(), 0))
}

// Close stops consuming. Closing the channel gives every event it holds
// back to the queue: those fetched ahead, and those waiting for a delayed
// retry.
func (s *source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	sess := s.sess
	s.sess = nil
	timers := s.timers
	s.timers = nil
	s.mu.Unlock()
	for j, t := range timers {
		if t.Stop() {
			j.end()
		}
	}
	var err error
	if sess != nil {
		close(sess.stop)
		if cerr := sess.ch.Close(); cerr != nil && !errors.Is(cerr, amqp.ErrClosed) {
			err = fmt.Errorf("amqpqueue: closing the consumer of %s: %w", s.group, cerr)
		}
	}
	s.wg.Wait()
	s.q.forget(s)
	return err
}

// newJob returns the job of d, or nil when d is not an event (published
// by something else than Enqueue): it is logged and acknowledged.
func (s *source) newJob(d amqp.Delivery) *job {
	if d.Type == "" && d.MessageId == "" {
		// Published by an application: the body is the whole event as
		// JSON. One that does not decode goes through as data, so that the
		// pipeline's parse stage dead-letters it with the reason.
		var ev pipeline.Event
		if json.Unmarshal(d.Body, &ev) != nil {
			ev = pipeline.Event{Data: d.Body}
		}
		if ev.ID == "" {
			sum := sha256.Sum256(d.Body) // the same on every delivery
			ev.ID = "amqp-" + hex.EncodeToString(sum[:16])
		}
		j := &job{s: s, d: d, ev: ev, attempt: attemptOf(d), key: pipeline.OrderKey(ev)}
		s.out.Add(1)
		if j.attempt > 1 {
			s.outRe.Add(1)
		}
		return j
	}
	if d.MessageId == "" {
		s.q.cfg.Logger.Warn("amqpqueue: skipping a message that is not an event (no message ID)",
			"queue", s.q.groupQueue(s.group), "pipeline", s.group)
		_ = d.Ack(false)
		return nil
	}
	j := &job{
		s:       s,
		d:       d,
		ev:      pipeline.Event{ID: d.MessageId, Type: d.Type, Data: d.Body},
		attempt: attemptOf(d),
		key:     headerString(d.Headers, hdrOrderKey),
	}
	s.out.Add(1)
	if j.attempt > 1 {
		s.outRe.Add(1)
	}
	return j
}

// attemptOf is the delivery's attempt: from x-delivery-count where the
// broker keeps one (quorum queues: the deliveries before this one), else
// 2 for a redelivery (the classic queues this package declares only flag
// a message delivered before) and 1 for a first delivery.
func attemptOf(d amqp.Delivery) int {
	if n, ok := headerInt(d.Headers, "x-delivery-count"); ok && n >= 0 {
		return int(n) + 1
	}
	if d.Redelivered {
		return 2
	}
	return 1
}

// job is one delivered event.
type job struct {
	s       *source
	d       amqp.Delivery
	ev      pipeline.Event
	attempt int
	key     string
	ended   atomic.Bool
}

var _ pipeline.Job = (*job)(nil)

func (j *job) Event() pipeline.Event { return j.ev }
func (j *job) Attempt() int          { return j.attempt }
func (j *job) OrderKey() string      { return j.key }

// Extend does nothing: RabbitMQ has no per-message deadline to push back.
// A claimed event stays claimed until its channel closes, or for the
// broker's consumer_timeout (30 minutes by default), after which the
// broker closes the channel and delivers the event again.
func (j *job) Extend() error { return nil }

// end records that the job ended, once.
func (j *job) end() {
	if j.ended.CompareAndSwap(false, true) {
		j.s.out.Add(-1)
		if j.attempt > 1 {
			j.s.outRe.Add(-1)
		}
	}
}

// Ack acknowledges the delivery (basic.ack: the broker does not answer
// it). It fails when the channel closed since the delivery: the broker
// then delivers the event again.
func (j *job) Ack(context.Context) error {
	err := j.d.Ack(false)
	j.end()
	if err != nil {
		return fmt.Errorf("amqpqueue: ack %s: %w", j.ev.ID, err)
	}
	return nil
}

// Retry gives the delivery back (basic.nack with requeue: a classic
// queue puts it back where it was, ahead of the events behind it) after
// delay. While it waits the event stays claimed, counting against the
// prefetch; if the source closes first, the channel's closing gives it
// back at once.
func (j *job) Retry(delay time.Duration) error {
	if delay <= 0 {
		return j.nack()
	}
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		j.end() // the channel closed: the broker has it back
		return nil
	}
	s.timers[j] = time.AfterFunc(delay, func() {
		s.mu.Lock()
		_, ok := s.timers[j]
		delete(s.timers, j)
		s.mu.Unlock()
		if ok {
			_ = j.nack()
		}
	})
	return nil
}

func (j *job) nack() error {
	err := j.d.Nack(false, true)
	j.end()
	if err != nil {
		return fmt.Errorf("amqpqueue: retry %s: %w", j.ev.ID, err)
	}
	return nil
}

// DeadLetter publishes the event to the group's dead-letter queue,
// confirmed, then acknowledges the delivery. The two steps are not
// atomic: if the acknowledgement is lost (the channel closed in between)
// the event is delivered again and may be dead-lettered twice.
func (j *job) DeadLetter(ctx context.Context, reason error, attempts int) error {
	q, group := j.s.q, j.s.group
	msg := ""
	if reason != nil {
		msg = reason.Error()
	}
	m := eventPublishing(j.ev)
	if m.Headers == nil {
		m.Headers = amqp.Table{}
	}
	m.Headers[hdrSeq] = int64(q.nextSeq())
	m.Headers[hdrError] = msg
	m.Headers[hdrAttempts] = int64(attempts)
	m.Headers[hdrAt] = time.Now().UnixMilli()
	m.Headers[hdrGroup] = group
	if err := q.publish(ctx, "", q.dlqQueue(group), []amqp.Publishing{m}, nil); err != nil {
		return fmt.Errorf("amqpqueue: dead letter %s: %w", j.ev.ID, err)
	}
	err := j.d.Ack(false)
	j.end()
	if err != nil {
		return fmt.Errorf("amqpqueue: dead letter %s: stored, but acknowledging it failed (it will be delivered again): %w", j.ev.ID, err)
	}
	return nil
}
