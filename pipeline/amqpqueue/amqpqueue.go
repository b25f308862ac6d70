// Package amqpqueue is Herald's event queue on RabbitMQ (AMQP 0-9-1, with
// manual acknowledgements and publisher confirms).
//
// Topology, all durable, names starting with Config.Prefix (P, "herald"):
//
//	P.events          fanout exchange Enqueue publishes to
//	P.events.<group>  the group's queue, bound to P.events
//	P.dlq.<group>     the group's dead letters
//
// Both queues are classic queues. Quorum queues would count deliveries
// (x-delivery-count) and replicate, but on RabbitMQ 3.10 (Debian 12's) a
// quorum queue declared, published to (confirmed) and crashed (SIGKILL)
// within about a second came back empty, every time we tried: the
// conformance suite's restart test does just that. Classic queues keep
// the messages. A classic queue puts a message given back (a Retry, a
// closed channel) where it was, so a thread's order holds across
// restarts. A queue's type cannot be changed once it exists.
//
// A group's queue is declared by Source and receives only the events
// published after it exists: unlike JetStream's deliver-all consumers, a
// new pipeline does not get the events enqueued before, and an event
// enqueued while no pipeline exists is dropped by the exchange. Open the
// sources before the first Enqueue.
//
// Durability: Enqueue returns nil once the broker confirmed every event,
// which for a persistent message on a durable classic queue means it was
// written to disk.
//
// Duplicates: RabbitMQ has no deduplication. The duplicate window is kept
// by the Queue, in memory: an ID this Queue enqueued within the window
// (Config.Duplicates, at most Config.DuplicateIDs IDs) is not published
// again. Two Herald processes, or one restarted, do not share it: an event
// sent twice to different processes is queued twice, and the runner's
// DoneStore (JetStream's or Redis's: RabbitMQ has no key-value store, so
// this package offers none) and the hub's idempotency keys keep
// subscribers from seeing it twice.
//
// The queue dials Config.URL itself and dials again when the connection
// is lost: a Fetch or Enqueue during the outage fails, the next one
// reconnects.
package amqpqueue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldhq/herald/pipeline"
)

// Config configures a Queue. The zero value works with a local broker.
type Config struct {
	// URL is the broker's AMQP URL. Zero means
	// "amqp://guest:guest@localhost:5672/".
	URL string
	// Prefix starts the names of the exchange and queues. Zero means
	// "herald".
	Prefix string
	// MaxAge is how long an event waits in a group's queue before the
	// broker drops it (x-message-ttl). Zero means 24h.
	MaxAge time.Duration
	// MaxBytes bounds each group's queue: when one is full the broker
	// refuses the events (x-overflow reject-publish) and Enqueue fails,
	// rather than dropping queued events. The groups whose queues had
	// room did store them, so a retried Enqueue queues them there twice.
	// Zero means 1 GiB.
	MaxBytes int64
	// DeadLetterMaxAge is how long dead letters are kept. Zero means 7
	// days.
	DeadLetterMaxAge time.Duration
	// DeadLetterMaxLen bounds each group's dead letters: past it the
	// oldest are dropped. Zero means 100,000.
	DeadLetterMaxLen int64
	// Duplicates is the window within which an event ID is stored once
	// (by this Queue: see the package comment). Zero means 2 minutes.
	Duplicates time.Duration
	// DuplicateIDs bounds the IDs the window remembers: past it the oldest
	// are forgotten early. Zero means 100,000.
	DuplicateIDs int
	// Logger receives messages the queue cannot decode and settings the
	// broker kept from an earlier declaration. Nil means slog.Default().
	Logger *slog.Logger
}

// The MaxAge, MaxBytes, DeadLetterMaxAge and DeadLetterMaxLen of a group
// are fixed when its queues are created: a queue declared again with other
// arguments keeps its own (logged). Change them on existing queues with a
// RabbitMQ policy.

