package ws_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/ws"
)

const wait = 5 * time.Second

// server is a WebSocket handler over a real hub behind a real listener.
type server struct {
	hub    *hub.Hub
	ws     *ws.Handler
	engine *engine.Engine // nil when the handler owns its engine
	srv    *httptest.Server
}

// startServer starts a hub, a WebSocket handler and an HTTP server, and
// stops them when the test ends (handler first, then server, then hub).
func startServer(t testing.TB, hcfg hub.Config, wcfg ws.Config) *server {
	t.Helper()
	return startServerWith(t, hcfg, wcfg, nil)
}

func startServerWith(t testing.TB, hcfg hub.Config, wcfg ws.Config, wrap func(net.Listener) net.Listener) *server {
	t.Helper()
	h := testutil.NewHub(t, hcfg)
	if wcfg.Engine == nil {
		wcfg.Engine = testutil.Engine(t, engine.Config{Heartbeat: wcfg.Heartbeat, WriteTimeout: wcfg.WriteTimeout})
	}
	eng := wcfg.Engine // nil: the handler runs its own
	wh := ws.New(h, wcfg)
	mux := http.NewServeMux()
	mux.Handle("/v1/ws", wh)
	srv := httptest.NewUnstartedServer(mux)
	if wrap != nil {
		srv.Listener = wrap(srv.Listener)
	} else {
		srv.Listener = testutil.Listen(eng, srv.Listener, mux, "/v1/ws")
	}
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := wh.Shutdown(ctx); err != nil {
			t.Errorf("ws shutdown: %v", err)
		}
	})
	return &server{hub: h, ws: wh, engine: eng, srv: srv}
}

// shutdown stops the handler, then the engine it shares, as the app does.
func (s *server) shutdown(ctx context.Context) error {
	err := s.ws.Shutdown(ctx)
	if s.engine != nil {
		err = errors.Join(err, s.engine.Shutdown(ctx))
	}
	return err
}

func (s *server) url(query string) string {
	u := "ws" + strings.TrimPrefix(s.srv.URL, "http") + "/v1/ws"
	if query != "" {
		u += "?" + query
	}
	return u
}

func (s *server) publish(t *testing.T, data string, channels ...string) []hub.PublishResult {
	t.Helper()
	res, err := s.hub.Publish(context.Background(), hub.Publication{Channels: channels, Type: "test", Data: json.RawMessage(data)})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return res
}

// client is a gorilla WebSocket client used from the test goroutine.
type client struct {
	t *testing.T
	c *websocket.Conn
}

func (s *server) dial(t *testing.T, query string) *client {
	t.Helper()
	return s.dialWith(t, websocket.DefaultDialer, query, nil)
}

func (s *server) dialWith(t *testing.T, d *websocket.Dialer, query string, hdr http.Header) *client {
	t.Helper()
	c, resp, err := d.Dial(s.url(query), hdr)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			t.Fatalf("dial: %v: %d %s", err, resp.StatusCode, body)
		}
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c}
}

// dialError dials expecting the handshake to fail, and returns the HTTP
// status and the JSON error code.
func (s *server) dialError(t *testing.T, query string, hdr http.Header) (int, string) {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(s.url(query), hdr)
	if err == nil {
		c.Close()
		t.Fatalf("dial %q succeeded, want a handshake error", query)
	}
	if resp == nil {
		t.Fatalf("dial %q: %v without a response", query, err)
	}
	return resp.StatusCode, errorCode(t, resp)
}

func errorCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type = %q, want application/json", ct)
	}
	var body httpx.ErrorBody
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("error body: %v", err)
	}
	return body.Error.Code
}

// frame is one server frame: an envelope or a control.
type frame struct {
	Channel string          `json:"channel"`
	Epoch   string          `json:"epoch"`
	Offset  uint64          `json:"offset"`
	Type    string          `json:"type"`
	Data    json.RawMessage `json:"data"`
	Time    string          `json:"time"`

	Control  string   `json:"control"`
	Channels []string `json:"channels"`
	Cursor   string   `json:"cursor"`
	Code     string   `json:"code"`
	Message  string   `json:"message"`
}

func (f frame) String() string {
	if f.Control != "" {
		return fmt.Sprintf("control %s %v %q %s %s", f.Control, f.Channels, f.Cursor, f.Code, f.Message)
	}
	return fmt.Sprintf("message %s@%s:%d %s", f.Channel, f.Epoch, f.Offset, f.Data)
}

