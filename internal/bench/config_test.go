package bench

import (
	"io"
	"net/netip"
	"runtime"
	"strings"
	"testing"
)

func TestParseFlagsDefaults(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.URL != "http://127.0.0.1:8080" || c.Transport != "sse" || c.Subscribers != 10000 || c.Channels != 100 ||
		c.Rate != 2000 || c.Workers != 4 || len(c.SourceIPs) != 8 || c.SubscribePath != "/v1/sse?channel={channel}" {
		t.Errorf("defaults: %+v", c)
	}
	if c.Reader != defaultReader || (runtime.GOOS == "linux") != (c.Reader == "epoll") {
		t.Errorf("reader %q", c.Reader)
	}
	if !strings.HasPrefix(c.ChannelPrefix, "bench:") || !validPrefix(c.ChannelPrefix) {
		t.Errorf("channel prefix %q", c.ChannelPrefix)
	}
	if got := c.subscribeURL("bench:a-1"); got != "http://127.0.0.1:8080/v1/sse?channel=bench%3Aa-1" {
		t.Errorf("subscribe URL %s", got)
	}
	c, err = parseFlags([]string{"--transport", "ws", "--url", "http://[::1]:9/", "--source-ips", "::1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.subscribeURL("x"); got != "ws://[::1]:9/v1/ws?channel=x" {
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
