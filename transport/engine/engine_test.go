package engine_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/sse"
	"github.com/heraldhq/herald/transport/ws"
	"github.com/heraldhq/herald/transport/ws/wsframe"
)

// wait bounds every wait on a socket or a condition, so that a broken
// test fails instead of hanging.
const wait = 5 * time.Second

// tick is the engine's timer wheel tick with the configurations used here.
// The engine's clock advances at each tick, so a timeout it enforces may
// end up to one tick early in real time.
const tick = 5 * time.Millisecond

// mode is one way of running the engine's connections.
type mode struct {
	name       string
	goroutines bool // the engine's goroutine mode
	// listen has the engine accept the connections and serve the
	// handshakes itself (Engine.Listen); otherwise net/http accepts and
	// the handlers hijack.
	listen bool
}

// modes are the engine's ways of running connections. These tests pick
// the mode themselves instead of reading testutil.EngineEnv, because they
// are about the engine.
var modes = []mode{
	{name: "epoll", listen: true},
	{name: "epoll-nethttp"},
	{name: "goroutines", goroutines: true},
}

// eachMode runs fn as a subtest per engine mode.
func eachMode(t *testing.T, fn func(t *testing.T, m mode)) {
	t.Helper()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			if !m.goroutines {
				skipWithoutEpoll(t)
			}
			fn(t, m)
		})
	}
}

func skipWithoutEpoll(t testing.TB) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the epoll mode exists on Linux only; these cases run on Linux, as in CI")
	}
}

// options configure startServer.
type options struct {
	hub    hub.Config
	engine engine.Config // Goroutines is set by startServer
	// heartbeat is the SSE and WebSocket handlers' heartbeat (a WebSocket
	// client that sends nothing for two of them is closed). Zero means
	// their default.
	heartbeat time.Duration
	// sendBuffer, when positive, is the kernel send buffer of accepted
	// connections, so that a client that stops reading blocks the server
	// quickly.
	sendBuffer int
}

// server is a real hub, one engine, the SSE handler at /v1/sse and the
// WebSocket handler at /v1/ws behind a real loopback listener.
type server struct {
	hub    *hub.Hub
	engine *engine.Engine
	addr   string
}

// startServer starts a server and stops it when the test ends: clients
// (whose cleanups were registered later) first, then the HTTP server,
// the engine and the hub.
func startServer(t testing.TB, m mode, o options) *server {
	t.Helper()
	h := testutil.NewHub(t, o.hub)
	ecfg := o.engine
	ecfg.Goroutines = m.goroutines
	e, err := engine.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("engine shutdown: %v", err)
		}
	})
	mux := http.NewServeMux()
	mux.Handle("/v1/sse", sse.New(h, sse.Config{Engine: e, Heartbeat: o.heartbeat}))
	mux.Handle("/v1/ws", ws.New(h, ws.Config{Engine: e, Heartbeat: o.heartbeat}))
	srv := httptest.NewUnstartedServer(mux)
	if o.sendBuffer > 0 {
		// Accepted sockets inherit the listener's send buffer, whoever
		// accepts them.
		setSendBuffer(t, srv.Listener, o.sendBuffer)
	}
	if m.listen {
		srv.Listener = e.Listen(srv.Listener, engine.ListenConfig{Handler: mux, Paths: []string{"/v1/sse", "/v1/ws"}})
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return &server{hub: h, engine: e, addr: srv.Listener.Addr().String()}
}

// setSendBuffer sets a listening socket's send buffer.
func setSendBuffer(t testing.TB, ln net.Listener, size int) {
	t.Helper()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, size)
	}); err != nil || serr != nil {
		t.Fatalf("SO_SNDBUF: %v %v", err, serr)
	}
}