// next reads one text frame.
func (c *client) next() frame {
	c.t.Helper()
	f, err := c.read()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

func (c *client) read() (frame, error) {
	c.c.SetReadDeadline(time.Now().Add(wait))
	typ, data, err := c.c.ReadMessage()
	if err != nil {
		return frame{}, err
	}
	if typ != websocket.TextMessage {
		return frame{}, fmt.Errorf("frame type %d, want text", typ)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		return frame{}, fmt.Errorf("frame %q: %v", data, err)
	}
	return f, nil
}

// expectMessage reads a frame and checks it is the message at ch:offset.
func (c *client) expectMessage(ch string, offset uint64) frame {
	c.t.Helper()
	f := c.next()
	if f.Control != "" || f.Channel != ch || f.Offset != offset {
		c.t.Fatalf("got %v, want message %s:%d", f, ch, offset)
	}
	return f
}

// expectControl reads a frame and checks it is the control kind.
func (c *client) expectControl(kind string) frame {
	c.t.Helper()
	f := c.next()
	if f.Control != kind {
		c.t.Fatalf("got %v, want control %q", f, kind)
	}
	return f
}

// expectClose reads until the connection ends and checks the close code.
func (c *client) expectClose(code int) {
	c.t.Helper()
	for {
		_, err := c.read()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			c.t.Fatalf("connection ended with %v, want close %d", err, code)
		}
		if ce.Code != code {
			c.t.Fatalf("close code %d (%q), want %d", ce.Code, ce.Text, code)
		}
		return
	}
}

func (c *client) send(s string) {
	c.t.Helper()
	if err := c.c.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func TestPublishReceive(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{})
	c := s.dial(t, "channel=thread:42")
	sub := c.expectControl("subscribed")
	if len(sub.Channels) != 1 || sub.Channels[0] != "thread:42" || !strings.HasPrefix(sub.Cursor, "thread:42@") || !strings.HasSuffix(sub.Cursor, ":0") {
		t.Fatalf("subscribed = %v", sub)
	}

	res := s.publish(t, `{"html":"<b>hi</b>"}`, "thread:42")
	f := c.expectMessage("thread:42", 1)
	if f.Epoch != res[0].Epoch || f.Type != "test" || string(f.Data) != `{"html":"\u003cb\u003ehi\u003c/b\u003e"}` || f.Time == "" {
		t.Fatalf("envelope = %v (type %q, time %q)", f, f.Type, f.Time)
	}
	if want := "thread:42@" + res[0].Epoch + ":0"; sub.Cursor != want {
		t.Fatalf("subscribed cursor = %q, want %q", sub.Cursor, want)
	}
	testutil.Eventually(t, wait, func() error {
		if st := s.hub.Stats(); st.ByTransport["ws"] != 1 || st.Delivered != 1 {
			return fmt.Errorf("stats = %+v", st)
		}
		return nil
	})
}

func TestSeveralChannelsAndOps(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{})
	c := s.dial(t, "channel=a&channel=b")
	if sub := c.expectControl("subscribed"); strings.Join(sub.Channels, ",") != "a,b" {
		t.Fatalf("subscribed = %v", sub)
	}
	c.send(`{"op":"subscribe","channel":"c"}`)
	sub := c.expectControl("subscribed")
	if strings.Join(sub.Channels, ",") != "c" || strings.Count(sub.Cursor, "@") != 3 {
		t.Fatalf("subscribed = %v, want channel c and a cursor over a, b, c", sub)
	}

	s.publish(t, `1`, "a", "b", "c")
	c.expectMessage("a", 1)
	c.expectMessage("b", 1)
	c.expectMessage("c", 1)

	c.send(`{"op":"unsubscribe","channel":"b"}`)
	if f := c.expectControl("unsubscribed"); f.Channel != "b" {
		t.Fatalf("unsubscribed = %v", f)
	}
	// b's message must not arrive: the next frame is c's.
	s.publish(t, `2`, "b")
	s.publish(t, `2`, "c")
	c.expectMessage("c", 2)

	// The cursor of the connection no longer names b, and covers a and c.
	c.send(`{"op":"subscribe","channel":"d"}`)
	sub = c.expectControl("subscribed")
	if strings.Contains(sub.Cursor, "b@") || !strings.Contains(sub.Cursor, "a@") || !strings.Contains(sub.Cursor, ":2") || !strings.Contains(sub.Cursor, "d@") {
		t.Fatalf("cursor = %q", sub.Cursor)
	}
}

