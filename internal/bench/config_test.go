package bench

import (
	"io"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestParseFlagsDefaults(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.URLs) != 1 || c.URLs[0] != "http://127.0.0.1:8080" || c.Transport != "sse" || c.Subscribers != 10000 || c.Channels != 100 ||
		c.Rate != 2000 || c.Workers != 4 || len(c.SourceIPs) != 8 || c.SubscribePath != "/v1/sse?channel={channel}" {
		t.Errorf("defaults: %+v", c)
	}
	if c.Reader != defaultReader || (runtime.GOOS == "linux") != (c.Reader == "epoll") {
		t.Errorf("reader %q", c.Reader)
	}
	if !strings.HasPrefix(c.ChannelPrefix, "bench:") || !validPrefix(c.ChannelPrefix) {
		t.Errorf("channel prefix %q", c.ChannelPrefix)
	}
	if got := c.subscribeURL(0, "bench:a-1"); got != "http://127.0.0.1:8080/v1/sse?channel=bench%3Aa-1" {
		t.Errorf("subscribe URL %s", got)
	}
	c, err = parseFlags([]string{"--transport", "ws", "--url", "http://[::1]:9/", "--source-ips", "::1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.subscribeURL(0, "x"); got != "ws://[::1]:9/v1/ws?channel=x" {
		t.Errorf("ws subscribe URL %s", got)
	}
}

func TestParseFlagsRefusesNonLoopback(t *testing.T) {
	for _, u := range []string{
		"http://10.0.0.1:8080", "http://example.com", "http://192.168.1.1", "http://[2001:db8::1]:80",
		"http://localhost.example.com", "https://127.0.0.1", "127.0.0.1:8080",
	} {
		_, err := parseFlags([]string{"--url", u}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--url") {
			t.Errorf("--url %s: err = %v, want a --url error", u, err)
		}
	}
	for _, u := range []string{"http://127.0.0.1:1", "http://localhost:8080", "http://127.9.9.9"} {
		if _, err := parseFlags([]string{"--url", u}, io.Discard); err != nil {
			t.Errorf("--url %s refused: %v", u, err)
		}
	}
}

// TestParseFlagsReportsEveryProblem: all errors at once.
func TestParseFlagsReportsEveryProblem(t *testing.T) {
	_, err := parseFlags([]string{
		"--url", "http://8.8.8.8", "--transport", "poll", "--subscribers", "0", "--channels", "-1",
		"--rate", "-5", "--duration", "0s", "--workers", "0", "--source-ips", "10.0.0.1",
		"--publishers", "0", "--channel-prefix", "a b", "--payload-bytes", "-1", "--reader", "poll",
	}, io.Discard)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"--url", "--transport", "--subscribers", "--channels", "--rate", "--duration",
		"--workers", "--source-ips", "--publishers", "--channel-prefix", "--payload-bytes", "--reader"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s:\n%v", want, err)
		}
	}
}

