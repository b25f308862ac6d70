package poll_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/poll"
)

const wait = 5 * time.Second

type server struct {
	hub *hub.Hub
	srv *httptest.Server
}

// startServer starts a hub and a long-poll handler behind a real listener,
// and stops them when the test ends.
func startServer(t *testing.T, hcfg hub.Config, pcfg poll.Config) *server {
	t.Helper()
	h := testutil.NewHub(t, hcfg)
	mux := http.NewServeMux()
	mux.Handle("/v1/poll", poll.New(h, pcfg))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &server{hub: h, srv: srv}
}

func (s *server) publish(t *testing.T, data string, channels ...string) []hub.PublishResult {
	t.Helper()
	res, err := s.hub.Publish(context.Background(), hub.Publication{Channels: channels, Type: "test", Data: json.RawMessage(data)})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return res
}

type envelope struct {
	Channel string          `json:"channel"`
	Epoch   string          `json:"epoch"`
	Offset  uint64          `json:"offset"`
	Type    string          `json:"type"`
	Data    json.RawMessage `json:"data"`
	Time    string          `json:"time"`
}

type answer struct {
	Messages []envelope `json:"messages"`
	Cursor   string     `json:"cursor"`
	Gaps     []string   `json:"gaps"`
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// get sends GET /v1/poll?query.
func (s *server) get(t *testing.T, query string) response {
	t.Helper()
	return s.do(t, http.MethodGet, query)
}

func (s *server) do(t *testing.T, method, query string) response {
	t.Helper()
	r, err := s.send(method, query)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// send is do without testing.T, for goroutines other than the test's.
func (s *server) send(method, query string) (response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.srv.URL+"/v1/poll?"+query, nil)
	if err != nil {
		return response{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: %v", method, query, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// poll sends a request that must succeed with a JSON answer.
func (s *server) poll(t *testing.T, query string) answer {
	t.Helper()
	r := s.get(t, query)
	if r.status != http.StatusOK {
		t.Fatalf("poll %s: %d %s", query, r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q", ct)
	}
	var a answer
	if err := json.Unmarshal(r.body, &a); err != nil {
		t.Fatalf("answer %s: %v", r.body, err)
	}
	if a.Messages == nil || a.Gaps == nil {
		t.Fatalf("answer %s lacks messages or gaps", r.body)
	}
	return a
}

// pollAsync starts a poll in a goroutine owned by the test.
func (s *server) pollAsync(t *testing.T, query string) <-chan answer {
	t.Helper()
	out := make(chan answer, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var a answer
		r, err := s.send(http.MethodGet, query)
		if err == nil {
			err = json.Unmarshal(r.body, &a)
		}
		if err != nil || r.status != http.StatusOK {
			t.Errorf("poll %s: %v %d %s", query, err, r.status, r.body)
		}
		out <- a
	}()
	t.Cleanup(wg.Wait)
	return out
}

// waitSubscribers waits until ch has n subscribers: a poll is waiting.
func (s *server) waitSubscribers(t *testing.T, ch string, n int) {
	t.Helper()
	testutil.Eventually(t, wait, func() error {
		if got := s.hub.Channel(ch).Subscribers; got != n {
			return fmt.Errorf("%s has %d subscribers, want %d", ch, got, n)
		}
		return nil
	})
}

func receive(t *testing.T, ch <-chan answer) answer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(2 * wait):
		t.Fatal("poll did not answer")
		return answer{}
	}
}

func offsets(a answer, ch string) []uint64 {
	var out []uint64
	for _, m := range a.Messages {
		if m.Channel == ch {
			out = append(out, m.Offset)
		}
	}
	return out
}

func TestPublishReceive(t *testing.T) {
	s := startServer(t, hub.Config{}, poll.Config{})
	pending := s.pollAsync(t, "channel=thread:42&timeout=10s")
	s.waitSubscribers(t, "thread:42", 1)

	res := s.publish(t, `{"html":"<i>"}`, "thread:42")
	a := receive(t, pending)
	if len(a.Messages) != 1 || len(a.Gaps) != 0 {
		t.Fatalf("answer = %+v", a)
	}
	m := a.Messages[0]
	if m.Channel != "thread:42" || m.Epoch != res[0].Epoch || m.Offset != 1 || m.Type != "test" || string(m.Data) != `{"html":"\u003ci\u003e"}` {
		t.Fatalf("envelope = %+v", m)
	}
	if want := "thread:42@" + res[0].Epoch + ":1"; a.Cursor != want {
		t.Fatalf("cursor = %q, want %q", a.Cursor, want)
	}
	testutil.Eventually(t, wait, func() error {
		if st := s.hub.Stats(); st.Connections != 0 || st.Delivered != 1 {
			return fmt.Errorf("stats = %+v: the session was not closed", st)
		}
		return nil
	})
}

func TestSeveralChannels(t *testing.T) {
	s := startServer(t, hub.Config{}, poll.Config{})
	// timeout=0 answers at once with a cursor covering both channels.
	a := s.poll(t, "channel=a&channel=b&timeout=0")
	if len(a.Messages) != 0 || !strings.HasPrefix(a.Cursor, "a@") || !strings.Contains(a.Cursor, ",b@") {
		t.Fatalf("answer = %+v", a)
	}
	s.publish(t, `1`, "a", "b")
	s.publish(t, `2`, "b")

	a = s.poll(t, "channel=a&channel=b&cursor="+a.Cursor)
	if got := fmt.Sprint(offsets(a, "a"), offsets(a, "b")); got != "[1] [1 2]" {
		t.Fatalf("offsets = %s", got)
	}
	if !strings.HasSuffix(a.Cursor, ":2") || strings.Count(a.Cursor, "@") != 2 {
		t.Fatalf("cursor = %q", a.Cursor)
	}

	// A waiting poll on two channels answers with the first live message.
	pending := s.pollAsync(t, "channel=a&channel=b&cursor="+a.Cursor)
	s.waitSubscribers(t, "b", 1)
	s.publish(t, `3`, "b")
	if a = receive(t, pending); fmt.Sprint(offsets(a, "a"), offsets(a, "b")) != "[] [3]" {
		t.Fatalf("answer = %+v", a)
	}
}

// TestResumeUnderLoad polls in a loop with the returned cursor while a
// publisher runs: every offset of every channel arrives exactly once, in
// order.
func TestResumeUnderLoad(t *testing.T) {
	const n = 200
	s := startServer(t, hub.Config{Default: hub.NamespaceConfig{HistorySize: n}}, poll.Config{})
	cursor := s.poll(t, "channel=a&channel=b&timeout=0").Cursor

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			p := hub.Publication{Channels: []string{"a", "b"}, Data: json.RawMessage(fmt.Sprint(i))}
			if _, err := s.hub.Publish(context.Background(), p); err != nil {
				t.Errorf("publish: %v", err)
				return
			}
		}
	}()
	t.Cleanup(wg.Wait)

	next := map[string]uint64{"a": 1, "b": 1}
	for polls := 0; next["a"] <= n || next["b"] <= n; polls++ {
		if polls > 10*n {
			t.Fatalf("too many polls; next = %v", next)
		}
		a := s.poll(t, "channel=a&channel=b&timeout=5s&cursor="+cursor)
		for _, m := range a.Messages {
			if m.Offset != next[m.Channel] {
				t.Fatalf("%s: got offset %d, want %d: lost or duplicated", m.Channel, m.Offset, next[m.Channel])
			}
			next[m.Channel]++
		}
		if len(a.Gaps) > 0 {
			t.Fatalf("unexpected gaps %v", a.Gaps)
		}
		cursor = a.Cursor
	}
}

func TestGap(t *testing.T) {
	s := startServer(t, hub.Config{Namespaces: map[string]hub.NamespaceConfig{"small": {HistorySize: 2}}}, poll.Config{})
	var epoch string
	for range 5 {
		epoch = s.publish(t, `{}`, "small:x")[0].Epoch
	}
	for _, cursor := range []string{"small:x@" + epoch + ":1", "small:x@gone:3"} {
		a := s.poll(t, "channel=small:x&channel=other&cursor="+cursor)
		if fmt.Sprint(a.Gaps) != "[small:x]" || fmt.Sprint(offsets(a, "small:x")) != "[4 5]" {
			t.Fatalf("cursor %s: answer = %+v", cursor, a)
		}
		if !strings.HasPrefix(a.Cursor, "small:x@"+epoch+":5,other@") {
			t.Fatalf("cursor %s: next cursor = %q", cursor, a.Cursor)
		}
	}
	// A gap with nothing left to replay still answers at once.
	a := s.poll(t, "channel=empty&cursor=empty@gone:9")
	if fmt.Sprint(a.Gaps) != "[empty]" || len(a.Messages) != 0 || !strings.HasSuffix(a.Cursor, ":0") {
		t.Fatalf("answer = %+v", a)
	}
}

func TestJSONP(t *testing.T) {
	s := startServer(t, hub.Config{}, poll.Config{})
	s.publish(t, `"</script>"`, "a")
	r := s.get(t, "channel=a&callback=herald.cb_1&cursor=a@x:0")
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/javascript" {
		t.Fatalf("Content-Type = %q", ct)
	}
	if r.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatal("missing X-Content-Type-Options: nosniff")
	}
	body := strings.TrimSpace(string(r.body))
	if !strings.HasPrefix(body, "herald.cb_1(") || !strings.HasSuffix(body, ");") {
		t.Fatalf("body = %s", body)
	}
	if strings.Contains(body, "</script>") {
		t.Fatalf("body is not safe inside <script>: %s", body)
	}
	var a answer
	if err := json.Unmarshal([]byte(body[len("herald.cb_1("):len(body)-2]), &a); err != nil {
		t.Fatalf("wrapped JSON: %v", err)
	}
	if len(a.Messages) != 1 || fmt.Sprint(a.Gaps) != "[a]" {
		t.Fatalf("answer = %+v", a)
	}
}

