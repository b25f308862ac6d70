package app

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/testutil"
)

// sseData subscribes to channels over SSE and returns the data lines of
// the events that arrive.
func sseData(t *testing.T, url string, channels ...string) <-chan string {
	t.Helper()
	q := "channel=" + strings.Join(channels, "&channel=")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/v1/sse?"+q, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("subscribe: %d", resp.StatusCode)
	}
	ch := make(chan string, 64)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				ch <- d
			}
		}
	}()
	return ch
}

func postEvents(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url+"/v1/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("answer: %v", err)
	}
	return resp.StatusCode, out
}

// TestEventsEndToEnd is the README's walk-through: a comment event with a
// <script> and the author's e-mail, posted to /v1/events, reaches thread:,
// forum: and firehose subscribers sanitised and without the e-mail, while
// a moderation pipeline sees it whole.
func TestEventsEndToEnd(t *testing.T) {
	r := startApp(t, config.Config{Pipelines: []config.PipelineConfig{
		{Name: "public"},
		{Name: "moderation", Stages: []config.StageConfig{
			{Type: "parse"},
			{Type: "route", Routes: []config.RouteConfig{{Channel: "mod:forum:{data.forum}"}}},
			{Type: "publish"},
		}},
	}})
	thread := sseData(t, r.url, "thread:t42")
	forum := sseData(t, r.url, "forum:tech")
	fire := sseData(t, r.url, "firehose")
	mod := sseData(t, r.url, "mod:forum:tech")
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := r.app.Hub().Stats().Connections; n != 4 {
			return fmt.Errorf("%d subscribers", n)
		}
		return nil
	})

	status, ans := postEvents(t, r.url, `{"id":"evt-17","type":"post.created","data":{"id":"p981","thread":"t42",
		"forum":"tech","parent":null,"author":{"id":"u7","name":"Ann","email":"ann@example.com","ip":"203.0.113.9"},
		"message":"<p>Hello<script>alert(1)</script></p>","created_at":"2026-11-21T10:00:00Z"}}`)
	if status != http.StatusAccepted || fmt.Sprint(ans["accepted"]) != "[evt-17]" {
		t.Fatalf("POST /v1/events: %d %v", status, ans)
	}

	next := func(name string, ch <-chan string) map[string]any {
		t.Helper()
		select {
		case d := <-ch:
			var env map[string]any
			if err := json.Unmarshal([]byte(d), &env); err != nil {
				t.Fatalf("%s: %q: %v", name, d, err)
			}
			return env
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: nothing arrived", name)
			return nil
		}
	}
	for name, ch := range map[string]<-chan string{"thread": thread, "forum": forum, "firehose": fire} {
		env := next(name, ch)
		raw, _ := json.Marshal(env)
		s := string(raw)
		if env["type"] != "post.created" || !strings.Contains(s, "Hello") ||
			strings.Contains(s, "script") || strings.Contains(s, "ann@example.com") || strings.Contains(s, "203.0.113.9") {
			t.Fatalf("%s got %s", name, s)
		}
	}
	env := next("moderation", mod)
	raw, _ := json.Marshal(env)
	if s := string(raw); !strings.Contains(s, "ann@example.com") || !strings.Contains(s, "<script>") && !strings.Contains(s, `\u003cscript\u003e`) {
		t.Fatalf("moderation got %s, want the event whole", s)
	}

	// The same event again (a client retrying) is not shown twice.
	if status, _ := postEvents(t, r.url, `{"id":"evt-17","type":"post.created","data":{"id":"p981","thread":"t42",
		"forum":"tech","author":{"id":"u7"},"message":"again"}}`); status != http.StatusAccepted {
		t.Fatalf("repeat: %d", status)
	}
	// A batch with a bad event: the good one is accepted and says so.
	status, ans = postEvents(t, r.url, `{"events":[
		{"id":"evt-18","type":"post.deleted","data":{"id":"p981","thread":"t42","forum":"tech"}},
		{"id":"evt-19","type":"post.created","data":{"id":"p982","forum":"tech","author":{"id":"u7"},"message":"x"}}]}`)
	if status != http.StatusBadRequest || fmt.Sprint(ans["accepted"]) != "[evt-18]" ||
		!strings.Contains(fmt.Sprint(ans["error"]), "data.thread") || !strings.Contains(fmt.Sprint(ans["error"]), "evt-19") {
		t.Fatalf("batch with a bad event: %d %v", status, ans)
	}
	if env := next("thread", thread); env["type"] != "post.deleted" {
		t.Fatalf("after the batch, thread got %v (a repeat of evt-17 must not arrive)", env)
	}

	// /v1/status shows the pipelines: two events each (the repeat of
	// evt-17 was stored once), every stage's in = out, nothing pending or
	// in flight.
	testutil.Eventually(t, 5*time.Second, func() error {
		_, body := get(t, r.url+"/v1/status")
		var st struct {
			Pipelines []struct {
				Pipeline string `json:"pipeline"`
				Acked    int    `json:"acked"`
				Stages   []struct {
					Stage   string `json:"stage"`
					In, Out int
				} `json:"stages"`
				Queue struct {
					Pending  int `json:"pending"`
					InFlight int `json:"in_flight"`
				} `json:"queue"`
			} `json:"pipelines"`
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err
		}
		if len(st.Pipelines) != 2 {
			return fmt.Errorf("status: %s", body)
		}
		for _, p := range st.Pipelines {
			if p.Acked != 2 || p.Queue.Pending != 0 || p.Queue.InFlight != 0 {
				return fmt.Errorf("pipeline %s: %s", p.Pipeline, body)
			}
			for _, s := range p.Stages {
				if s.In != s.Out || s.In == 0 {
					return fmt.Errorf("pipeline %s stage %s: in %d out %d", p.Pipeline, s.Stage, s.In, s.Out)
				}
			}
		}
		return nil
	})
}

// TestEventsBadInput: malformed requests get a JSON error with a stable
// code and nothing is queued.
func TestEventsBadInput(t *testing.T) {
	r := startApp(t, config.Config{})
	for _, tc := range []struct {
		body   string
		status int
		code   string
	}{
		{`not json`, 400, "invalid_json"},
		{`[]`, 400, "invalid_json"},
		{`{"events":[]}`, 400, "invalid_json"},
		{`{"type":"post.created"}`, 400, "invalid_event"},
		{`{"type":"Bad Type","data":{}}`, 400, "invalid_event"},
		{`{"id":"a\nb","type":"x","data":{}}`, 400, "invalid_event"},
		{`{"type":"x","data":{},"extra":1}`, 400, "invalid_event"},
	} {
		status, ans := postEvents(t, r.url, tc.body)
		errObj, _ := ans["error"].(map[string]any)
		if status != tc.status || errObj["code"] != tc.code {
			t.Errorf("%s: %d %v, want %d %s", tc.body, status, ans, tc.status, tc.code)
		}
	}
}
