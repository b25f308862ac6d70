package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/internal/testutil"
)

// server is an API over a fresh hub, served on a real loopback socket.
type server struct {
	hub *hub.Hub
	api *API
	url string
}

func startServer(t *testing.T, hc hub.Config, ac Config) *server {
	t.Helper()
	h := testutil.NewHub(t, hc)
	a := New(h, ac)
	ts := httptest.NewServer(a)
	t.Cleanup(ts.Close)
	return &server{hub: h, api: a, url: ts.URL}
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// do sends one request; headers are "Name: value" strings.
func do(t *testing.T, method, url, body string, headers ...string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(k, strings.TrimSpace(v))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return reply{resp.StatusCode, resp.Header, b}
}

const jsonCT = "Content-Type: application/json"

// wantError checks that r is the JSON error status/code.
func wantError(t *testing.T, r reply, status int, code string) httpx.ErrorDetail {
	t.Helper()
	var body httpx.ErrorBody
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, r)
	}
	if r.status != status || body.Error.Code != code {
		t.Fatalf("got %s, want %d %s", r, status, code)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q", ct)
	}
	if body.Error.Message == "" {
		t.Fatalf("error without a message: %s", r)
	}
	return body.Error
}

func decode[T any](t *testing.T, r reply) T {
	t.Helper()
	var v T
	if r.status != http.StatusOK {
		t.Fatalf("got %s, want 200", r)
	}
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("%v: %s", err, r.body)
	}
	return v
}

