package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Report is the outcome of a run: the human summary and the JSON output
// show the same figures.
type Report struct {
	URL          string   `json:"url"`  // the base URLs, comma-separated
	URLs         []string `json:"urls"` // one per node: subscribers and publishers go round robin over them
	Transport    string   `json:"transport"`
	Subscribers  int      `json:"subscribers"`
	Channels     int      `json:"channels"`
	Rate         float64  `json:"rate"`
	DurationS    float64  `json:"duration_s"`
	WarmupS      float64  `json:"warmup_s"`
	DrainS       float64  `json:"drain_s"`
	Workers      int      `json:"workers"`
	SourceIPs    int      `json:"source_ips"`
	PayloadBytes int      `json:"payload_bytes"`
	Publishers   int      `json:"publishers"`
	Reader       string   `json:"reader"`

	Connect   ConnectReport  `json:"connect"`
	Publish   PublishReport  `json:"publish"`
	Delivery  DeliveryReport `json:"delivery"`
	LatencyMS Quantiles      `json:"latency_ms"` // publish send → subscriber receive
	Server    *ServerReport  `json:"server,omitempty"`
	Client    *ClientReport  `json:"client,omitempty"`

	Errors   []string `json:"errors,omitempty"`   // samples from workers and publisher
	Problems []string `json:"problems,omitempty"` // why OK is false
	OK       bool     `json:"ok"`
}

// ConnectReport describes the connect phase.
type ConnectReport struct {
	Attempted   int64     `json:"attempted"`
	Connected   int64     `json:"connected"`
	Failed      int64     `json:"failed"`
	Seconds     float64   `json:"seconds"` // first dial → last connection established
	PerSecond   float64   `json:"per_second"`
	HandshakeMS Quantiles `json:"handshake_ms"` // dial → response headers / upgrade
}

// PublishReport describes what the publisher sent.
type PublishReport struct {
	Target    uint64  `json:"target"` // rate × (warmup + duration)
	Sent      uint64  `json:"sent"`
	OK        uint64  `json:"ok"`
	Failed    uint64  `json:"failed"` // error or non-2xx answer: outcome unknown
	Behind    uint64  `json:"behind"` // slots skipped because publishers were busy
	PerSecond float64 `json:"per_second"`
}

// DeliveryReport compares what subscribers received with what was
// published to their channels.
type DeliveryReport struct {
	Expected       uint64  `json:"expected"`  // Σ over connected subscribers of acknowledged publishes to their channel
	Delivered      uint64  `json:"delivered"` // messages received, all of them
	Measured       uint64  `json:"measured"`  // of which sent inside the measured window
	PerSecond      float64 `json:"per_second"`
	Lost           uint64  `json:"lost"`
	Duplicates     uint64  `json:"duplicates"`
	OutOfOrder     uint64  `json:"out_of_order"`
	Unexpected     uint64  `json:"unexpected"`
	ReceivedFailed uint64  `json:"received_failed"` // arrived although their publish reported an error
	Misrouted      uint64  `json:"misrouted"`       // envelope of another channel
	Gaps           uint64  `json:"gaps"`
	Other          uint64  `json:"other"` // data that is not a bench payload
	Disconnected   int64   `json:"disconnected"`
}

// Quantiles of a distribution, in milliseconds.
type Quantiles struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

// ServerReport is the server's resource use, summed over its processes.
type ServerReport struct {
	PIDs               []int   `json:"pids"`
	RSSIdleBytes       uint64  `json:"rss_idle_bytes"`
	RSSConnectedBytes  uint64  `json:"rss_connected_bytes"`
	RSSEndBytes        uint64  `json:"rss_end_bytes"`
	RSSPerConnBytes    float64 `json:"rss_per_conn_bytes"`     // (connected − idle) / connections
	RSSPerConnEndBytes float64 `json:"rss_per_conn_end_bytes"` // (end − idle) / connections
	CPUConnectS        float64 `json:"cpu_connect_s"`
	ConnectionsPerCPUS float64 `json:"connections_per_cpu_s"`
	CPURunS            float64 `json:"cpu_run_s"` // start of publishing → end of drain
	DeliveriesPerCPUS  float64 `json:"deliveries_per_cpu_s"`
}