func TestBadRequest(t *testing.T) {
	s := startServer(t, hub.Config{}, poll.Config{})
	for _, tc := range []struct {
		method, query string
		status        int
		code          string
	}{
		{"GET", "", 400, httpx.CodeInvalidChannel},
		{"GET", "channel=no%20spaces", 400, httpx.CodeInvalidChannel},
		{"GET", "channel=a&cursor=a@e:01", 400, httpx.CodeInvalidCursor},
		{"GET", "channel=a&cursor=junk", 400, httpx.CodeInvalidCursor},
		{"GET", "channel=a&callback=alert(1)", 400, httpx.CodeInvalidCallback},
		{"GET", "channel=a&callback=", 400, httpx.CodeInvalidCallback},
		{"GET", "channel=a&callback=1a", 400, httpx.CodeInvalidCallback},
		{"GET", "channel=a&timeout=soon", 400, httpx.CodeInvalidRequest},
		{"GET", "channel=a&timeout=-1s", 400, httpx.CodeInvalidRequest},
		{"GET", "channel=a&timeout=-1", 400, httpx.CodeInvalidRequest},
		{"GET", "channel=a&timeout=NaN", 400, httpx.CodeInvalidRequest},
		{"GET", "channel=a&timeout=0x10", 400, httpx.CodeInvalidRequest},
		{"POST", "channel=a", 405, httpx.CodeMethodNotAllowed},
	} {
		r := s.do(t, tc.method, tc.query)
		var body httpx.ErrorBody
		if err := json.Unmarshal(r.body, &body); err != nil || r.status != tc.status || body.Error.Code != tc.code {
			t.Errorf("%s %s: %d %s, want %d %s", tc.method, tc.query, r.status, r.body, tc.status, tc.code)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q", tc.method, tc.query, ct)
		}
	}
	// Nothing was opened, nothing subscribed.
	if st := s.hub.Stats(); st.Connections != 0 || st.Channels != 0 {
		t.Fatalf("stats after bad requests = %+v", st)
	}
}

