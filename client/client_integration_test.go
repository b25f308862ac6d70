package client

// Integration tests: the client against a real hub and the real SSE,
// WebSocket and publish handlers, over real sockets.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/api"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/sse"
	"github.com/heraldhq/herald/transport/ws"
)

// herald is a Herald server for a test.
type herald struct {
	*httptest.Server
	hub   *hub.Hub
	conns *connTracker
}

// startHerald serves a hub with cfg through the real handlers. The SSE
// retry hint is short so that reconnections are quick.
func startHerald(t *testing.T, cfg hub.Config, apiCfg api.Config) *herald {
	t.Helper()
	h := testutil.NewHub(t, cfg)
	eng := testutil.Engine(t, engine.Config{})
	wsh := ws.New(h, ws.Config{Engine: eng})
	mux := http.NewServeMux()
	mux.Handle("/v1/sse", sse.New(h, sse.Config{Retry: 50 * time.Millisecond, Engine: eng}))
	mux.Handle("/v1/ws", wsh)
	mux.Handle("/", api.New(h, apiCfg))
	srv := httptest.NewUnstartedServer(mux)
	ct := &connTracker{Listener: srv.Listener}
	srv.Listener = ct
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.CloseClientConnections()
		ct.kill() // WebSocket connections are hijacked: the server no longer tracks them
		srv.Close()
		if err := wsh.Shutdown(ctx); err != nil {
			t.Errorf("ws shutdown: %v", err)
		}
	})
	return &herald{Server: srv, hub: h, conns: ct}
}

// connTracker remembers accepted connections so that a test can cut them
// all, hijacked ones included: the engine takes a hijacked socket over
// with a descriptor of its own, so kill shuts the socket itself down
// (through a descriptor kept at accept), not just one descriptor of it.
type connTracker struct {
	net.Listener
	mu    sync.Mutex
	conns []trackedConn // guarded by mu
}

type trackedConn struct {
	net.Conn
	sock socketHandle
}

func (l *connTracker) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, trackedConn{c, holdSocket(c)})
		l.mu.Unlock()
	}
	return c, err
}

// kill cuts every connection accepted so far.
func (l *connTracker) kill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.sock.shutdown()
		_ = c.Close()
	}
	l.conns = nil
}

func (h *herald) publish(t *testing.T, c *Client, data string, channels ...string) []Result {
	t.Helper()
	res, err := c.Publish(context.Background(), Publication{Channels: channels, Type: "test", Data: json.RawMessage(data)})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return res
}

// subscribe starts a subscription closed at the end of the test.
func subscribe(t *testing.T, c *Client, rec *recorder, opts SubscribeOptions) *Subscription {
	t.Helper()
	sub, err := c.Subscribe(context.Background(), rec.options(opts))
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	t.Cleanup(func() { sub.Close() })
	rec.waitConnects(t, 1)
	return sub
}

var transports = []Transport{SSE, WebSocket}

func TestIntegrationPublishReceive(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			srv := startHerald(t, hub.Config{}, api.Config{})
			c := New(srv.URL)
			var rec recorder
			sub := subscribe(t, c, &rec, SubscribeOptions{Channels: []string{"thread:1", "forum:a"}, Transport: tr})

			r1 := srv.publish(t, c, `{"n":1}`, "thread:1", "forum:a")
			srv.publish(t, c, `{"n":2}`, "forum:a")
			srv.publish(t, c, `"<b>&"`, "thread:1", "other")
			if len(r1) != 2 || r1[0].Channel != "thread:1" || r1[0].Offset != 1 || r1[1].Channel != "forum:a" || r1[0].Epoch == "" {
				t.Fatalf("results %+v", r1)
			}
			e1, e2 := r1[0].Epoch, r1[1].Epoch
			rec.waitPositions(t, "thread:1@"+e1+":1", "forum:a@"+e2+":1", "forum:a@"+e2+":2", "thread:1@"+e1+":2")

			rec.mu.Lock()
			ev := rec.events[3]
			if ev.Type != "test" || string(ev.Data) != `"\u003cb\u003e\u0026"` || time.Since(ev.Time) > time.Minute {
				t.Errorf("event %+v", ev)
			}
			rec.mu.Unlock()
			testutil.Eventually(t, time.Second, func() error {
				if got, want := sub.Cursor(), fmt.Sprintf("thread:1@%s:2,forum:a@%s:2", e1, e2); got != want {
					return fmt.Errorf("cursor %q, want %q", got, want)
				}
				return nil
			})
		})
	}
}

