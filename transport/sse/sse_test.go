package sse_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/sse"
)

// waitFor bounds every wait on the stream, so that a broken test fails
// instead of hanging.
const waitFor = 5 * time.Second

type server struct {
	hub    *hub.Hub
	url    string
	client *http.Client
}

// startServer runs the SSE handler over a real hub on a real socket.
func startServer(t *testing.T, hcfg hub.Config, cfg sse.Config) *server {
	t.Helper()
	h := testutil.NewHub(t, hcfg)
	cfg.Engine = testutil.Engine(t, engine.Config{Heartbeat: cfg.Heartbeat, WriteTimeout: cfg.WriteTimeout})
	handler := sse.New(h, cfg)
	srv := httptest.NewUnstartedServer(handler)
	srv.Listener = testutil.Listen(cfg.Engine, srv.Listener, handler, "/v1/sse")
	srv.Start()
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &server{hub: h, url: srv.URL + "/v1/sse", client: &http.Client{Transport: tr}}
}

// event is one SSE event block as a browser parses it.
type event struct {
	ID      string
	HasID   bool
	Event   string
	Data    string
	Retry   string
	Comment bool
}

func (e event) isMessage() bool { return e.Data != "" && e.Event != "gap" }

// readEvent reads one event block (fields up to a blank line). A block cut
// short by the end of the stream is dropped, as a browser drops it.
func readEvent(r *bufio.Reader) (event, error) {
	var ev event
	seen := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return event{}, err
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
			ev.ID, ev.HasID = value, true
		case "event":
			ev.Event = value
		case "data":
			if ev.Data != "" {
				ev.Data += "\n"
			}
			ev.Data += value
		case "retry":
			ev.Retry = value
		}
	}
}

// stream is an open SSE response read by a goroutine of its own, which
// stops when the test ends.
type stream struct {
	t      *testing.T
	resp   *http.Response
	events chan event
	err    error // why the stream ended; set before events is closed
}

// subscribe opens an SSE stream and checks that it started.
func (s *server) subscribe(t *testing.T, query string, hdr http.Header) *stream {
	t.Helper()
	resp := s.get(t, query, hdr)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET ?%s: status %d: %s", query, resp.StatusCode, b)
	}
	for k, v := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	st := &stream{t: t, resp: resp, events: make(chan event, 256)}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		defer close(st.events)
		br := bufio.NewReader(resp.Body)
		for {
			ev, err := readEvent(br)
			if err != nil {
				st.err = err
				return
			}
			select {
			case st.events <- ev:
			case <-done:
				st.err = errors.New("test ended")
				return
			}
		}
	}()
	t.Cleanup(func() {
		resp.Body.Close()
		close(done)
		<-exited
	})
	return st
}