func TestResumeWithCursor(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{})
	c := s.dial(t, "channel=a&channel=b")
	c.expectControl("subscribed")
	s.publish(t, `1`, "a", "b")
	fa := c.expectMessage("a", 1)
	fb := c.expectMessage("b", 1)
	c.c.Close()

	s.publish(t, `2`, "a")
	s.publish(t, `3`, "a")
	s.publish(t, `2`, "b")

	// A cursor built from the envelopes received, as a client would.
	cur := fmt.Sprintf("a@%s:1,b@%s:1", fa.Epoch, fb.Epoch)
	c = s.dial(t, "channel=a&channel=b&cursor="+cur)
	c.expectMessage("a", 2)
	c.expectMessage("a", 3)
	c.expectMessage("b", 2)
	sub := c.expectControl("subscribed")
	if want := fmt.Sprintf("a@%s:3,b@%s:2", fa.Epoch, fb.Epoch); sub.Cursor != want {
		t.Fatalf("cursor = %q, want %q", sub.Cursor, want)
	}
	s.publish(t, `4`, "a")
	c.expectMessage("a", 4)

	// The same through the subscribe op's cursor.
	c2 := s.dial(t, "")
	c2.send(fmt.Sprintf(`{"op":"subscribe","channel":"a","cursor":"a@%s:2"}`, fa.Epoch))
	c2.expectMessage("a", 3)
	c2.expectMessage("a", 4)
	c2.expectControl("subscribed")
	s.publish(t, `5`, "a")
	c2.expectMessage("a", 5)
}

// TestResumeUnderLoad reconnects repeatedly with the last cursor while a
// publisher runs: every offset arrives exactly once, in order.
func TestResumeUnderLoad(t *testing.T) {
	const n = 300
	s := startServer(t, hub.Config{Default: hub.NamespaceConfig{HistorySize: n}}, ws.Config{})
	c := s.dial(t, "channel=load")
	cursor := c.expectControl("subscribed").Cursor

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			if _, err := s.hub.Publish(context.Background(), hub.Publication{Channels: []string{"load"}, Data: json.RawMessage(fmt.Sprint(i))}); err != nil {
				t.Errorf("publish: %v", err)
				return
			}
		}
	}()
	t.Cleanup(wg.Wait)

	var got uint64
	for got < n {
		f := c.next()
		switch {
		case f.Control == "subscribed":
			cursor = f.Cursor
			continue
		case f.Control != "":
			t.Fatalf("unexpected %v", f)
		case f.Offset != got+1:
			t.Fatalf("got offset %d after %d: lost or duplicated", f.Offset, got)
		}
		got = f.Offset
		cursor = fmt.Sprintf("load@%s:%d", f.Epoch, f.Offset)
		if got%37 == 0 {
			c.c.Close()
			c = s.dial(t, "channel=load&cursor="+cursor)
		}
	}
}

func TestGapBeforeReplay(t *testing.T) {
	s := startServer(t, hub.Config{Namespaces: map[string]hub.NamespaceConfig{"small": {HistorySize: 2}}}, ws.Config{})
	var epoch string
	for range 5 {
		epoch = s.publish(t, `{}`, "small:x")[0].Epoch
	}

	// History no longer reaches back to offset 1.
	c := s.dial(t, "channel=small:x&cursor=small:x@"+epoch+":1")
	if g := c.expectControl("gap"); strings.Join(g.Channels, ",") != "small:x" {
		t.Fatalf("gap = %v", g)
	}
	c.expectMessage("small:x", 4)
	c.expectMessage("small:x", 5)
	c.expectControl("subscribed")

	// An unknown epoch (a restarted server) is a gap too.
	c = s.dial(t, "channel=small:x&channel=other&cursor=small:x@gone:3")
	if g := c.expectControl("gap"); strings.Join(g.Channels, ",") != "small:x" {
		t.Fatalf("gap = %v", g)
	}
	c.expectMessage("small:x", 4)
	c.expectMessage("small:x", 5)
	if sub := c.expectControl("subscribed"); !strings.HasPrefix(sub.Cursor, "small:x@"+epoch+":5,other@") {
		t.Fatalf("subscribed = %v", sub)
	}

	// Through the subscribe op.
	c.send(`{"op":"subscribe","channel":"small:y","cursor":"small:y@gone:1"}`)
	c.expectControl("gap")
	c.expectControl("subscribed")
}

