package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Queue is a durable event queue with job semantics: events are appended
// durably, each pipeline (a consumer group) claims them, acknowledges each
// one after its work is done, retries failures and dead-letters what keeps
// failing. Implementations: the embedded NATS JetStream (package
// pipeline/jetstream); Redis Streams and RabbitMQ follow the same contract.
type Queue interface {
	// Enqueue appends events durably: when it returns nil, every event
	// survives a crash of the process. Events with an ID the queue has
	// seen within its duplicate window are not appended again.
	Enqueue(ctx context.Context, events []Event) error
	// Source returns the consumer group named group (created on first
	// use; each group sees every event once).
	Source(ctx context.Context, group string, cfg SourceConfig) (Source, error)
	// DeadLetters returns the dead-lettered events of group.
	DeadLetters(group string) DeadLetters
	// Stats returns the queue's figures for group.
	Stats(ctx context.Context, group string) (QueueStats, error)
	// Close releases the queue. Sources stop returning jobs.
	Close() error
}

// SourceConfig configures a consumer group.
type SourceConfig struct {
	// AckWait is how long a claimed event may stay unacknowledged before
	// the queue gives it to a worker again (the worker died). Zero means
	// 30s. Long work extends it with Job.Extend.
	AckWait time.Duration
	// MaxInFlight bounds the claimed, unacknowledged events. Zero means
	// 1024.
	MaxInFlight int
}

// Source hands out the events of one consumer group. A Source that
// claims events ahead of Fetch implements io.Closer too: Runner.Run closes
// it when it returns, and Close gives those events back.
type Source interface {
	// Fetch claims up to n events, waiting up to wait for the first one.
	// It returns no jobs and no error when none arrived in time.
	Fetch(ctx context.Context, n int, wait time.Duration) ([]Job, error)
}

// Job is one claimed event. Exactly one of Ack, Retry and DeadLetter ends
// it; until then the event is in flight.
type Job interface {
	Event() Event
	// Attempt is 1 for the first delivery, 2 for the first redelivery...
	Attempt() int
	// OrderKey is the key whose events must be processed in order (the
	// thread), or "" when none.
	OrderKey() string
	// Ack acknowledges the event: it is done. The queue may record it
	// after Ack returns; an acknowledgement lost in a crash means one
	// more delivery, which the pipeline's DoneStore and idempotency keys
	// keep from subscribers.
	Ack(ctx context.Context) error
	// Retry gives the event back to be delivered again after delay.
	Retry(delay time.Duration) error
	// Extend tells the queue the job is still being worked on.
	Extend() error
	// DeadLetter moves the event to the group's dead-letter queue with
	// reason and the number of attempts made, then acknowledges it.
	DeadLetter(ctx context.Context, reason error, attempts int) error
}

// DeadLetter is an event that failed for good, with why.
type DeadLetter struct {
	// Seq identifies the dead letter in its queue (for Replay and Drop).
	Seq      uint64    `json:"seq"`
	Group    string    `json:"pipeline"`
	Event    Event     `json:"event"`
	Error    string    `json:"error"`
	Attempts int       `json:"attempts"`
	At       time.Time `json:"at"`
}

// ErrNoDeadLetter is wrapped by the errors of DeadLetters.Replay and Drop
// when a sequence number names no dead letter of the group: there never
// was one, it was replayed, dropped or expired, or it is another group's.
var ErrNoDeadLetter = errors.New("pipeline: no such dead letter")

// DeadLetters manages a group's dead-letter queue.
type DeadLetters interface {
	// List returns up to limit dead letters, oldest first.
	List(ctx context.Context, limit int) ([]DeadLetter, error)
	// Replay puts the dead letters seqs (all of them when seqs is empty)
	// back in the group's queue as new deliveries, and removes them from
	// the dead-letter queue. It returns how many it replayed. It works
	// through seqs in order and stops at the first one that fails, so n
	// replayed means seqs[:n] were; a seq naming no dead letter of the
	// group fails with an error wrapping ErrNoDeadLetter.
	Replay(ctx context.Context, seqs ...uint64) (int, error)
	// Drop removes a dead letter for good. A seq naming no dead letter of
	// the group fails with an error wrapping ErrNoDeadLetter.
	Drop(ctx context.Context, seq uint64) error
}

// QueueStats are a consumer group's queue figures.
type QueueStats struct {
	Pending     uint64 `json:"pending"`     // queued, not yet claimed
	InFlight    uint64 `json:"in_flight"`   // claimed, not yet acknowledged
	Redelivered uint64 `json:"redelivered"` // in flight and delivered more than once
	Dead        uint64 `json:"dead_lettered"`
}

// DoneStore remembers, across restarts, which events a pipeline has
// finished: an event delivered again after a crash between its publish
// and its acknowledgement is then acknowledged without being published
// twice. Keys are Message.Key ("pipeline:event id").
type DoneStore interface {
	// Done reports whether key was marked.
	Done(ctx context.Context, key string) (bool, error)
	// MarkDone marks key; when it returns nil the mark survives a crash.
	MarkDone(ctx context.Context, key string) error
}

// BatchDoneStore is a DoneStore that also checks and marks many keys in
// one round trip. A Runner whose DoneStore has these methods checks every
// batch of events it claims at once and marks finished events in batches.
type BatchDoneStore interface {
	DoneStore
	// DoneMany reports, for each key, whether it was marked.
	DoneMany(ctx context.Context, keys []string) ([]bool, error)
	// MarkDoneMany marks every key; when it returns nil every mark
	// survives a crash.
	MarkDoneMany(ctx context.Context, keys []string) error
}

// validName is what a pipeline (consumer group) or source name may be:
// one token of a NATS subject, a Redis key or a RabbitMQ queue name.
var validName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// CheckName reports whether name can name a pipeline or a source, with an
// error saying what is allowed.
func CheckName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("%q: want 1-64 letters, digits, _ or -", name)
	}
	return nil
}

// OrderKey is the key whose events a queue hands out to be processed in
// order: the "thread" field of the event's data, as JSON text, or "" when
// there is none.
func OrderKey(ev Event) string {
	if k, sure := quickOrderKey(ev.Data); sure {
		return k
	}
	return decodeOrderKey(ev.Data)
}

// decodeOrderKey is OrderKey by decoding data.
func decodeOrderKey(data []byte) string {
	var d struct {
		Thread json.RawMessage `json:"thread"`
	}
	if json.Unmarshal(data, &d) != nil || len(d.Thread) == 0 || string(d.Thread) == "null" {
		return ""
	}
	return string(d.Thread)
}