// ClientReport is the bench's own CPU use: the worker processes' (the
// subscriber side) summed, and the parent's (publisher, coordination).
// In-process workers share the parent process: their figures are then the
// whole process's, counted once.
type ClientReport struct {
	InProcess         bool    `json:"in_process,omitempty"`
	Processes         int     `json:"processes"`            // worker processes measured
	CPUConnectS       float64 `json:"cpu_connect_s"`        // workers, config → ready (every subscriber connected or failed)
	CPURunS           float64 `json:"cpu_run_s"`            // workers, start of publishing → end of drain
	CPUTotalS         float64 `json:"cpu_total_s"`          // workers, whole life
	DeliveriesPerCPUS float64 `json:"deliveries_per_cpu_s"` // deliveries / workers' run CPU
	CPUPerDeliveryUS  float64 `json:"cpu_per_delivery_us"`
	ParentCPURunS     float64 `json:"parent_cpu_run_s"` // the parent (publisher) over the same span
}

func newReport(c *Config) *Report {
	return &Report{
		URL: strings.Join(c.URLs, ","), URLs: c.URLs, Transport: c.Transport, Subscribers: c.Subscribers, Channels: c.Channels,
		Rate: c.Rate, DurationS: c.Duration.Seconds(), WarmupS: c.Warmup.Seconds(), DrainS: c.Drain.Seconds(),
		Workers: min(c.Workers, c.Subscribers), SourceIPs: len(c.SourceIPs), PayloadBytes: c.PayloadBytes,
		Publishers: min(c.Publishers, c.Channels), Reader: c.Reader,
	}
}

func quantiles(h *Histogram) Quantiles {
	ms := func(ns int64) float64 { return math.Round(float64(ns)/1e3) / 1e3 }
	return Quantiles{
		Count: h.Count(),
		P50:   ms(h.Quantile(0.50)),
		P90:   ms(h.Quantile(0.90)),
		P99:   ms(h.Quantile(0.99)),
		P999:  ms(h.Quantile(0.999)),
		Max:   ms(h.Max()),
		Mean:  ms(int64(h.Mean())),
	}
}

// fill merges the workers' results and the publisher's counts.
func (rep *Report) fill(r *runner, start, runEnd time.Time) {
	var lat, hs Histogram
	var first, last int64
	d := &rep.Delivery
	for _, ws := range r.workers {
		s := ws.result
		rep.Connect.Attempted += s.Attempted
		rep.Connect.Connected += s.Connected
		rep.Connect.Failed += s.ConnectFailed
		if s.FirstDialNS > 0 && (first == 0 || s.FirstDialNS < first) {
			first = s.FirstDialNS
		}
		last = max(last, s.LastConnectNS)
		hs.Merge(s.Handshake)
		lat.Merge(s.Latency)
		d.Expected += s.Expected
		d.Delivered += s.Delivered
		d.Measured += s.Measured
		d.Lost += s.Lost
		d.Duplicates += s.Duplicates
		d.OutOfOrder += s.OutOfOrder
		d.Unexpected += s.Unexpected
		d.ReceivedFailed += s.ReceivedFailed
		d.Misrouted += s.Misrouted
		d.Gaps += s.Gaps
		d.Other += s.Other
		d.Disconnected += s.Disconnected
		for _, e := range s.Errors {
			rep.Errors = append(rep.Errors, fmt.Sprintf("worker %d: %s", ws.id, e))
		}
	}
	if last > first {
		rep.Connect.Seconds = float64(last-first) / 1e9
		rep.Connect.PerSecond = float64(rep.Connect.Connected) / rep.Connect.Seconds
	}
	rep.Connect.HandshakeMS = quantiles(&hs)
	rep.LatencyMS = quantiles(&lat)
	if r.cfg.Rate > 0 {
		d.PerSecond = float64(d.Measured) / r.cfg.Duration.Seconds()
	}
	if p := r.pub; p != nil {
		rep.Publish = PublishReport{
			Target: uint64(r.cfg.Rate * (r.cfg.Warmup + r.cfg.Duration).Seconds()),
			Sent:   p.sent.Load(), OK: p.ok.Load(), Failed: p.failed.Load(), Behind: p.behind.Load(),
			PerSecond: float64(p.sent.Load()) / (r.cfg.Warmup + r.cfg.Duration).Seconds(),
		}
		rep.Errors = append(rep.Errors, p.errors()...)
	}
}