// subscribe opens a hub session on channels, closed at the end of the test.
func subscribe(t *testing.T, h *hub.Hub, channels ...string) *hub.Session {
	t.Helper()
	s, err := h.NewSession(hub.SessionOptions{Transport: "sse"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(hub.DisconnectNormal) })
	if err := s.Subscribe(context.Background(), channels, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// collect drains s into msgs, as a transport writer would (counting the
// messages delivered), and returns the envelopes seen so far.
func collect(s *hub.Session, msgs *[]string) []string {
	n := 0
	for _, it := range s.Drain(nil) {
		if it.Kind == hub.ItemMessage {
			*msgs = append(*msgs, string(it.Msg.Envelope))
			n++
		}
	}
	s.Delivered(n)
	return *msgs
}

func TestPublishMultiChannel(t *testing.T) {
	s := startServer(t, hub.Config{}, Config{})
	sub := subscribe(t, s.hub, "thread:42", "forum:tech")
	r := do(t, "POST", s.url+"/v1/publish",
		`{"channels":["thread:42","forum:tech"],"type":"post.created","data":{"id":"p981","html":"<b>"}}`, jsonCT)
	got := decode[publishResponse](t, r)
	if len(got.Results) != 2 || got.Results[0].Channel != "thread:42" || got.Results[1].Channel != "forum:tech" {
		t.Fatalf("results: %+v", got.Results)
	}
	for _, res := range got.Results {
		if res.Offset != 1 || res.Epoch == "" {
			t.Fatalf("result %+v", res)
		}
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control %q", cc)
	}
	var msgs []string
	testutil.Eventually(t, 2*time.Second, func() error {
		if n := len(collect(sub, &msgs)); n != 2 {
			return fmt.Errorf("%d messages", n)
		}
		return nil
	})
	if !strings.Contains(msgs[0], `"type":"post.created","data":{"id":"p981","html":"\u003cb\u003e"}`) {
		t.Fatalf("envelope %s", msgs[0])
	}

	// One channel by "channel", no type, no content type, no data.
	got = decode[publishResponse](t, do(t, "POST", s.url+"/v1/publish", `{"channel":"thread:42"}`))
	if len(got.Results) != 1 || got.Results[0].Offset != 2 {
		t.Fatalf("results: %+v", got.Results)
	}
	testutil.Eventually(t, 2*time.Second, func() error {
		if n := len(collect(sub, &msgs)); n != 3 {
			return fmt.Errorf("%d messages", n)
		}
		return nil
	})
	if !strings.Contains(msgs[2], `"type":"message","data":null`) {
		t.Fatalf("envelope %s", msgs[2])
	}
}

func TestPublishIdempotent(t *testing.T) {
	s := startServer(t, hub.Config{}, Config{})
	sub := subscribe(t, s.hub, "thread:1")
	body := `{"channels":["thread:1"],"data":1,"idempotency_key":"post-981"}`
	first := decode[publishResponse](t, do(t, "POST", s.url+"/v1/publish", body, jsonCT))
	again := decode[publishResponse](t, do(t, "POST", s.url+"/v1/publish", body, jsonCT))
	if fmt.Sprint(first) != fmt.Sprint(again) {
		t.Fatalf("repeat answered %+v, first %+v", again, first)
	}
	// A raw publish with the same key is the same publication.
	raw := decode[publishResponse](t, do(t, "POST", s.url+"/v1/publish/thread:1", "2", "Idempotency-Key: post-981"))
	if fmt.Sprint(first) != fmt.Sprint(raw) {
		t.Fatalf("raw repeat answered %+v, first %+v", raw, first)
	}
	// A publish with another key is a barrier: once it has arrived,
	// anything the repeats delivered would have arrived before it.
	decode[publishResponse](t, do(t, "POST", s.url+"/v1/publish", `{"channel":"thread:1","data":"barrier","idempotency_key":"other"}`))
	var msgs []string
	testutil.Eventually(t, 2*time.Second, func() error {
		collect(sub, &msgs)
		if len(msgs) == 0 || !strings.Contains(msgs[len(msgs)-1], "barrier") {
			return fmt.Errorf("barrier not seen: %q", msgs)
		}
		return nil
	})
	if len(msgs) != 2 || !strings.Contains(msgs[0], `"offset":1,`) || !strings.Contains(msgs[1], `"offset":2,`) {
		t.Fatalf("subscriber got %q, want the first publish once, then the barrier", msgs)
	}
	if st := s.hub.Stats(); st.IdempotencyKeys != 2 {
		t.Fatalf("idempotency keys %d", st.IdempotencyKeys)
	}
}

func TestPublishRaw(t *testing.T) {
	s := startServer(t, hub.Config{}, Config{})
	sub := subscribe(t, s.hub, "a/b:c")
	tests := []struct {
		body, ct, query, want string
	}{
		{`{"x": [1, 2]}`, "", "", `"type":"message","data":{"x":[1,2]}`},
		{`hello <world>`, "text/plain", "?type=note", `"type":"note","data":"hello \u003cworld\u003e"`},
		{`42`, "application/json", "", `"data":42`},
		{`"quoted"`, "application/x-www-form-urlencoded", "", `"data":"quoted"`},
		{`{not json`, "", "", `"data":"{not json"`},
		{"", "", "", `"data":""`},
	}
	var msgs []string
	for i, tt := range tests {
		var hdr []string
		if tt.ct != "" {
			hdr = append(hdr, "Content-Type: "+tt.ct)
		}
		r := do(t, "POST", s.url+"/v1/publish/a/b:c"+tt.query, tt.body, hdr...)
		got := decode[publishResponse](t, r)
		if len(got.Results) != 1 || got.Results[0].Channel != "a/b:c" || got.Results[0].Offset != uint64(i+1) {
			t.Fatalf("%q: results %+v", tt.body, got.Results)
		}
		testutil.Eventually(t, 2*time.Second, func() error {
			if n := len(collect(sub, &msgs)); n != i+1 {
				return fmt.Errorf("%d messages", n)
			}
			return nil
		})
		if !strings.Contains(msgs[i], tt.want) {
			t.Fatalf("%q: envelope %s, want %s", tt.body, msgs[i], tt.want)
		}
	}
}

func TestPublishBadInput(t *testing.T) {
	s := startServer(t, hub.Config{MaxMessageBytes: 1024, MaxChannelsPerPublish: 4}, Config{})
	limit := s.api.jsonBodyLimit()
	big := strings.Repeat("x", 2000)
	tests := []struct {
		name, path, body string
		headers          []string
		status           int
		code             string
		msg              string // part of the message
	}{
		{"malformed", "/v1/publish", `{"channel":"a",`, nil, 400, "invalid_json", "ends in the middle"},
		{"syntax", "/v1/publish", `{"channel":"a" "type":"x"}`, nil, 400, "invalid_json", "byte"},
		{"empty", "/v1/publish", ``, nil, 400, "invalid_json", "empty"},
		{"array", "/v1/publish", `["a"]`, nil, 400, "invalid_json", "JSON object"},
		{"null", "/v1/publish", `null`, nil, 400, "invalid_json", "JSON object"},
		{"garbage", "/v1/publish", `hello`, nil, 400, "invalid_json", "malformed"},
		{"trailing", "/v1/publish", `{"channel":"a"} {}`, nil, 400, "invalid_json", "after the JSON object"},
		{"channels type", "/v1/publish", `{"channels":"a"}`, nil, 400, "invalid_json", `"channels" must be an array of strings`},
		{"channel type", "/v1/publish", `{"channel":5}`, nil, 400, "invalid_json", `"channel" must be a string`},
		{"channels item type", "/v1/publish", `{"channels":["a",1]}`, nil, 400, "invalid_json", "channels"},
		{"unknown field", "/v1/publish", `{"channel":"a","dta":1}`, nil, 400, "invalid_request", `"dta"`},
		{"both channel forms", "/v1/publish", `{"channel":"a","channels":["b"]}`, nil, 400, "invalid_request", "not both"},
		{"no channel", "/v1/publish", `{"data":1}`, nil, 400, "invalid_channel", "channels"},
		{"bad channel", "/v1/publish", `{"channels":["ok","bad name"]}`, nil, 400, "invalid_channel", `"bad name"`},
		{"long channel", "/v1/publish", `{"channel":"` + strings.Repeat("c", 256) + `"}`, nil, 400, "invalid_channel", "channel"},
		{"too many channels", "/v1/publish", `{"channels":["a","b","c","d","e"]}`, nil, 429, "too_many_channels", "too many"},
		{"bad type", "/v1/publish", `{"channel":"a","type":"two words"}`, nil, 400, "invalid_request", "type"},
		{"long key", "/v1/publish", `{"channel":"a","idempotency_key":"` + strings.Repeat("k", 300) + `"}`, nil, 400, "invalid_request", "idempotency_key"},
		{"data too large", "/v1/publish", `{"channel":"a","data":"` + big + `"}`, nil, 413, "message_too_large", "too large"},
		{"body too large", "/v1/publish", `{"channel":"a","data":"` + strings.Repeat("x", int(limit)) + `"}`, nil, 413, "message_too_large", "larger than"},
		{"content type", "/v1/publish", `{"channel":"a"}`, []string{"Content-Type: text/plain"}, 415, "unsupported_media_type", "application/json"},
		{"form content type", "/v1/publish", `{"channel":"a"}`, []string{"Content-Type: application/x-www-form-urlencoded"}, 415, "unsupported_media_type", "application/json"},
		{"raw bad channel", "/v1/publish/bad~name!", `1`, nil, 400, "invalid_channel", "channel"},
		{"raw empty channel", "/v1/publish/", `1`, nil, 400, "invalid_channel", "channel"},
		{"raw bad type", "/v1/publish/a?type=%0Aevil", `1`, nil, 400, "invalid_request", "type"},
		{"raw too large", "/v1/publish/a", big, nil, 413, "message_too_large", "larger than"},
		{"raw escapes past limit", "/v1/publish/a", strings.Repeat("<", 500), nil, 413, "message_too_large", "too large"},
		{"raw says JSON but is not", "/v1/publish/a", `{oops`, []string{jsonCT}, 400, "invalid_json", "not"},
		{"raw long key", "/v1/publish/a", `1`, []string{"Idempotency-Key: " + strings.Repeat("k", 300)}, 400, "invalid_request", "Idempotency-Key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := wantError(t, do(t, "POST", s.url+tt.path, tt.body, tt.headers...), tt.status, tt.code)
			if !strings.Contains(e.Message, tt.msg) {
				t.Fatalf("message %q does not mention %q", e.Message, tt.msg)
			}
		})
	}
	if st := s.hub.Stats(); st.Published != 0 {
		t.Fatalf("bad input published %d messages", st.Published)
	}
	// The JSON+suffix type and parameters are accepted.
	decode[publishResponse](t, do(t, "POST", s.url+"/v1/publish", `{"channel":"a"}`, "Content-Type: application/vnd.herald+json; charset=utf-8"))
}

func TestAuth(t *testing.T) {
	const key = "s3cret-key"
	open := startServer(t, hub.Config{}, Config{})
	keyed := startServer(t, hub.Config{}, Config{APIKeys: []string{"other-key", key}})

	paths := []struct{ method, path, body string }{
		{"POST", "/v1/publish", `{"channel":"a"}`},
		{"POST", "/v1/publish/a", `1`},
		{"GET", "/v1/status", ""},
		{"GET", "/metrics", ""},
	}
	for _, p := range paths {
		t.Run(p.path, func(t *testing.T) {
			// No keys: loopback (this test's own socket) may.
			if r := do(t, p.method, open.url+p.path, p.body); r.status != 200 {
				t.Fatalf("no keys, loopback: %s", r)
			}
			// No keys: any other address may not.
			req := httptest.NewRequest(p.method, p.path, strings.NewReader(p.body))
			req.RemoteAddr = "203.0.113.7:4000"
			rec := httptest.NewRecorder()
			open.api.ServeHTTP(rec, req)
			wantError(t, reply{rec.Code, rec.Header(), rec.Body.Bytes()}, 403, "forbidden")

			// Keys: missing, wrong, malformed → 401 with a challenge.
			for _, h := range [][]string{nil, {"Authorization: Bearer wrong"}, {"Authorization: Basic " + key},
				{"Authorization: Bearer " + key + "x"}, {"Authorization: Bearer"}} {
				r := do(t, p.method, keyed.url+p.path, p.body, h...)
				wantError(t, r, 401, "unauthorized")
				if r.header.Get("WWW-Authenticate") == "" {
					t.Fatalf("%v: no WWW-Authenticate", h)
				}
			}
			// Keys: the right key (any of them, scheme in any case) → 200.
			for _, h := range []string{"Authorization: Bearer " + key, "Authorization: bearer other-key"} {
				if r := do(t, p.method, keyed.url+p.path, p.body, h); r.status != 200 {
					t.Fatalf("%s: %s", h, r)
				}
			}
		})
	}
	// Health endpoints are open to everyone.
	for _, p := range []string{"/healthz", "/readyz"} {
		if r := do(t, "GET", keyed.url+p, ""); r.status != 200 {
			t.Fatalf("%s: %s", p, r)
		}
		req := httptest.NewRequest("GET", p, nil)
		req.RemoteAddr = "203.0.113.7:4000"
		rec := httptest.NewRecorder()
		open.api.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("%s from afar: %d", p, rec.Code)
		}
	}
}

