package hub

import (
	"context"
	"time"
)

// HistoryOptions are the per-namespace retention settings passed with every
// history call, so a store needs no configuration of its own.
type HistoryOptions struct {
	Size int           // messages kept per channel; 0 keeps none
	TTL  time.Duration // how long a message is kept, from its Time; 0 means forever
}

// History keeps the recent messages of every channel and assigns offsets.
//
// Contract:
//   - Append assigns m.Epoch and the channel's next offset (the first message
//     of an epoch gets 1), calls m.Seal(), and only then stores m where
//     readers can see it. Offsets of one channel
//     have no holes within an epoch. The hub serialises Appends per channel,
//     so an implementation need not order concurrent Appends to one channel;
//     it must allow concurrent Appends to different channels.
//   - Since returns, in offset order, the retained messages after pos, and
//     the channel's current head (epoch and last offset). gap is true when
//     the history cannot prove it holds everything after pos: pos is from
//     another epoch, or messages after pos were trimmed or expired. With a
//     gap, Since returns every message it still retains.
//   - Head returns the channel's current head, creating the channel's epoch
//     if the channel is new.
//   - Messages returned are shared with other readers: callers must not
//     modify them.
//   - All methods are safe for concurrent use and never block on subscribers.
type History interface {
	Append(ctx context.Context, m *Message, opts HistoryOptions) error
	Since(ctx context.Context, channel string, pos Position, opts HistoryOptions) (msgs []*Message, head Position, gap bool, err error)
	Head(ctx context.Context, channel string, opts HistoryOptions) (Position, error)
}

// HistoryKeeper is implemented by stores whose channels expire when they
// are quiet (networked stores keep a channel's head for a while after its
// last message, then start a new epoch). The hub calls Keep every
// Config.HistoryKeepInterval for each channel with subscribers on its
// node, so that a quiet channel someone is listening to keeps its epoch
// and offsets: its subscribers then get no gap signal when it speaks again.
// Keep must be cheap for a channel that is not about to expire.
type HistoryKeeper interface {
	Keep(ctx context.Context, channel string, opts HistoryOptions) error
}

// ChannelHistory describes one channel's retained history, for status pages.
type ChannelHistory struct {
	Epoch    string `json:"epoch"`
	Head     uint64 `json:"head"`
	Retained int    `json:"retained"`
}

// HistoryInspector is implemented by history stores that can describe a
// channel's history cheaply.
type HistoryInspector interface {
	Inspect(channel string) (ChannelHistory, bool)
}