func TestIntegrationResumeAfterDroppedConnection(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			srv := startHerald(t, hub.Config{}, api.Config{})
			c := New(srv.URL)
			// The publisher's kept-alive connection must not be cut with
			// the subscriber's.
			pub := New(srv.URL, WithHTTPClient(&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}))
			var rec recorder
			dropped := make(chan struct{}, 10)
			opts := rec.options(SubscribeOptions{Channels: []string{"a", "b"}, Transport: tr, MinBackoff: 200 * time.Millisecond})
			onDisconnect := opts.OnDisconnect
			opts.OnDisconnect = func(err error) { onDisconnect(err); dropped <- struct{}{} }
			sub, err := c.Subscribe(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sub.Close() })
			rec.waitConnects(t, 1)

			ra := srv.publish(t, pub, `1`, "a")
			rb := srv.publish(t, pub, `1`, "b")
			ea, eb := ra[0].Epoch, rb[0].Epoch
			rec.waitPositions(t, "a@"+ea+":1", "b@"+eb+":1")

			srv.CloseClientConnections()
			srv.conns.kill()
			select {
			case <-dropped:
			case <-time.After(5 * time.Second):
				t.Fatal("the client did not notice the dropped connection")
			}
			// Published while the client is away (it waits ≥ 50ms to come back).
			srv.publish(t, pub, `2`, "a")
			srv.publish(t, pub, `2`, "b", "a")
			rec.waitConnects(t, 2)
			srv.publish(t, pub, `3`, "b")

			rec.waitSet(t,
				"a@"+ea+":1", "b@"+eb+":1",
				"a@"+ea+":2", "b@"+eb+":2", "a@"+ea+":3", // replayed: per channel in order
				"b@"+eb+":3", // live
			)
			sub.Close()
			if sub.dupes != 0 {
				t.Errorf("the server sent %d duplicates", sub.dupes)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.gaps) != 0 {
				t.Errorf("gaps %v", rec.gaps)
			}
		})
	}
}

func TestIntegrationGapAfterTrimmedHistory(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			srv := startHerald(t, hub.Config{Namespaces: map[string]hub.NamespaceConfig{"tiny": {HistorySize: 2}}}, api.Config{})
			c := New(srv.URL)

			var rec1 recorder
			sub := subscribe(t, c, &rec1, SubscribeOptions{Channels: []string{"tiny:x", "big"}, Transport: tr})
			rt := srv.publish(t, c, `1`, "tiny:x", "big")
			et, eb := rt[0].Epoch, rt[1].Epoch
			rec1.waitPositions(t, "tiny:x@"+et+":1", "big@"+eb+":1")
			sub.Close()
			cursor := sub.Cursor() // after Close it covers every event delivered

			for i := 2; i <= 5; i++ {
				srv.publish(t, c, fmt.Sprint(i), "tiny:x", "big")
			}
			var rec2 recorder
			sub2 := subscribe(t, c, &rec2, SubscribeOptions{Channels: []string{"tiny:x", "big"}, Transport: tr, Cursor: cursor})
			rec2.waitSet(t, "tiny:x@"+et+":4", "tiny:x@"+et+":5", "big@"+eb+":2", "big@"+eb+":3", "big@"+eb+":4", "big@"+eb+":5")
			rec2.mu.Lock()
			if len(rec2.gaps) != 1 || !slices.Equal(rec2.gaps[0], []string{"tiny:x"}) {
				t.Errorf("gaps %v, want [[tiny:x]]", rec2.gaps)
			}
			rec2.mu.Unlock()
			if want := fmt.Sprintf("tiny:x@%s:5,big@%s:5", et, eb); sub2.Cursor() != want {
				t.Errorf("cursor %q, want %q", sub2.Cursor(), want)
			}
		})
	}
}

