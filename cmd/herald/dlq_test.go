package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/api"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/pipeline"
	"github.com/heraldhq/herald/pipeline/jetstream"
)

const testKey = "cli-key"

// dlqServer is the real API over a real embedded JetStream queue with one
// pipeline, "orders", whose consumer the test drives by hand.
type dlqServer struct {
	url string
	q   *jetstream.Queue
	src pipeline.Source
}

func startDLQServer(t *testing.T) *dlqServer {
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
	ctx := context.Background()
	q, err := jetstream.Open(ctx, nc, jetstream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := q.Source(ctx, "orders", pipeline.SourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	a := api.New(testutil.NewHub(t, hub.Config{}), api.Config{
		APIKeys: []string{testKey},
		DeadLetters: func(name string) (pipeline.DeadLetters, bool) {
			return q.DeadLetters(name), name == "orders"
		},
	})
	ts := httptest.NewServer(a)
	t.Cleanup(ts.Close)
	return &dlqServer{url: ts.URL, q: q, src: src}
}

func (d *dlqServer) fetch(t *testing.T) pipeline.Job {
	t.Helper()
	jobs, err := d.src.Fetch(context.Background(), 1, 5*time.Second)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("fetch: %d jobs, %v", len(jobs), err)
	}
	return jobs[0]
}

// deadLetter enqueues an event per id and dead-letters it with reason.
func (d *dlqServer) deadLetter(t *testing.T, reason string, ids ...string) []uint64 {
	t.Helper()
	ctx := context.Background()
	for _, id := range ids {
		ev := pipeline.Event{ID: id, Type: "order.paid", Data: json.RawMessage(`{}`)}
		if err := d.q.Enqueue(ctx, []pipeline.Event{ev}); err != nil {
			t.Fatal(err)
		}
		if err := d.fetch(t).DeadLetter(ctx, pipeline.Permanentf("%s", reason), 2); err != nil {
			t.Fatal(err)
		}
	}
	list, err := d.q.DeadLetters("orders").List(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	seqs := make([]uint64, len(list))
	for i, dl := range list {
		seqs[i] = dl.Seq
	}
	return seqs
}

// herald runs the CLI in-process against d.
func herald(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestDLQCommands(t *testing.T) {
	d := startDLQServer(t)
	t.Setenv(envURL, d.url)
	t.Setenv(envAPIKey, testKey)
	seqs := d.deadLetter(t, "render: template \"x\" failed\x1b[31m\tat line 2", "ord-1", "ord-2", "ord-3")

	// list: a table, one row per dead letter, oldest first, the error on
	// one line.
	code, out, errs := herald(t, "dlq", "list", "orders")
	if code != 0 {
		t.Fatalf("list: exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !regexp.MustCompile(`^SEQ\s+EVENT ID\s+TYPE\s+ATTEMPTS\s+AGE\s+ERROR$`).MatchString(lines[0]) {
		t.Fatalf("list output:\n%s", out)
	}
	row := regexp.MustCompile(fmt.Sprintf(`^%d\s+ord-1\s+order\.paid\s+2\s+\d+s\s+render: template "x" failed \[31m at line 2$`, seqs[0]))
	if !row.MatchString(lines[1]) || !strings.Contains(lines[3], "ord-3") {
		t.Fatalf("list rows:\n%s", out)
	}

	// --limit after the pipeline, and --json.
	code, out, errs = herald(t, "dlq", "list", "orders", "--limit", "2", "--json")
	var list api.DeadLetterList
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list.DeadLetters) != 2 ||
		list.DeadLetters[1].Event.ID != "ord-2" || list.DeadLetters[1].Error != "render: template \"x\" failed\x1b[31m\tat line 2" {
		t.Fatalf("list --json: exit %d, %s %s", code, out, errs)
	}
	if !strings.Contains(errs, "there may be more") {
		t.Fatalf("list --limit 2 of 3 does not say there may be more: %q", errs)
	}

	// replay one: the event comes back to the pipeline.
	code, out, errs = herald(t, "dlq", "replay", "orders", fmt.Sprint(seqs[1]))
	if code != 0 || !strings.Contains(out, "replayed 1 dead letter of pipeline orders") {
		t.Fatalf("replay: exit %d, %q %q", code, out, errs)
	}
	j := d.fetch(t)
	if j.Event().ID != "ord-2" {
		t.Fatalf("replayed %s, want ord-2", j.Event().ID)
	}
	if err := j.Ack(context.Background()); err != nil {
		t.Fatal(err)
	}

	// drop one; dropping it again fails with the server's reason.
	if code, out, errs = herald(t, "dlq", "drop", "orders", fmt.Sprint(seqs[0])); code != 0 || !strings.Contains(out, "dropped") {
		t.Fatalf("drop: exit %d, %q %q", code, out, errs)
	}
	code, _, errs = herald(t, "dlq", "drop", "orders", fmt.Sprint(seqs[0]))
	if code != 1 || !strings.Contains(errs, "404 unknown_dead_letter") {
		t.Fatalf("drop again: exit %d, %q", code, errs)
	}

	// replay without seqs: all that are left (ord-3).
	if code, out, errs = herald(t, "dlq", "replay", "orders"); code != 0 || !strings.Contains(out, "replayed 1 ") {
		t.Fatalf("replay all: exit %d, %q %q", code, out, errs)
	}
	if id := d.fetch(t).Event().ID; id != "ord-3" {
		t.Fatalf("replay all delivered %s, want ord-3", id)
	}
	if code, out, _ = herald(t, "dlq", "list", "orders"); code != 0 || out != "pipeline orders has no dead letters\n" {
		t.Fatalf("empty list: exit %d, %q", code, out)
	}
}

func TestDLQErrors(t *testing.T) {
	d := startDLQServer(t)
	seqs := d.deadLetter(t, "boom", "e-1")
	t.Setenv(envURL, "")
	t.Setenv(envAPIKey, "")
	url, key := "--url="+d.url, "--api-key="+testKey
	seq := fmt.Sprint(seqs[0])
	tests := []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"dlq"}, 2, "", "Usage:"},
		{[]string{"dlq", "help"}, 0, "herald dlq drop PIPELINE SEQ", ""},
		{[]string{"help", "dlq"}, 0, "herald dlq list PIPELINE", ""},
		{[]string{"dlq", "purge"}, 2, "", `unknown command "purge"`},
		{[]string{"dlq", "list", "-h"}, 0, "", "-limit"},
		{[]string{"dlq", "list"}, 2, "", "missing arguments"},
		{[]string{"dlq", "list", "orders", "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"dlq", "list", "orders", "--limit", "0"}, 2, "", "--limit must be from 1 to 10000"},
		{[]string{"dlq", "list", "orders", "--nope"}, 2, "", "flag provided but not defined"},
		{[]string{"dlq", "list", "orders", "--url", "127.0.0.1:8080"}, 2, "", "want http://"},
		{[]string{"dlq", "drop", "orders"}, 2, "", "missing arguments"},
		{[]string{"dlq", "drop", "orders", "0", url, key}, 2, "", "not a dead letter's sequence number"},
		{[]string{"dlq", "replay", "orders", "x", url, key}, 2, "", `"x" is not a dead letter's sequence number`},
		// The server's refusals: exit 1 with its message and code.
		{[]string{"dlq", "list", "orders", url}, 1, "", "401 unauthorized"},
		{[]string{"dlq", "list", "orders", url, "--api-key", "wrong"}, 1, "", "401 unauthorized"},
		{[]string{"dlq", "list", "nope", url, key}, 1, "", `no pipeline is named "nope" (404 unknown_pipeline)`},
		{[]string{"dlq", "replay", "orders", "999", url, key}, 1, "", "404 unknown_dead_letter"},
		{[]string{"dlq", "list", "orders", "--url", "http://127.0.0.1:1", key}, 1, "", "cannot reach the server at http://127.0.0.1:1"},
		// Flags before the arguments work too, and "--" ends them.
		{[]string{"dlq", "list", url, key, "--", "orders"}, 0, "e-1", ""},
	}
	for _, tt := range tests {
		code, out, errs := herald(t, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(errs, tt.stderr) {
			t.Errorf("herald %v: exit %d, stdout %q, stderr %q; want exit %d, stdout ∋ %q, stderr ∋ %q",
				tt.args, code, out, errs, tt.code, tt.stdout, tt.stderr)
		}
	}
	// A replay that stops part way says how far it got.
	d.deadLetter(t, "boom", "e-2")
	code, out, errs := herald(t, "dlq", "replay", "orders", seq, "424242", url, key)
	if code != 1 || !strings.Contains(out, "replayed 1 dead letter ") || !strings.Contains(errs, "no dead letter 424242") {
		t.Fatalf("partial replay: exit %d, %q %q", code, out, errs)
	}
	// None of the refused commands removed e-2.
	if code, out, _ := herald(t, "dlq", "list", "orders", url, key); code != 0 || strings.Contains(out, "e-1") || !strings.Contains(out, "e-2") {
		t.Fatalf("after the errors: exit %d\n%s", code, out)
	}
}

func TestDLQTableCells(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 42 * time.Second: "42s", 5*time.Minute + 3*time.Second: "5m3s",
		2*time.Hour + 10*time.Minute + 59*time.Second: "2h10m", 76*time.Hour + 30*time.Minute: "3d4h",
	} {
		if got := age(d); got != want {
			t.Errorf("age(%v) = %q, want %q", d, got, want)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"", "-"}, {"a\x1bb\tc", "a b c"}, {"héllo wörld", "héllo w…"}, {"12345678", "12345678"},
	} {
		if got := cell(tt.in, 8); got != tt.want {
			t.Errorf("cell(%q, 8) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