func (s *server) publish(t testing.TB, data string, channels ...string) {
	t.Helper()
	_, err := s.hub.Publish(context.Background(), hub.Publication{Channels: channels, Type: "test", Data: json.RawMessage(data)})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// waitEngineConns waits until the engine holds n connections.
func (s *server) waitEngineConns(t testing.TB, n int64) {
	t.Helper()
	testutil.Eventually(t, wait, func() error {
		if got := s.engine.Stats().Connections; got != n {
			return fmt.Errorf("engine holds %d connections, want %d", got, n)
		}
		return nil
	})
}

// dial opens a TCP connection to the server, closed when the test ends.
func (s *server) dial(t testing.TB) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// readHead reads an HTTP response head and checks its status.
func readHead(t testing.TB, nc net.Conn, br *bufio.Reader, status int) http.Header {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(wait))
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the status line: %v", err)
	}
	if want := fmt.Sprintf("HTTP/1.1 %d ", status); !strings.HasPrefix(line, want) {
		t.Fatalf("status line %q, want %q…", line, want)
	}
	hd := http.Header{}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the response head: %v", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			return hd
		}
		k, v, _ := strings.Cut(line, ":")
		hd.Add(k, strings.TrimSpace(v))
	}
}

// sseClient is an SSE connection on a raw socket: nothing reads it unless
// the test does, so it costs the test no goroutine.
type sseClient struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

// dialSSE sends an SSE request; it does not read the response.
func (s *server) dialSSE(t testing.TB, query string) *sseClient {
	t.Helper()
	nc := s.dial(t)
	req := "GET /v1/sse?" + query + " HTTP/1.1\r\nHost: " + s.addr + "\r\nAccept: text/event-stream\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		t.Fatalf("sending the SSE request: %v", err)
	}
	return &sseClient{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// readHead reads the response head and the stream's opening retry hint.
func (c *sseClient) readHead() {
	c.t.Helper()
	hd := readHead(c.t, c.nc, c.br, http.StatusOK)
	if ct := hd.Get("Content-Type"); ct != "text/event-stream" {
		c.t.Fatalf("Content-Type %q", ct)
	}
	if ev := c.next(); ev.Retry == "" {
		c.t.Fatalf("stream opened with %+v, want a retry hint", ev)
	}
}

// sseEvent is one SSE event block.
type sseEvent struct {
	Comment                bool
	ID, Event, Data, Retry string
}

func (c *sseClient) next() sseEvent {
	c.t.Helper()
	ev, err := c.read()
	if err != nil {
		c.t.Fatalf("SSE read: %v", err)
	}
	return ev
}

// read reads one event block (lines up to a blank line).
func (c *sseClient) read() (sseEvent, error) {
	c.nc.SetReadDeadline(time.Now().Add(wait))
	var ev sseEvent
	seen := false
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			if seen && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if seen {
				return ev, nil
			}
			continue
		}
		seen = true
		if strings.HasPrefix(line, ":") {
			ev.Comment = true
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			ev.ID = value
		case "event":
			ev.Event = value
		case "data":
			ev.Data += value
		case "retry":
			ev.Retry = value
		}
	}
}

