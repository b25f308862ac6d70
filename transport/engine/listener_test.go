package engine_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/sse"
	"github.com/heraldhq/herald/transport/ws"
)

// listenServer is a server whose engine accepts the connections
// (Engine.Listen): /v1/sse and /v1/ws are the engine's, /status, /echo and
// /panic net/http's, and /v1/panic a handler on the engine's path that
// panics. netHTTP counts the connections net/http saw.
type listenServer struct {
	*server
	ln      net.Listener
	netHTTP atomic.Int64
}

func startListenServer(t *testing.T, headerTimeout time.Duration) *listenServer {
	t.Helper()
	return startListenServerWith(t, headerTimeout, 0, nil)
}

// startListenServerWith is startListenServer with handler workers
// (ListenConfig.Workers) and a blocking handler on the engine's path
// /v1/block that returns when block is closed.
func startListenServerWith(t *testing.T, headerTimeout time.Duration, workers int, block chan struct{}) *listenServer {
	t.Helper()
	skipWithoutEpoll(t)
	h := testutil.NewHub(t, hub.Config{})
	e, err := engine.New(engine.Config{})
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
	mux.Handle("/v1/sse", sse.New(h, sse.Config{Engine: e}))
	mux.Handle("/v1/ws", ws.New(h, ws.Config{Engine: e}))
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body) // all of it before answering, as HTTP/1.x handlers must
		w.Write(b)
	})
	mux.HandleFunc("/v1/panic", func(http.ResponseWriter, *http.Request) { panic("handler bug") })
	mux.HandleFunc("/v1/whoami", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s|%s|%s|%v", r.RemoteAddr, r.Host, r.URL.Query().Get("q"), r.Header.Get("X-Name"), r.Header["Host"])
	})
	mux.HandleFunc("/v1/block", func(w http.ResponseWriter, _ *http.Request) {
		<-block
		io.WriteString(w, "unblocked")
	})

	s := &listenServer{}
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.netHTTP.Add(1)
		}
	}
	srv.Listener = e.Listen(srv.Listener, engine.ListenConfig{
		Handler:       mux,
		Paths:         []string{"/v1/sse", "/v1/ws", "/v1/panic", "/v1/block", "/v1/whoami"},
		HeaderTimeout: headerTimeout,
		Workers:       workers,
	})
	s.ln = srv.Listener
	srv.Start()
	t.Cleanup(srv.Close)
	s.server = &server{hub: h, engine: e, addr: srv.Listener.Addr().String()}
	return s
}

// request sends raw bytes on a new connection and returns it with a
// reader.
func (s *listenServer) request(t *testing.T, raw string) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc := s.dial(t)
	if _, err := io.WriteString(nc, raw); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(wait))
	return nc, bufio.NewReader(nc)
}

// TestListenServesHandshakes: subscribe handshakes never reach net/http,
// and their connections behave as on net/http's path.
func TestListenServesHandshakes(t *testing.T) {
	s := startListenServer(t, 0)
	sc := s.dialSSE(t, "channel=a")
	sc.readHead()
	wc := s.dialWS(t, "channel=a", subscribeOp("b"))
	wc.readHead()
	wc.expectSubscribed("a")
	wc.expectSubscribed("b")
	s.waitEngineConns(t, 2)
	s.publish(t, `"x"`, "a")
	sc.expectMessage("a", `"x"`)
	wc.expectMessage("a", `"x"`)
	s.publish(t, `"y"`, "b")
	wc.expectMessage("b", `"y"`)
	if n := s.netHTTP.Load(); n != 0 {
		t.Fatalf("net/http saw %d connections, want 0", n)
	}
}

