package iframe

import (
	"strings"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/transport"
)

// paddingBytes is the size of the blank comment sent first: old browsers
// buffer about 1 KiB before they start running scripts of a page.
const paddingBytes = 1024

// prelude opens the page: a document whose body receives the scripts,
// padded past paddingBytes.
var prelude = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>herald</title></head><body>\n<!--" +
	strings.Repeat(" ", paddingBytes) + "-->\n"

// encoder writes one iframe connection's page. It keeps the connection's
// cursor, passed to the callback with every message.
type encoder struct {
	callback string
	cursor   hub.Cursor
}

var _ transport.Encoder = (*encoder)(nil)

// newEncoder seeds the cursor with the request cursor's entries for the
// connection's channels. callback is already validated.
func newEncoder(req transport.Request, callback string) *encoder {
	e := &encoder{callback: callback}
	for _, ch := range req.Channels {
		if p, ok := req.Cursor.Get(ch); ok {
			e.cursor.Set(ch, p)
		}
	}
	return e
}

// AppendOpen implements transport.Encoder: the padded page prelude.
func (e *encoder) AppendOpen(dst []byte) []byte { return append(dst, prelude...) }

// AppendItem implements transport.Encoder. Envelopes are safe inside
// <script> (the hub escapes <, > and &), and channel names, epochs and
// cursors hold no character special in HTML or a JavaScript string.
func (e *encoder) AppendItem(b *transport.Batch, it *hub.Item) {
	if it.Kind == hub.ItemMessage {
		m := it.Msg
		e.cursor.Set(m.Channel, hub.Position{Epoch: m.Epoch, Offset: m.Offset})
		b.Buf = e.appendCall(b.Buf)
		b.Share(m.Envelope)
		b.Buf = append(b.Buf, ",\""...)
		b.Buf = e.cursor.AppendTo(b.Buf)
		b.Buf = append(b.Buf, "\");</script>\n"...)
		return
	}
	b.Buf = e.appendControl(b.Buf, it)
}

// appendControl appends an item other than a message.
func (e *encoder) appendControl(dst []byte, it *hub.Item) []byte {
	switch it.Kind {
	case hub.ItemSubscribed:
		// The page learns its cursor now, not with the next message: a
		// reload before any message must still resume, not start live.
		for _, p := range it.Positions {
			e.cursor.Set(p.Channel, p.Position)
		}
		dst = e.appendCall(dst)
		dst = append(dst, `{"control":"subscribed","channels":`...)
		dst = transport.AppendChannels(dst, it.Channels)
		dst = append(dst, "},\""...)
		dst = e.cursor.AppendTo(dst)
		return append(dst, "\");</script>\n"...)
	case hub.ItemGap:
		dst = e.appendCall(dst)
		dst = transport.AppendGapControl(dst, it.Channels)
		dst = append(dst, ",\""...)
		dst = e.cursor.AppendTo(dst)
		return append(dst, "\");</script>\n"...)
	case hub.ItemControl:
		return append(dst, it.Raw...)
	}
	return dst
}

func (e *encoder) appendCall(dst []byte) []byte {
	dst = append(dst, "<script>"...)
	dst = append(dst, e.callback...)
	return append(dst, '(')
}

// AppendHeartbeat implements transport.Encoder: an empty HTML comment.
func (e *encoder) AppendHeartbeat(dst []byte) []byte { return append(dst, "<!-- -->\n"...) }

// AppendClose implements transport.Encoder. The page just ends: the
// iframe's load event tells the client to reconnect with its cursor.
func (e *encoder) AppendClose(dst []byte, _ hub.Disconnect) []byte { return dst }