func (s *server) get(t *testing.T, query string, hdr http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.url+"?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// next returns the next event, heartbeats included.
func (st *stream) next() event {
	st.t.Helper()
	select {
	case ev, ok := <-st.events:
		if !ok {
			st.t.Fatalf("stream ended: %v", st.err)
		}
		return ev
	case <-time.After(waitFor):
		st.t.Fatalf("no event within %v", waitFor)
	}
	panic("unreachable")
}

// nextNonHeartbeat skips heartbeat comments.
func (st *stream) nextNonHeartbeat() event {
	st.t.Helper()
	for {
		if ev := st.next(); !ev.Comment || ev.HasID || ev.Data != "" || ev.Retry != "" {
			return ev
		}
	}
}

// start reads the opening retry hint and the post-replay id, returning
// the messages and gaps in between.
func (st *stream) start() (before []event, id string) {
	st.t.Helper()
	if ev := st.next(); ev.Retry != "2000" {
		st.t.Fatalf("first event = %+v, want retry: 2000", ev)
	}
	for {
		ev := st.nextNonHeartbeat()
		if ev.HasID && ev.Data == "" {
			return before, ev.ID
		}
		before = append(before, ev)
	}
}

// end waits for the stream to end and returns why it ended, with the
// events that came before.
func (st *stream) end() ([]event, error) {
	st.t.Helper()
	var evs []event
	timeout := time.After(waitFor)
	for {
		select {
		case ev, ok := <-st.events:
			if !ok {
				return evs, st.err
			}
			evs = append(evs, ev)
		case <-timeout:
			st.t.Fatalf("stream still open after %v", waitFor)
		}
	}
}

type envelope struct {
	Channel string          `json:"channel"`
	Epoch   string          `json:"epoch"`
	Offset  uint64          `json:"offset"`
	Type    string          `json:"type"`
	Data    json.RawMessage `json:"data"`
	Time    string          `json:"time"`
}

func decode(t *testing.T, ev event) envelope {
	t.Helper()
	var env envelope
	if err := json.Unmarshal([]byte(ev.Data), &env); err != nil {
		t.Fatalf("event data %q: %v", ev.Data, err)
	}
	if env.Type != ev.Event {
		t.Errorf("event: %q, envelope type %q", ev.Event, env.Type)
	}
	return env
}

// expectMessages reads messages and checks their channels and data.
func (st *stream) expectMessages(want ...string) []event {
	st.t.Helper()
	var got []event
	for _, w := range want {
		ev := st.nextNonHeartbeat()
		env := decode(st.t, ev)
		if s := env.Channel + "=" + string(env.Data); s != w {
			st.t.Fatalf("message = %s (offset %d), want %s", s, env.Offset, w)
		}
		got = append(got, ev)
	}
	return got
}

func publish(t *testing.T, h *hub.Hub, typ, data string, channels ...string) []hub.PublishResult {
	t.Helper()
	res, err := h.Publish(context.Background(), hub.Publication{Channels: channels, Type: typ, Data: json.RawMessage(data)})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return res
}

func cursorOf(res ...hub.PublishResult) string {
	var parts []string
	for _, r := range res {
		parts = append(parts, fmt.Sprintf("%s@%s:%d", r.Channel, r.Epoch, r.Offset))
	}
	return strings.Join(parts, ",")
}

func TestPublishReachesSubscriber(t *testing.T) {
	s := startServer(t, hub.Config{}, sse.Config{})
	st := s.subscribe(t, "channel=thread:42", nil)
	replayed, id := st.start()
	if len(replayed) != 0 {
		t.Fatalf("replay without cursor: %+v", replayed)
	}
	epoch := s.hub.Channel("thread:42").History.Epoch
	if want := "thread:42@" + epoch + ":0"; id != want {
		t.Fatalf("initial id = %q, want %q", id, want)
	}

	res := publish(t, s.hub, "post.created", `{"id":"p<981>"}`, "thread:42")
	publish(t, s.hub, "", `"plain"`, "thread:42")

	ev := st.nextNonHeartbeat()
	if ev.Event != "post.created" || ev.ID != cursorOf(res...) {
		t.Fatalf("event = %+v, want post.created with id %s", ev, cursorOf(res...))
	}
	env := decode(t, ev)
	if env.Channel != "thread:42" || env.Offset != 1 || env.Epoch != epoch || string(env.Data) != `{"id":"p\u003c981\u003e"}` {
		t.Fatalf("envelope = %+v", env)
	}
	if _, err := time.Parse(hub.TimeLayout, env.Time); err != nil {
		t.Fatalf("time %q: %v", env.Time, err)
	}
	if ev := st.nextNonHeartbeat(); ev.Event != "message" || decode(t, ev).Offset != 2 {
		t.Fatalf("untyped message = %+v, want event: message at offset 2", ev)
	}
	testutil.Eventually(t, waitFor, func() error {
		if st := s.hub.Stats(); st.Delivered != 2 || st.ByTransport[sse.TransportName] != 1 {
			return fmt.Errorf("stats: delivered %d, sse connections %d", st.Delivered, st.ByTransport[sse.TransportName])
		}
		return nil
	})
}

func TestSeveralChannelsOnOneConnection(t *testing.T) {
	s := startServer(t, hub.Config{}, sse.Config{})
	st := s.subscribe(t, "channel=thread:1&channel=forum:tech&channel=thread:1", nil)
	_, id := st.start()
	want := parseCursor(t, id)
	if len(want) != 2 || want["thread:1"] == "" || want["forum:tech"] == "" {
		t.Fatalf("initial id %q, want both channels", id)
	}

	var results []hub.PublishResult
	results = append(results, publish(t, s.hub, "t", `1`, "thread:1")...)
	results = append(results, publish(t, s.hub, "t", `2`, "forum:tech")...)
	results = append(results, publish(t, s.hub, "t", `3`, "thread:1", "forum:tech", "elsewhere")[:2]...)

	evs := st.expectMessages("thread:1=1", "forum:tech=2", "thread:1=3", "forum:tech=3")
	for i, ev := range evs {
		// Each id holds every channel of the connection at its latest position.
		r := results[i]
		want[r.Channel] = fmt.Sprintf("%s:%d", r.Epoch, r.Offset)
		if got := parseCursor(t, ev.ID); !maps.Equal(got, want) {
			t.Errorf("event %d id = %v, want %v", i, got, want)
		}
	}
}

// parseCursor splits a cursor into channel → "epoch:offset".
func parseCursor(t *testing.T, s string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		ch, pos, ok := strings.Cut(part, "@")
		if !ok {
			t.Fatalf("bad cursor %q", s)
		}
		m[ch] = pos
	}
	return m
}