func TestBadRequestBeforeUpgrade(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{
		CheckOrigin: func(r *http.Request) bool { return r.Header.Get("Origin") != "https://evil.example" },
	})
	for _, tc := range []struct {
		name, query string
		hdr         http.Header
		status      int
		code        string
	}{
		{"bad channel", "channel=no%20spaces", nil, 400, httpx.CodeInvalidChannel},
		{"bad cursor", "channel=a&cursor=a@", nil, 400, httpx.CodeInvalidCursor},
		{"bad origin", "channel=a", http.Header{"Origin": {"https://evil.example"}}, 403, httpx.CodeForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, code := s.dialError(t, tc.query, tc.hdr)
			if status != tc.status || code != tc.code {
				t.Fatalf("got %d %s, want %d %s", status, code, tc.status, tc.code)
			}
		})
	}

	t.Run("not an upgrade", func(t *testing.T) {
		resp, err := http.Get(s.srv.URL + "/v1/ws?channel=a")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if code := errorCode(t, resp); resp.StatusCode != 400 || code != httpx.CodeInvalidRequest {
			t.Fatalf("got %d %s", resp.StatusCode, code)
		}
	})
	t.Run("POST", func(t *testing.T) {
		resp, err := http.Post(s.srv.URL+"/v1/ws?channel=a", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if code := errorCode(t, resp); resp.StatusCode != 405 || code != httpx.CodeMethodNotAllowed {
			t.Fatalf("got %d %s", resp.StatusCode, code)
		}
	})

	if st := s.hub.Stats(); st.Connections != 0 {
		t.Fatalf("a rejected request left %d sessions", st.Connections)
	}
	c := s.dial(t, "channel=a") // still serving
	c.expectControl("subscribed")
}

func TestBadOpsGetErrorControls(t *testing.T) {
	s := startServer(t, hub.Config{MaxChannelsPerSession: 2}, ws.Config{})
	c := s.dial(t, "channel=a")
	c.expectControl("subscribed")
	for _, tc := range []struct{ op, code string }{
		{`not json`, httpx.CodeInvalidJSON},
		{`{"op":"subscribe"`, httpx.CodeInvalidJSON},
		{`[1,2]`, httpx.CodeInvalidRequest},
		{`{"op":"dance","channel":"a"}`, httpx.CodeInvalidRequest},
		{`{"channel":"a"}`, httpx.CodeInvalidRequest},
		{`{"op":"subscribe","channel":"no spaces"}`, httpx.CodeInvalidChannel},
		{`{"op":"unsubscribe"}`, httpx.CodeInvalidChannel},
		{`{"op":"subscribe","channel":"b","cursor":"b@e"}`, httpx.CodeInvalidCursor},
	} {
		c.send(tc.op)
		if f := c.expectControl("error"); f.Code != tc.code || f.Message == "" {
			t.Errorf("%s: got %v, want code %s", tc.op, f, tc.code)
		}
	}
	c.send(`{"op":"subscribe","channel":"b"}`)
	c.expectControl("subscribed")
	c.send(`{"op":"subscribe","channel":"c"}`)
	if f := c.expectControl("error"); f.Code != httpx.CodeTooManyChannels {
		t.Fatalf("got %v, want too_many_channels", f)
	}
	// The connection stays open and keeps its channels.
	s.publish(t, `1`, "a", "b", "c")
	c.expectMessage("a", 1)
	c.expectMessage("b", 1)
}

func TestBinaryFrameCloses1003(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{})
	bad := s.dial(t, "channel=a")
	good := s.dial(t, "channel=a")
	bad.expectControl("subscribed")
	good.expectControl("subscribed")

	if err := bad.c.WriteMessage(websocket.BinaryMessage, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	bad.expectClose(websocket.CloseUnsupportedData)

	s.publish(t, `1`, "a")
	good.expectMessage("a", 1)
	waitConnections(t, s.hub, 1)
}

