package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
	"github.com/heraldhq/herald/pipeline/jetstream"
)

// dlqServer is an API whose dead-letter routes serve the pipelines
// "orders" and "audit" of a real queue on an embedded JetStream.
type dlqServer struct {
	*server
	q   *jetstream.Queue
	nc  *nats.Conn
	src map[string]pipeline.Source
}

func startDLQServer(t *testing.T, keys ...string) *dlqServer {
	t.Helper()
	ns, err := jetstream.Embedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := jetstream.ConnectEmbedded(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := jetstream.Open(ctx, nc, jetstream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	d := &dlqServer{q: q, nc: nc, src: map[string]pipeline.Source{}}
	for _, name := range []string{"orders", "audit"} {
		if d.src[name], err = q.Source(ctx, name, pipeline.SourceConfig{}); err != nil {
			t.Fatal(err)
		}
	}
	d.server = startServer(t, hub.Config{}, Config{APIKeys: keys, DeadLetters: func(name string) (pipeline.DeadLetters, bool) {
		if d.src[name] == nil {
			return nil, false
		}
		return q.DeadLetters(name), true
	}})
	return d
}

// fetch claims the next event of pipeline's consumer.
func (d *dlqServer) fetch(t *testing.T, pipe string) pipeline.Job {
	t.Helper()
	jobs, err := d.src[pipe].Fetch(context.Background(), 1, 5*time.Second)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("fetch from %s: %d jobs, %v", pipe, len(jobs), err)
	}
	return jobs[0]
}

// deadLetter enqueues an event per id and dead-letters each from pipe's
// consumer with the reason "bad <id>", as a pipeline giving up would.
func (d *dlqServer) deadLetter(t *testing.T, pipe string, ids ...string) {
	t.Helper()
	ctx := context.Background()
	for _, id := range ids {
		ev := pipeline.Event{ID: id, Type: "order.created", Data: json.RawMessage(`{"n":"` + id + `"}`)}
		if err := d.q.Enqueue(ctx, []pipeline.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	for range ids {
		j := d.fetch(t, pipe)
		if err := j.DeadLetter(ctx, pipeline.Permanentf("bad %s", j.Event().ID), 3); err != nil {
			t.Fatal(err)
		}
	}
	// Every pipeline sees every event: let the other one finish them.
	for other := range d.src {
		if other == pipe {
			continue
		}
		for range ids {
			if err := d.fetch(t, other).Ack(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// list returns pipe's dead letters over the API.
func (d *dlqServer) list(t *testing.T, pipe, query string, headers ...string) []pipeline.DeadLetter {
	t.Helper()
	r := do(t, "GET", d.url+"/v1/admin/pipelines/"+pipe+"/dead-letters"+query, "", headers...)
	if r.status == 200 && !strings.Contains(string(r.body), `"dead_letters":[`) {
		t.Fatalf("list is not an array: %s", r)
	}
	return decode[DeadLetterList](t, r).DeadLetters
}

// ids returns the event IDs of list, in order.
func ids(list []pipeline.DeadLetter) string {
	var s []string
	for _, dl := range list {
		s = append(s, dl.Event.ID)
	}
	return strings.Join(s, ",")
}

func TestDeadLetters(t *testing.T) {
	d := startDLQServer(t)
	start := time.Now()
	d.deadLetter(t, "orders", "o1", "o2", "o3", "o4")

	list := d.list(t, "orders", "")
	if ids(list) != "o1,o2,o3,o4" {
		t.Fatalf("dead letters %s, want o1..o4 oldest first", ids(list))
	}
	first := list[0]
	if first.Group != "orders" || first.Error != "bad o1" || first.Attempts != 3 || first.Seq == 0 ||
		first.Event.Type != "order.created" || string(first.Event.Data) != `{"n":"o1"}` || first.At.Before(start.Add(-time.Second)) {
		t.Fatalf("dead letter %+v", first)
	}
	seq := map[string]uint64{}
	for _, dl := range list {
		seq[dl.Event.ID] = dl.Seq
	}
	if got := ids(d.list(t, "orders", "?limit=2")); got != "o1,o2" {
		t.Fatalf("limit=2: %s", got)
	}
	if got := d.list(t, "audit", ""); len(got) != 0 {
		t.Fatalf("audit has %d dead letters, want none", len(got))
	}

	// Replay one: it comes back to the orders consumer, and only there.
	r := decode[ReplayResult](t, do(t, "POST", d.url+"/v1/admin/pipelines/orders/dead-letters/replay",
		fmt.Sprintf(`{"seqs":[%d,%d]}`, seq["o2"], seq["o2"]), jsonCT))
	if r.Replayed != 1 || r.Error != nil {
		t.Fatalf("replay o2 (twice in the request): %+v", r)
	}
	j := d.fetch(t, "orders")
	if ev := j.Event(); ev.ID != "o2" || string(ev.Data) != `{"n":"o2"}` || ev.Type != "order.created" {
		t.Fatalf("replayed event %+v", ev)
	}
	if err := j.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if jobs, _ := d.src["audit"].Fetch(context.Background(), 1, 100*time.Millisecond); len(jobs) != 0 {
		t.Fatalf("audit received the replay of orders' dead letter: %s", jobs[0].Event().ID)
	}
	if got := ids(d.list(t, "orders", "")); got != "o1,o3,o4" {
		t.Fatalf("after replaying o2: %s", got)
	}

	// Drop one; dropping it again, or through another pipeline, is 404.
	rd := do(t, "DELETE", fmt.Sprintf("%s/v1/admin/pipelines/orders/dead-letters/%d", d.url, seq["o3"]), "")
	if rd.status != 204 || len(rd.body) != 0 {
		t.Fatalf("drop o3: %s", rd)
	}
	wantError(t, do(t, "DELETE", fmt.Sprintf("%s/v1/admin/pipelines/orders/dead-letters/%d", d.url, seq["o3"]), ""),
		404, CodeUnknownDeadLetter)
	wantError(t, do(t, "DELETE", fmt.Sprintf("%s/v1/admin/pipelines/audit/dead-letters/%d", d.url, seq["o4"]), ""),
		404, CodeUnknownDeadLetter)
	wantError(t, do(t, "DELETE", d.url+"/v1/admin/pipelines/orders/dead-letters/999999", ""), 404, CodeUnknownDeadLetter)
	if got := ids(d.list(t, "orders", "")); got != "o1,o4" {
		t.Fatalf("after dropping o3: %s", got)
	}

	// A replay stops at a seq that is not a dead letter of the pipeline,
	// and says how many it replayed before it.
	rr := do(t, "POST", d.url+"/v1/admin/pipelines/orders/dead-letters/replay",
		fmt.Sprintf(`{"seqs":[%d,%d,%d]}`, seq["o1"], seq["o3"], seq["o4"]))
	partial := wantError(t, rr, 404, CodeUnknownDeadLetter)
	var pr ReplayResult
	if err := json.Unmarshal(rr.body, &pr); err != nil || pr.Replayed != 1 || !strings.Contains(partial.Message, fmt.Sprint(seq["o3"])) {
		t.Fatalf("partial replay: %s", rr)
	}
	j = d.fetch(t, "orders")
	if ev := j.Event(); ev.ID != "o1" {
		t.Fatalf("partial replay delivered %s, want o1", ev.ID)
	}
	if err := j.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := ids(d.list(t, "orders", "")); got != "o4" {
		t.Fatalf("after the partial replay: %s", got)
	}

	// No body replays everything.
	d.deadLetter(t, "orders", "o5")
	if r := decode[ReplayResult](t, do(t, "POST", d.url+"/v1/admin/pipelines/orders/dead-letters/replay", "")); r.Replayed != 2 {
		t.Fatalf("replay all: %+v", r)
	}
	got := map[string]bool{}
	for range 2 {
		got[d.fetch(t, "orders").Event().ID] = true
	}
	if !got["o4"] || !got["o5"] {
		t.Fatalf("replay all delivered %v", got)
	}
	if list := d.list(t, "orders", ""); len(list) != 0 {
		t.Fatalf("dead letters after replaying all: %s", ids(list))
	}
}

func TestDeadLettersBadRequests(t *testing.T) {
	d := startDLQServer(t)
	d.deadLetter(t, "orders", "x1")
	base := d.url + "/v1/admin/pipelines/"
	tests := []struct {
		method, path, body, ct string
		status                 int
		code                   string
	}{
		{"GET", "nope/dead-letters", "", "", 404, CodeUnknownPipeline},
		{"POST", "nope/dead-letters/replay", "", "", 404, CodeUnknownPipeline},
		{"DELETE", "nope/dead-letters/1", "", "", 404, CodeUnknownPipeline},
		{"GET", "orders/dead-letters?limit=0", "", "", 400, "invalid_request"},
		{"GET", "orders/dead-letters?limit=-1", "", "", 400, "invalid_request"},
		{"GET", "orders/dead-letters?limit=ten", "", "", 400, "invalid_request"},
		{"GET", "orders/dead-letters?limit=", "", "", 400, "invalid_request"},
		{"GET", "orders/dead-letters?limit=10001", "", "", 400, "invalid_request"},
		{"DELETE", "orders/dead-letters/0", "", "", 400, "invalid_request"},
		{"DELETE", "orders/dead-letters/-1", "", "", 400, "invalid_request"},
		{"DELETE", "orders/dead-letters/one", "", "", 400, "invalid_request"},
		{"DELETE", "orders/dead-letters/18446744073709551616", "", "", 400, "invalid_request"},
		{"POST", "orders/dead-letters/replay", `{"seqs":[1`, jsonCT, 400, "invalid_json"},
		{"POST", "orders/dead-letters/replay", `[1]`, jsonCT, 400, "invalid_json"},
		{"POST", "orders/dead-letters/replay", `{"seqs":[1]} {}`, jsonCT, 400, "invalid_json"},
		{"POST", "orders/dead-letters/replay", `{"seqs":[]}`, jsonCT, 400, "invalid_request"},
		{"POST", "orders/dead-letters/replay", `{"seqs":[0]}`, jsonCT, 400, "invalid_request"},
		{"POST", "orders/dead-letters/replay", `{"seqs":[-1]}`, jsonCT, 400, "invalid_request"},
		{"POST", "orders/dead-letters/replay", `{"seqs":["1"]}`, jsonCT, 400, "invalid_request"},
		{"POST", "orders/dead-letters/replay", `{"seq":[1]}`, jsonCT, 400, "invalid_request"},
		{"POST", "orders/dead-letters/replay", `{"seqs":[1]}`, "Content-Type: text/plain", 415, "unsupported_media_type"},
		{"POST", "orders/dead-letters/replay", `{"seqs":[` + strings.Repeat("1,", MaxReplaySeqs) + `1]}`, jsonCT, 400, "invalid_request"},
		{"PUT", "orders/dead-letters/1", "", "", 405, "method_not_allowed"},
	}
	for _, tt := range tests {
		var h []string
		if tt.ct != "" {
			h = append(h, tt.ct)
		}
		e := wantError(t, do(t, tt.method, base+tt.path, tt.body, h...), tt.status, tt.code)
		if tt.status == 400 && e.Message == "" {
			t.Errorf("%s %s: no message", tt.method, tt.path)
		}
	}
	// Nothing was replayed or dropped by the refused requests.
	if got := ids(d.list(t, "orders", "?limit=10000")); got != "x1" {
		t.Fatalf("dead letters after bad requests: %q", got)
	}
}

func TestDeadLettersAuth(t *testing.T) {
	const key = "dlq-key"
	d := startDLQServer(t, key)
	d.deadLetter(t, "orders", "a1")
	seq := d.list(t, "orders", "", "Authorization: Bearer "+key)[0].Seq
	routes := []struct{ method, path, body string }{
		{"GET", "/v1/admin/pipelines/orders/dead-letters", ""},
		{"POST", "/v1/admin/pipelines/orders/dead-letters/replay", `{"seqs":[999]}`},
		{"DELETE", "/v1/admin/pipelines/orders/dead-letters/999", ""},
		{"GET", "/v1/admin/pipelines/nope/dead-letters", ""}, // no pipeline names leak
	}
	for _, rt := range routes {
		for _, h := range [][]string{nil, {"Authorization: Bearer wrong"}} {
			wantError(t, do(t, rt.method, d.url+rt.path, rt.body, h...), 401, "unauthorized")
		}
	}
	if got := d.list(t, "orders", "", "Authorization: Bearer "+key); len(got) != 1 {
		t.Fatalf("refused requests changed the dead letters: %s", ids(got))
	}
	rd := do(t, "DELETE", fmt.Sprintf("%s/v1/admin/pipelines/orders/dead-letters/%d", d.url, seq), "", "Authorization: Bearer "+key)
	if rd.status != 204 {
		t.Fatalf("drop with the key: %s", rd)
	}

	// No keys: loopback only.
	open := startDLQServer(t)
	req := httptest.NewRequest("GET", "/v1/admin/pipelines/orders/dead-letters", nil)
	req.RemoteAddr = "203.0.113.7:4000"
	rec := httptest.NewRecorder()
	open.api.ServeHTTP(rec, req)
	wantError(t, reply{rec.Code, rec.Header(), rec.Body.Bytes()}, 403, "forbidden")

	// No DeadLetters configured: no such routes.
	plain := startServer(t, hub.Config{}, Config{})
	wantError(t, do(t, "GET", plain.url+"/v1/admin/pipelines/orders/dead-letters", ""), 404, "not_found")
}

func TestDeadLettersQueueDown(t *testing.T) {
	d := startDLQServer(t)
	d.deadLetter(t, "orders", "q1")
	seq := d.list(t, "orders", "")[0].Seq
	d.nc.Close()
	for _, rt := range []struct{ method, path string }{
		{"GET", "/v1/admin/pipelines/orders/dead-letters"},
		{"DELETE", fmt.Sprintf("/v1/admin/pipelines/orders/dead-letters/%d", seq)},
		{"POST", "/v1/admin/pipelines/orders/dead-letters/replay"},
	} {
		r := do(t, rt.method, d.url+rt.path, "")
		wantError(t, r, 503, CodeQueueUnavailable)
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s: 503 without Retry-After", rt.method, rt.path)
		}
	}
}

// The API relies on the queue reporting a missing dead letter as
// pipeline.ErrNoDeadLetter; check it where it comes from too.
func TestJetStreamNoDeadLetter(t *testing.T) {
	d := startDLQServer(t)
	d.deadLetter(t, "orders", "n1")
	ctx := context.Background()
	seq := d.list(t, "orders", "")[0].Seq
	orders, audit := d.q.DeadLetters("orders"), d.q.DeadLetters("audit")
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, pipeline.ErrNoDeadLetter) {
			t.Errorf("%s: %v, want ErrNoDeadLetter", what, err)
		}
	}
	check("drop a missing seq", orders.Drop(ctx, seq+100))
	check("drop another pipeline's", audit.Drop(ctx, seq))
	_, err := audit.Replay(ctx, seq)
	check("replay another pipeline's", err)
	_, err = orders.Replay(ctx, seq+100)
	check("replay a missing seq", err)
	if err := orders.Drop(ctx, seq); err != nil {
		t.Fatal(err)
	}
	_, err = orders.Replay(ctx, seq)
	check("replay a dropped one", err)
}