func TestIntegrationErrors(t *testing.T) {
	srv := startHerald(t, hub.Config{}, api.Config{})
	c := New(srv.URL)
	ctx := context.Background()
	code := func(err error) string {
		var he *Error
		if !errors.As(err, &he) {
			return fmt.Sprintf("not an *Error: %v", err)
		}
		return fmt.Sprintf("%d %s", he.Status, he.Code)
	}

	_, err := c.Publish(ctx, Publication{Channels: []string{"bad channel"}})
	if got := code(err); got != "400 invalid_channel" {
		t.Errorf("publish to a bad channel: %s", got)
	}
	_, err = c.Publish(ctx, Publication{})
	if got := code(err); got != "400 invalid_channel" && got != "400 invalid_request" {
		t.Errorf("publish to no channel: %s", got)
	}
	_, err = c.Publish(ctx, Publication{Channels: []string{"a"}, Type: "bad type"})
	if got := code(err); got != "400 invalid_request" {
		t.Errorf("publish with a bad type: %s", got)
	}
	for _, tr := range transports {
		_, err = c.Subscribe(ctx, SubscribeOptions{Channels: []string{"bad channel"}, Transport: tr})
		if got := code(err); got != "400 invalid_channel" {
			t.Errorf("%s subscribe to a bad channel: %s", tr, got)
		}
		_, err = c.Subscribe(ctx, SubscribeOptions{Channels: []string{"a"}, Cursor: "nonsense", Transport: tr})
		if got := code(err); got != "400 invalid_cursor" {
			t.Errorf("%s subscribe with a bad cursor: %s", tr, got)
		}
	}

	keyed := startHerald(t, hub.Config{}, api.Config{APIKeys: []string{"secret"}})
	_, err = New(keyed.URL).Publish(ctx, Publication{Channels: []string{"a"}})
	if got := code(err); got != "401 unauthorized" {
		t.Errorf("publish without a key: %s", got)
	}
	_, err = New(keyed.URL, WithAPIKey("wrong")).Publish(ctx, Publication{Channels: []string{"a"}})
	if got := code(err); got != "401 unauthorized" {
		t.Errorf("publish with a wrong key: %s", got)
	}
	if _, err := New(keyed.URL, WithAPIKey("secret")).Publish(ctx, Publication{Channels: []string{"a"}}); err != nil {
		t.Errorf("publish with the key: %v", err)
	}
}

func TestIntegrationIdempotentPublish(t *testing.T) {
	srv := startHerald(t, hub.Config{}, api.Config{})
	c := New(srv.URL)
	var rec recorder
	subscribe(t, c, &rec, SubscribeOptions{Channels: []string{"a"}})
	p := Publication{Channels: []string{"a"}, Data: map[string]int{"n": 1}, IdempotencyKey: "k"}
	r1, err := c.Publish(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.Publish(context.Background(), p)
	if err != nil || !slices.Equal(r1, r2) {
		t.Fatalf("second publish: %v, %v; first %v", r2, err, r1)
	}
	srv.publish(t, c, `2`, "a")
	rec.waitPositions(t, "a@"+r1[0].Epoch+":1", "a@"+r1[0].Epoch+":2")
}

// Every goroutine a subscription starts — its own and its connection's —
// is gone once it is closed and the server is gone.
func TestIntegrationNoGoroutineLeft(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("run", func(t *testing.T) {
		srv := startHerald(t, hub.Config{}, api.Config{})
		c := New(srv.URL, WithHTTPClient(&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}))
		for _, tr := range transports {
			for range 3 {
				var rec recorder
				sub := subscribe(t, c, &rec, SubscribeOptions{Channels: []string{"a"}, Transport: tr, MinBackoff: time.Millisecond})
				srv.publish(t, c, `1`, "a")
				testutil.Eventually(t, 5*time.Second, func() error {
					if len(rec.positions()) == 0 {
						return errors.New("no event")
					}
					return nil
				})
				srv.conns.kill() // make it reconnect once
				rec.waitConnects(t, 2)
				sub.Close()
			}
		}
	})
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			return fmt.Errorf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}
