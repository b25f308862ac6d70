// Command compare-table prints the markdown table of bench/compare.sh: for
// every scenario and server, the median and min–max over the runs of the
// figures `herald bench --json` reported.
//
//	go run ./bench/cmd/compare-table [-scenarios "idle-sse fanout-ws"] [-servers herald,nchan] DIR
//
// DIR holds the reports as SCENARIO.SERVER.RUN.json (and, optional, the
// machine's CPU use during each as SCENARIO.SERVER.RUN.machine.json). Scenarios and servers
// not named by the flags are listed after the named ones, in name order.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// report holds the fields of internal/bench's Report that the table uses
// (same JSON names; main_test.go checks them against the real type).
type report struct {
	Transport   string  `json:"transport"`
	Subscribers int     `json:"subscribers"`
	Channels    int     `json:"channels"`
	Rate        float64 `json:"rate"`
	Connect     struct {
		Connected int64   `json:"connected"`
		PerSecond float64 `json:"per_second"`
	} `json:"connect"`
	Publish struct {
		PerSecond float64 `json:"per_second"`
	} `json:"publish"`
	Delivery struct {
		PerSecond  float64 `json:"per_second"`
		Lost       uint64  `json:"lost"`
		Duplicates uint64  `json:"duplicates"`
	} `json:"delivery"`
	LatencyMS struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	} `json:"latency_ms"`
	Server *struct {
		RSSPerConnBytes   float64 `json:"rss_per_conn_bytes"`
		DeliveriesPerCPUS float64 `json:"deliveries_per_cpu_s"`
	} `json:"server"`
	Problems []string `json:"problems"`
	OK       bool     `json:"ok"`

	// From SCENARIO.SERVER.RUN.machine.json, written by compare.sh, when
	// present: the machine's CPU use while the bench ran.
	Machine *machine `json:"-"`
}

// machine is what compare.sh measured around one bench run, in clock
// ticks: the whole machine busy, the server's processes, and the bench
// with its worker processes.
type machine struct {
	WallUS           int64 `json:"wall_us"`
	ClkTck           int64 `json:"clk_tck"`
	CPUs             int   `json:"cpus"`
	MachineBusyTicks int64 `json:"machine_busy_ticks"`
	ServerTicks      int64 `json:"server_ticks"`
	BenchTicks       int64 `json:"bench_ticks"`
}

// otherCores is the CPU the rest of the machine used during the run, in
// cores on average: the busy time neither the server nor the bench used
// (other processes, and kernel work charged to no process).
func (m *machine) otherCores() (float64, bool) {
	if m == nil || m.WallUS <= 0 || m.ClkTck <= 0 {
		return 0, false
	}
	other := float64(m.MachineBusyTicks-m.ServerTicks-m.BenchTicks) / float64(m.ClkTck)
	return max(other, 0) / (float64(m.WallUS) / 1e6), true
}

// run is one report and where it came from.
type run struct {
	scenario, server, id string
	rep                  report
}

func main() {
	scenarios := flag.String("scenarios", "", "scenario order (space- or comma-separated)")
	servers := flag.String("servers", "herald,nchan", "server order (space- or comma-separated); the first two are compared in the ratio table")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: compare-table [flags] DIR\n\nReads DIR/SCENARIO.SERVER.RUN.json (herald bench --json) and prints a markdown table.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	runs, err := load(flag.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "compare-table: %v\n", err)
		os.Exit(1)
	}
	if len(runs) == 0 {
		fmt.Fprintf(os.Stderr, "compare-table: no SCENARIO.SERVER.RUN.json in %s\n", flag.Arg(0))
		os.Exit(1)
	}
	write(os.Stdout, runs, split(*scenarios), split(*servers))
}

