package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// maxWSMessage bounds one WebSocket message from the server.
const maxWSMessage = 8 << 20

// closeError is a WebSocket close frame received from the server.
type closeError struct {
	err *websocket.CloseError
}

func (e *closeError) Error() string { return "client: websocket closed: " + e.err.Error() }
func (e *closeError) Unwrap() error { return e.err }

// reconnect reports whether the close code allows coming back with the
// cursor: going away or timed out (1001), abnormal closure (1006), internal
// error (1011), service restart (1012), try again later (1013), slow
// consumer (4008). Normal closure (1000) and the codes that say the client
// did something wrong (1003, 1008, 1009, …) do not.
func (e *closeError) reconnect() bool {
	switch e.err.Code {
	case websocket.CloseGoingAway, websocket.CloseAbnormalClosure, websocket.CloseInternalServerErr,
		websocket.CloseServiceRestart, websocket.CloseTryAgainLater, 4008:
		return true
	}
	return false
}

// dialWS opens the WebSocket, resuming from the cursor.
func (s *Subscription) dialWS() (*websocket.Conn, error) {
	u := s.c.base
	switch {
	case strings.HasPrefix(u, "http://"):
		u = "ws://" + u[len("http://"):]
	case strings.HasPrefix(u, "https://"):
		u = "wss://" + u[len("https://"):]
	}
	q := url.Values{"channel": s.opts.Channels}
	if cur := s.Cursor(); cur != "" {
		q.Set("cursor", cur)
	}
	h := http.Header{}
	s.c.authorize(h)
	conn, resp, err := s.st.ws.DialContext(s.ctx, u+"/v1/ws?"+q.Encode(), h)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, readError(resp) // gorilla keeps the start of the body
		}
		return nil, err
	}
	conn.SetReadLimit(maxWSMessage)
	return conn, nil
}

// readWS reads the connection until it ends, then closes it.
func (s *Subscription) readWS(conn *websocket.Conn) error {
	defer conn.Close()
	stop := context.AfterFunc(s.ctx, func() {
		// Say goodbye, then unblock the reader.
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		_ = conn.Close()
	})
	defer stop()
	for {
		typ, r, err := conn.NextReader() // answers pings meanwhile
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return &closeError{err: ce}
			}
			return err
		}
		if typ != websocket.TextMessage {
			continue // the server sends text only; skip anything else
		}
		s.buf, err = readAll(s.buf[:0], r)
		if errors.Is(err, websocket.ErrReadLimit) {
			return fmt.Errorf("%w: WebSocket message longer than %d bytes", ErrProtocol, maxWSMessage)
		}
		if err != nil {
			return err
		}
		if err := s.handleWS(s.buf); err != nil {
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseProtocolError, ""), time.Now().Add(time.Second))
			return err
		}
		if cap(s.buf) > 64<<10 {
			s.buf = nil // do not keep a rare large buffer
		}
	}
}

// readAll appends what r yields to b.
func readAll(b []byte, r io.Reader) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// wsControl is a control frame from the server.
type wsControl struct {
	Control  string   `json:"control"`
	Channels []string `json:"channels"`
	Cursor   string   `json:"cursor"`
	Code     string   `json:"code"`
	Message  string   `json:"message"`
}

// handleWS acts on one text frame.
func (s *Subscription) handleWS(b []byte) error {
	if err := decodeEnvelope(b, &s.env); err != nil {
		return fmt.Errorf("%w: WebSocket frame: %v", ErrProtocol, err)
	}
	if !s.env.isControl {
		if s.env.hasChannel {
			s.deliver(&s.env)
		}
		return nil
	}
	var c wsControl
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("%w: WebSocket control: %v", ErrProtocol, err)
	}
	switch c.Control {
	case "gap":
		s.gap(c.Channels)
	case "subscribed":
		if c.Cursor != "" {
			s.mergeCursor([]byte(c.Cursor))
		}
		if len(c.Channels) == 0 {
			c.Channels = s.opts.Channels // all of them
		}
		for _, ch := range c.Channels {
			for i, name := range s.opts.Channels {
				if name == ch {
					s.confirmed[i] = true
				}
			}
		}
		all := true
		for _, ok := range s.confirmed {
			all = all && ok
		}
		if all {
			s.replayed()
		}
	}
	// "error" answers an op, and this client sends none; "unsubscribed"
	// likewise. Unknown controls are for newer clients.
	return nil
}