// fillServer computes the server figures from the four samples.
func (rep *Report) fillServer(pids []int, idle, connected, start, end serverSample) {
	s := &ServerReport{PIDs: pids, RSSIdleBytes: idle.RSS, RSSConnectedBytes: connected.RSS, RSSEndBytes: end.RSS}
	if n := float64(rep.Connect.Connected); n > 0 {
		s.RSSPerConnBytes = (float64(connected.RSS) - float64(idle.RSS)) / n
		s.RSSPerConnEndBytes = (float64(end.RSS) - float64(idle.RSS)) / n
	}
	s.CPUConnectS = connected.CPU - idle.CPU
	if s.CPUConnectS > 0 {
		s.ConnectionsPerCPUS = float64(rep.Connect.Connected) / s.CPUConnectS
	}
	s.CPURunS = end.CPU - start.CPU
	if s.CPURunS > 0 {
		s.DeliveriesPerCPUS = float64(rep.Delivery.Delivered) / s.CPURunS
	}
	rep.Server = s
}

// fillClient computes the client CPU figures from the workers' results
// and the parent's CPU at the start of publishing and the end of the run.
func (rep *Report) fillClient(r *runner, parentStart, parentEnd float64) {
	c := &ClientReport{InProcess: r.cfg.InProcess, ParentCPURunS: parentEnd - parentStart}
	for _, ws := range r.workers {
		s := ws.result
		if s == nil || s.CPUS <= 0 {
			continue
		}
		connect, run, total := s.CPUReadyS-s.CPUBeginS, s.CPUFinishS-s.CPUStartS, s.CPUS
		if r.cfg.InProcess {
			// One process: the figures are the same for every worker.
			c.CPUConnectS, c.CPURunS, c.CPUTotalS = connect, run, total
			continue
		}
		c.Processes++
		c.CPUConnectS += connect
		c.CPURunS += run
		c.CPUTotalS += total
	}
	if c.CPUTotalS <= 0 {
		return
	}
	if c.CPURunS > 0 && rep.Delivery.Delivered > 0 {
		c.DeliveriesPerCPUS = float64(rep.Delivery.Delivered) / c.CPURunS
		c.CPUPerDeliveryUS = c.CPURunS / float64(rep.Delivery.Delivered) * 1e6
	}
	rep.Client = c
}

// judge sets OK and lists the problems.
func (rep *Report) judge() {
	add := func(cond bool, format string, a ...any) {
		if cond {
			rep.Problems = append(rep.Problems, fmt.Sprintf(format, a...))
		}
	}
	d := rep.Delivery
	add(rep.Connect.Failed > 0, "%d subscribers failed to connect", rep.Connect.Failed)
	add(d.Disconnected > 0, "%d subscribers were disconnected", d.Disconnected)
	add(d.Lost > 0, "%d deliveries lost", d.Lost)
	add(d.Duplicates > 0, "%d duplicate deliveries", d.Duplicates)
	add(d.Unexpected > 0, "%d unexpected deliveries", d.Unexpected)
	add(d.Misrouted > 0, "%d deliveries on the wrong channel", d.Misrouted)
	add(d.Gaps > 0, "%d gap signals", d.Gaps)
	add(rep.Publish.Failed > 0, "%d publishes failed", rep.Publish.Failed)
	add(rep.Publish.Behind > 0, "the publisher fell behind: %d of %d messages not sent", rep.Publish.Behind, rep.Publish.Target)
	rep.OK = len(rep.Problems) == 0
}