// TestListenWorkers: with handler workers, a handler that waits (on the
// network, in a cluster) does not hold up other handshakes.
func TestListenWorkers(t *testing.T) {
	block := make(chan struct{})
	var unblock sync.Once
	s := startListenServerWith(t, 0, 2, block)
	// Registered after the server's clean-up, so it runs first: that one
	// waits for the handlers.
	t.Cleanup(func() { unblock.Do(func() { close(block) }) })
	_, blocked := s.request(t, "GET /v1/block HTTP/1.1\r\nHost: x\r\n\r\n")
	c := s.dialSSE(t, "channel=a")
	c.readHead()
	s.waitEngineConns(t, 1)
	unblock.Do(func() { close(block) })
	resp, err := http.ReadResponse(blocked, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "unblocked" {
		t.Fatalf("the blocked handler answered %d %q", resp.StatusCode, body)
	}
}

// TestListenHandsOff: what is not a subscribe handshake the engine can
// serve goes to net/http with the bytes already read, and works there.
func TestListenHandsOff(t *testing.T) {
	s := startListenServer(t, 0)

	t.Run("API request with a body", func(t *testing.T) {
		body := strings.Repeat("b", 20000) // more than the engine reads at once
		resp, err := http.Post("http://"+s.addr+"/echo", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != body {
			t.Fatalf("echo: %d, %d bytes back of %d", resp.StatusCode, len(got), len(body))
		}
	})

	t.Run("HTTP/1.0 subscribe", func(t *testing.T) {
		_, br := s.request(t, "GET /v1/sse?channel=old HTTP/1.0\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("response %v, %v", resp, err)
		}
	})

	// A head larger than the engine reads goes to net/http, which
	// hijacks; WebSocket frames pipelined after it still arrive in order.
	t.Run("large head with pipelined frames", func(t *testing.T) {
		big := "X-Padding: " + strings.Repeat("p", 9000) + "\r\n"
		req := strings.Replace(string(s.wsRequest("channel=c")), "\r\n\r\n", "\r\n"+big+"\r\n", 1)
		nc := s.dial(t)
		if _, err := nc.Write(append([]byte(req), subscribeOp("d")...)); err != nil {
			t.Fatal(err)
		}
		c := &wsClient{t: t, nc: nc, br: bufio.NewReader(nc)}
		c.readHead()
		c.expectSubscribed("c")
		c.expectSubscribed("d")
	})

	t.Run("keep-alive request, then a subscribe", func(t *testing.T) {
		nc, br := s.request(t, "GET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/sse?channel=k HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status: %v, %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		c := &sseClient{t: t, nc: nc, br: br}
		c.readHead()
		s.publish(t, `"k"`, "k")
		c.expectMessage("k", `"k"`)
	})

	if s.netHTTP.Load() == 0 {
		t.Fatal("net/http saw no connection")
	}
}

// TestListenErrorResponse: a handler on the engine's path that answers
// instead of hijacking sends a complete response, then the connection
// ends.
func TestListenErrorResponse(t *testing.T) {
	s := startListenServer(t, 0)
	_, br := s.request(t, "GET /v1/sse HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 400 || !resp.Close || resp.ContentLength != int64(len(body)) ||
		!strings.Contains(string(body), `"invalid_channel"`) {
		t.Fatalf("%d close=%v length=%d %s", resp.StatusCode, resp.Close, resp.ContentLength, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the response: %v, want EOF", err)
	}
	if n := s.netHTTP.Load(); n != 0 {
		t.Fatalf("net/http saw %d connections, want 0", n)
	}
}

// TestListenRequest: a handler on the engine's path gets the request
// net/http would give it — the client's address, the host, the query and
// the headers (without Host, as net/http leaves it) — whether the
// engine's own parser reads the head or http.ReadRequest does (a folded
// header line is beyond the former).
func TestListenRequest(t *testing.T) {
	s := startListenServer(t, 0)
	for _, head := range []string{
		"GET /v1/whoami?q=a%20b HTTP/1.1\r\nHost: example.com\r\nx-name:  Ann \r\n\r\n",
		"GET /v1/whoami?q=a%20b HTTP/1.1\r\nHost: example.com\r\nX-Name: Ann\r\nX-Folded: a\r\n b\r\n\r\n",
	} {
		nc, br := s.request(t, head)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if want := nc.LocalAddr().String() + "|example.com|a b|Ann|[]"; string(body) != want {
			t.Errorf("for %q the handler saw %q, want %q", head, body, want)
		}
	}
	if n := s.netHTTP.Load(); n != 0 {
		t.Fatalf("net/http saw %d connections, want 0", n)
	}
}

// TestListenHeaderTimeout: a client that never finishes its request head
// is closed after the header timeout, and stalls nobody meanwhile.
func TestListenHeaderTimeout(t *testing.T) {
	s := startListenServer(t, 200*time.Millisecond)
	_, slow := s.request(t, "GET /v1/sse?channel=a HTTP/1.1\r\nHo")
	c := s.dialSSE(t, "channel=a")
	c.readHead()
	start := time.Now()
	var ne net.Error
	if _, err := slow.ReadByte(); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("slow client: %v, want EOF", err)
	}
	if d := time.Since(start); d >= wait {
		t.Fatalf("closed after %v", d)
	}
}

// TestListenPanic: a panicking handler on the engine's path closes its
// connection, as net/http does, and the engine goes on serving.
func TestListenPanic(t *testing.T) {
	s := startListenServer(t, 0)
	_, br := s.request(t, "GET /v1/panic HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after a panic: %v, want EOF", err)
	}
	c := s.dialSSE(t, "channel=a")
	c.readHead()
}

// TestListenClose: closing the listener stops accepting, ends Accept and
// closes the handshakes in progress.
func TestListenClose(t *testing.T) {
	s := startListenServer(t, time.Minute)
	_, pending := s.request(t, "GET /v1/sse?channel=a HTTP/1.1\r\n")
	c := s.dialSSE(t, "channel=a")
	c.readHead() // the acceptor has read the pending head by now
	if err := s.ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	if _, err := pending.ReadByte(); err == nil {
		t.Fatal("pending handshake still open")
	}
	if nc, err := net.DialTimeout("tcp", s.addr, wait); err == nil {
		nc.Close()
		t.Fatal("dial after Close succeeded")
	}
	// Attached connections are the engine's, not the listener's.
	s.publish(t, `"z"`, "a")
	c.expectMessage("a", `"z"`)
}

// TestListenHandsOffEarly: bytes that cannot be one of the engine's
// requests go to net/http at once, not after the header timeout: a head
// with bare line feeds, another method, a request without Host.
func TestListenHandsOffEarly(t *testing.T) {
	s := startListenServer(t, time.Minute)
	start := time.Now()
	_, br := s.request(t, "GET /v1/sse?channel=lf HTTP/1.1\nHost: x\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("bare-LF head: %v, %v", resp, err)
	}
	_, br = s.request(t, "GET /v1/sse?channel=a HTTP/1.1\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 400 {
		t.Fatalf("no Host: %v, %v", resp, err)
	}
	s.request(t, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le") // incomplete, and net/http's
	testutil.Eventually(t, wait, func() error {
		if n := s.netHTTP.Load(); n != 3 {
			return fmt.Errorf("net/http saw %d connections, want 3", n)
		}
		return nil
	})
	if d := time.Since(start); d > wait {
		t.Fatalf("took %v", d)
	}
}
