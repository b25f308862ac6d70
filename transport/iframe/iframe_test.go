package iframe_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/iframe"
)

const waitFor = 5 * time.Second

type server struct {
	hub    *hub.Hub
	url    string
	client *http.Client
}

// startServer runs the iframe handler over a real hub on a real socket.
func startServer(t *testing.T, hcfg hub.Config, cfg iframe.Config) *server {
	t.Helper()
	h := testutil.NewHub(t, hcfg)
	cfg.Engine = testutil.Engine(t, engine.Config{Heartbeat: cfg.Heartbeat, WriteTimeout: cfg.WriteTimeout})
	handler := iframe.New(h, cfg)
	srv := httptest.NewUnstartedServer(handler)
	srv.Listener = testutil.Listen(cfg.Engine, srv.Listener, handler, "/v1/iframe")
	srv.Start()
	t.Cleanup(srv.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &server{hub: h, url: srv.URL + "/v1/iframe", client: &http.Client{Transport: tr}}
}

// call is one <script>CALLBACK(ARG,"CURSOR");</script> of the page, or a
// heartbeat comment.
type call struct {
	Callback  string
	Arg       string
	Cursor    string
	Heartbeat bool
}

var scriptRE = regexp.MustCompile(`^<script>([A-Za-z0-9_$.]+)\((.*),"([^"]*)"\);</script>$`)

// page is an open iframe response read line by line by a goroutine of
// its own, which stops when the test ends.
type page struct {
	t       *testing.T
	resp    *http.Response
	padding int // bytes before the first script or heartbeat
	calls   chan call
	err     error // why the page ended; set before calls is closed
}

func (s *server) open(t *testing.T, query string) *page {
	t.Helper()
	resp := s.get(t, query)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET ?%s: status %d: %s", query, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	p := &page{t: t, resp: resp, calls: make(chan call, 256)}
	// The prelude is all there is until the first event.
	for p.padding < 1024 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("prelude: %v after %d bytes", err, p.padding)
		}
		if strings.HasPrefix(line, "<script>") {
			t.Fatalf("script after only %d bytes of padding", p.padding)
		}
		p.padding += len(line)
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		defer close(p.calls)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				p.err = err
				return
			}
			line = strings.TrimSuffix(line, "\n")
			var c call
			if m := scriptRE.FindStringSubmatch(line); m != nil {
				c = call{Callback: m[1], Arg: m[2], Cursor: m[3]}
			} else if line == "<!-- -->" {
				c.Heartbeat = true
			} else {
				p.err = fmt.Errorf("unexpected line %q", line)
				return
			}
			select {
			case p.calls <- c:
			case <-done:
				p.err = errors.New("test ended")
				return
			}
		}
	}()
	t.Cleanup(func() {
		resp.Body.Close()
		close(done)
		<-exited
	})
	return p
}

func (s *server) get(t *testing.T, query string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.url+"?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// isSubscribed reports whether c is the end-of-replay control.
func (c call) isSubscribed() bool { return strings.HasPrefix(c.Arg, `{"control":"subscribed"`) }

// next returns the next call, skipping heartbeats and the end-of-replay
// control (TestSubscribedCarriesCursor checks that one).
func (p *page) next() call {
	p.t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case c, ok := <-p.calls:
			if !ok {
				p.t.Fatalf("page ended: %v", p.err)
			}
			if !c.Heartbeat && !c.isSubscribed() {
				return c
			}
		case <-timeout:
			p.t.Fatalf("no script within %v", waitFor)
		}
	}
}

type envelope struct {
	Channel string          `json:"channel"`
	Epoch   string          `json:"epoch"`
	Offset  uint64          `json:"offset"`
	Type    string          `json:"type"`
	Data    json.RawMessage `json:"data"`
}

