package client

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wsScript upgrades the request and runs fn on the connection while a
// reader answers the client's control frames; it closes the connection
// when fn returns.
func wsScript(t *testing.T, fn func(conn *websocket.Conn, closed <-chan error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		defer conn.Close()
		closed := make(chan error, 1)
		go func() {
			for {
				if _, _, err := conn.ReadMessage(); err != nil {
					closed <- err
					return
				}
			}
		}()
		fn(conn, closed)
	}
}

func send(t *testing.T, conn *websocket.Conn, frames ...string) {
	t.Helper()
	for _, f := range frames {
		if err := conn.WriteMessage(websocket.TextMessage, []byte(f)); err != nil {
			t.Errorf("write: %v", err)
		}
	}
}

func closeWith(conn *websocket.Conn, code int) {
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, "test"), time.Now().Add(time.Second))
}

func TestWebSocketStreamAndResume(t *testing.T) {
	clientClosed := make(chan error, 1)
	srv := newScriptServer(t,
		wsScript(t, func(conn *websocket.Conn, _ <-chan error) {
			send(t, conn,
				`{"control":"subscribed","channels":["a","b"],"cursor":"a@e1:0,b@e2:7"}`,
				envelopeFor("a", "e1", 1, "t", `{"n":1}`),
			)
			_ = conn.WriteMessage(websocket.BinaryMessage, []byte{1, 2}) // ignored
			send(t, conn,
				`{"control":"error","code":"invalid_request","message":"x"}`, // ignored
				envelopeFor("b", "e2", 8, "message", `"x"`),
			)
			closeWith(conn, 4008) // slow consumer: come back with the cursor
		}),
		wsScript(t, func(conn *websocket.Conn, _ <-chan error) {
			send(t, conn,
				`{"control":"gap","channels":["a"]}`,
				envelopeFor("a", "e3", 1, "t", `{"n":2}`),
				`{"control":"subscribed","channels":["a"],"cursor":"a@e3:1"}`,
				`{"control":"subscribed","channels":["b"],"cursor":"b@e2:8"}`,
				envelopeFor("a", "e3", 1, "t", `{"n":2}`), // duplicate
				envelopeFor("a", "e3", 2, "t", `{"n":3}`),
			)
			closeWith(conn, websocket.CloseServiceRestart)
		}),
		wsScript(t, func(conn *websocket.Conn, closed <-chan error) {
			send(t, conn, `{"control":"subscribed","channels":["a","b"],"cursor":"a@e3:2,b@e2:8"}`)
			// The client must answer pings.
			pong := make(chan struct{}, 1)
			conn.SetPongHandler(func(string) error { pong <- struct{}{}; return nil })
			_ = conn.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(time.Second))
			select {
			case <-pong:
			case <-time.After(5 * time.Second):
				t.Error("no pong")
			}
			clientClosed <- <-closed
		}),
	)
	var rec recorder
	sub, err := New(srv.URL).Subscribe(context.Background(), rec.options(SubscribeOptions{
		Channels: []string{"a", "b"}, Transport: WebSocket, MinBackoff: time.Millisecond,
	}))
	if err != nil {
		t.Fatal(err)
	}
	rec.waitPositions(t, "a@e1:1", "b@e2:8", "a@e3:1", "a@e3:2")
	rec.waitConnects(t, 3)
	if got := srv.request(t, 1).URL.Query().Get("cursor"); got != "a@e1:1,b@e2:8" {
		t.Errorf("cursor on the 1st reconnect = %q", got)
	}
	if got := srv.request(t, 2).URL.Query().Get("cursor"); got != "a@e3:2,b@e2:8" {
		t.Errorf("cursor on the 2nd reconnect = %q", got)
	}
	if got := srv.request(t, 0).URL.Path; got != "/v1/ws" {
		t.Errorf("path = %q", got)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	var ce *websocket.CloseError
	if err := <-clientClosed; !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
		t.Errorf("server saw %v, want a 1000 close", err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.gaps) != 1 || !slices.Equal(rec.gaps[0], []string{"a"}) {
		t.Errorf("gaps = %v", rec.gaps)
	}
	if ev := rec.events[0]; ev.Type != "t" || string(ev.Data) != `{"n":1}` || ev.Time.IsZero() {
		t.Errorf("first event %+v", ev)
	}
	if sub.dupes != 1 {
		t.Errorf("dupes = %d, want 1", sub.dupes)
	}
}

func TestWebSocketCloseCodes(t *testing.T) {
	for _, tt := range []struct {
		code      int
		reconnect bool
	}{
		{websocket.ClosePolicyViolation, false},
		{websocket.CloseUnsupportedData, false},
		{websocket.CloseNormalClosure, false},
		{websocket.CloseGoingAway, true},
		{websocket.CloseServiceRestart, true},
		{4008, true},
	} {
		srv := newScriptServer(t,
			wsScript(t, func(conn *websocket.Conn, _ <-chan error) { closeWith(conn, tt.code) }),
			wsScript(t, func(conn *websocket.Conn, closed <-chan error) { <-closed }),
		)
		sub, err := New(srv.URL).Subscribe(context.Background(), SubscribeOptions{
			Channels: []string{"a"}, Transport: WebSocket, MinBackoff: time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		if tt.reconnect {
			srv.request(t, 1)
			sub.Close()
			continue
		}
		<-sub.Done()
		var ce *websocket.CloseError
		if !errors.As(sub.Err(), &ce) || ce.Code != tt.code {
			t.Errorf("code %d: Err = %v", tt.code, sub.Err())
		}
		if n := srv.count(); n != 1 {
			t.Errorf("code %d: %d connections, want 1", tt.code, n)
		}
	}
}

func TestWebSocketRefused(t *testing.T) {
	srv := newScriptServer(t, httpError(429, "too_many_connections_from_ip"))
	_, err := New(srv.URL).Subscribe(context.Background(), SubscribeOptions{Channels: []string{"a"}, Transport: WebSocket})
	var he *Error
	if !errors.As(err, &he) || he.Status != 429 || he.Code != "too_many_connections_from_ip" {
		t.Fatalf("err = %v", err)
	}
}
