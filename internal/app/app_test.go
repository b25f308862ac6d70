package app

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/internal/testutil"
)

// testLogger discards logs unless the test runs with -v.
func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

type running struct {
	app  *App
	url  string
	addr string
	done chan error // Run's result
	stop context.CancelFunc
}

// startApp runs an App on a loopback port until the test ends.
func startApp(t *testing.T, cfg config.Config, opts ...Option) *running {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir() // the embedded event queue stores there
	}
	a, err := New(cfg, testLogger(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{app: a, url: "http://" + ln.Addr().String(), addr: ln.Addr().String(), done: make(chan error, 1), stop: cancel}
	go func() { r.done <- a.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return")
		}
	})
	return r
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRoutes(t *testing.T) {
	r := startApp(t, config.Config{Listen: "127.0.0.1:0"}, WithVersion("v0.0.1-test"))
	tests := []struct {
		path   string
		status int
		body   string
	}{
		{"/healthz", 200, `"ok"`},
		{"/readyz", 200, `"ready"`},
		{"/v1/status", 200, `"version":"v0.0.1-test"`},
		{"/metrics", 200, "herald_published_total"},
		{"/v1/sse", 400, httpx.CodeInvalidChannel},
		{"/v1/poll", 400, httpx.CodeInvalidChannel},
		{"/v1/iframe", 400, httpx.CodeInvalidChannel},
		{"/v1/ws?channel=a", 400, `"error"`}, // not an upgrade
		{"/v1/poll?channel=a&callback=alert(1)", 400, httpx.CodeInvalidCallback},
		{"/nope", 404, httpx.CodeNotFound},
		{"/v1/publish", 405, httpx.CodeMethodNotAllowed},
	}
	for _, tt := range tests {
		status, body := get(t, r.url+tt.path)
		if status != tt.status || !strings.Contains(body, tt.body) {
			t.Errorf("GET %s: %d %s, want %d containing %s", tt.path, status, body, tt.status, tt.body)
		}
	}
	resp, err := http.Post(r.url+"/v1/sse?channel=a", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("POST /v1/sse: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

// TestSlowLoris: a client that sends half a header line and stalls is cut
// off after ReadHeaderTimeout, while other clients are served.
func TestSlowLoris(t *testing.T) {
	const timeout = 300 * time.Millisecond
	r := startApp(t, config.Config{}, withReadHeaderTimeout(timeout))

	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	start := time.Now()
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaa"); err != nil {
		t.Fatal(err)
	}

	// Meanwhile a normal request works.
	if status, _ := get(t, r.url+"/healthz"); status != 200 {
		t.Fatalf("normal request: %d", status)
	}

	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, conn) // until the server closes
	elapsed := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", elapsed)
	}
	if elapsed < timeout-50*time.Millisecond || elapsed > timeout+3*time.Second {
		t.Fatalf("closed after %v (read %d bytes), want about %v", elapsed, n, timeout)
	}
}

// TestShutdownDeadline: a request that does not finish in time is cut and
// Shutdown returns the context's error within the deadline.
func TestShutdownDeadline(t *testing.T) {
	r := startApp(t, config.Config{})
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// A publish whose body never fully arrives keeps its handler busy.
	fmt.Fprintf(conn, "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"chan")
	// Whether or not the server has read its headers yet, the connection
	// is not idle (a new connection counts as active for its first 5s), so
	// a graceful Shutdown cannot finish before its deadline. A second
	// request shows the server is up.
	if status, _ := get(t, r.url+"/healthz"); status != 200 {
		t.Fatalf("healthz %d", status)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = r.app.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	// The stuck connection was closed.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("stuck connection still open")
		}
	}
	// Later calls return the first result at once.
	if err := r.app.Shutdown(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Shutdown: %v", err)
	}
}

