package client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"
)

func TestSSEStreamAndResume(t *testing.T) {
	srv := newScriptServer(t,
		func(w http.ResponseWriter, r *http.Request) {
			// CRLF line ends, a data field split over two lines, comments.
			stream(w,
				"retry: 20\r\n\r\n",
				":\r\n\r\n",
				"id: a@e1:0,b@e2:3\r\n\r\n",
				"id: a@e1:1,b@e2:3\r\nevent: t\r\ndata: {\"channel\":\"a\",\"epoch\":\"e1\",\r\n",
				"data: \"offset\":1,\"type\":\"t\",\"data\":{\"n\":1},\"time\":\"2026-11-21T10:00:00.000Z\"}\r\n\r\n",
				": heartbeat\n\n",
				sseFrame("a@e1:1,b@e2:4", "b", "e2", 4, "message", `"text"`),
			)
			// The server drops the connection.
		},
		func(w http.ResponseWriter, r *http.Request) {
			stream(w,
				"retry: 20\n\n",
				"event: gap\ndata: {\"channels\":[\"a\"]}\n\n",
				sseFrame("a@e9:1,b@e2:4", "a", "e9", 1, "t", `{"n":2}`),
				"id: a@e9:1,b@e2:4\n\n",
				sseFrame("a@e9:1,b@e2:4", "b", "e2", 4, "message", `"text"`), // already seen
				sseFrame("a@e9:1,b@e2:5", "b", "e2", 5, "message", `"more"`),
			)
			hang(w, r)
		},
	)
	var rec recorder
	c := New(srv.URL)
	sub, err := c.Subscribe(context.Background(), rec.options(SubscribeOptions{Channels: []string{"a", "b"}, MinBackoff: time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	rec.waitPositions(t, "a@e1:1", "b@e2:4", "a@e9:1", "b@e2:5")
	rec.waitConnects(t, 2)

	first, second := srv.request(t, 0), srv.request(t, 1)
	if first.Header.Get("Last-Event-ID") != "" || first.URL.Query().Get("cursor") != "" {
		t.Errorf("first request has a cursor: %v", first.URL)
	}
	if got := first.URL.Query()["channel"]; !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("channels = %v", got)
	}
	if got := second.Header.Get("Last-Event-ID"); got != "a@e1:1,b@e2:4" {
		t.Errorf("Last-Event-ID on reconnect = %q, want a@e1:1,b@e2:4", got)
	}
	if got := second.URL.Query().Get("cursor"); got != "a@e1:1,b@e2:4" {
		t.Errorf("cursor= on reconnect = %q", got)
	}
	if got := sub.Cursor(); got != "a@e9:1,b@e2:5" {
		t.Errorf("Cursor() = %q", got)
	}

	rec.mu.Lock()
	ev := rec.events[0]
	if ev.Type != "t" || string(ev.Data) != `{"n":1}` || !ev.Time.Equal(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("first event %+v", ev)
	}
	if ev := rec.events[1]; ev.Type != "message" || string(ev.Data) != `"text"` {
		t.Errorf("second event %+v", ev)
	}
	if len(rec.gaps) != 1 || !slices.Equal(rec.gaps[0], []string{"a"}) {
		t.Errorf("gaps = %v", rec.gaps)
	}
	if len(rec.disconnects) != 1 {
		t.Errorf("disconnects = %v", rec.disconnects)
	}
	rec.mu.Unlock()

	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Err(); err != nil {
		t.Errorf("Err after Close = %v", err)
	}
	if sub.dupes != 1 {
		t.Errorf("dupes = %d, want 1", sub.dupes)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if n := len(rec.disconnects); n != 2 || !errors.Is(rec.disconnects[1], ErrClosed) {
		t.Errorf("disconnects = %v, want a second one with ErrClosed", rec.disconnects)
	}
}

func TestSSEServerRetryHint(t *testing.T) {
	srv := newScriptServer(t,
		func(w http.ResponseWriter, r *http.Request) { stream(w, "retry: 300\n\nid: a@e:0\n\n") },
		func(w http.ResponseWriter, r *http.Request) { stream(w, "id: a@e:0\n\n"); hang(w, r) },
	)
	var rec recorder
	var dropped time.Time
	opts := rec.options(SubscribeOptions{Channels: []string{"a"}, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	opts.OnDisconnect = func(error) { dropped = time.Now() }
	sub, err := New(srv.URL).Subscribe(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	srv.request(t, 1)
	rec.waitConnects(t, 2)
	if waited := time.Since(dropped); waited < 150*time.Millisecond {
		t.Errorf("reconnected after %v; the server asked for 300ms (jittered down to 150ms at least)", waited)
	}
}

func TestSubscribeErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("first attempt refused", func(t *testing.T) {
		srv := newScriptServer(t, httpError(400, "invalid_channel"))
		_, err := New(srv.URL).Subscribe(ctx, SubscribeOptions{Channels: []string{"a"}})
		var he *Error
		if !errors.As(err, &he) || he.Status != 400 || he.Code != "invalid_channel" || he.Message != "test invalid channel" {
			t.Fatalf("err = %#v", err)
		}
	})
	t.Run("first attempt network error", func(t *testing.T) {
		srv := newScriptServer(t, hang)
		url := srv.URL
		srv.Close()
		if _, err := New(url).Subscribe(ctx, SubscribeOptions{Channels: []string{"a"}}); err == nil {
			t.Fatal("no error")
		}
	})
	t.Run("4xx on reconnect ends it", func(t *testing.T) {
		srv := newScriptServer(t,
			func(w http.ResponseWriter, r *http.Request) { stream(w, "id: a@e:1\n\n") },
			httpError(403, "forbidden"),
		)
		sub, err := New(srv.URL).Subscribe(ctx, SubscribeOptions{Channels: []string{"a"}, MinBackoff: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		<-sub.Done()
		var he *Error
		if !errors.As(sub.Err(), &he) || he.Code != "forbidden" {
			t.Fatalf("Err = %v", sub.Err())
		}
		if n := srv.count(); n != 2 {
			t.Errorf("%d requests, want 2", n)
		}
	})
	t.Run("5xx on reconnect is retried", func(t *testing.T) {
		srv := newScriptServer(t,
			func(w http.ResponseWriter, r *http.Request) { stream(w, "id: a@e:1\n\n") },
			httpError(503, "shutting_down"),
			func(w http.ResponseWriter, r *http.Request) { stream(w, "id: a@e:1\n\n"); hang(w, r) },
		)
		var rec recorder
		sub, err := New(srv.URL).Subscribe(ctx, rec.options(SubscribeOptions{Channels: []string{"a"}, MinBackoff: time.Millisecond}))
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		rec.waitConnects(t, 2)
		if got := srv.request(t, 2).Header.Get("Last-Event-ID"); got != "a@e:1" {
			t.Errorf("Last-Event-ID = %q", got)
		}
	})
	t.Run("NoReconnect", func(t *testing.T) {
		srv := newScriptServer(t, func(w http.ResponseWriter, r *http.Request) { stream(w, "id: a@e:1\n\n") })
		sub, err := New(srv.URL).Subscribe(ctx, SubscribeOptions{Channels: []string{"a"}, NoReconnect: true})
		if err != nil {
			t.Fatal(err)
		}
		<-sub.Done()
		if sub.Err() == nil {
			t.Error("Err = nil, want why the stream ended")
		}
		if n := srv.count(); n != 1 {
			t.Errorf("%d requests, want 1", n)
		}
	})
	t.Run("context ends it", func(t *testing.T) {
		srv := newScriptServer(t, func(w http.ResponseWriter, r *http.Request) { stream(w, "id: a@e:1\n\n"); hang(w, r) })
		ctx, cancel := context.WithCancel(ctx)
		sub, err := New(srv.URL).Subscribe(ctx, SubscribeOptions{Channels: []string{"a"}})
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		<-sub.Done()
		if !errors.Is(sub.Err(), context.Canceled) {
			t.Errorf("Err = %v", sub.Err())
		}
	})
	t.Run("not an event stream", func(t *testing.T) {
		srv := newScriptServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) })
		_, err := New(srv.URL).Subscribe(ctx, SubscribeOptions{Channels: []string{"a"}})
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("bad options", func(t *testing.T) {
		c := New("http://127.0.0.1:1")
		for _, o := range []SubscribeOptions{{}, {Channels: []string{"a"}, Transport: "x"}, {Channels: []string{"a"}, LocalAddr: "nope"}} {
			if _, err := c.Subscribe(ctx, o); err == nil {
				t.Errorf("%+v: no error", o)
			}
		}
	})
}

func TestSubscribeLocalAddr(t *testing.T) {
	for _, tr := range []Transport{SSE, WebSocket} {
		t.Run(string(tr), func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.2:0")
			if err != nil {
				t.Skipf("cannot bind 127.0.0.2: %v", err)
			}
			l.Close()
			srv := newScriptServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusTeapot)
			})
			_, err = New(srv.URL).Subscribe(context.Background(), SubscribeOptions{Channels: []string{"a"}, LocalAddr: "127.0.0.2", Transport: tr})
			var he *Error
			if !errors.As(err, &he) || he.Status != http.StatusTeapot {
				t.Fatalf("err = %v", err)
			}
			if host, _, _ := net.SplitHostPort(srv.request(t, 0).RemoteAddr); host != "127.0.0.2" {
				t.Errorf("connected from %s, want 127.0.0.2", host)
			}
		})
	}
}