func TestOversizedFrameCloses1009(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{MaxMessageBytes: 64})
	bad := s.dial(t, "channel=a")
	good := s.dial(t, "channel=a")
	bad.expectControl("subscribed")
	good.expectControl("subscribed")

	bad.send(`{"op":"subscribe","channel":"` + strings.Repeat("x", 100) + `"}`)
	bad.expectClose(websocket.CloseMessageTooBig)

	// Far more than the socket buffers: the server stops reading the frame,
	// and the close frame must still reach the client (no reset).
	big := s.dial(t, "channel=a")
	big.expectControl("subscribed")
	_ = big.c.WriteMessage(websocket.TextMessage, make([]byte, 8<<20)) // may fail once the server closes
	big.expectClose(websocket.CloseMessageTooBig)

	s.publish(t, `1`, "a")
	good.expectMessage("a", 1)
	waitConnections(t, s.hub, 1)
	good.send(`{"op":"subscribe","channel":"b"}`) // small frames still pass
	good.expectControl("subscribed")
}

func waitConnections(t *testing.T, h *hub.Hub, n int) {
	t.Helper()
	testutil.Eventually(t, wait, func() error {
		if got := h.Stats().Connections; got != n {
			return fmt.Errorf("%d connections, want %d", got, n)
		}
		return nil
	})
}

func TestHubShutdownCloses1012(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{})
	c1 := s.dial(t, "channel=a")
	c2 := s.dial(t, "channel=b")
	c1.expectControl("subscribed")
	c2.expectControl("subscribed")

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := s.hub.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	c1.expectClose(websocket.CloseServiceRestart)
	c2.expectClose(websocket.CloseServiceRestart)
	if err := s.ws.Shutdown(ctx); err != nil {
		t.Fatalf("ws shutdown: %v", err)
	}
	if status, code := s.dialError(t, "channel=a", nil); status != 503 || code != httpx.CodeShuttingDown {
		t.Fatalf("dial after shutdown: %d %s", status, code)
	}
}

func TestHandlerShutdownCloses1012(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{})
	c := s.dial(t, "channel=a")
	c.expectControl("subscribed")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		done <- s.shutdown(ctx)
	}()
	c.expectClose(websocket.CloseServiceRestart)
	if err := <-done; err != nil {
		t.Fatalf("ws shutdown: %v", err)
	}
	waitConnections(t, s.hub, 0)
	if status, code := s.dialError(t, "channel=a", nil); status != 503 || code != httpx.CodeShuttingDown {
		t.Fatalf("dial after shutdown: %d %s", status, code)
	}
}

func TestShutdownTimesOut(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{})
	c := s.dial(t, "channel=a")
	c.expectControl("subscribed")
	// The client does not answer the close frame, so the connection is
	// still in its close grace period when the context ends.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v, want context.Canceled", err)
	}
	// Out of time, Shutdown closed the socket: the connection's goroutines
	// end at once instead of after the close grace period and write
	// timeouts, so a second Shutdown with time to spare returns nil fast.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	if err := s.shutdown(ctx2); err != nil {
		t.Fatalf("connection goroutines still running after the socket was closed: %v", err)
	}
}

func TestHeartbeat(t *testing.T) {
	// A client has a heartbeat from each ping to answer it. At 20 ms the
	// client, delayed by a busy two-core CI machine running other -race
	// tests, sometimes took longer.
	s := startServer(t, hub.Config{}, ws.Config{Heartbeat: 250 * time.Millisecond})

	t.Run("answering client stays", func(t *testing.T) {
		c := s.dial(t, "channel=a")
		var pings atomic.Int32
		c.c.SetPingHandler(func(data string) error {
			pings.Add(1)
			return c.c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
		frames := make(chan frame, 16)
		readerDone := make(chan struct{})
		go func() { // ends when the connection closes
			defer close(readerDone)
			defer close(frames)
			for {
				_, data, err := c.c.ReadMessage()
				if err != nil {
					return
				}
				var f frame
				_ = json.Unmarshal(data, &f)
				frames <- f
			}
		}()
		t.Cleanup(func() { c.c.Close(); <-readerDone })
		// Four pings span two read timeouts.
		testutil.Eventually(t, wait, func() error {
			if n := pings.Load(); n < 4 {
				return fmt.Errorf("%d pings", n)
			}
			return nil
		})
		s.publish(t, `1`, "a")
		for {
			select {
			case f, ok := <-frames:
				if !ok {
					t.Fatal("connection closed although the client answered every ping")
				}
				if f.Channel == "a" {
					return
				}
			case <-time.After(wait):
				t.Fatal("message not received")
			}
		}
	})

	t.Run("silent client is closed", func(t *testing.T) {
		c := s.dial(t, "channel=b")
		c.c.SetPingHandler(func(string) error { return nil }) // never pong
		c.expectClose(websocket.CloseGoingAway)
	})
}

// smallBuffers shrinks the kernel send buffer of accepted connections, so
// that a client that stops reading fills it quickly.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(8 << 10)
	}
	return c, err
}