func TestParseFlagsLimits(t *testing.T) {
	_, err := parseFlags([]string{"--subscribers", "40000", "--workers", "2"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--workers 3") {
		t.Errorf("40 000 subscribers on 2 workers: %v", err)
	}
	_, err = parseFlags([]string{"--subscribers", "60000", "--workers", "4", "--source-ips", "127.0.0.2"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "ephemeral ports") {
		t.Errorf("60 000 connections from one address: %v", err)
	}
	_, err = parseFlags([]string{"--url", "http://[::1]:8080", "--source-ips", "127.0.0.2"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "family") {
		t.Errorf("IPv4 sources to an IPv6 server: %v", err)
	}
	if _, err := parseFlags([]string{"extra"}, io.Discard); err == nil {
		t.Error("stray argument accepted")
	}
}

func TestParseSourceIPs(t *testing.T) {
	got, err := parseSourceIPs("127.0.0.2-127.0.0.4, 127.0.1.255-127.0.2.0,::1")
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, ip := range got {
		s = append(s, ip.String())
	}
	if want := "127.0.0.2 127.0.0.3 127.0.0.4 127.0.1.255 127.0.2.0 ::1"; strings.Join(s, " ") != want {
		t.Errorf("got %v, want %s", s, want)
	}
	for _, bad := range []string{"127.0.0.9-127.0.0.2", "x", "::1-::2", "127.0.0.0-127.255.255.255"} {
		if _, err := parseSourceIPs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if ip, _ := targetAddr("http://localhost:1"); ip != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("localhost → %v", ip)
	}
}

func TestProcParsers(t *testing.T) {
	rss, err := parseVmRSS([]byte("Name:\therald\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t7\n"))
	if err != nil || rss != 1234*1024 {
		t.Errorf("VmRSS = %d, %v", rss, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tx\n")); err == nil {
		t.Error("missing VmRSS accepted")
	}
	stat := "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 123 456 789"
	cpu, err := parseStatCPU([]byte(stat))
	if err != nil || cpu != 3.25 {
		t.Errorf("cpu = %v, %v; want 3.25", cpu, err)
	}
	if _, err := parseStatCPU([]byte("1 (x) S 1 2")); err == nil {
		t.Error("short stat accepted")
	}
}

func TestParseFlagsSeveralURLs(t *testing.T) {
	c, err := parseFlags([]string{"--url", "http://127.0.0.1:1, http://localhost:2/,,http://127.0.0.3:3/base/"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"http://127.0.0.1:1", "http://localhost:2", "http://127.0.0.3:3/base"}
	if strings.Join(c.URLs, " ") != strings.Join(want, " ") {
		t.Errorf("URLs %q, want %q", c.URLs, want)
	}
	if got := c.subscribeURL(2, "x"); got != "http://127.0.0.3:3/base/v1/sse?channel=x" {
		t.Errorf("subscribe URL on node 2: %s", got)
	}
	targets, err := newSubscribeTargets(&c)
	if err != nil || len(targets) != 3 || targets[1].addr.String() != "127.0.0.1:2" || targets[1].host != "localhost:2" {
		t.Errorf("targets %+v, %v", targets, err)
	}
	if uri, err := requestURI(&c, 2, "a:b"); err != nil || uri != "/base/v1/sse?channel=a%3Ab" {
		t.Errorf("request URI %q, %v", uri, err)
	}
	rep := newReport(&c)
	if len(rep.URLs) != 3 || rep.URL != strings.Join(want, ",") {
		t.Errorf("report URL %q, URLs %q", rep.URL, rep.URLs)
	}

	// Every URL is checked, and every problem named at once.
	_, err = parseFlags([]string{"--url", "http://127.0.0.1:1,http://10.0.0.1:2,https://127.0.0.1:3,http://127.0.0.1:1/"}, io.Discard)
	if err == nil {
		t.Fatal("bad URLs accepted")
	}
	for _, want := range []string{`"http://10.0.0.1:2"`, `"https://127.0.0.1:3"`, `"http://127.0.0.1:1": given twice`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s:\n%v", want, err)
		}
	}
	if _, err := parseFlags([]string{"--url", " , "}, io.Discard); err == nil || !strings.Contains(err.Error(), "at least one URL") {
		t.Errorf("no URL: %v", err)
	}
	many := make([]string, maxURLs+1)
	for i := range many {
		many[i] = "http://127.0.0.1:" + strconv.Itoa(1000+i)
	}
	if _, err := parseFlags([]string{"--url", strings.Join(many, ",")}, io.Discard); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("%d URLs: %v", len(many), err)
	}
	_, err = parseFlags([]string{"--url", "http://127.0.0.1:1,http://[::1]:2", "--source-ips", "127.0.0.2"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "family") {
		t.Errorf("IPv4 sources to an IPv6 node: %v", err)
	}
}

// TestSubscriberSpreading: every channel has subscribers on every node
// (when it has at least as many subscribers as there are nodes), a
// channel's subscribers differ by at most one between nodes, and the
// nodes' totals are even — also when the node count divides the channel
// count, where subscriber i mod nodes would not spread a channel at all.
func TestSubscriberSpreading(t *testing.T) {
	for _, tc := range []struct{ subscribers, channels, nodes int }{
		{3000, 30, 3}, {3000, 100, 3}, {10, 3, 3}, {7, 2, 3}, {100, 1, 3}, {5, 10, 3}, {1000, 7, 4}, {50, 5, 1},
	} {
		c := Config{URLs: make([]string, tc.nodes), Channels: tc.channels}
		perChannel := make([][]int, tc.channels)
		for i := range perChannel {
			perChannel[i] = make([]int, tc.nodes)
		}
		totals := make([]int, tc.nodes)
		for i := range tc.subscribers {
			n := c.subscriberNode(i)
			if n < 0 || n >= tc.nodes {
				t.Fatalf("%+v: subscriber %d on node %d", tc, i, n)
			}
			perChannel[i%tc.channels][n]++
			totals[n]++
		}
		for ch, counts := range perChannel {
			lo, hi := minMax(counts)
			if hi-lo > 1 {
				t.Errorf("%+v: channel %d has %v subscribers by node", tc, ch, counts)
			}
			if sum(counts) >= tc.nodes && lo == 0 {
				t.Errorf("%+v: channel %d has no subscriber on some node: %v", tc, ch, counts)
			}
		}
		if lo, hi := minMax(totals); hi-lo > max(1, ceilDiv(tc.channels, tc.nodes)) {
			t.Errorf("%+v: nodes hold %v subscribers", tc, totals)
		}
		if tc.subscribers == 3000 && tc.channels == 30 && (totals[0] != 1000 || totals[1] != 1000 || totals[2] != 1000) {
			t.Errorf("3000 subscribers over 3 nodes: %v", totals)
		}
	}
}

// TestPublisherSpreading: publisher j sends to node j mod nodes, every
// channel's messages go to one node (its publisher's), and every node
// gets publishers.
func TestPublisherSpreading(t *testing.T) {
	c, err := parseFlags([]string{"--url", "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3",
		"--publishers", "16", "--channels", "30", "--publish-path", "/pub/{channel}"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	p := newPublisher(&c)
	used := map[string]int{}
	for ch := range c.Channels {
		got := p.target(ch)
		if want := c.URLs[(ch%16)%3] + "/pub/{channel}"; got != want {
			t.Errorf("channel %d published to %s, want %s", ch, got, want)
		}
		used[got]++
	}
	if len(used) != 3 {
		t.Errorf("nodes published to: %v", used)
	}
	for j := range 16 {
		if n := c.publisherNode(j); n != j%3 {
			t.Errorf("publisher %d on node %d", j, n)
		}
	}
	// Fewer channels than publishers: the goroutines are the channels.
	c.Channels, c.Publishers = 2, 16
	p = newPublisher(&c)
	if p.target(0) == p.target(1) {
		t.Errorf("two channels, two publishers, one node: %s", p.target(0))
	}
}

func minMax(v []int) (lo, hi int) {
	lo, hi = v[0], v[0]
	for _, x := range v[1:] {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

func sum(v []int) int {
	s := 0
	for _, x := range v {
		s += x
	}
	return s
}
