package ws

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/transport"
)

// disconnectTooBig ends a connection whose client sent a frame over
// Config.MaxMessageBytes.
var disconnectTooBig = hub.Disconnect{Code: websocket.CloseMessageTooBig, Reason: "message too big"}

// Items slices larger than this are not kept between drains, so that an
// idle connection does not hold a burst's memory.
const keepItems = 256

// conn is one WebSocket connection. The writer goroutine (serve) owns ws
// writes, the cursor and the end of the connection; the reader goroutine
// (readLoop) owns ws reads and the read* fields until it closes readerDone.
type conn struct {
	h    *Handler
	wake chan struct{} // capacity 1; filled by the session's Wake
	sess *hub.Session
	ws   *websocket.Conn

	// Written by the reader before it closes readerDone; read by the
	// writer only after.
	readerDone chan struct{}
	readReason hub.Disconnect
	readClose  bool // the writer should send a close frame for readReason
	peerClosed bool // the client sent a close frame (gorilla has answered it)

	// Owned by the writer.
	cursor hub.Cursor
	items  []hub.Item
}

func newConn(h *Handler) *conn {
	return &conn{h: h, wake: make(chan struct{}, 1), readerDone: make(chan struct{})}
}

// notify is the session's Wake: it never blocks and wake-ups coalesce.
func (c *conn) notify() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// serve runs the connection on the caller's goroutine as its writer: it
// starts the reader, writes what the session queues, pings every
// heartbeat, and on the end of the session sends the close frame, closes
// the socket and waits for the reader. It always closes the session.
func (c *conn) serve(ctx context.Context, sess *hub.Session, ws *websocket.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.sess, c.ws = sess, ws
	defer sess.Close(hub.DisconnectNormal) // no-op when already closed: the first reason wins

	ws.SetReadLimit(c.h.cfg.MaxMessageBytes)
	c.h.goFunc(func() { c.readLoop(ctx) })

	ticker := time.NewTicker(c.h.cfg.Heartbeat)
	defer ticker.Stop()
	for {
		select {
		case <-c.wake:
		case <-ticker.C:
			if err := ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.h.cfg.WriteTimeout)); err != nil {
				sess.Close(hub.DisconnectWriteError)
			}
		case <-c.readerDone:
			sess.Close(c.readReason)
		case <-c.h.done:
			sess.Close(hub.DisconnectShutdown)
		}
		if err := c.flush(); err != nil {
			sess.Close(hub.DisconnectWriteError)
		}
		if d, closed := sess.Closed(); closed {
			c.finish(d)
			cancel()
			<-c.readerDone
			return
		}
	}
}

// flush writes every queued item, one text frame each.
func (c *conn) flush() error {
	items := c.sess.Drain(c.items[:0])
	defer func() {
		clear(items) // drop message references until the next drain
		if cap(items) > keepItems {
			items = nil
		}
		c.items = items[:0]
	}()
	delivered := 0
	var err error
	for i := range items {
		if err = c.writeItem(&items[i]); err != nil {
			break
		}
		if items[i].Kind == hub.ItemMessage {
			delivered++
		}
	}
	c.sess.Delivered(delivered)
	return err
}

// writeItem writes one queued item. Messages are written from their shared
// envelope bytes; controls are built here, per connection.
func (c *conn) writeItem(it *hub.Item) error {
	var frame []byte
	switch it.Kind {
	case hub.ItemMessage:
		m := it.Msg
		c.cursor.Set(m.Channel, hub.Position{Epoch: m.Epoch, Offset: m.Offset})
		frame = m.Envelope
	case hub.ItemGap:
		frame = transport.AppendGapControl(nil, it.Channels)
	case hub.ItemSubscribed:
		for _, p := range it.Positions {
			c.cursor.Set(p.Channel, p.Position)
		}
		frame = appendSubscribed(nil, it.Channels, &c.cursor)
	case hub.ItemControl:
		if ch, ok := unsubscribedChannel(it.Raw); ok {
			c.cursor.Delete(ch)
		}
		frame = it.Raw
	default:
		return nil
	}
	if err := c.ws.SetWriteDeadline(time.Now().Add(c.h.cfg.WriteTimeout)); err != nil {
		return err
	}
	return c.ws.WriteMessage(websocket.TextMessage, frame)
}