func TestSlowConsumerIsClosed(t *testing.T) {
	s := startServerWith(t, hub.Config{MaxQueueBytes: 64 << 10}, ws.Config{WriteTimeout: wait},
		func(l net.Listener) net.Listener { return smallBuffers{l} })

	good := s.dial(t, "channel=big")
	good.expectControl("subscribed")
	smallDialer := *websocket.DefaultDialer
	smallDialer.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4 << 10)
		}
		return c, err
	}
	slow := s.dialWith(t, &smallDialer, "channel=big", nil) // never reads until it has been dropped

	offsets := make(chan uint64, 64)
	readerDone := make(chan struct{})
	go func() { // ends when the connection closes
		defer close(readerDone)
		defer close(offsets)
		for {
			f, err := good.read()
			if err != nil {
				return
			}
			if f.Control == "" {
				offsets <- f.Offset
			}
		}
	}()
	t.Cleanup(func() { good.c.Close(); <-readerDone })
	received := func(want uint64) {
		t.Helper()
		select {
		case got, ok := <-offsets:
			if !ok || got != want {
				t.Fatalf("good subscriber got offset %d (open %v), want %d", got, ok, want)
			}
		case <-time.After(wait):
			t.Fatalf("good subscriber did not get offset %d", want)
		}
	}

	data := `"` + strings.Repeat("x", 16<<10) + `"`
	var published uint64
	for s.hub.Stats().SlowConsumers == 0 {
		if published == 2000 {
			t.Fatal("no slow consumer after 2000 messages of 16 KiB")
		}
		s.publish(t, data, "big")
		published++
		received(published)
	}
	// The other subscriber keeps receiving everything.
	for range 5 {
		s.publish(t, data, "big")
		published++
		received(published)
	}

	// Reading now, the slow client gets what was written, then 4008.
	if tc, ok := slow.c.NetConn().(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(1 << 20)
	}
	n := 0
	for {
		f, err := slow.read()
		if err == nil {
			if f.Control == "" {
				n++
			}
			continue
		}
		if !websocket.IsCloseError(err, 4008) {
			t.Fatalf("slow client ended with %v, want close 4008", err)
		}
		break
	}
	if uint64(n) >= published {
		t.Fatalf("slow client got %d of %d messages: it was not dropped", n, published)
	}
	waitConnections(t, s.hub, 1)
}

func TestManyConnectionsFanout(t *testing.T) {
	s := startServer(t, hub.Config{}, ws.Config{})
	var clients []*client
	for i := range 20 {
		c := s.dial(t, url.Values{"channel": {"room", fmt.Sprintf("user:%d", i)}}.Encode())
		c.expectControl("subscribed")
		clients = append(clients, c)
	}
	for i := range 10 {
		s.publish(t, fmt.Sprint(i), "room")
	}
	for _, c := range clients {
		for i := range 10 {
			c.expectMessage("room", uint64(i+1))
		}
	}
}

func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			s := startServer(b, hub.Config{MaxQueueBytes: 256 << 20}, ws.Config{})
			var wg sync.WaitGroup
			var short atomic.Int64
			for range n {
				c, _, err := websocket.DefaultDialer.Dial(s.url("channel=bench"), nil)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { c.Close() })
				if _, _, err := c.ReadMessage(); err != nil { // subscribed
					b.Fatal(err)
				}
				wg.Add(1)
				go func() { // ends after b.N messages or when the connection fails
					defer wg.Done()
					for i := 0; i < b.N; i++ {
						if _, _, err := c.ReadMessage(); err != nil {
							short.Add(1)
							return
						}
					}
				}()
			}
			p := hub.Publication{Channels: []string{"bench"}, Type: "post.created", Data: json.RawMessage(`{"id":"p981","body":"a comment of modest length"}`)}
			b.ResetTimer()
			for range b.N {
				if _, err := s.hub.Publish(context.Background(), p); err != nil {
					b.Fatal(err)
				}
			}
			wg.Wait()
			b.StopTimer()
			if short.Load() > 0 {
				b.Fatalf("%d subscribers did not get every message", short.Load())
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}
