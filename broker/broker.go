// Package broker defines how published messages travel between Herald
// nodes. The hub publishes every message through a Broker and receives every
// message — its own and other nodes' — back through the Handler it registered,
// so a single node and a cluster take the same path.
//
// Implementations live in sub-packages (memory/ now; NATS and Redis later) and
// never import the hub. Every implementation must pass brokertest.
package broker

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// ErrClosed is returned by Publish after Shutdown.
var ErrClosed = errors.New("broker: closed")

// Message is one message as published into a channel. Once handed to
// Publish it is immutable: neither the broker nor handlers may modify it.
type Message struct {
	Channel string          // a valid channel name
	Epoch   string          // the channel's history epoch at publish time
	Offset  uint64          // the message's position in the channel, from 1
	Type    string          // the event type, e.g. "post.created"
	Data    json.RawMessage // compact, HTML-escaped JSON
	Time    time.Time       // publish time

	// Envelope is the JSON object subscribers receive, built once by the
	// publishing node. Brokers carry it so that no node encodes it again.
	Envelope []byte
}

// Handler receives messages from a broker. For one channel it is called in
// publish order, and — given that the caller serialises Publish per channel,
// as the hub does — never concurrently; for different channels it may be
// called concurrently. It must not block: it hands the message to bounded
// queues and returns.
type Handler func(*Message)

// Broker carries published messages to every Herald node, this one included.
//
// Contract:
//   - Run is called once, before any Publish, with the handler that receives
//     every message published on any node.
//   - Publish hands m to the handler of every running node. The hub calls
//     Publish for one channel from one goroutine at a time (it holds a
//     per-channel lock), not always the same goroutine: Publish calls for one
//     channel that do not overlap reach every handler in call order.
//     Publish may deliver synchronously (the in-process broker does) — callers
//     must not hold locks that the handler takes.
//   - Publish returns an error only when the message could not be handed to
//     the transport; delivery to remote nodes is then at-most-once.
type Broker interface {
	Run(h Handler) error
	Publish(ctx context.Context, m *Message) error
}

// Shutdowner is implemented by brokers that hold resources (connections,
// goroutines). Shutdown stops delivery and releases them; it is idempotent
// and returns ctx.Err() if ctx ends first. Once Shutdown has been called,
// whatever it returned, Publish returns ErrClosed.
type Shutdowner interface {
	Shutdown(ctx context.Context) error
}

// Subscriber is implemented by brokers that deliver to a node only the
// channels it has subscribed to (interest-based routing). A broker without
// it delivers every channel to every node.
//
// Contract:
//   - The hub calls Subscribe when a channel gets its first subscriber on
//     this node, and Unsubscribe when its last one leaves. It serialises
//     the calls for one channel and never subscribes a channel twice
//     without an Unsubscribe in between.
//   - When Subscribe returns nil, the subscription is in place at the
//     engine: every message published after that reaches the handler.
//     The hub reads the channel's history only then.
//   - Unsubscribe stops delivery of the channel soon; a few messages
//     already on their way may still reach the handler.
//   - After the engine comes back from an outage, the broker restores
//     every subscription by itself.
type Subscriber interface {
	Subscribe(ctx context.Context, channel string) error
	Unsubscribe(ctx context.Context, channel string) error
}

// Health is a broker's view of its engine.
type Health struct {
	// Connected reports whether the broker can publish and receive now.
	Connected bool `json:"connected"`
	// Engine names the engine and the server the broker uses, e.g.
	// "nats nats://127.0.0.1:4222". Credentials are never included.
	Engine string `json:"engine"`
	// Reconnects counts the connections re-established since start.
	Reconnects uint64 `json:"reconnects"`
	// Dropped counts the messages the broker received but dropped
	// because the handler fell behind (a slow-consumer policy). The hub
	// checks its channels against history when it grows, as after a
	// reconnection.
	Dropped uint64 `json:"dropped"`
	// Err is the last connection error while disconnected.
	Err string `json:"error,omitempty"`
}

// HealthReporter is implemented by brokers that depend on an engine. A
// broker without it is always healthy (the in-process broker). Health must
// be cheap and must not block on the network.
type HealthReporter interface {
	Health() Health
}