func TestStatus(t *testing.T) {
	s := startServer(t, hub.Config{}, Config{Version: "1.2.3"})
	sub1 := subscribe(t, s.hub, "thread:1", "thread:2", "forum:x")
	sub2 := subscribe(t, s.hub, "thread:1")
	for i := range 3 {
		decode[publishResponse](t, do(t, "POST", s.url+"/v1/publish", fmt.Sprintf(`{"channels":["thread:1","thread:2"],"data":%d}`, i)))
	}
	st := decode[Status](t, do(t, "GET", s.url+"/v1/status", ""))
	if st.Version != "1.2.3" || st.Uptime == "" || st.Goroutines == 0 || !st.Ready {
		t.Fatalf("status %+v", st)
	}
	if st.Connections.Total != 2 || st.Connections.ByTransport["sse"] != 2 {
		t.Fatalf("connections %+v", st.Connections)
	}
	if st.Channels != 3 || st.Subscribers != 4 || st.Published != 6 {
		t.Fatalf("figures %+v", st)
	}
	if h := st.History; h == nil || h.Messages != 6 || h.Channels < 2 || h.Bytes <= 0 || h.MaxBytes != 512<<20 || h.Trimmed != 0 {
		t.Fatalf("history %+v", st.History)
	}
	var msgs []string
	testutil.Eventually(t, 2*time.Second, func() error {
		collect(sub1, &msgs)
		collect(sub2, &msgs)
		if st := decode[Status](t, do(t, "GET", s.url+"/v1/status", "")); st.Delivered != 9 {
			return fmt.Errorf("delivered %d, want 9", st.Delivered)
		}
		return nil
	})

	ch := decode[hub.ChannelStats](t, do(t, "GET", s.url+"/v1/status?channel=thread:1", ""))
	if ch.Channel != "thread:1" || ch.Subscribers != 2 || ch.History == nil || ch.History.Head != 3 || ch.History.Retained != 3 {
		t.Fatalf("channel %+v (history %+v)", ch, ch.History)
	}
	ch = decode[hub.ChannelStats](t, do(t, "GET", s.url+"/v1/status?channel=nobody", ""))
	if ch.Subscribers != 0 {
		t.Fatalf("unknown channel %+v", ch)
	}

	list := decode[ChannelList](t, do(t, "GET", s.url+"/v1/status?prefix=thread:", ""))
	if len(list.Channels) != 2 || list.Channels[0].Channel != "thread:1" || list.Channels[1].Channel != "thread:2" || list.Truncated {
		t.Fatalf("prefix list %+v", list)
	}
	list = decode[ChannelList](t, do(t, "GET", s.url+"/v1/status?prefix=&limit=2", ""))
	if len(list.Channels) != 2 || list.Channels[0].Channel != "forum:x" || !list.Truncated {
		t.Fatalf("limited list %+v", list)
	}

	for _, q := range []string{"?channel=bad%20name", "?prefix=bad%20name"} {
		wantError(t, do(t, "GET", s.url+"/v1/status"+q, ""), 400, "invalid_channel")
	}
	for _, q := range []string{"?prefix=a&limit=0", "?prefix=a&limit=x", "?prefix=a&limit=5000", "?channel=a&prefix=b"} {
		wantError(t, do(t, "GET", s.url+"/v1/status"+q, ""), 400, "invalid_request")
	}
}

