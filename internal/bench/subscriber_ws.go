package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// connectWS opens s's WebSocket. On success it returns the reader loop,
// which runs until ctx ends (the connection is then closed under it) or
// the server closes.
func (w *worker) connectWS(ctx context.Context, s *subscriber) (func() error, error) {
	c, resp, err := w.wsDialers[s.src].DialContext(ctx, w.run.subscribeURL(s.node, s.name), nil)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
			resp.Body.Close()
			return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
		}
		return nil, err
	}
	return func() error {
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		defer c.Close()
		return w.readWS(s, c)
	}, nil
}

// readWS reads text frames into one reused buffer. Pings are answered by
// the library's default handler (from within NextReader).
func (w *worker) readWS(s *subscriber, c *websocket.Conn) error {
	c.SetReadLimit(maxFrameBytes)
	buf := make([]byte, 0, 512)
	for {
		typ, r, err := c.NextReader()
		if err != nil {
			return err
		}
		if typ != websocket.TextMessage {
			continue
		}
		buf, err = readAllInto(buf[:0], r)
		if err != nil {
			return err
		}
		now := time.Now().UnixNano()
		if control, gap := isControl(buf); control {
			if gap {
				w.gaps.Add(1)
			}
			continue
		}
		w.onData(s, buf, now)
	}
}

// readAllInto appends everything r yields to b, growing it as needed; the
// connection's read limit bounds it.
func readAllInto(b []byte, r io.Reader) ([]byte, error) {
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
