package pipeline

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/jsonscan"
)

// Publisher delivers publications to subscribers: a hub in this process
// (HubPublisher), a remote Herald (HTTPPublisher) or a file (FileSink).
//
// Publish is called by the publish stage's workers, concurrently, and must
// be safe for that. p has not been validated. Publish returns nil once p
// is published to every channel; an error marked Permanent when p itself
// can never be published (no or invalid channels, invalid type or data,
// too large); any other error is retried later with the same p, including
// its IdempotencyKey, so a publisher that honours the key (a hub does)
// shows a retried publication once even if the failed attempt reached some
// channels.
type Publisher interface {
	Publish(ctx context.Context, p hub.Publication) error
}

// PublishOptions configures the publish stage.
type PublishOptions struct {
	// Publisher receives the publications. Required.
	Publisher Publisher
}

// Publish is the "publish" stage: it hands one hub.Publication per message
// to its Publisher — Channels, Type and Key of the message, and as data the
// rendered Payload or, when there is none, Fields as JSON. A message
// without channels is dropped (ErrDrop). Errors are the publisher's, so
// they are permanent or retried as it says.
type Publish struct {
	pub Publisher
}

var _ Stage = (*Publish)(nil)

// NewPublish returns a publish stage. It fails without a Publisher.
func NewPublish(opts PublishOptions) (*Publish, error) {
	if opts.Publisher == nil {
		return nil, errors.New("pipeline: publish: Publisher is required")
	}
	return &Publish{pub: opts.Publisher}, nil
}

// Name returns "publish".
func (*Publish) Name() string { return "publish" }

// Process publishes m.
func (s *Publish) Process(ctx context.Context, m *Message) error {
	if len(m.Channels) == 0 {
		return ErrDrop
	}
	data := m.Payload
	if len(data) == 0 {
		// The fields as json.Marshal writes them; without its reflection
		// for the values the parse stage decodes.
		b, ok := jsonscan.Append(make([]byte, 0, len(m.Event.Data)+len(m.Event.Data)/8), m.Fields)
		if !ok {
			var err error
			if b, err = json.Marshal(m.Fields); err != nil {
				return Permanentf("publish: encoding the fields: %v", err)
			}
		}
		data = b
	}
	return s.pub.Publish(ctx, hub.Publication{
		Channels:       m.Channels,
		Type:           m.Type,
		Data:           data,
		IdempotencyKey: m.Key,
	})
}
