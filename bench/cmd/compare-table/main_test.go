package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/bench"
)

// The table reads the JSON of internal/bench's Report: a renamed field
// there must fail here, not print zeros.
func TestReportFieldsMatchBench(t *testing.T) {
	in := bench.Report{Transport: "ws", Subscribers: 10, Channels: 2, Rate: 50, OK: true}
	in.Connect.Connected, in.Connect.PerSecond = 10, 1234
	in.Publish.PerSecond = 49
	in.Delivery.PerSecond, in.Delivery.Lost, in.Delivery.Duplicates = 490, 3, 4
	in.LatencyMS.P50, in.LatencyMS.P99 = 1.5, 9.5
	in.Server = &bench.ServerReport{RSSPerConnBytes: 2048, DeliveriesPerCPUS: 1e5}
	in.Problems = []string{"x"}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out report
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Transport != "ws" || out.Subscribers != 10 || out.Channels != 2 || out.Rate != 50 || !out.OK ||
		out.Connect.Connected != 10 || out.Connect.PerSecond != 1234 || out.Publish.PerSecond != 49 ||
		out.Delivery.PerSecond != 490 || out.Delivery.Lost != 3 || out.Delivery.Duplicates != 4 ||
		out.LatencyMS.P50 != 1.5 || out.LatencyMS.P99 != 9.5 || out.Server == nil ||
		out.Server.RSSPerConnBytes != 2048 || out.Server.DeliveriesPerCPUS != 1e5 || len(out.Problems) != 1 {
		t.Errorf("decoded %+v from %s", out, b)
	}
}

func TestMedianAndCell(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
	if c := cell([]float64{1000, 1500, 120000}, fmtInt); c != "1 500 (1 000–120 000)" {
		t.Errorf("cell = %q", c)
	}
	if c := cell([]float64{7, 7}, fmtInt); c != "7" {
		t.Errorf("cell of equal values = %q", c)
	}
	if c := cell(nil, fmtInt); c != "n/a" {
		t.Errorf("cell of nothing = %q", c)
	}
	for v, want := range map[float64]string{0.4: "400 µs", 6.71: "6.71 ms", 1220: "1.22 s"} {
		if got := fmtMS(v); got != want {
			t.Errorf("fmtMS(%v) = %q, want %q", v, got, want)
		}
	}
	if got := fmtKiB(10547); got != "10.3 KiB" {
		t.Errorf("fmtKiB = %q", got)
	}
}

func TestTable(t *testing.T) {
	dir := t.TempDir()
	put := func(name string, r bench.Report) {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idle := func(rss, cps float64) bench.Report {
		r := bench.Report{Transport: "sse", Subscribers: 15000, Channels: 100, OK: true}
		r.Connect.PerSecond = cps
		r.Server = &bench.ServerReport{RSSPerConnBytes: rss}
		return r
	}
	put("idle-sse.herald.1.json", idle(2048, 20000))
	put("idle-sse.herald.2.json", idle(1024, 10000))
	put("idle-sse.nchan.1.json", idle(10240, 14000))
	bad := idle(10240, 14000)
	bad.OK, bad.Problems = false, []string{"3 deliveries lost"}
	put("idle-sse.nchan.2.json", bad)
	if err := os.WriteFile(filepath.Join(dir, "environment.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	// 10 s; machine busy 25 s of CPU, server 10, bench 10: 0.5 cores elsewhere.
	m := `{"wall_us":10000000,"clk_tck":100,"cpus":2,"machine_busy_ticks":2500,"server_ticks":1000,"bench_ticks":1000}`
	if err := os.WriteFile(filepath.Join(dir, "idle-sse.nchan.1.machine.json"), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}

	runs, err := load(dir)
	if err != nil || len(runs) != 4 {
		t.Fatalf("load: %d runs, %v", len(runs), err)
	}
	var b strings.Builder
	write(&b, runs, []string{"idle-sse"}, []string{"herald", "nchan"})
	out := b.String()
	for _, want := range []string{
		"| idle-sse (15 000 × SSE, 100 ch, idle) | herald | 2/2 | 1.50 KiB (1.00 KiB–2.00 KiB) | 15 000 (10 000–20 000) | – |",
		"| idle-sse (15 000 × SSE, 100 ch, idle) | nchan | 1/2 | 10.0 KiB | 14 000 | – |",
		"| – | – | 0.50 cores |\n",
		"| – | – | n/a |\n",
		"| idle-sse | 0.15× | 1.07× | – |",
		"- idle-sse, nchan, run 2: 3 deliveries lost",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
