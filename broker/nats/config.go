package nats

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
)

// Config configures a Broker. The zero value works.
type Config struct {
	// Prefix starts every subject the broker uses (see the package
	// comment). It is one or more dot-separated tokens without wildcards
	// or white space. Zero means "herald".
	Prefix string

	// NodeID names this Herald node in the connection name the server
	// shows in its monitoring ("herald-<NodeID>"). Zero means the name is
	// "herald".
	NodeID string

	// ReconnectWait is the pause between two rounds of reconnect attempts,
	// to which a random delay of up to ReconnectJitter is added so that the
	// nodes of a cluster do not all come back at once. The broker retries
	// for ever. Zero means 1s and 1s.
	ReconnectWait   time.Duration
	ReconnectJitter time.Duration

	// ReconnectBufSize bounds, in bytes, what Publish buffers while the
	// connection is down; the buffer is sent when it comes back. Past it
	// Publish returns an error wrapping natsgo.ErrReconnectBufExceeded.
	// Zero means 8 MiB; negative means no buffer: while disconnected,
	// Publish fails at once.
	ReconnectBufSize int

	// WriteTimeout bounds one write to the server socket. Publish writes
	// synchronously when nats.go's 32 KiB write buffer fills, so this is
	// how long Publish may block on a server that stopped reading. Zero
	// means 5s.
	WriteTimeout time.Duration

	// PingInterval is how often the client pings the server; after three
	// unanswered pings the connection is considered dead and reconnects.
	// It bounds how long a silently lost server (no reset, e.g. a network
	// partition) goes unnoticed. Zero means 20s.
	PingInterval time.Duration

	// PendingMessages and PendingBytes bound, per subscribed channel, the
	// messages received but not yet handed to the handler (PendingBytes
	// counts their payloads). A handler that falls behind past either
	// bound loses the newest messages of that channel (the slow-consumer
	// policy: counted in Stats, logged once per episode), so a stuck
	// handler cannot grow memory without bound. IntakeMessages adds to
	// these bounds. Zero means 10,000 messages and 16 MiB.
	PendingMessages int
	PendingBytes    int

	// IntakeMessages bounds the messages received from the server and not
	// yet sorted into their channel's queue, all channels together: the
	// broker's intake queue, which every subscription delivers into and
	// which one goroutine (the router) empties. It fills only when that
	// goroutine gets less CPU than the connection's read loop for a while
	// (a burst on a busy machine); then what arrives is dropped, counted
	// in Stats.SlowConsumers and logged, whatever its channel. At 400,000
	// messages a second the default lets the router go without CPU for
	// 160ms. The queue is allocated at New, 8 bytes per message (512 KiB
	// by default), and every GC cycle scans it, which shows in latency
	// only when the heap is small. Zero means 65,536.
	IntakeMessages int

	// Workers is how many goroutines call the handler, whatever the number
	// of subscribed channels (the broker runs one more, its router). A
	// channel is with one worker at a time, so its handler calls keep
	// their order and never overlap; a handler call that blocks holds up
	// its channel and one worker, and the other channels go on with the
	// other workers. Zero means GOMAXPROCS at New, and at least 4.
	Workers int

	// Logger receives connection events (disconnected, reconnected),
	// slow-consumer episodes and malformed messages. Nil means
	// slog.Default().
	Logger *slog.Logger

	// Options are applied after the broker's own, for what the broker does
	// not set: credentials, TLS, a custom dialer. Options that replace the
	// connection's event handlers break Health; NoEcho breaks delivery (a
	// node receives its own messages through the server).
	Options []natsgo.Option
}

// Defaults, named for the doc comments above.
const (
	defaultPrefix          = "herald"
	defaultReconnectWait   = time.Second
	defaultReconnectJitter = time.Second
	defaultWriteTimeout    = 5 * time.Second
	defaultPingInterval    = 20 * time.Second
	defaultPendingMessages = 10_000
	defaultPendingBytes    = 16 << 20
	minDefaultWorkers      = 4
	defaultIntakeMessages  = 1 << 16
	maxPingsOutstanding    = 3
)

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if c.ReconnectWait == 0 {
		c.ReconnectWait = defaultReconnectWait
	}
	if c.ReconnectJitter == 0 {
		c.ReconnectJitter = defaultReconnectJitter
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = defaultWriteTimeout
	}
	if c.PingInterval == 0 {
		c.PingInterval = defaultPingInterval
	}
	if c.PendingMessages == 0 {
		c.PendingMessages = defaultPendingMessages
	}
	if c.PendingBytes == 0 {
		c.PendingBytes = defaultPendingBytes
	}
	if c.IntakeMessages == 0 {
		c.IntakeMessages = defaultIntakeMessages
	}
	if c.Workers == 0 {
		c.Workers = max(runtime.GOMAXPROCS(0), minDefaultWorkers)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// validate reports every problem of c (after withDefaults) at once.
func (c Config) validate() error {
	var errs []error
	if err := checkPrefix(c.Prefix); err != nil {
		errs = append(errs, err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ReconnectWait", c.ReconnectWait},
		{"ReconnectJitter", c.ReconnectJitter},
		{"WriteTimeout", c.WriteTimeout},
		{"PingInterval", c.PingInterval},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", d.name, d.v))
		}
	}
	if c.PendingMessages < 0 {
		errs = append(errs, fmt.Errorf("PendingMessages %d is negative", c.PendingMessages))
	}
	if c.PendingBytes < 0 {
		errs = append(errs, fmt.Errorf("PendingBytes %d is negative", c.PendingBytes))
	}
	if c.IntakeMessages < 0 {
		errs = append(errs, fmt.Errorf("IntakeMessages %d is negative", c.IntakeMessages))
	}
	if c.Workers < 0 {
		errs = append(errs, fmt.Errorf("Workers %d is negative", c.Workers))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("broker/nats: invalid config: %w", err)
	}
	return nil
}

// checkPrefix accepts one or more non-empty subject tokens without
// wildcards, white space or control characters.
func checkPrefix(p string) error {
	for tok := range strings.SplitSeq(p, ".") {
		if tok == "" {
			return fmt.Errorf("Prefix %q has an empty token", p)
		}
		if strings.ContainsAny(tok, "*> \t\r\n\f\v\x00") {
			return fmt.Errorf("Prefix %q has a wildcard or white space", p)
		}
	}
	return nil
}
