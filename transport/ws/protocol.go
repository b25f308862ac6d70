package ws

import (
	"bytes"
	"context"
	"errors"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/transport"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/ws/wsframe"
)

// disconnectTooManyOps ends a connection whose client sends ops faster
// than they are carried out.
var disconnectTooManyOps = hub.Disconnect{Code: wsframe.ClosePolicyViolation, Reason: "too many pending ops"}

// protocol is one WebSocket connection's part in the engine. The reader
// side (Input: dec, ended) runs on the engine's reader; the writer side
// (the encoder methods: cursor) under the connection's lock.
type protocol struct {
	h *Handler

	dec   wsframe.Decoder
	ended bool // a close frame or a protocol error was read; input is ignored

	cursor hub.Cursor
}

var _ engine.Protocol = (*protocol)(nil)

// Input decodes the client's frames: pings are answered, pongs and every
// other frame count as signs of life, text frames are ops carried out in
// order with Conn.Go, and a close frame or a protocol violation ends the
// session (with the violation's close code).
func (p *protocol) Input(c *engine.Conn, in []byte) {
	for len(in) > 0 && !p.ended {
		n, m, ok, err := p.dec.Decode(in)
		in = in[n:]
		if err != nil {
			p.ended = true
			var fe *wsframe.Error
			d := hub.DisconnectBadRequest
			if errors.As(err, &fe) {
				d = hub.Disconnect{Code: fe.Code, Reason: fe.Reason}
			}
			c.Close(d)
			break
		}
		if !ok {
			if n == 0 {
				break
			}
			continue
		}
		c.Touch()
		switch m.Op {
		case wsframe.OpText:
			data := bytes.Clone(m.Payload)
			if !c.Go(func(ctx context.Context) { p.handle(ctx, c.Session(), data) }) {
				p.ended = true
				c.Close(disconnectTooManyOps)
			}
		case wsframe.OpPing:
			c.Control(wsframe.AppendPong(nil, m.Payload))
		case wsframe.OpClose:
			p.ended = true
			d := hub.DisconnectNormal
			if code := m.CloseCode(); code != wsframe.CloseNoStatus && code != d.Code {
				d = hub.Disconnect{Code: code, Reason: "client closed"}
			}
			c.Close(d) // the close frame echoes the client's code
		}
	}
	if p.dec.Buffered() == 0 {
		p.dec.Release() // an idle connection holds no read buffer
	}
}

// handle carries out one client op. Answers and errors are queued on the
// session so that they keep their place among messages.
func (p *protocol) handle(ctx context.Context, sess *hub.Session, data []byte) {
	op, errFrame := parseOp(data)
	if errFrame != nil {
		sess.Enqueue(errFrame)
		return
	}
	switch op.Op {
	case opSubscribe:
		err := sess.Subscribe(ctx, []string{op.Channel}, &op.Cursor)
		if err != nil && !errors.Is(err, hub.ErrSessionClosed) {
			sess.Enqueue(hubErrorControl(err))
		}
	case opUnsubscribe:
		sess.Unsubscribe(op.Channel)
		sess.Enqueue(appendUnsubscribed(nil, op.Channel))
	}
}

// AppendOpen implements transport.Encoder: the handshake's response head
// is all a WebSocket starts with.
func (p *protocol) AppendOpen(dst []byte) []byte { return dst }

// AppendItem implements transport.Encoder: one text frame per item. A
// message's frame is a header built here and the shared envelope.
func (p *protocol) AppendItem(b *transport.Batch, it *hub.Item) {
	switch it.Kind {
	case hub.ItemMessage:
		m := it.Msg
		p.cursor.Set(m.Channel, hub.Position{Epoch: m.Epoch, Offset: m.Offset})
		b.Buf = wsframe.AppendFrameHeader(b.Buf, wsframe.OpText, true, len(m.Envelope))
		b.Share(m.Envelope)
	case hub.ItemGap:
		start := beginText(b)
		b.Buf = transport.AppendGapControl(b.Buf, it.Channels)
		endText(b, start)
	case hub.ItemSubscribed:
		for _, pos := range it.Positions {
			p.cursor.Set(pos.Channel, pos.Position)
		}
		start := beginText(b)
		b.Buf = appendSubscribed(b.Buf, it.Channels, &p.cursor)
		endText(b, start)
	case hub.ItemControl:
		if ch, ok := unsubscribedChannel(it.Raw); ok {
			p.cursor.Delete(ch)
		}
		b.Buf = wsframe.AppendText(b.Buf, it.Raw)
	}
}

// maxServerHeader is the longest header of an unmasked server frame.
const maxServerHeader = 10

// beginText reserves room for a text frame's header before a payload
// built in place; endText writes the header and closes the gap.
func beginText(b *transport.Batch) int {
	start := len(b.Buf)
	b.Buf = append(b.Buf, make([]byte, maxServerHeader)...)
	return start
}

func endText(b *transport.Batch, start int) {
	n := len(b.Buf) - start - maxServerHeader
	h := wsframe.HeaderLen(n)
	copy(b.Buf[start+h:], b.Buf[start+maxServerHeader:])
	wsframe.AppendFrameHeader(b.Buf[start:start], wsframe.OpText, true, n)
	b.Buf = b.Buf[:start+h+n]
}

// AppendHeartbeat implements transport.Encoder: a ping. The client's pong
// resets its read timeout.
func (p *protocol) AppendHeartbeat(dst []byte) []byte { return wsframe.AppendPing(dst, nil) }

// AppendClose implements transport.Encoder: the close frame for d, unless
// d's code is one that must not be sent (the connection is broken).
func (p *protocol) AppendClose(dst []byte, d hub.Disconnect) []byte {
	switch d.Code {
	case wsframe.CloseNoStatus, wsframe.CloseAbnormal, 1015: // 1015: TLS handshake failure
		return dst
	}
	return wsframe.AppendClose(dst, d.Code, d.Reason)
}

// unsubscribedChannel returns the channel of an unsubscribed control built
// by appendUnsubscribed.
func unsubscribedChannel(raw []byte) (string, bool) {
	if !bytes.HasPrefix(raw, unsubscribedPrefix) || !bytes.HasSuffix(raw, unsubscribedSuffix) ||
		len(raw) < len(unsubscribedPrefix)+len(unsubscribedSuffix) {
		return "", false
	}
	return string(raw[len(unsubscribedPrefix) : len(raw)-len(unsubscribedSuffix)]), true
}
