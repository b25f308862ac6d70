package hub

import (
	"errors"
	"fmt"
)

// Errors returned by the hub. Transports and the API map them to HTTP
// statuses and stable error codes.
var (
	ErrInvalidChannel           = errors.New("hub: invalid channel name")
	ErrInvalidType              = errors.New("hub: invalid message type")
	ErrNoChannels               = errors.New("hub: no channels")
	ErrTooManyChannels          = errors.New("hub: too many channels")
	ErrChannelFull              = errors.New("hub: channel has too many subscribers")
	ErrMessageTooLarge          = errors.New("hub: message too large")
	ErrTooManyConnections       = errors.New("hub: too many connections")
	ErrTooManyConnectionsFromIP = errors.New("hub: too many connections from this address")
	ErrSessionClosed            = errors.New("hub: session closed")
	ErrShuttingDown             = errors.New("hub: shutting down")
	// ErrUnavailable wraps a failure of the broker or the history store
	// (an engine outage): the request may succeed if retried later.
	ErrUnavailable = errors.New("hub: broker or history unavailable")
)

// ErrDuplicate is returned by a History's Append for a message whose
// idempotency key (Message.Key) and channel it already stores; see
// Message.Key. The hub never returns it.
var ErrDuplicate = errors.New("hub: message already stored under its idempotency key")

// ChannelError names the channel an error is about.
type ChannelError struct {
	Channel string
	Err     error
}

func (e *ChannelError) Error() string { return fmt.Sprintf("%v: %q", e.Err, e.Channel) }

// Unwrap returns the underlying error.
func (e *ChannelError) Unwrap() error { return e.Err }