func sameCursor(t *testing.T, a, b string) bool {
	return maps.Equal(parseCursor(t, a), parseCursor(t, b))
}

// TestResumeWithoutLossOrDuplicate disconnects a client part-way through two
// channels, publishes while it is away, and checks that it gets exactly the
// missed messages, then live ones — with the cursor as Last-Event-ID (what
// browsers send) and as cursor=.
func TestResumeWithoutLossOrDuplicate(t *testing.T) {
	for _, via := range []string{"Last-Event-ID", "cursor", "Last-Event-ID-wins"} {
		t.Run(via, func(t *testing.T) {
			s := startServer(t, hub.Config{}, sse.Config{})
			const q = "channel=a&channel=b"
			first := s.subscribe(t, q, nil)
			first.start()
			publish(t, s.hub, "t", `1`, "a")
			publish(t, s.hub, "t", `1`, "b")
			publish(t, s.hub, "t", `2`, "a", "b")
			evs := first.expectMessages("a=1", "b=1", "a=2", "b=2")
			last := evs[2].ID // stop after a=2: b=2 was sent but is "lost"
			first.resp.Body.Close()

			publish(t, s.hub, "t", `3`, "b")
			publish(t, s.hub, "t", `4`, "a")

			var second *stream
			switch via {
			case "Last-Event-ID":
				second = s.subscribe(t, q, http.Header{"Last-Event-Id": {last}})
			case "cursor":
				second = s.subscribe(t, q+"&cursor="+url.QueryEscape(last), nil)
			case "Last-Event-ID-wins":
				// A browser reconnects to the URL it started with (a stale
				// cursor=) and adds where it really is as Last-Event-ID.
				stale := strings.ReplaceAll(last, ":2", ":1")
				second = s.subscribe(t, q+"&cursor="+stale, http.Header{"Last-Event-Id": {last}})
			}
			replayed, id := second.start()
			got := ""
			for _, ev := range replayed {
				env := decode(t, ev)
				got += fmt.Sprintf("%s=%s ", env.Channel, env.Data)
			}
			// a after 2: a=4; b after 1: b=2, b=3. Channels replay in
			// request order.
			if want := "a=4 b=2 b=3 "; got != want {
				t.Fatalf("replayed %q, want %q", got, want)
			}
			if want := replayed[len(replayed)-1].ID; !sameCursor(t, id, want) {
				t.Fatalf("id after replay = %q, want %q", id, want)
			}
			publish(t, s.hub, "t", `5`, "b")
			second.expectMessages("b=5")
		})
	}
}

func TestGapComesBeforeReplay(t *testing.T) {
	hcfg := hub.Config{Namespaces: map[string]hub.NamespaceConfig{"small": {HistorySize: 2}}}

	t.Run("history trimmed", func(t *testing.T) {
		s := startServer(t, hcfg, sse.Config{})
		var res []hub.PublishResult
		for i := 1; i <= 5; i++ {
			res = append(res, publish(t, s.hub, "t", strconv.Itoa(i), "small:x")...)
		}
		other := publish(t, s.hub, "t", `9`, "big")
		st := s.subscribe(t, "channel=small:x&channel=big&cursor="+cursorOf(res[0], other[0]), nil)
		replayed, id := st.start()
		if len(replayed) != 3 || replayed[0].Event != "gap" || replayed[0].Data != `{"channels":["small:x"]}` || replayed[0].HasID {
			t.Fatalf("replay = %+v, want gap for small:x then 2 messages", replayed)
		}
		for i, want := range []uint64{4, 5} {
			if env := decode(t, replayed[i+1]); env.Channel != "small:x" || env.Offset != want {
				t.Fatalf("replayed %d = %+v, want small:x offset %d", i, env, want)
			}
		}
		if want := cursorOf(res[4], other[0]); !sameCursor(t, id, want) {
			t.Fatalf("id = %q, want %q", id, want)
		}
	})

	t.Run("unknown epoch", func(t *testing.T) {
		s := startServer(t, hcfg, sse.Config{})
		publish(t, s.hub, "t", `1`, "c")
		st := s.subscribe(t, "channel=c", http.Header{"Last-Event-Id": {"c@gone:7"}})
		replayed, _ := st.start()
		if len(replayed) != 2 || replayed[0].Event != "gap" || replayed[0].Data != `{"channels":["c"]}` {
			t.Fatalf("replay = %+v, want gap for c then offset 1", replayed)
		}
		if env := decode(t, replayed[1]); env.Offset != 1 {
			t.Fatalf("replayed %+v, want offset 1", env)
		}
	})
}