// expectMessages reads calls and checks their channels and data; it
// returns the cursor after the last one.
func (p *page) expectMessages(callback string, want ...string) string {
	p.t.Helper()
	cursor := ""
	for _, w := range want {
		c := p.next()
		var env envelope
		if err := json.Unmarshal([]byte(c.Arg), &env); err != nil || env.Channel == "" {
			p.t.Fatalf("call %+v: not an envelope (%v)", c, err)
		}
		if got := env.Channel + "=" + string(env.Data); got != w || c.Callback != callback {
			p.t.Fatalf("%s(%s), want %s(%s)", c.Callback, got, callback, w)
		}
		if !strings.Contains(","+c.Cursor+",", fmt.Sprintf(",%s@%s:%d,", env.Channel, env.Epoch, env.Offset)) {
			p.t.Fatalf("cursor %q does not hold %s at %s:%d", c.Cursor, env.Channel, env.Epoch, env.Offset)
		}
		cursor = c.Cursor
	}
	return cursor
}

func publish(t *testing.T, h *hub.Hub, data string, channels ...string) []hub.PublishResult {
	t.Helper()
	res, err := h.Publish(context.Background(), hub.Publication{Channels: channels, Type: "t", Data: json.RawMessage(data)})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return res
}

func TestPublishReachesPage(t *testing.T) {
	s := startServer(t, hub.Config{}, iframe.Config{})
	p := s.open(t, "channel=thread:42")
	res := publish(t, s.hub, `{"html":"</script><b>"}`, "thread:42")
	c := p.next()
	want := fmt.Sprintf(`{"channel":"thread:42","epoch":"%s","offset":1,"type":"t","data":{"html":"\u003c/script\u003e\u003cb\u003e"}`, res[0].Epoch)
	if c.Callback != iframe.DefaultCallback || !strings.HasPrefix(c.Arg, want) {
		t.Fatalf("call = %+v, want %s(%s…)", c, iframe.DefaultCallback, want)
	}
	if wantCur := fmt.Sprintf("thread:42@%s:1", res[0].Epoch); c.Cursor != wantCur {
		t.Fatalf("cursor = %q, want %q", c.Cursor, wantCur)
	}
	testutil.Eventually(t, waitFor, func() error {
		if st := s.hub.Stats(); st.Delivered != 1 || st.ByTransport[iframe.TransportName] != 1 {
			return fmt.Errorf("delivered %d, iframe connections %d", st.Delivered, st.ByTransport[iframe.TransportName])
		}
		return nil
	})
}

func TestSeveralChannelsAndCustomCallback(t *testing.T) {
	s := startServer(t, hub.Config{}, iframe.Config{})
	p := s.open(t, "channel=a&channel=b&callback=window.top.onHerald_1")
	publish(t, s.hub, `1`, "a")
	publish(t, s.hub, `2`, "b")
	publish(t, s.hub, `3`, "a", "b", "c")
	cur := p.expectMessages("window.top.onHerald_1", "a=1", "b=2", "a=3", "b=3")
	if strings.Count(cur, ",") != 1 {
		t.Fatalf("final cursor %q, want both channels", cur)
	}
}

func TestResumeWithCursor(t *testing.T) {
	s := startServer(t, hub.Config{}, iframe.Config{})
	const q = "channel=a&channel=b"
	first := s.open(t, q)
	publish(t, s.hub, `1`, "a")
	publish(t, s.hub, `1`, "b")
	cur := first.expectMessages(iframe.DefaultCallback, "a=1", "b=1")
	first.resp.Body.Close()

	publish(t, s.hub, `2`, "b")
	publish(t, s.hub, `2`, "a")
	second := s.open(t, q+"&cursor="+cur)
	second.expectMessages(iframe.DefaultCallback, "a=2", "b=2") // replay, in request channel order
	publish(t, s.hub, `3`, "b")
	second.expectMessages(iframe.DefaultCallback, "b=3")
}

func TestGapComesBeforeReplay(t *testing.T) {
	s := startServer(t, hub.Config{Namespaces: map[string]hub.NamespaceConfig{"small": {HistorySize: 2}}}, iframe.Config{})
	var first hub.PublishResult
	for i := 1; i <= 5; i++ {
		res := publish(t, s.hub, strconv.Itoa(i), "small:x")
		if i == 1 {
			first = res[0]
		}
	}
	p := s.open(t, fmt.Sprintf("channel=small:x&channel=other&cursor=small:x@%s:1,other@unknown:3", first.Epoch))
	gap := p.next()
	// The cursor with the gap is still the request's: a reload before the
	// replay arrives asks again and gets the same gap and replay.
	if gap.Arg != `{"control":"gap","channels":["small:x","other"]}` || gap.Cursor != fmt.Sprintf("small:x@%s:1,other@unknown:3", first.Epoch) {
		t.Fatalf("first call = %+v, want the gap control", gap)
	}
	p.expectMessages(iframe.DefaultCallback, "small:x=4", "small:x=5")
}

