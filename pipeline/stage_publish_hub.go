package pipeline

import (
	"context"
	"errors"

	"github.com/heraldhq/herald/hub"
)

// HubPublisher publishes to a hub in this process.
type HubPublisher struct {
	h *hub.Hub
}

var _ Publisher = (*HubPublisher)(nil)

// NewHubPublisher returns a Publisher over h, which must not be nil.
func NewHubPublisher(h *hub.Hub) *HubPublisher { return &HubPublisher{h: h} }

// Publish calls h.Publish. The hub's errors about the publication itself
// (hub.ErrNoChannels, hub.ErrTooManyChannels, hub.ErrInvalidChannel in a
// *hub.ChannelError, hub.ErrInvalidType, hub.ErrInvalidData,
// hub.ErrMessageTooLarge) are permanent; the others (hub.ErrShuttingDown,
// history or broker failures, ctx's error) are retried.
func (p *HubPublisher) Publish(ctx context.Context, pub hub.Publication) error {
	_, err := p.h.Publish(ctx, pub)
	if err != nil && permanentHubError(err) {
		return Permanent(err)
	}
	return err
}

// permanentHubError reports whether err, from hub.Publish, is about the
// publication rather than the hub's state. A *hub.ChannelError alone says
// nothing: the hub also wraps history and broker failures in one.
func permanentHubError(err error) bool {
	for _, target := range []error{
		hub.ErrNoChannels, hub.ErrTooManyChannels, hub.ErrInvalidChannel,
		hub.ErrInvalidType, hub.ErrInvalidData, hub.ErrMessageTooLarge,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}