func TestMetrics(t *testing.T) {
	s := startServer(t, hub.Config{}, Config{Version: "9.9.9"})
	var calls atomic.Int64
	s.api.stats = func() hub.Stats { calls.Add(1); return s.hub.Stats() }
	sub := subscribe(t, s.hub, "a")
	decode[publishResponse](t, do(t, "POST", s.url+"/v1/publish", `{"channels":["a","b"]}`))
	var msgs []string
	testutil.Eventually(t, 2*time.Second, func() error {
		if n := len(collect(sub, &msgs)); n != 1 {
			return fmt.Errorf("%d messages", n)
		}
		return nil
	})

	r := do(t, "GET", s.url+"/metrics", "")
	if r.status != 200 {
		t.Fatalf("metrics: %s", r)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("hub.Stats called %d times in one scrape, want 1", n)
	}
	text := string(r.body)
	for _, want := range []string{
		"herald_published_total 2",
		"herald_delivered_total 1",
		"herald_dropped_total 0",
		"herald_slow_consumers_total 0",
		`herald_connections{transport="sse"} 1`,
		`herald_connections{transport="ws"} 0`,
		"herald_channels 1",
		"herald_subscribers 1",
		"herald_history_messages 2",
		"herald_history_trimmed_total 0",
		`herald_build_info{version="9.9.9"} 1`,
		"# TYPE herald_published_total counter",
		"go_goroutines ",
		"process_",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestRouting(t *testing.T) {
	s := startServer(t, hub.Config{}, Config{})
	wantError(t, do(t, "GET", s.url+"/nope", ""), 404, "not_found")
	wantError(t, do(t, "GET", s.url+"/v1/publish/x/", ""), 405, "method_not_allowed")
	r := do(t, "GET", s.url+"/v1/publish", "")
	wantError(t, r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "POST" {
		t.Fatalf("Allow %q", r.header.Get("Allow"))
	}
	wantError(t, do(t, "DELETE", s.url+"/v1/status", ""), 405, "method_not_allowed")
	wantError(t, do(t, "POST", s.url+"/healthz", ""), 405, "method_not_allowed")

	r = do(t, "GET", s.url+"/healthz", "")
	if r.status != 200 || !bytes.Equal(bytes.TrimSpace(r.body), []byte(`{"status":"ok"}`)) {
		t.Fatalf("healthz %s", r)
	}
	if r := do(t, "HEAD", s.url+"/healthz", ""); r.status != 200 {
		t.Fatalf("HEAD healthz %s", r)
	}
}

func TestReadyz(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	h, err := hub.New(hub.Config{})
	if err != nil {
		t.Fatal(err)
	}
	a := New(h, Config{Ready: ready.Load})
	ts := httptest.NewServer(a)
	t.Cleanup(ts.Close)

	if r := do(t, "GET", ts.URL+"/readyz", ""); r.status != 200 {
		t.Fatalf("readyz %s", r)
	}
	ready.Store(false)
	r := do(t, "GET", ts.URL+"/readyz", "")
	wantError(t, r, 503, "shutting_down")
	wantError(t, do(t, "POST", ts.URL+"/v1/publish/a", "1"), 503, "shutting_down")
	ready.Store(true)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	wantError(t, do(t, "GET", ts.URL+"/readyz", ""), 503, "shutting_down")
	wantError(t, do(t, "POST", ts.URL+"/v1/publish", `{"channel":"a"}`), 503, "shutting_down")
	if r := do(t, "GET", ts.URL+"/healthz", ""); r.status != 200 {
		t.Fatalf("healthz while shutting down: %s", r)
	}
}
