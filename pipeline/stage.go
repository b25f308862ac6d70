// Package pipeline turns what an application says happened (an Event) into
// what subscribers see: a pipeline is a named list of Stages run over every
// event of a source queue — parse and validate, sanitize HTML, drop private
// fields, render once, route to channels, publish — and the event is
// acknowledged to its queue only once every publish it caused succeeded.
package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Event is what an application says happened: a type ("post.created")
// and its data. ID identifies the event across retries and pipelines; the
// ingest API assigns one when the application gives none.
type Event struct {
	ID   string          `json:"id"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// Message is one event on its way through one pipeline. Each pipeline
// works on its own Message, so a stage may change it freely.
type Message struct {
	// Event is the event as it was queued. Stages do not change it.
	Event Event
	// Fields is the event's data decoded by the parse stage (JSON objects
	// as map[string]any, numbers as json.Number); later stages read and
	// change it.
	Fields map[string]any
	// Type is the type of the published message. The parse stage sets it
	// to the event's type.
	Type string
	// Payload, when set (by the render stage), is the JSON published;
	// otherwise the publish stage publishes Fields.
	Payload json.RawMessage
	// Channels are the channels the message is published to, set by the
	// route stage.
	Channels []string
	// Key is the idempotency key of the publish: the same event published
	// again by the same pipeline (a redelivery) is not shown twice. The
	// pipeline sets it to "pipeline name:event id" before the first stage.
	Key string
}

// Stage is one step of a pipeline. Process is called by one of the
// stage's workers, concurrently for different messages, and must be safe
// for that; it changes m in place. An error wrapped with Permanent (bad
// input that no retry will fix: invalid JSON, a missing field) sends the
// event straight to the dead-letter queue; any other error is retried with
// backoff and dead-lettered after the pipeline's attempts. ErrDrop ends
// the message's way through the pipeline as a success: it is
// acknowledged, nothing is published.
type Stage interface {
	// Name is the stage's name in metrics and errors ("sanitize").
	Name() string
	Process(ctx context.Context, m *Message) error
}

// ErrDrop is returned by a stage that filters an event out on purpose.
var ErrDrop = errors.New("pipeline: event dropped by a stage")

// PermanentError is an error no retry will fix: the event goes to the
// dead-letter queue at once, with Err as its reason.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as permanent (see Stage). Nil stays nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// Permanentf is Permanent(fmt.Errorf(format, args...)).
func Permanentf(format string, args ...any) error {
	return &PermanentError{Err: fmt.Errorf(format, args...)}
}

// IsPermanent reports whether err is (or wraps) a PermanentError.
func IsPermanent(err error) bool {
	var pe *PermanentError
	return errors.As(err, &pe)
}