func split(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

// load reads every SCENARIO.SERVER.RUN.json in dir.
func load(dir string) ([]run, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var runs []run
	for _, name := range names {
		parts := strings.Split(strings.TrimSuffix(filepath.Base(name), ".json"), ".")
		if len(parts) != 3 {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		r := run{scenario: parts[0], server: parts[1], id: parts[2]}
		if err := json.Unmarshal(b, &r.rep); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		mname := strings.TrimSuffix(name, ".json") + ".machine.json"
		if b, err := os.ReadFile(mname); err == nil {
			r.rep.Machine = new(machine)
			if err := json.Unmarshal(b, r.rep.Machine); err != nil {
				return nil, fmt.Errorf("%s: %w", mname, err)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// order returns the names present in runs (key picks them): those in want
// first, in its order, then the others sorted.
func order(runs []run, want []string, key func(run) string) []string {
	var out, rest []string
	seen := map[string]bool{}
	for _, r := range runs {
		seen[key(r)] = true
	}
	for _, w := range want {
		if seen[w] && !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	for name := range seen {
		if !slices.Contains(out, name) {
			rest = append(rest, name)
		}
	}
	slices.Sort(rest)
	return append(out, rest...)
}

// column is one figure of the table.
type column struct {
	title   string
	publish bool // only meaningful when messages were published
	value   func(*report) (float64, bool)
	format  func(float64) string
}

var columns = []column{
	{"server RSS / connection", false, func(r *report) (float64, bool) {
		if r.Server == nil {
			return 0, false
		}
		return r.Server.RSSPerConnBytes, true
	}, fmtKiB},
	{"connections/s", false, func(r *report) (float64, bool) { return r.Connect.PerSecond, r.Connect.PerSecond > 0 }, fmtInt},
	{"published msg/s", true, func(r *report) (float64, bool) { return r.Publish.PerSecond, true }, fmtInt},
	{"deliveries/s", true, func(r *report) (float64, bool) { return r.Delivery.PerSecond, true }, fmtInt},
	{"deliveries / server CPU-s", true, func(r *report) (float64, bool) {
		if r.Server == nil || r.Server.DeliveriesPerCPUS <= 0 {
			return 0, false
		}
		return r.Server.DeliveriesPerCPUS, true
	}, fmtInt},
	{"latency p50", true, func(r *report) (float64, bool) { return r.LatencyMS.P50, true }, fmtMS},
	{"latency p99", true, func(r *report) (float64, bool) { return r.LatencyMS.P99, true }, fmtMS},
	{"lost", true, func(r *report) (float64, bool) { return float64(r.Delivery.Lost), true }, fmtInt},
	{"dup", true, func(r *report) (float64, bool) { return float64(r.Delivery.Duplicates), true }, fmtInt},
	{"rest of the machine", false, func(r *report) (float64, bool) { return r.Machine.otherCores() }, fmtCores},
}

// ratios are the columns compared between the first two servers.
var ratios = []struct {
	title string
	col   int // index in columns
	note  string
}{
	{"RSS / connection", 0, "lower is better"},
	{"connections/s", 1, "higher is better"},
	{"deliveries / server CPU-s", 4, "higher is better"},
}

func write(w io.Writer, runs []run, wantScenarios, wantServers []string) {
	scenarios := order(runs, wantScenarios, func(r run) string { return r.scenario })
	servers := order(runs, wantServers, func(r run) string { return r.server })
	group := func(sc, sv string) []report {
		var reps []report
		for _, r := range runs {
			if r.scenario == sc && r.server == sv {
				reps = append(reps, r.rep)
			}
		}
		return reps
	}

	fmt.Fprintln(w, "Median over the runs, (min–max) when they differ. \"rest of the machine\": CPU that neither the")
	fmt.Fprintln(w, "server nor the bench used while the bench ran (other processes, unattributed kernel work).")
	fmt.Fprintln(w)
	head := []string{"scenario", "server", "runs OK"}
	for _, c := range columns {
		head = append(head, c.title)
	}
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat("---|", len(head)))
	medians := map[[2]string][]float64{}
	for _, sc := range scenarios {
		for _, sv := range servers {
			reps := group(sc, sv)
			if len(reps) == 0 {
				continue
			}
			ok := 0
			for _, r := range reps {
				if r.OK {
					ok++
				}
			}
			row := []string{describe(sc, reps[0]), sv, fmt.Sprintf("%d/%d", ok, len(reps))}
			med := make([]float64, len(columns))
			for i, c := range columns {
				med[i] = math.NaN()
				if c.publish && reps[0].Rate == 0 {
					row = append(row, "–")
					continue
				}
				var vals []float64
				for j := range reps {
					if v, ok := c.value(&reps[j]); ok {
						vals = append(vals, v)
					}
				}
				row = append(row, cell(vals, c.format))
				if len(vals) > 0 {
					med[i] = median(vals)
				}
			}
			medians[[2]string{sc, sv}] = med
			fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
		}
	}

	if len(servers) >= 2 {
		a, b := servers[0], servers[1]
		fmt.Fprintf(w, "\n%s ÷ %s, ratio of the medians:\n\n", a, b)
		head := []string{"scenario"}
		for _, r := range ratios {
			head = append(head, fmt.Sprintf("%s (%s)", r.title, r.note))
		}
		fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat("---|", len(head)))
		for _, sc := range scenarios {
			ma, okA := medians[[2]string{sc, a}]
			mb, okB := medians[[2]string{sc, b}]
			if !okA || !okB {
				continue
			}
			row := []string{sc}
			for _, r := range ratios {
				x, y := ma[r.col], mb[r.col]
				if math.IsNaN(x) || math.IsNaN(y) || y == 0 {
					row = append(row, "–")
					continue
				}
				row = append(row, fmt.Sprintf("%.2f×", x/y))
			}
			fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
		}
	}

	var notes []string
	for _, r := range runs {
		if !r.rep.OK {
			notes = append(notes, fmt.Sprintf("- %s, %s, run %s: %s", r.scenario, r.server, r.id, strings.Join(r.rep.Problems, "; ")))
		}
	}
	if len(notes) > 0 {
		slices.Sort(notes)
		fmt.Fprintf(w, "\nRuns that did not end OK:\n\n%s\n", strings.Join(notes, "\n"))
	}
}

// describe names a scenario with its parameters.
func describe(name string, r report) string {
	load := "idle"
	if r.Rate > 0 {
		load = fmt.Sprintf("%s msg/s", fmtInt(r.Rate))
	}
	return fmt.Sprintf("%s (%s × %s, %d ch, %s)", name, fmtInt(float64(r.Subscribers)), strings.ToUpper(r.Transport), r.Channels, load)
}

// cell formats the median of vals and, when they differ, their range.
func cell(vals []float64, format func(float64) string) string {
	if len(vals) == 0 {
		return "n/a"
	}
	m, lo, hi := median(vals), slices.Min(vals), slices.Max(vals)
	s := format(m)
	if l, h := format(lo), format(hi); l != h {
		s += fmt.Sprintf(" (%s–%s)", l, h)
	}
	return s
}

// median of vals (not empty); the mean of the middle two for an even count.
func median(vals []float64) float64 {
	s := slices.Clone(vals)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// fmtInt rounds to an integer, digits grouped by three with spaces.
func fmtInt(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	neg := v < 0
	digits := strconv.FormatInt(int64(math.Round(math.Abs(v))), 10)
	var b strings.Builder
	if neg && digits != "0" {
		b.WriteByte('-')
	}
	for i, c := range digits {
		if i > 0 && (len(digits)-i)%3 == 0 {
			b.WriteString(" ")
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtKiB(b float64) string {
	kib := b / 1024
	switch {
	case math.Abs(kib) < 10:
		return fmt.Sprintf("%.2f KiB", kib)
	case math.Abs(kib) < 100:
		return fmt.Sprintf("%.1f KiB", kib)
	}
	return fmt.Sprintf("%.0f KiB", kib)
}

func fmtCores(c float64) string { return fmt.Sprintf("%.2f cores", c) }

func fmtMS(ms float64) string {
	switch {
	case ms <= 0:
		return "0"
	case ms < 1:
		return fmt.Sprintf("%.0f µs", ms*1e3)
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1f ms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.0f ms", ms)
	}
	return fmt.Sprintf("%.2f s", ms/1e3)
}
