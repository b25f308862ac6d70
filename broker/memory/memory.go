// Package memory is the in-process broker: a single Herald node with no
// external dependency. Publish calls the handler synchronously, so delivery
// order is exactly publish order.
package memory

import (
	"context"
	"sync/atomic"

	"github.com/heraldhq/herald/broker"
)

// Broker is the in-process broker. The zero value is not usable; call New.
type Broker struct {
	handler atomic.Pointer[broker.Handler]
	closed  atomic.Bool
}

var (
	_ broker.Broker     = (*Broker)(nil)
	_ broker.Shutdowner = (*Broker)(nil)
)

// New returns an in-process broker.
func New() *Broker { return &Broker{} }

// Run registers the handler that receives every published message.
func (b *Broker) Run(h broker.Handler) error {
	b.handler.Store(&h)
	return nil
}

// Publish delivers m to the handler before returning.
func (b *Broker) Publish(_ context.Context, m *broker.Message) error {
	if b.closed.Load() {
		return broker.ErrClosed
	}
	if h := b.handler.Load(); h != nil {
		(*h)(m)
	}
	return nil
}

// Shutdown stops delivery. It is idempotent.
func (b *Broker) Shutdown(context.Context) error {
	b.closed.Store(true)
	return nil
}