// expectMessage skips id-only events and heartbeats up to the next
// message, and checks that it is the message on ch with data.
func (c *sseClient) expectMessage(ch, data string) {
	c.t.Helper()
	for {
		ev := c.next()
		if ev.Comment || ev.Data == "" {
			continue
		}
		var env struct {
			Channel string          `json:"channel"`
			Data    json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal([]byte(ev.Data), &env); err != nil {
			c.t.Fatalf("event data %q: %v", ev.Data, err)
		}
		if env.Channel != ch || string(env.Data) != data {
			c.t.Fatalf("got message %s %.40s, want %s %.40s", env.Channel, env.Data, ch, data)
		}
		return
	}
}

// expectEOF reads up to the end of the stream and returns the complete
// events read. With cut, the stream may end inside an event (a connection
// closed as broken), which is dropped as a browser drops it.
func (c *sseClient) expectEOF(cut bool) []sseEvent {
	c.t.Helper()
	var evs []sseEvent
	for {
		ev, err := c.read()
		if err == io.EOF || cut && err == io.ErrUnexpectedEOF {
			return evs
		}
		if err != nil {
			c.t.Fatalf("stream ended with %v after %d events, want EOF", err, len(evs))
		}
		evs = append(evs, ev)
	}
}

// wsKey is the handshake key of RFC 6455 §1.3.
const wsKey = "dGhlIHNhbXBsZSBub25jZQ=="

// wsClient is a WebSocket client on a raw socket: it writes the handshake
// and masked frames itself and reads the server's frames, so the test
// controls every byte and runs no goroutine for it.
type wsClient struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

// wsRequest is the handshake request for query.
func (s *server) wsRequest(query string) []byte {
	return []byte("GET /v1/ws?" + query + " HTTP/1.1\r\nHost: " + s.addr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + wsKey +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

// dialWS sends the handshake request followed, in the same write, by
// pipelined; it does not read the response.
func (s *server) dialWS(t testing.TB, query string, pipelined []byte) *wsClient {
	t.Helper()
	nc := s.dial(t)
	if _, err := nc.Write(append(s.wsRequest(query), pipelined...)); err != nil {
		t.Fatalf("sending the handshake: %v", err)
	}
	return &wsClient{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// readHead reads the handshake response.
func (c *wsClient) readHead() {
	c.t.Helper()
	hd := readHead(c.t, c.nc, c.br, http.StatusSwitchingProtocols)
	if got, want := hd.Get("Sec-WebSocket-Accept"), wsframe.AcceptKey(wsKey); got != want {
		c.t.Fatalf("Sec-WebSocket-Accept %q, want %q", got, want)
	}
}

// clientFrame returns a final, masked client frame.
func clientFrame(op wsframe.Opcode, payload []byte) []byte {
	b := []byte{0x80 | byte(op)}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xFFFF:
		b = binary.BigEndian.AppendUint16(append(b, 0x80|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 0x80|127), uint64(n))
	}
	key := [4]byte{0x5a, 0x17, 0xc3, 0x81}
	b = append(b, key[:]...)
	for i, x := range payload {
		b = append(b, x^key[i%4])
	}
	return b
}

func subscribeOp(ch string) []byte {
	return clientFrame(wsframe.OpText, []byte(`{"op":"subscribe","channel":"`+ch+`"}`))
}

func (c *wsClient) write(p []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(p); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// readFrame reads one server frame. Server frames are final and unmasked.
func (c *wsClient) readFrame() (wsframe.Opcode, []byte, error) {
	c.nc.SetReadDeadline(time.Now().Add(wait))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0xf0 != 0x80 || h[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("frame header % x: want FIN, no RSV bits, unmasked", h)
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var x [2]byte
		if _, err := io.ReadFull(c.br, x[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(x[:]))
	case 127:
		var x [8]byte
		if _, err := io.ReadFull(c.br, x[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(x[:])
	}
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return 0, nil, err
	}
	return wsframe.Opcode(h[0] & 0x0f), p, nil
}

// wsFrame is a server text frame: an envelope or a control.
type wsFrame struct {
	Channel string          `json:"channel"`
	Offset  uint64          `json:"offset"`
	Data    json.RawMessage `json:"data"`

	Control  string   `json:"control"`
	Channels []string `json:"channels"`
}

// nextText reads up to the next text frame, answering pings on the way
// when pong is set and ignoring them otherwise.
func (c *wsClient) nextText(pong bool) wsFrame {
	c.t.Helper()
	for {
		op, p, err := c.readFrame()
		if err != nil {
			c.t.Fatalf("WebSocket read: %v", err)
		}
		switch op {
		case wsframe.OpPing:
			if pong {
				c.write(clientFrame(wsframe.OpPong, p))
			}
			continue
		case wsframe.OpText:
		case wsframe.OpClose:
			c.t.Fatalf("closed with %d %q", closeCode(p), p[min(len(p), 2):])
		default:
			c.t.Fatalf("unexpected %v frame", op)
		}
		var f wsFrame
		if err := json.Unmarshal(p, &f); err != nil {
			c.t.Fatalf("text frame %q: %v", p, err)
		}
		return f
	}
}

func closeCode(p []byte) int {
	if len(p) < 2 {
		return wsframe.CloseNoStatus
	}
	return int(binary.BigEndian.Uint16(p))
}

// expectSubscribed reads the next text frame and checks it is the
// subscribed control for channels.
func (c *wsClient) expectSubscribed(channels ...string) {
	c.t.Helper()
	f := c.nextText(true)
	if f.Control != "subscribed" || strings.Join(f.Channels, ",") != strings.Join(channels, ",") {
		c.t.Fatalf("got %+v, want subscribed %v", f, channels)
	}
}

// expectMessage reads the next text frame and checks it is the message on
// ch with data.
func (c *wsClient) expectMessage(ch, data string) {
	c.t.Helper()
	f := c.nextText(true)
	if f.Control != "" || f.Channel != ch || string(f.Data) != data {
		c.t.Fatalf("got %s %s %.40s, want message %s %.40s", f.Control, f.Channel, f.Data, ch, data)
	}
}

// expectClose reads up to a close frame, checks its code and that the
// server then ends the connection.
func (c *wsClient) expectClose(code int) {
	c.t.Helper()
	for {
		op, p, err := c.readFrame()
		if err != nil {
			c.t.Fatalf("connection ended with %v before a close frame", err)
		}
		if op != wsframe.OpClose {
			continue
		}
		if got := closeCode(p); got != code {
			c.t.Fatalf("close code %d (%q), want %d", got, p[min(len(p), 2):], code)
		}
		break
	}
	if _, _, err := c.readFrame(); err != io.EOF {
		c.t.Fatalf("after the close frame: %v, want EOF", err)
	}
}

// TestIdleConnectionsHoldNoGoroutine attaches 500 SSE and 500 WebSocket
// connections to an epoll engine: the process's goroutine count barely
// moves, and one publish still reaches every connection.
func TestIdleConnectionsHoldNoGoroutine(t *testing.T) {
	skipWithoutEpoll(t)
	const perKind = 500
	s := startServer(t, modes[0], options{})
	before := runtime.NumGoroutine()

	// Raw sockets that nothing reads until the end: the test itself adds
	// no goroutine per connection.
	sseClients := make([]*sseClient, perKind)
	wsClients := make([]*wsClient, perKind)
	for i := range perKind {
		sseClients[i] = s.dialSSE(t, "channel=all")
		wsClients[i] = s.dialWS(t, "channel=all", nil)
	}
	s.waitEngineConns(t, 2*perKind)
	// net/http's connection goroutines end once their handler has
	// returned, which is after Attach.
	var grown int
	testutil.Eventually(t, wait, func() error {
		if grown = runtime.NumGoroutine() - before; grown >= 50 {
			return fmt.Errorf("%d goroutines more than before %d connections", grown, 2*perKind)
		}
		return nil
	})
	t.Logf("%d connections, %+d goroutines", 2*perKind, grown)
	if st := s.hub.Stats(); st.ByTransport["sse"] != perKind || st.ByTransport["ws"] != perKind || st.Subscribers != 2*perKind {
		t.Fatalf("hub stats %+v", st)
	}

	s.publish(t, `"to all"`, "all")
	for _, c := range sseClients {
		c.readHead()
		c.expectMessage("all", `"to all"`)
	}
	for _, c := range wsClients {
		c.readHead()
		c.expectSubscribed("all")
		c.expectMessage("all", `"to all"`)
	}
	if st := s.hub.Stats(); st.Delivered != 2*perKind {
		t.Fatalf("hub delivered %d messages, want %d", st.Delivered, 2*perKind)
	}
}

// TestTrickledFrameStallsNobody has a WebSocket client send a subscribe op
// a few bytes at a time with long pauses: meanwhile other connections keep
// sending ops and receiving messages, and the op takes effect once its
// last byte arrives.
func TestTrickledFrameStallsNobody(t *testing.T) {
	eachMode(t, func(t *testing.T, m mode) {
		s := startServer(t, m, options{})
		trickler := s.dialWS(t, "", nil)
		trickler.readHead()
		other := s.dialWS(t, "channel=news", nil)
		other.readHead()
		other.expectSubscribed("news")
		stream := s.dialSSE(t, "channel=news")
		stream.readHead()

		op := subscribeOp("slow")
		// Cuts inside the header, inside the masking key and inside the
		// payload.
		cuts := []int{0, 1, 4, 9, len(op) / 2, len(op) - 1}
		for i, from := range cuts[:len(cuts)-1] {
			trickler.write(op[from:cuts[i+1]])
			// Input from the others is still read and acted on ...
			ch := fmt.Sprintf("side-%d", i)
			other.write(subscribeOp(ch))
			other.expectSubscribed(ch)
			// ... and messages still go out.
			data := strconv.Itoa(i)
			s.publish(t, data, "news")
			other.expectMessage("news", data)
			stream.expectMessage("news", data)
		}
		trickler.write(op[cuts[len(cuts)-1]:])
		trickler.expectSubscribed("slow")
		s.publish(t, `"at last"`, "slow")
		trickler.expectMessage("slow", `"at last"`)
	})
}

// TestBlockedSocketTimesOut has a client stop reading while big messages
// are published: its unsent bytes wait (Stats.Blocked) until the engine's
// WriteTimeout closes the connection, and the other clients never notice.
func TestBlockedSocketTimesOut(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	eachMode(t, func(t *testing.T, m mode) {
		s := startServer(t, m, options{
			hub:        hub.Config{MaxQueueBytes: 64 << 20}, // the write timeout acts, not the queue limit
			engine:     engine.Config{WriteTimeout: writeTimeout},
			sendBuffer: 8 << 10,
		})
		goodSSE := s.dialSSE(t, "channel=big")
		goodSSE.readHead()
		goodWS := s.dialWS(t, "channel=big", nil)
		goodWS.readHead()
		goodWS.expectSubscribed("big")
		slow := s.dialSSE(t, "channel=big")
		slow.readHead()
		if tc, ok := slow.nc.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4 << 10)
		}
		s.waitEngineConns(t, 3)

		data := `"` + strings.Repeat("x", 16<<10) + `"`
		publishAll := func() {
			t.Helper()
			s.publish(t, data, "big")
			goodSSE.expectMessage("big", data)
			goodWS.expectMessage("big", data)
		}
		start := time.Now()
		published := 0
		if m.goroutines {
			// A writer blocked in its write is not counted in Stats.Blocked
			// in this mode (TestStatsCountBlockedConnection fails there):
			// publish well past every socket buffer instead.
			for ; published < 64; published++ {
				publishAll()
			}
		} else {
			for s.engine.Stats().Blocked == 0 {
				if published == 200 {
					t.Fatalf("no blocked connection after %d messages of 16 KiB", published)
				}
				publishAll()
				published++
			}
			if st := s.engine.Stats(); st.Blocked != 1 || st.Connections != 3 {
				t.Fatalf("stats %+v, want 1 blocked connection of 3", st)
			}
		}

		s.waitEngineConns(t, 2)
		if elapsed := time.Since(start); elapsed < writeTimeout-tick {
			t.Fatalf("blocked connection closed after %v, before the write timeout %v", elapsed, writeTimeout)
		}
		if st := s.engine.Stats(); st.Blocked != 0 {
			t.Fatalf("stats %+v after the blocked connection was closed", st)
		}
		if st := s.hub.Stats(); st.Connections != 2 || st.SlowConsumers != 0 {
			t.Fatalf("hub stats %+v: want 2 connections and no slow consumer", st)
		}

		// The others go on.
		for range 3 {
			publishAll()
			published++
		}
		// The slow client gets what reached its socket, then the end.
		evs := slow.expectEOF(true)
		got := 0
		for _, ev := range evs {
			if ev.Data != "" {
				got++
			}
		}
		if got >= published {
			t.Fatalf("slow client got %d of %d messages: it was not cut off", got, published)
		}
	})
}

// TestStatsCountBlockedConnection checks Stats.Blocked: it counts a
// connection whose client does not read while bytes wait for it, and
// forgets it once the connection is gone. Only epoll mode counts them (in
// goroutine mode a write just blocks its writer).
func TestStatsCountBlockedConnection(t *testing.T) {
	t.Run("epoll", func(t *testing.T) {
		s := startServer(t, modes[0], options{hub: hub.Config{MaxQueueBytes: 64 << 20}, sendBuffer: 8 << 10})
		slow := s.dialSSE(t, "channel=big")
		slow.readHead()
		if tc, ok := slow.nc.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4 << 10)
		}
		s.waitEngineConns(t, 1)
		// 1 MiB: far past the socket buffers. The write timeout (10s) is
		// far off.
		data := `"` + strings.Repeat("x", 16<<10) + `"`
		for range 64 {
			s.publish(t, data, "big")
		}
		testutil.Eventually(t, time.Second, func() error {
			if st := s.engine.Stats(); st.Blocked != 1 {
				return fmt.Errorf("stats %+v, want 1 blocked connection", st)
			}
			return nil
		})
		slow.nc.Close()
		s.waitEngineConns(t, 0)
		if st := s.engine.Stats(); st.Blocked != 0 {
			t.Fatalf("stats %+v once the connection is gone", st)
		}
	})
}

// TestHeartbeats checks that idle connections hear from the server every
// heartbeat, and that a WebSocket client that does not answer pings is
// closed with 1001 after two heartbeats.
func TestHeartbeats(t *testing.T) {
	// The wheel checks a connection every Heartbeat/4, so pings go out
	// every 1 to 1.25 heartbeats, and an answering client has a heartbeat
	// from each ping to answer it. At 100 ms a CI machine running other
	// packages' -race tests at the same time sometimes took longer.
	const heartbeat = 250 * time.Millisecond
	eachMode(t, func(t *testing.T, m mode) {
		s := startServer(t, m, options{engine: engine.Config{Heartbeat: heartbeat}, heartbeat: heartbeat})

		t.Run("SSE comment", func(t *testing.T) {
			c := s.dialSSE(t, "channel=quiet")
			c.readHead()
			for beats := 0; beats < 3; {
				if ev := c.next(); ev.Comment {
					beats++
				} else if ev.Data != "" {
					t.Fatalf("unexpected event %+v", ev)
				}
			}
		})

		t.Run("WebSocket ping answered", func(t *testing.T) {
			c := s.dialWS(t, "channel=quiet", nil)
			c.readHead()
			c.expectSubscribed("quiet")
			// Four pings span at least two read timeouts.
			for pings := 0; pings < 4; {
				op, p, err := c.readFrame()
				if err != nil {
					t.Fatalf("after %d pings: %v", pings, err)
				}
				if op != wsframe.OpPing {
					t.Fatalf("got %v frame %q, want a ping", op, p)
				}
				c.write(clientFrame(wsframe.OpPong, p))
				pings++
			}
			s.publish(t, `"still here"`, "quiet")
			c.expectMessage("quiet", `"still here"`)
		})

		t.Run("WebSocket ping unanswered", func(t *testing.T) {
			start := time.Now()
			c := s.dialWS(t, "channel=quiet", nil)
			c.readHead()
			c.expectSubscribed("quiet")
			c.expectClose(wsframe.CloseGoingAway)
			if elapsed := time.Since(start); elapsed < 2*heartbeat-tick {
				t.Fatalf("closed after %v, before two heartbeats", elapsed)
			}
		})

		if st := s.engine.Stats(); st.Heartbeats < 3+4 {
			t.Fatalf("stats %+v: fewer heartbeats than the clients saw", st)
		}
	})
}

// testProtocol is a Protocol that writes nothing and ignores input.
type testProtocol struct{}

func (testProtocol) AppendOpen(dst []byte) []byte                    { return dst }
func (testProtocol) AppendItem(*transport.Batch, *hub.Item)          {}
func (testProtocol) AppendHeartbeat(dst []byte) []byte               { return dst }
func (testProtocol) AppendClose(dst []byte, _ hub.Disconnect) []byte { return dst }
func (testProtocol) Input(*engine.Conn, []byte)                      {}

// TestShutdown checks what clients see when the engine shuts down (SSE: a
// retry hint, then the end of the stream; WebSocket: close 1012), and that
// it then refuses connections.
func TestShutdown(t *testing.T) {
	eachMode(t, func(t *testing.T, m mode) {
		s := startServer(t, m, options{})
		stream := s.dialSSE(t, "channel=a")
		stream.readHead()
		if ev := stream.next(); ev.ID == "" || ev.Data != "" {
			t.Fatalf("got %+v, want the subscribed id", ev)
		}
		sock := s.dialWS(t, "channel=a", nil)
		sock.readHead()
		sock.expectSubscribed("a")

		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			done <- s.engine.Shutdown(ctx)
		}()

		evs := stream.expectEOF(false)
		if len(evs) != 1 || evs[0].Data != "" {
			t.Fatalf("stream ended with %+v, want one retry hint", evs)
		}
		// sse.Config.Retry's default is 2s, jittered up to 50% on shutdown.
		if ms, err := strconv.Atoi(evs[0].Retry); err != nil || ms < 2000 || ms > 3000 {
			t.Fatalf("retry hint %q, want 2000–3000 ms", evs[0].Retry)
		}
		stream.nc.Close()
		sock.expectClose(wsframe.CloseServiceRestart)
		sock.nc.Close()

		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		case <-time.After(wait):
			t.Fatal("Shutdown did not return")
		}
		if st := s.engine.Stats(); st.Connections != 0 {
			t.Fatalf("stats %+v after Shutdown", st)
		}
		if err := s.engine.Shutdown(context.Background()); err != nil {
			t.Fatalf("second Shutdown: %v", err)
		}

		// Attach after Shutdown fails and closes the session and socket.
		c := s.engine.NewConn(testProtocol{}, engine.ConnOptions{})
		sess, err := s.hub.NewSession(hub.SessionOptions{Transport: "test", Wake: c.Wake})
		if err != nil {
			t.Fatal(err)
		}
		server, client := net.Pipe()
		defer client.Close()
		err = s.engine.Attach(c, sess, server, []byte("HTTP/1.1 200 OK\r\n\r\n"), nil)
		if !errors.Is(err, engine.ErrClosed) {
			t.Fatalf("Attach after Shutdown: %v, want ErrClosed", err)
		}
		if d, closed := sess.Closed(); !closed || d != hub.DisconnectShutdown {
			t.Fatalf("session closed %v with %+v, want closed with DisconnectShutdown", closed, d)
		}
		client.SetReadDeadline(time.Now().Add(wait))
		if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("client read %d bytes, %v: want EOF, nothing written", n, err)
		}
		if st := s.hub.Stats(); st.Connections != 0 {
			t.Fatalf("hub stats %+v after a refused Attach", st)
		}
	})
}