func (c Config) withDefaults() Config {
	if c.URL == "" {
		c.URL = "amqp://guest:guest@localhost:5672/"
	}
	if c.Prefix == "" {
		c.Prefix = "herald"
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 24 * time.Hour
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 1 << 30
	}
	if c.DeadLetterMaxAge <= 0 {
		c.DeadLetterMaxAge = 7 * 24 * time.Hour
	}
	if c.DeadLetterMaxLen <= 0 {
		c.DeadLetterMaxLen = 100_000
	}
	if c.Duplicates <= 0 {
		c.Duplicates = 2 * time.Minute
	}
	if c.DuplicateIDs <= 0 {
		c.DuplicateIDs = 100_000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// validate reports every problem of a configuration with its defaults
// applied.
func (c Config) validate() error {
	var errs []error
	if _, err := amqp.ParseURI(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("amqpqueue: URL: %w", err))
	}
	// Queue names have at most 255 bytes: "<prefix>.events.<group>",
	// with groups of up to 64.
	if len(c.Prefix) > 128 {
		errs = append(errs, fmt.Errorf("amqpqueue: prefix %.20q...: longer than 128 bytes", c.Prefix))
	}
	return errors.Join(errs...)
}

// Message headers, besides the properties MessageId (the event ID) and
// Type (the event type).
const (
	hdrOrderKey = "herald-order-key"
	hdrSeq      = "herald-seq"      // dead letters: their seq
	hdrError    = "herald-error"    // dead letters: why
	hdrAttempts = "herald-attempts" // dead letters: attempts made
	hdrAt       = "herald-at"       // dead letters: when, Unix milliseconds
	hdrGroup    = "herald-pipeline" // dead letters: the group
)

// dialTimeout bounds connecting to the broker, handshake included.
const dialTimeout = 10 * time.Second

// opTimeout bounds the broker calls of the methods that take no context
// (Close).
const opTimeout = 5 * time.Second

// ErrClosed is returned by the queue's methods after Close.
var ErrClosed = errors.New("amqpqueue: queue closed")

func checkGroup(group string) error {
	if err := pipeline.CheckName(group); err != nil {
		return fmt.Errorf("amqpqueue: pipeline name %w", err)
	}
	return nil
}

// Queue is a pipeline.Queue on RabbitMQ. It is safe for concurrent use.
//
// Lock order: a group's dead-letter lock (dlqLock) or a source's mu, then
// mu.
type Queue struct {
	cfg    Config
	recent *recentIDs
	closed atomic.Bool

	mu      sync.Mutex
	conn    *amqp.Connection                // guarded by mu; nil or closed means dial again
	pub     *amqp.Channel                   // confirm mode; guarded by mu
	sources map[string]map[*source]struct{} // group → its open sources; guarded by mu
	dlqMu   map[string]*sync.Mutex          // group → its dead-letter lock; guarded by mu
	lastSeq uint64                          // the last dead-letter seq handed out; guarded by mu
}

var _ pipeline.Queue = (*Queue)(nil)

// Open connects to the broker, declares the events exchange and returns
// the queue. Close closes its connection.
func Open(ctx context.Context, cfg Config) (*Queue, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	q := &Queue{
		cfg:     cfg,
		recent:  newRecentIDs(cfg.Duplicates, cfg.DuplicateIDs),
		sources: map[string]map[*source]struct{}{},
		dlqMu:   map[string]*sync.Mutex{},
	}
	if _, err := q.publisher(ctx); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *Queue) exchange() string               { return q.cfg.Prefix + ".events" }
func (q *Queue) groupQueue(group string) string { return q.cfg.Prefix + ".events." + group }
func (q *Queue) dlqQueue(group string) string   { return q.cfg.Prefix + ".dlq." + group }

// connection returns the connection, dialing when there is none or it was
// lost. q.mu must be held.
func (q *Queue) connection(ctx context.Context) (*amqp.Connection, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	if q.conn != nil && !q.conn.IsClosed() {
		return q.conn, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	timeout := dialTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(d), time.Millisecond))
	}
	conn, err := amqp.DialConfig(q.cfg.URL, amqp.Config{
		Dial:       amqp.DefaultDial(timeout),
		Properties: amqp.Table{"connection_name": "herald"},
	})
	if err != nil {
		return nil, fmt.Errorf("amqpqueue: connecting: %w", err)
	}
	q.conn = conn
	return conn, nil
}