// WriteText writes the human summary.
func (rep *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	target := rep.URL
	if n := len(rep.URLs); n > 1 {
		target = fmt.Sprintf("%s (%d URLs: every channel's subscribers and the publishers round robin over them)", rep.URL, n)
	}
	p("herald bench: %s %s, %d subscribers over %d channels, %d workers (%s reader), %d source addresses",
		rep.Transport, target, rep.Subscribers, rep.Channels, rep.Workers, rep.Reader, rep.SourceIPs)
	c := rep.Connect
	p("connect     %d/%d in %.2fs = %.0f conn/s; handshake p50 %s p99 %s max %s; %d failed",
		c.Connected, rep.Subscribers, c.Seconds, c.PerSecond, fmtMS(c.HandshakeMS.P50), fmtMS(c.HandshakeMS.P99), fmtMS(c.HandshakeMS.Max), c.Failed)
	d := rep.Delivery
	if rep.Rate > 0 {
		pb := rep.Publish
		p("publish     %d sent in %gs = %.0f/s (target %d); %d ok, %d failed, %d behind",
			pb.Sent, rep.WarmupS+rep.DurationS, pb.PerSecond, pb.Target, pb.OK, pb.Failed, pb.Behind)
		p("deliveries  %d of %d expected; %.0f/s over the %gs measured window", d.Delivered, d.Expected, d.PerSecond, rep.DurationS)
		l := rep.LatencyMS
		p("latency     p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  mean %s  (%d timed)",
			fmtMS(l.P50), fmtMS(l.P90), fmtMS(l.P99), fmtMS(l.P999), fmtMS(l.Max), fmtMS(l.Mean), l.Count)
	} else {
		p("idle        held %gs, no publishing", rep.DurationS)
	}
	p("integrity   lost %d  duplicates %d  out-of-order %d  unexpected %d  misrouted %d  gaps %d  disconnected %d",
		d.Lost, d.Duplicates, d.OutOfOrder, d.Unexpected, d.Misrouted, d.Gaps, d.Disconnected)
	if s := rep.Server; s != nil {
		p("server RSS  idle %s, connected %s, end %s; %s per connection (%s at end)",
			fmtBytes(float64(s.RSSIdleBytes)), fmtBytes(float64(s.RSSConnectedBytes)), fmtBytes(float64(s.RSSEndBytes)),
			fmtBytes(s.RSSPerConnBytes), fmtBytes(s.RSSPerConnEndBytes))
		line := fmt.Sprintf("server CPU  connect %.2fs (%.0f conn/CPU-s)", s.CPUConnectS, s.ConnectionsPerCPUS)
		if rep.Rate > 0 {
			line += fmt.Sprintf("; run %.2fs (%.0f deliveries/CPU-s)", s.CPURunS, s.DeliveriesPerCPUS)
		}
		p("%s", line)
	}
	if c := rep.Client; c != nil {
		who := fmt.Sprintf("%d worker processes", c.Processes)
		if c.InProcess {
			who = "in-process: the whole process"
		}
		line := fmt.Sprintf("client CPU  connect %.2fs", c.CPUConnectS)
		if rep.Rate > 0 {
			line += fmt.Sprintf("; run %.2fs (%.0f deliveries/CPU-s, %.2fµs per delivery)", c.CPURunS, c.DeliveriesPerCPUS, c.CPUPerDeliveryUS)
		} else {
			line += fmt.Sprintf("; hold %.2fs", c.CPURunS)
		}
		line += fmt.Sprintf("; total %.2fs (%s)", c.CPUTotalS, who)
		if !c.InProcess {
			line += fmt.Sprintf("; parent %.2fs during the run", c.ParentCPURunS)
		}
		p("%s", line)
	}
	for _, e := range rep.Errors {
		p("error       %s", e)
	}
	if rep.OK {
		p("result      OK")
	} else {
		p("result      FAIL: %s", strings.Join(rep.Problems, "; "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// fmtNanos formats a duration in ns with three significant figures.
func fmtNanos(ns int64) string { return fmtMS(float64(ns) / 1e6) }

func fmtMS(ms float64) string {
	switch {
	case ms <= 0:
		return "0"
	case ms < 1:
		return fmt.Sprintf("%.0fµs", ms*1e3)
	case ms < 10:
		return fmt.Sprintf("%.2fms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1fms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.0fms", ms)
	default:
		return fmt.Sprintf("%.2fs", ms/1e3)
	}
}

func fmtBytes(b float64) string {
	neg := ""
	if b < 0 {
		neg, b = "-", -b
	}
	switch {
	case b < 1<<10:
		return fmt.Sprintf("%s%.0f B", neg, b)
	case b < 1<<20:
		return fmt.Sprintf("%s%.2f KiB", neg, b/(1<<10))
	case b < 1<<30:
		return fmt.Sprintf("%s%.1f MiB", neg, b/(1<<20))
	default:
		return fmt.Sprintf("%s%.2f GiB", neg, b/(1<<30))
	}
}