// finish ends the connection for reason d: it sends the close frame unless
// the client already closed or the connection is broken, gives the client
// closeGrace to answer it, then closes the socket.
func (c *conn) finish(d hub.Disconnect) {
	readerAlive := true
	select {
	case <-c.readerDone:
		readerAlive = false
	default:
	}
	switch d.Code {
	case websocket.CloseAbnormalClosure, websocket.CloseNoStatusReceived, websocket.CloseTLSHandshake:
		// Codes that must not be sent: the connection is already broken.
		_ = c.ws.Close()
		return
	}
	if readerAlive || c.readClose {
		msg := websocket.FormatCloseMessage(d.Code, d.Reason)
		if err := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(c.h.cfg.WriteTimeout)); err != nil {
			_ = c.ws.Close()
			return
		}
	}
	if readerAlive {
		t := time.NewTimer(closeGrace)
		select {
		case <-c.readerDone: // the client answered, or left
			t.Stop()
		case <-t.C:
			_ = c.ws.Close()
			return
		}
	}
	if c.peerClosed {
		// Close handshake complete; the server closes TCP first (RFC 6455 §7.1.1).
		_ = c.ws.Close()
		return
	}
	c.lingerClose()
}

// lingerClose closes the socket when the client may still be sending (an
// oversized frame's remainder, frames after a binary one): it half-closes,
// then discards input until the client closes its side or closeGrace
// passes. Closing with unread input would reset the connection, and a
// reset can destroy the close frame still in flight to the client.
func (c *conn) lingerClose() {
	nc := c.ws.NetConn()
	if hc, ok := nc.(interface{ CloseWrite() error }); ok && hc.CloseWrite() == nil {
		if nc.SetReadDeadline(time.Now().Add(closeGrace)) == nil {
			_, _ = io.Copy(io.Discard, nc)
		}
	}
	_ = nc.Close()
}

// readLoop reads client frames until the connection fails or the client
// sends something that ends it, and records why in readReason.
func (c *conn) readLoop(ctx context.Context) {
	defer close(c.readerDone)
	ws := c.ws
	wait := 2 * c.h.cfg.Heartbeat
	alive := func() error { return ws.SetReadDeadline(time.Now().Add(wait)) }
	_ = alive()
	ws.SetPongHandler(func(string) error { return alive() })
	for {
		typ, data, err := ws.ReadMessage()
		if err != nil {
			c.readReason, c.readClose = readError(err)
			var ce *websocket.CloseError
			c.peerClosed = errors.As(err, &ce)
			return
		}
		if typ != websocket.TextMessage {
			c.readReason, c.readClose = hub.DisconnectUnsupportedData, true
			return
		}
		_ = alive()
		c.handle(ctx, data)
	}
}

// readError maps a read error to the reason the connection ends, and
// whether the writer should still send a close frame (gorilla has sent one
// itself for oversized frames and protocol errors, and answered the
// client's own close).
func readError(err error) (hub.Disconnect, bool) {
	var ce *websocket.CloseError
	var ne net.Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		return disconnectTooBig, false
	case errors.As(err, &ce):
		return hub.DisconnectNormal, false
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return hub.DisconnectTimeout, true
	}
	return hub.DisconnectNormal, false
}

// handle carries out one client op. Answers and errors are queued on the
// session so that they keep their place among messages.
func (c *conn) handle(ctx context.Context, data []byte) {
	op, errFrame := parseOp(data)
	if errFrame != nil {
		c.sess.Enqueue(errFrame)
		return
	}
	switch op.Op {
	case opSubscribe:
		err := c.sess.Subscribe(ctx, []string{op.Channel}, &op.Cursor)
		if err != nil && !errors.Is(err, hub.ErrSessionClosed) {
			c.sess.Enqueue(hubErrorControl(err))
		}
	case opUnsubscribe:
		c.sess.Unsubscribe(op.Channel)
		c.sess.Enqueue(appendUnsubscribed(nil, op.Channel))
	}
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