func TestBadRequestsGetJSONErrors(t *testing.T) {
	s := startServer(t, hub.Config{}, iframe.Config{})
	cases := []struct {
		name, method, query string
		status              int
		code                string
	}{
		{"no channel", "GET", "", 400, httpx.CodeInvalidChannel},
		{"bad channel", "GET", "channel=%3Cscript%3E", 400, httpx.CodeInvalidChannel},
		{"bad cursor", "GET", "channel=a&cursor=a@e:01", 400, httpx.CodeInvalidCursor},
		{"callback with call", "GET", "channel=a&callback=alert(1)", 400, httpx.CodeInvalidCallback},
		{"callback starting with digit", "GET", "channel=a&callback=1x", 400, httpx.CodeInvalidCallback},
		{"empty callback", "GET", "channel=a&callback=", 400, httpx.CodeInvalidCallback},
		{"POST", "POST", "channel=a", 405, httpx.CodeMethodNotAllowed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), c.method, s.url+"?"+c.query, nil)
			resp, err := s.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body httpx.ErrorBody
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("body: %v", err)
			}
			if resp.StatusCode != c.status || body.Error.Code != c.code || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("got %d %+v, want %d %s", resp.StatusCode, body, c.status, c.code)
			}
		})
	}
	if n := s.hub.Stats().Connections; n != 0 {
		t.Fatalf("%d sessions left open by rejected requests", n)
	}
}

func TestShutdownEndsPage(t *testing.T) {
	s := startServer(t, hub.Config{}, iframe.Config{})
	p := s.open(t, "channel=a")
	publish(t, s.hub, `1`, "a")
	p.expectMessages(iframe.DefaultCallback, "a=1")
	if err := s.hub.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case c, ok := <-p.calls:
		if ok {
			t.Fatalf("after shutdown: %+v, want the end of the page", c)
		}
		if !errors.Is(p.err, io.EOF) {
			t.Fatalf("page ended with %v, want EOF", p.err)
		}
	case <-time.After(waitFor):
		t.Fatalf("page still open %v after shutdown", waitFor)
	}
}

func TestHeartbeatOnIdlePage(t *testing.T) {
	s := startServer(t, hub.Config{}, iframe.Config{Heartbeat: 20 * time.Millisecond})
	p := s.open(t, "channel=a")
	if c := <-p.calls; !c.isSubscribed() {
		t.Fatalf("first call %+v, want subscribed", c)
	}
	for range 2 {
		select {
		case c := <-p.calls:
			if !c.Heartbeat {
				t.Fatalf("idle page sent %+v, want heartbeat", c)
			}
		case <-time.After(waitFor):
			t.Fatal("no heartbeat")
		}
	}
}

// TestSubscribedCarriesCursor: a page learns its cursor at once, so a
// reload before any message resumes instead of starting live (and missing
// what was published in between).
func TestSubscribedCarriesCursor(t *testing.T) {
	s := startServer(t, hub.Config{}, iframe.Config{})
	p := s.open(t, "channel=a")
	var c call
	select {
	case c = <-p.calls:
	case <-time.After(waitFor):
		t.Fatal("no subscribed call")
	}
	head := s.hub.Channel("a").History
	if c.Arg != `{"control":"subscribed","channels":["a"]}` || head == nil || c.Cursor != "a@"+head.Epoch+":0" {
		t.Fatalf("first call %+v, want subscribed with cursor a@%v:0", c, head)
	}
	publish(t, s.hub, `1`, "a") // published "while the page reloads"
	again := s.open(t, "channel=a&cursor="+c.Cursor)
	again.expectMessages(iframe.DefaultCallback, "a=1")
}
