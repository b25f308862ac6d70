package pipeline

import (
	"context"
	"encoding/json"
	"errors"
)

// EnqueueOptions configures NewEnqueue.
type EnqueueOptions struct {
	// Queue receives the message as a new event. Required.
	Queue Queue
}

// Enqueue is the stage that ends a pipeline by handing its work to
// another: the message, as processed so far, goes into Queue as an event
// with the same id, the message's type, and the message's fields as data.
// A pipeline reading that queue — in this process or another one —
// continues with the next stages. This is how the stages of one logical
// pipeline run in separate processes, each scaled alone, connected by a
// durable queue: the event is acknowledged to its first queue only once
// the second has stored it, and the event id makes a repeat count once.
type Enqueue struct {
	q Queue
}

var _ Stage = (*Enqueue)(nil)

// NewEnqueue returns an enqueue stage.
func NewEnqueue(opts EnqueueOptions) (*Enqueue, error) {
	if opts.Queue == nil {
		return nil, errors.New("pipeline: enqueue: Queue is required")
	}
	return &Enqueue{q: opts.Queue}, nil
}

// Name implements Stage.
func (*Enqueue) Name() string { return "enqueue" }

// Process implements Stage.
func (s *Enqueue) Process(ctx context.Context, m *Message) error {
	data := m.Event.Data
	if m.Fields != nil {
		b, err := json.Marshal(m.Fields)
		if err != nil {
			return Permanent(err)
		}
		data = b
	}
	typ := m.Type
	if typ == "" {
		typ = m.Event.Type
	}
	return s.q.Enqueue(ctx, []Event{{ID: m.Event.ID, Type: typ, Data: data}})
}