// channel opens a channel, for one operation.
func (q *Queue) channel(ctx context.Context) (*amqp.Channel, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	conn, err := q.connection(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqpqueue: opening a channel: %w", err)
	}
	return ch, nil
}

// publisher returns the channel every publish goes through, in confirm
// mode, opening it (and declaring the events exchange) when there is none
// or it was closed. amqp091 channels publish safely from several
// goroutines.
func (q *Queue) publisher(ctx context.Context) (*amqp.Channel, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pub != nil && !q.pub.IsClosed() {
		return q.pub, nil
	}
	conn, err := q.connection(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqpqueue: opening a channel: %w", err)
	}
	if err := ch.ExchangeDeclare(q.exchange(), amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		ch.Close()
		return nil, fmt.Errorf("amqpqueue: declaring exchange %s: %w", q.exchange(), err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("amqpqueue: confirm mode: %w", err)
	}
	q.pub = ch
	return ch, nil
}

// publish publishes msgs to exchange with routing key key, in order, and
// waits until the broker confirmed each. done, when not nil, is called
// with the index of every message as its confirm arrives (true: stored).
func (q *Queue) publish(ctx context.Context, exchange, key string, msgs []amqp.Publishing, done func(i int, ok bool)) error {
	if done == nil {
		done = func(int, bool) {}
	}
	ch, err := q.publisher(ctx)
	if err != nil {
		for i := range msgs {
			done(i, false)
		}
		return err
	}
	confirms := make([]*amqp.DeferredConfirmation, len(msgs))
	for i, m := range msgs {
		confirms[i], err = ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false, m)
		if err != nil {
			err = fmt.Errorf("amqpqueue: publishing: %w", err)
			break // the confirms left nil fail below
		}
	}
	for i, c := range confirms {
		if c == nil {
			done(i, false)
			continue
		}
		ok, werr := c.WaitContext(ctx)
		done(i, ok)
		switch {
		case err != nil:
		case werr != nil:
			err = werr
		case !ok && ch.IsClosed():
			err = errors.New("amqpqueue: publishing: the channel closed before the broker confirmed")
		case !ok:
			err = errors.New("amqpqueue: publishing: the broker refused the message (a queue is full?)")
		}
	}
	return err
}

// eventPublishing is the message of an event: its data as the body, the
// rest in properties and headers.
func eventPublishing(ev pipeline.Event) amqp.Publishing {
	m := amqp.Publishing{
		ContentType:  "application/json",
		DeliveryMode: amqp.Persistent,
		MessageId:    ev.ID,
		Type:         ev.Type,
		Timestamp:    time.Now(),
		Body:         ev.Data,
	}
	if k := pipeline.OrderKey(ev); k != "" {
		m.Headers = amqp.Table{hdrOrderKey: k}
	}
	return m
}

