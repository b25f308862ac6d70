package sse

import (
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/transport"
)

// encoder writes one SSE connection's stream. It keeps the connection's
// cursor, which every message's "id:" carries: the positions of all the
// connection's channels after that message.
type encoder struct {
	cursor  hub.Cursor
	retryMS int64
}

var _ transport.Encoder = (*encoder)(nil)

// newEncoder seeds the cursor with the request cursor's entries for the
// connection's channels, so that a replayed message's id also carries the
// positions of the channels that have not moved yet.
func newEncoder(req transport.Request, retry time.Duration) *encoder {
	e := &encoder{retryMS: max(retry.Milliseconds(), 1)}
	for _, ch := range req.Channels {
		if p, ok := req.Cursor.Get(ch); ok {
			e.cursor.Set(ch, p)
		}
	}
	return e
}

// AppendOpen implements transport.Encoder: "retry: MS".
func (e *encoder) AppendOpen(dst []byte) []byte {
	return appendRetry(dst, e.retryMS)
}

// AppendItem implements transport.Encoder. A message is its "id:" line,
// built here, followed by its shared SSE frame.
func (e *encoder) AppendItem(b *transport.Batch, it *hub.Item) {
	switch it.Kind {
	case hub.ItemMessage:
		m := it.Msg
		e.cursor.Set(m.Channel, hub.Position{Epoch: m.Epoch, Offset: m.Offset})
		b.Buf = e.appendID(b.Buf)
		b.Share(m.SSE())
	case hub.ItemSubscribed:
		// An id with no data sets the browser's last event id without
		// dispatching an event.
		for _, p := range it.Positions {
			e.cursor.Set(p.Channel, p.Position)
		}
		b.Buf = e.appendID(b.Buf)
		b.Buf = append(b.Buf, '\n')
	case hub.ItemGap:
		b.Buf = append(b.Buf, "event: gap\ndata: {\"channels\":"...)
		b.Buf = transport.AppendChannels(b.Buf, it.Channels)
		b.Buf = append(b.Buf, "}\n\n"...)
	case hub.ItemControl:
		b.Buf = append(b.Buf, it.Raw...)
	}
}

func (e *encoder) appendID(dst []byte) []byte {
	dst = append(dst, "id: "...)
	dst = e.cursor.AppendTo(dst)
	return append(dst, '\n')
}

// AppendHeartbeat implements transport.Encoder: an empty comment.
func (e *encoder) AppendHeartbeat(dst []byte) []byte {
	return append(dst, ":\n\n"...)
}

// AppendClose implements transport.Encoder. On shutdown it sends the retry
// hint again with up to 50% jitter, so that clients do not all come back
// at the same instant; otherwise nothing.
func (e *encoder) AppendClose(dst []byte, d hub.Disconnect) []byte {
	if d != hub.DisconnectShutdown {
		return dst
	}
	return appendRetry(dst, e.retryMS+rand.Int64N(e.retryMS/2+1))
}

func appendRetry(dst []byte, ms int64) []byte {
	dst = append(dst, "retry: "...)
	dst = strconv.AppendInt(dst, ms, 10)
	return append(dst, "\n\n"...)
}