func TestTimeout(t *testing.T) {
	s := startServer(t, hub.Config{}, poll.Config{Timeout: 200 * time.Millisecond})
	for _, q := range []string{
		"timeout=20ms", // a duration
		"timeout=0.02", // seconds
		"timeout=1h",   // capped at Config.Timeout
		"timeout=1e9",
		"", // the default
	} {
		start := time.Now()
		a := s.poll(t, "channel=quiet&"+q)
		if len(a.Messages) != 0 || !strings.HasPrefix(a.Cursor, "quiet@") || !strings.HasSuffix(a.Cursor, ":0") {
			t.Fatalf("%s: answer = %+v", q, a)
		}
		if d := time.Since(start); d > 2*time.Second { // 1h was capped at 200ms
			t.Fatalf("%s: answered after %v", q, d)
		}
	}
}

func TestShutdownAnswersWaitingPoll(t *testing.T) {
	s := startServer(t, hub.Config{}, poll.Config{})
	type result struct {
		r   response
		err error
	}
	pending := make(chan result, 1)
	go func() {
		r, err := s.send(http.MethodGet, "channel=a&timeout=30s")
		pending <- result{r, err}
	}()
	// The subscriber is registered a moment before its Subscribe returns,
	// so shutdown may land while the poll is still subscribing: it then
	// answers 503 shutting_down instead of an empty 200. Both are prompt,
	// and a client retries with its cursor after either.
	s.waitSubscribers(t, "a", 1)

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := s.hub.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	var res result
	select {
	case res = <-pending:
	case <-time.After(2 * wait):
		t.Fatal("poll did not answer")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	switch res.r.status {
	case http.StatusOK:
		var a answer
		if err := json.Unmarshal(res.r.body, &a); err != nil || len(a.Messages) != 0 || !strings.HasPrefix(a.Cursor, "a@") {
			t.Fatalf("answer = %s (%v)", res.r.body, err)
		}
	case http.StatusServiceUnavailable:
		if !strings.Contains(string(res.r.body), httpx.CodeShuttingDown) {
			t.Fatalf("503 answer = %s", res.r.body)
		}
	default:
		t.Fatalf("answer %d %s", res.r.status, res.r.body)
	}
	r := s.get(t, "channel=a")
	if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), httpx.CodeShuttingDown) {
		t.Fatalf("poll after shutdown: %d %s", r.status, r.body)
	}
}

func TestClientLeaves(t *testing.T) {
	s := startServer(t, hub.Config{}, poll.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.srv.URL+"/v1/poll?"+url.Values{"channel": {"a"}}.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	s.waitSubscribers(t, "a", 1)
	cancel()
	if err := <-done; err == nil {
		t.Fatal("request succeeded after cancel")
	}
	// The server notices and closes the session.
	s.waitSubscribers(t, "a", 0)
	testutil.Eventually(t, wait, func() error {
		if n := s.hub.Stats().Connections; n != 0 {
			return fmt.Errorf("%d sessions", n)
		}
		return nil
	})
}
