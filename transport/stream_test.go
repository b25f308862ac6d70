package transport_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport"
)

const waitFor = 5 * time.Second

// lineEncoder writes each item as one readable line; a message's line
// ends with its envelope.
type lineEncoder struct{}

func (lineEncoder) AppendOpen(dst []byte) []byte { return append(dst, "open\n"...) }
func (lineEncoder) AppendHeartbeat(dst []byte) []byte {
	return append(dst, "heartbeat\n"...)
}
func (lineEncoder) AppendClose(dst []byte, d hub.Disconnect) []byte {
	return append(dst, "close "+d.Reason+"\n"...)
}
func (lineEncoder) AppendItem(b *transport.Batch, it *hub.Item) {
	b.Buf = appendLine(b.Buf, it)
}

func appendLine(dst []byte, it *hub.Item) []byte {
	switch it.Kind {
	case hub.ItemMessage:
		dst = append(dst, fmt.Sprintf("message %s %d ", it.Msg.Channel, it.Msg.Offset)...)
		dst = append(dst, it.Msg.Envelope...)
		return append(dst, '\n')
	case hub.ItemSubscribed:
		return append(dst, "subscribed "+strings.Join(it.Channels, ",")+"\n"...)
	case hub.ItemGap:
		return append(dst, "gap "+strings.Join(it.Channels, ",")+"\n"...)
	}
	return append(dst, it.Raw...)
}

type streamServer struct {
	hub   *hub.Hub
	url   string
	ended chan hub.Disconnect // what each Stream call returned
}

// startStream serves GET ?channel=… with Stream and lineEncoder.
func startStream(t *testing.T, hcfg hub.Config, opts transport.StreamOptions, srvConfig func(*http.Server)) *streamServer {
	t.Helper()
	s := &streamServer{hub: testutil.NewHub(t, hcfg), ended: make(chan hub.Disconnect, 16)}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, ok := transport.ParseRequest(w, r, true)
		if !ok {
			return
		}
		wake := transport.NewWakeup()
		sess := transport.Open(w, r, s.hub, "test", req, wake.Wake)
		if sess == nil {
			return
		}
		o := opts
		o.Encoder, o.Wake = lineEncoder{}, wake
		s.ended <- transport.Stream(r.Context(), w, http.NewResponseController(w), sess, o)
	}))
	if srvConfig != nil {
		srvConfig(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func (s *streamServer) open(t *testing.T, client *http.Client, query string) (*http.Response, *bufio.Reader) {
	t.Helper()
	if client == nil {
		client = http.DefaultClient
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, s.url+"?"+query, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return resp, bufio.NewReader(resp.Body)
}

func (s *streamServer) waitEnded(t *testing.T, want hub.Disconnect) {
	t.Helper()
	select {
	case d := <-s.ended:
		if d != want {
			t.Fatalf("Stream returned %+v, want %+v", d, want)
		}
	case <-time.After(waitFor):
		t.Fatalf("Stream still running after %v", waitFor)
	}
	testutil.Eventually(t, waitFor, func() error {
		if st := s.hub.Stats(); st.Connections != 0 || st.Subscribers != 0 {
			return fmt.Errorf("%d sessions, %d subscriptions left", st.Connections, st.Subscribers)
		}
		return nil
	})
}

func expectLines(t *testing.T, br *bufio.Reader, want ...string) {
	t.Helper()
	for _, w := range want {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v (want %q)", err, w)
		}
		line = strings.TrimSuffix(line, "\n")
		if f := strings.SplitN(line, " ", 4); len(f) == 4 && f[0] == "message" {
			if !json.Valid([]byte(f[3])) {
				t.Fatalf("line %q: envelope is not JSON", line)
			}
			line = strings.Join(f[:3], " ")
		}
		if line != w {
			t.Fatalf("line %q, want %q", line, w)
		}
	}
}

func publish(t *testing.T, h *hub.Hub, data string, channels ...string) {
	t.Helper()
	if _, err := h.Publish(context.Background(), hub.Publication{Channels: channels, Data: json.RawMessage(data)}); err != nil {
		t.Fatal(err)
	}
}

// TestStreamLifecycle follows one stream from its opening through items
// and heartbeats to the encoder's closing bytes on shutdown.
func TestStreamLifecycle(t *testing.T) {
	s := startStream(t, hub.Config{}, transport.StreamOptions{Heartbeat: 30 * time.Millisecond}, nil)
	_, br := s.open(t, nil, "channel=a&channel=b")
	expectLines(t, br, "open", "subscribed a,b")
	publish(t, s.hub, `1`, "a")
	publish(t, s.hub, `2`, "b", "a")
	expectLines(t, br, "message a 1", "message b 1", "message a 2")
	expectLines(t, br, "heartbeat", "heartbeat") // silent stream
	if d := s.hub.Stats().Delivered; d != 3 {
		t.Fatalf("delivered %d, want 3", d)
	}

	if err := s.hub.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v before the close line", err)
		}
		if line != "heartbeat\n" {
			if line != "close server restarting\n" {
				t.Fatalf("line %q, want the close line", line)
			}
			break
		}
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after close: %v, want EOF", err)
	}
	s.waitEnded(t, hub.DisconnectShutdown)
}

func TestStreamEndsWhenClientLeaves(t *testing.T) {
	s := startStream(t, hub.Config{}, transport.StreamOptions{}, nil)
	resp, br := s.open(t, nil, "channel=a")
	expectLines(t, br, "open", "subscribed a")
	resp.Body.Close()
	s.waitEnded(t, hub.DisconnectNormal)
	publish(t, s.hub, `1`, "a") // nobody left to deliver to
	if st := s.hub.Stats(); st.Delivered != 0 {
		t.Fatalf("delivered %d after the client left", st.Delivered)
	}
}

// TestStreamWriteTimeout stalls a client whose queue never overflows (its
// limit is huge): the write deadline alone must end the connection.
func TestStreamWriteTimeout(t *testing.T) {
	s := startStream(t, hub.Config{MaxQueueBytes: 1 << 30}, transport.StreamOptions{WriteTimeout: 100 * time.Millisecond},
		func(srv *http.Server) {
			srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
				_ = c.(*net.TCPConn).SetWriteBuffer(16 << 10)
				return ctx
			}
		})
	tr := &http.Transport{DialContext: (&net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	_, br := s.open(t, &http.Client{Transport: tr}, "channel=a")
	expectLines(t, br, "open", "subscribed a")

	// Publish one message at a time, each written before the next, until a
	// write blocks on the full socket; then the deadline must end the stream.
	data := `"` + strings.Repeat("x", 32<<10) + `"`
	for published := uint64(1); ; published++ {
		if published > 1000 {
			t.Fatal("stalled stream still running after 1000 messages of 32 KiB")
		}
		publish(t, s.hub, data, "a")
		testutil.Eventually(t, waitFor, func() error {
			if s.hub.Stats().Delivered >= published || len(s.ended) > 0 {
				return nil
			}
			return fmt.Errorf("message %d neither written nor timed out", published)
		})
		if len(s.ended) > 0 {
			break
		}
	}
	s.waitEnded(t, hub.DisconnectWriteError)
	if st := s.hub.Stats(); st.SlowConsumers != 0 {
		t.Fatalf("%d slow consumers: the queue limit, not the write timeout, ended the stream", st.SlowConsumers)
	}
}
