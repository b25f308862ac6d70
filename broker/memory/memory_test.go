package memory_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/broker/brokertest"
	"github.com/heraldhq/herald/broker/memory"
)

func newBroker(t *testing.T) *memory.Broker {
	t.Helper()
	b := memory.New()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return b
}

func TestConformance(t *testing.T) {
	brokertest.Run(t, func(t *testing.T) broker.Broker { return newBroker(t) })
}

// TestClusterConformanceOverRelay runs the cross-node cases on in-process
// brokers joined by relayNode. The in-process broker is single-node by
// design; this exercises the cross-node suite itself until the NATS and
// Redis brokers run it for real.
func TestClusterConformanceOverRelay(t *testing.T) {
	brokertest.RunCluster(t, func(t *testing.T, n int) []broker.Broker {
		nodes := make([]*memory.Broker, n)
		for i := range nodes {
			nodes[i] = newBroker(t)
		}
		out := make([]broker.Broker, n)
		for i := range nodes {
			out[i] = &relayNode{self: nodes[i], all: nodes}
		}
		return out
	})
}

// relayNode is one node of a pretend cluster: Publish delivers through its
// own broker, then through every other node's.
type relayNode struct {
	self *memory.Broker
	all  []*memory.Broker
}

var (
	_ broker.Broker     = (*relayNode)(nil)
	_ broker.Shutdowner = (*relayNode)(nil)
)

func (n *relayNode) Run(h broker.Handler) error { return n.self.Run(h) }

func (n *relayNode) Publish(ctx context.Context, m *broker.Message) error {
	if err := n.self.Publish(ctx, m); err != nil {
		return err
	}
	for _, o := range n.all {
		if o == n.self {
			continue
		}
		// A node that has shut down simply stops receiving.
		if err := o.Publish(ctx, m); err != nil && !errors.Is(err, broker.ErrClosed) {
			return err
		}
	}
	return nil
}

func (n *relayNode) Shutdown(ctx context.Context) error { return n.self.Shutdown(ctx) }