// TestShutdown: concurrent Shutdowns agree, WebSocket clients get 1012,
// /readyz turns 503, Run returns nil, and Run cannot start again.
func TestShutdown(t *testing.T) {
	r := startApp(t, config.Config{})
	wsURL := "ws" + strings.TrimPrefix(r.url, "http") + "/v1/ws?channel=a"
	c, resp, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	t.Cleanup(func() { c.Close() })
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				closed <- err
				return
			}
		}
	}()
	testutil.Eventually(t, 2*time.Second, func() error {
		if n := r.app.Hub().Stats().ByTransport["ws"]; n != 1 {
			return fmt.Errorf("%d ws connections", n)
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- r.app.Shutdown(ctx) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	}
	select {
	case err := <-closed:
		if !websocket.IsCloseError(err, websocket.CloseServiceRestart) {
			t.Fatalf("ws ended with %v, want close 1012", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ws not closed")
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		r.done <- nil // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}

	rec := httptest.NewRecorder()
	r.app.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), httpx.CodeShuttingDown) {
		t.Fatalf("readyz after shutdown: %d %s", rec.Code, rec.Body)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.app.Run(context.Background(), ln); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Shutdown: %v", err)
	}
}

// TestShutdownWithoutRun releases the hub of an app that never served.
func TestShutdownWithoutRun(t *testing.T) {
	a, err := New(config.Config{DataDir: t.TempDir()}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !a.Hub().ShuttingDown() {
		t.Fatal("hub still running")
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	_, err := New(config.Config{LogFormat: "xml", Listen: "nowhere"}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "log_format") || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("got %v", err)
	}
}

func TestOriginChecker(t *testing.T) {
	if originChecker(nil) != nil || originChecker([]string{"https://a.com", "*"}) != nil {
		t.Fatal("empty list or * must allow any origin")
	}
	check := originChecker([]string{"https://app.example.com", "https://*.example.org", "HTTP://Local:8080/"})
	for origin, want := range map[string]bool{
		"":                             true, // not a browser
		"https://app.example.com":      true,
		"https://APP.example.com":      true,
		"http://app.example.com":       false,
		"https://evil.com":             false,
		"https://x.example.org":        true,
		"https://a.b.example.org:8443": true,
		"https://example.org":          false,
		"https://evilexample.org":      false,
		"http://x.example.org":         false,
		"http://local:8080":            true,
		"http://local:8081":            false,
	} {
		req := httptest.NewRequest("GET", "/v1/ws", nil)
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if got := check(req); got != want {
			t.Errorf("origin %q: %v, want %v", origin, got, want)
		}
	}
}

// readLines sends the lines of r to a channel, closed at EOF or error.
func readLines(r io.Reader) <-chan string {
	ch := make(chan string, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}

// TestStatusReportsEngine: SSE connections run on the engine (epoll by
// default), and /v1/status says so, with their count and the goroutine
// count that shows no goroutine per connection.
func TestStatusReportsEngine(t *testing.T) {
	r := startApp(t, config.Config{Listen: "127.0.0.1:0"})
	var before struct {
		Goroutines int `json:"goroutines"`
	}
	_, body := get(t, r.url+"/v1/status")
	if err := json.Unmarshal([]byte(body), &before); err != nil {
		t.Fatal(err)
	}
	const conns = 200
	for range conns {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, "GET /v1/sse?channel=a HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	var st struct {
		Goroutines int `json:"goroutines"`
		Engine     *struct {
			Mode        string `json:"mode"`
			Connections int    `json:"connections"`
		} `json:"engine"`
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		_, body := get(t, r.url+"/v1/status")
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err
		}
		if st.Engine == nil || st.Engine.Connections != conns {
			return fmt.Errorf("status %s: want %d engine connections", body, conns)
		}
		return nil
	})
	if st.Engine.Mode != "epoll" {
		t.Errorf("engine mode %q, want epoll", st.Engine.Mode)
	}
	// The server's own goroutines (the embedded NATS server has a few
	// dozen) do not grow with the connections.
	if grown := st.Goroutines - before.Goroutines; grown >= 10 {
		t.Errorf("%d goroutines more with %d idle connections (%d before): want none per connection",
			grown, conns, before.Goroutines)
	}
}