// Enqueue publishes events to the exchange, in order, persistent, and
// returns nil once the broker confirmed every one. Events whose ID this
// Queue enqueued within the duplicate window are skipped. When Enqueue
// fails, the events the broker confirmed count as enqueued: enqueueing the
// same events again publishes only the rest.
func (q *Queue) Enqueue(ctx context.Context, events []pipeline.Event) error {
	if q.closed.Load() {
		return ErrClosed
	}
	ids := make([]string, len(events))
	for i, ev := range events {
		if ev.ID == "" {
			return errors.New("amqpqueue: event without an ID")
		}
		ids[i] = ev.ID
	}
	entries, err := q.recent.reserve(ctx, ids)
	if err != nil {
		return err
	}
	var msgs []amqp.Publishing
	var held []*idEntry
	for i, e := range entries {
		if e != nil {
			msgs = append(msgs, eventPublishing(events[i]))
			held = append(held, e)
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	err = q.publish(ctx, q.exchange(), "", msgs, func(i int, ok bool) {
		if ok {
			q.recent.commit(held[i])
		} else {
			q.recent.release(held[i])
		}
	})
	if err != nil {
		return fmt.Errorf("amqpqueue: enqueue: %w", err)
	}
	return nil
}

// declareGroup declares the exchange and group's queues and binds the
// group's queue to the exchange. Declaring what exists is a no-op; a queue
// that exists with other arguments keeps them (logged).
func (q *Queue) declareGroup(ctx context.Context, group string) error {
	ch, err := q.channel(ctx)
	if err != nil {
		return err
	}
	defer func() { ch.Close() }()
	if err := ch.ExchangeDeclare(q.exchange(), amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return fmt.Errorf("amqpqueue: declaring exchange %s: %w", q.exchange(), err)
	}
	queues := []struct {
		name string
		args amqp.Table
	}{
		{q.groupQueue(group), amqp.Table{
			amqp.QueueTypeArg:        amqp.QueueTypeClassic,
			amqp.QueueMessageTTLArg:  q.cfg.MaxAge.Milliseconds(),
			amqp.QueueMaxLenBytesArg: q.cfg.MaxBytes,
			amqp.QueueOverflowArg:    amqp.QueueOverflowRejectPublish,
		}},
		{q.dlqQueue(group), amqp.Table{
			amqp.QueueTypeArg:       amqp.QueueTypeClassic,
			amqp.QueueMessageTTLArg: q.cfg.DeadLetterMaxAge.Milliseconds(),
			amqp.QueueMaxLenArg:     q.cfg.DeadLetterMaxLen,
		}},
	}
	for _, qu := range queues {
		_, err := ch.QueueDeclare(qu.name, true, false, false, false, qu.args)
		if isCode(err, amqp.PreconditionFailed) {
			// The channel is closed: see whether the queue is there.
			q.cfg.Logger.Warn("amqpqueue: queue exists with other arguments; keeping them (use a policy to change them)",
				"queue", qu.name, "err", err)
			if ch, err = q.channel(ctx); err != nil {
				return err
			}
			_, err = ch.QueueDeclarePassive(qu.name, true, false, false, false, nil)
		}
		if err != nil {
			return fmt.Errorf("amqpqueue: declaring queue %s: %w", qu.name, err)
		}
	}
	if err := ch.QueueBind(q.groupQueue(group), "", q.exchange(), false, nil); err != nil {
		return fmt.Errorf("amqpqueue: binding queue %s: %w", q.groupQueue(group), err)
	}
	return nil
}

// isCode reports whether err is a broker error with code.
func isCode(err error, code int) bool {
	var aerr *amqp.Error
	return errors.As(err, &aerr) && aerr.Code == code
}

// Source declares group's queues (see the package comment) and returns its
// source. cfg.MaxInFlight becomes the consumer's prefetch (at most
// 65,535). cfg.AckWait does not apply: RabbitMQ gives a claimed event
// back when the consumer's channel or connection closes (the worker died),
// and closes a channel that holds an event unacknowledged for longer than
// the broker's consumer_timeout (30 minutes by default).
func (q *Queue) Source(ctx context.Context, group string, cfg pipeline.SourceConfig) (pipeline.Source, error) {
	if err := checkGroup(group); err != nil {
		return nil, err
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	if err := q.declareGroup(ctx, group); err != nil {
		return nil, err
	}
	s := newSource(q, group, min(cfg.MaxInFlight, 65535))
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed.Load() {
		return nil, ErrClosed
	}
	if q.sources[group] == nil {
		q.sources[group] = map[*source]struct{}{}
	}
	q.sources[group][s] = struct{}{}
	return s, nil
}

// forget removes s from the open sources.
func (q *Queue) forget(s *source) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.sources[s.group], s)
}

// Stats reads group's figures. Pending is the number of messages ready in
// the group's queue, as the broker reports it (queue.declare-ok). The
// broker does not report unacknowledged messages over AMQP (the
// management plugin does): InFlight and Redelivered count only the events
// this Queue's sources hold, claimed and not ended. Dead is the number of
// messages ready in the dead-letter queue (those a dead-letter operation
// holds at that moment are not counted).
func (q *Queue) Stats(ctx context.Context, group string) (pipeline.QueueStats, error) {
	var st pipeline.QueueStats
	if err := checkGroup(group); err != nil {
		return st, err
	}
	ch, err := q.channel(ctx)
	if err != nil {
		return st, err
	}
	defer func() { ch.Close() }()
	qi, err := ch.QueueDeclarePassive(q.groupQueue(group), true, false, false, false, nil)
	if isCode(err, amqp.NotFound) {
		return st, fmt.Errorf("amqpqueue: no pipeline %s", group)
	}
	if err != nil {
		return st, fmt.Errorf("amqpqueue: stats of %s: %w", group, err)
	}
	st.Pending = uint64(qi.Messages)
	qi, err = ch.QueueDeclarePassive(q.dlqQueue(group), true, false, false, false, nil)
	switch {
	case isCode(err, amqp.NotFound):
	case err != nil:
		return st, fmt.Errorf("amqpqueue: stats of %s: %w", group, err)
	default:
		st.Dead = uint64(qi.Messages)
	}
	q.mu.Lock()
	var sources []*source
	for s := range q.sources[group] {
		sources = append(sources, s)
	}
	q.mu.Unlock()
	for _, s := range sources {
		in, re := s.inFlight()
		st.InFlight += in
		st.Redelivered += re
	}
	return st, nil
}

// Close closes the queue's sources (the broker gives their claimed events
// back) and its connection. It is idempotent.
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	q.mu.Lock()
	var all []*source
	for _, group := range q.sources {
		for s := range group {
			all = append(all, s)
		}
	}
	q.mu.Unlock()
	for _, s := range all {
		s.Close()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.conn == nil {
		return nil
	}
	// Closing the connection closes its channels; the broker answers
	// within opTimeout or the socket is dropped.
	done := make(chan error, 1)
	go func() { done <- q.conn.Close() }()
	select {
	case err := <-done:
		if errors.Is(err, amqp.ErrClosed) {
			return nil
		}
		return err
	case <-time.After(opTimeout):
		return errors.New("amqpqueue: closing the connection timed out")
	}
}

// nextSeq returns a new dead-letter seq: the time in microseconds, raised
// to one more than the last seq when the clock has not moved on. Seqs are
// strictly increasing within a process and, across processes, unique
// unless two dead-letter the same group within the same microsecond.
// They stay below 2^53 (exact in JSON numbers) until the year 2255.
func (q *Queue) nextSeq() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.lastSeq = max(q.lastSeq+1, uint64(time.Now().UnixMicro()))
	return q.lastSeq
}

// dlqLock returns group's dead-letter lock.
func (q *Queue) dlqLock(group string) *sync.Mutex {
	q.mu.Lock()
	defer q.mu.Unlock()
	mu := q.dlqMu[group]
	if mu == nil {
		mu = &sync.Mutex{}
		q.dlqMu[group] = mu
	}
	return mu
}

// headerInt reads an integer header, whatever integer type the broker or
// publisher gave it.
func headerInt(h amqp.Table, name string) (int64, bool) {
	switch v := h[name].(type) {
	case int64:
		return v, true
	case int32:
		return int64(v), true
	case int16:
		return int64(v), true
	case int8:
		return int64(v), true
	case int:
		return int64(v), true
	case uint64:
		return int64(v), true
	case uint32:
		return int64(v), true
	case uint16:
		return int64(v), true
	case uint8:
		return int64(v), true
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	return 0, false
}

func headerString(h amqp.Table, name string) string {
	s, _ := h[name].(string)
	return s
}