// TestPipelinedInput sends WebSocket frames in the same write as the
// handshake, so that net/http has read some of them already: the engine
// must hand them to the protocol, in order with what follows.
func TestPipelinedInput(t *testing.T) {
	eachMode(t, func(t *testing.T, m mode) {
		s := startServer(t, m, options{})

		t.Run("subscribe op", func(t *testing.T) {
			c := s.dialWS(t, "channel=a", subscribeOp("b"))
			c.readHead()
			c.expectSubscribed("a")
			c.expectSubscribed("b")
			s.publish(t, `"b1"`, "b")
			c.expectMessage("b", `"b1"`)
		})

		// More than net/http's 4 KiB read buffer: part of the input is in
		// the hijacked connection's buffer, the rest still in the socket.
		// Numbered pings between unsolicited pongs (which need no answer)
		// come back as pongs in order only if the two parts are decoded
		// in order, one after the other.
		t.Run("beyond net/http's buffer", func(t *testing.T) {
			const pings = 40
			pad := clientFrame(wsframe.OpPong, bytes.Repeat([]byte{'p'}, 125))
			var in []byte
			for i := range pings {
				in = append(in, clientFrame(wsframe.OpPing, fmt.Appendf(nil, "%04d", i))...)
				for range 3 {
					in = append(in, pad...)
				}
				if i%10 == 9 {
					in = append(in, subscribeOp(fmt.Sprintf("c%d", i/10))...)
				}
			}
			if len(in) < 3*4096 {
				t.Fatalf("pipelined input of %d bytes: too short", len(in))
			}
			c := s.dialWS(t, "", in)
			c.readHead()
			var pongs, subscribed []string
			for len(pongs) < pings || len(subscribed) < pings/10 {
				op, p, err := c.readFrame()
				if err != nil {
					t.Fatalf("after pongs %v and subscribed %v: %v", pongs, subscribed, err)
				}
				switch op {
				case wsframe.OpPong:
					pongs = append(pongs, string(p))
				case wsframe.OpText:
					var f wsFrame
					if err := json.Unmarshal(p, &f); err != nil || f.Control != "subscribed" {
						t.Fatalf("text frame %q, want subscribed", p)
					}
					subscribed = append(subscribed, f.Channels...)
				case wsframe.OpClose:
					t.Fatalf("closed with %d %q after pongs %v", closeCode(p), p[min(len(p), 2):], pongs)
				}
			}
			for i, p := range pongs {
				if want := fmt.Sprintf("%04d", i); p != want {
					t.Fatalf("pongs %v: out of order at %d", pongs, i)
				}
			}
			if got := strings.Join(subscribed, ","); got != "c0,c1,c2,c3" {
				t.Fatalf("subscribed to %s, want c0,c1,c2,c3 in order", got)
			}
		})
	})
}