func TestBadRequestsGetJSONErrors(t *testing.T) {
	s := startServer(t, hub.Config{MaxChannelsPerSession: 2}, sse.Config{})
	cases := []struct {
		name, method, query string
		hdr                 http.Header
		status              int
		code                string
	}{
		{"no channel", "GET", "", nil, 400, httpx.CodeInvalidChannel},
		{"bad channel", "GET", "channel=a&channel=no%20spaces", nil, 400, httpx.CodeInvalidChannel},
		{"bad cursor", "GET", "channel=a&cursor=a@e", nil, 400, httpx.CodeInvalidCursor},
		{"bad Last-Event-ID", "GET", "channel=a", http.Header{"Last-Event-Id": {"nonsense"}}, 400, httpx.CodeInvalidCursor},
		{"too many channels", "GET", "channel=a&channel=b&channel=c", nil, 429, httpx.CodeTooManyChannels},
		{"POST", "POST", "channel=a", nil, 405, httpx.CodeMethodNotAllowed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), c.method, s.url+"?"+c.query, nil)
			for k, v := range c.hdr {
				req.Header[k] = v
			}
			resp, err := s.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body httpx.ErrorBody
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("body: %v", err)
			}
			if resp.StatusCode != c.status || body.Error.Code != c.code || body.Error.Message == "" ||
				resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("got %d %+v (%s), want %d %s", resp.StatusCode, body, resp.Header.Get("Content-Type"), c.status, c.code)
			}
		})
	}
	if n := s.hub.Stats().Connections; n != 0 {
		t.Fatalf("%d sessions left open by rejected requests", n)
	}
}

func TestShutdownSendsRetryThenCloses(t *testing.T) {
	s := startServer(t, hub.Config{}, sse.Config{})
	st := s.subscribe(t, "channel=a", nil)
	st.start()
	publish(t, s.hub, "t", `1`, "a")
	st.expectMessages("a=1")

	if err := s.hub.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	evs, err := st.end()
	if !errors.Is(err, io.EOF) {
		t.Fatalf("stream ended with %v, want EOF", err)
	}
	if len(evs) != 1 || evs[0].Retry == "" || evs[0].Data != "" {
		t.Fatalf("events before EOF = %+v, want one retry", evs)
	}
	if ms, err := strconv.Atoi(evs[0].Retry); err != nil || ms < 2000 || ms > 3000 {
		t.Fatalf("retry %q, want 2000–3000 ms", evs[0].Retry)
	}

	resp := s.get(t, "channel=a", nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("subscribe after shutdown: status %d, want 503", resp.StatusCode)
	}
}

func TestHeartbeatOnIdleStream(t *testing.T) {
	s := startServer(t, hub.Config{}, sse.Config{Heartbeat: 20 * time.Millisecond})
	st := s.subscribe(t, "channel=a", nil)
	st.start()
	for range 2 {
		if ev := st.next(); !ev.Comment || ev.HasID || ev.Data != "" {
			t.Fatalf("idle stream sent %+v, want heartbeat", ev)
		}
	}
}

func TestClientLeavingClosesSession(t *testing.T) {
	s := startServer(t, hub.Config{}, sse.Config{})
	streams := make([]*stream, 3)
	for i := range streams {
		streams[i] = s.subscribe(t, "channel=a", nil)
		streams[i].start()
	}
	testutil.Eventually(t, waitFor, func() error {
		if n := s.hub.Channel("a").Subscribers; n != 3 {
			return fmt.Errorf("%d subscribers", n)
		}
		return nil
	})
	for _, st := range streams {
		st.resp.Body.Close()
	}
	testutil.Eventually(t, waitFor, func() error {
		if st := s.hub.Stats(); st.Connections != 0 || st.Subscribers != 0 {
			return fmt.Errorf("%d connections, %d subscriptions after clients left", st.Connections, st.Subscribers)
		}
		return nil
	})
}
