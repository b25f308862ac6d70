package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/api"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/sse"
	"github.com/heraldhq/herald/transport/ws"
)

// workerEnv makes the test binary act as a bench worker process when the
// bench under test re-executes it as "<test binary> bench --worker".
const workerEnv = "HERALD_BENCH_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" && len(os.Args) > 2 && os.Args[2] == workerFlag {
		os.Exit(Main(context.Background(), os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// startServer runs a hub with the SSE, WebSocket and publish handlers on
// a loopback test server.
func startServer(t *testing.T) string {
	t.Helper()
	return startServerWith(t, ws.Config{})
}

// startServerWith is startServer with a WebSocket configuration.
func startServerWith(t *testing.T, wsCfg ws.Config) string {
	t.Helper()
	h := testutil.NewHub(t, hub.Config{})
	mux := http.NewServeMux()
	wsh := ws.New(h, wsCfg)
	mux.Handle("/v1/sse", sse.New(h, sse.Config{}))
	mux.Handle("/v1/ws", wsh)
	api.New(h, api.Config{}).Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = wsh.Shutdown(ctx)
		srv.Close()
	})
	return srv.URL
}

// runBench runs Main with args and returns its exit code, its JSON report
// and what it wrote to stdout and stderr.
func runBench(t *testing.T, args ...string) (int, *Report, string, string) {
	t.Helper()
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := Main(ctx, append(args, "--json", jsonPath), &stdout, &stderr)
	var rep *Report
	if b, err := os.ReadFile(jsonPath); err == nil {
		rep = new(Report)
		if err := json.Unmarshal(b, rep); err != nil {
			t.Fatalf("report JSON: %v\n%s", err, b)
		}
	}
	return code, rep, stdout.String(), stderr.String()
}

// checkClean asserts a run with no loss: every connected subscriber got
// exactly what was published to its channel.
func checkClean(t *testing.T, code int, rep *Report, stdout, stderr string, subscribers, channels int) {
	t.Helper()
	if rep == nil {
		t.Fatalf("no report; exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	// On this shared machine the publisher may fall behind its rate (the
	// bench then says so and exits 1); nothing else may go wrong.
	for _, p := range rep.Problems {
		if !strings.HasPrefix(p, "the publisher fell behind") {
			t.Fatalf("exit %d: %v\nstdout:\n%s\nstderr:\n%s", code, rep.Problems, stdout, stderr)
		}
		t.Logf("under load: %s", p)
	}
	if (code == 0) != rep.OK {
		t.Errorf("exit %d with ok %v", code, rep.OK)
	}
	if rep.Connect.Connected != int64(subscribers) {
		t.Errorf("connected %d of %d", rep.Connect.Connected, subscribers)
	}
	p, d := rep.Publish, rep.Delivery
	if p.OK == 0 || p.OK != p.Sent || p.Sent+p.Behind != p.Target {
		t.Errorf("publish: %+v", p)
	}
	// Round-robin publishing and i mod channels subscribing: every channel
	// got Sent/channels messages and has subscribers/channels subscribers.
	if want := p.OK * uint64(subscribers/channels); d.Expected != want || d.Delivered != want {
		t.Errorf("expected %d, delivered %d; want %d (= %d published × %d subscribers per channel)",
			d.Expected, d.Delivered, want, p.OK, subscribers/channels)
	}
	if d.Lost != 0 || d.Duplicates != 0 || d.Unexpected != 0 || d.Misrouted != 0 || d.Disconnected != 0 {
		t.Errorf("integrity: %+v", d)
	}
	if d.Measured == 0 || rep.LatencyMS.Count != d.Measured || rep.LatencyMS.P50 <= 0 || rep.LatencyMS.Max < rep.LatencyMS.P99 {
		t.Errorf("latency: %+v, measured %d", rep.LatencyMS, d.Measured)
	}
	if !strings.Contains(stdout, "result      ") || !strings.Contains(stdout, "p99") {
		t.Errorf("summary:\n%s", stdout)
	}
	if !strings.Contains(stderr, "delivered/s") {
		t.Errorf("no progress line on stderr:\n%s", stderr)
	}
}

func TestEndToEndInProcess(t *testing.T) {
	for _, transport := range []string{"sse", "ws"} {
		t.Run(transport, func(t *testing.T) {
			url := startServer(t)
			before := runtime.NumGoroutine()
			code, rep, stdout, stderr := runBench(t, "--url", url, "--transport", transport, "--in-process",
				"--subscribers", "50", "--channels", "5", "--rate", "200", "--duration", "2s", "--drain", "1s",
				"--workers", "2", "--source-ips", "127.0.0.2-127.0.0.4", "--server-pid", strconv.Itoa(os.Getpid()))
			checkClean(t, code, rep, stdout, stderr, 50, 5)
			if rep.Server == nil || rep.Server.RSSConnectedBytes == 0 || rep.Server.CPURunS <= 0 {
				t.Errorf("server figures: %+v", rep.Server)
			}
			t.Logf("summary:\n%s", stdout)
			// Every goroutine of the bench (and the server's per-connection
			// ones, once the bench hung up) has ended.
			testutil.Eventually(t, 5*time.Second, func() error {
				if n := runtime.NumGoroutine(); n > before+2 {
					return fmt.Errorf("%d goroutines, %d before the run", n, before)
				}
				return nil
			})
		})
	}
}

// TestEndToEndReaders runs both subscriber readers over both transports
// against a server that pings every second and closes a connection that
// has not answered within 2s (well inside the 4s run): the epoll reader
// must answer pings. A ping every 400ms left too little room on a CI
// machine running other packages' -race tests at the same time.
func TestEndToEndReaders(t *testing.T) {
	for _, reader := range []string{"epoll", "goroutine"} {
		for _, transport := range []string{"sse", "ws"} {
			t.Run(reader+"/"+transport, func(t *testing.T) {
				url := startServerWith(t, ws.Config{Heartbeat: time.Second})
				code, rep, stdout, stderr := runBench(t, "--url", url, "--transport", transport, "--in-process",
					"--reader", reader, "--subscribers", "60", "--channels", "6", "--rate", "300", "--duration", "4s",
					"--drain", "500ms", "--workers", "2", "--source-ips", "127.0.0.2-127.0.0.5", "--payload-bytes", "700")
				checkClean(t, code, rep, stdout, stderr, 60, 6)
				if rep.Reader != reader || !strings.Contains(stdout, "("+reader+" reader)") {
					t.Errorf("reader %q\n%s", rep.Reader, stdout)
				}
				if c := rep.Client; c == nil || !c.InProcess || c.CPURunS <= 0 || c.CPUPerDeliveryUS <= 0 ||
					!strings.Contains(stdout, "client CPU") {
					t.Errorf("client figures %+v\n%s", c, stdout)
				}
			})
		}
	}
}

// TestReadersEndOfStream: both readers count a stream the server ends
// (SSE: the chunked body ends; WebSocket: a close frame) as a
// disconnection, and a refused subscription (an error status) as a
// failed connect with the server's message.
func TestReadersEndOfStream(t *testing.T) {
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/sse", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Query().Get("channel"), "-1") {
			http.Error(w, `{"error":{"code":"channel_full"}}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "retry: 1000\n\n")
		w.(http.Flusher).Flush()
		time.Sleep(200 * time.Millisecond)
		io.WriteString(w, "data: {\"hello\":1}\n\n")
	})
	mux.HandleFunc("/v1/ws", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Query().Get("channel"), "-1") {
			http.Error(w, `{"error":{"code":"channel_full"}}`, http.StatusServiceUnavailable)
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.WriteMessage(websocket.TextMessage, []byte(`{"hello":1}`))
		time.Sleep(200 * time.Millisecond)
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1012, "restart"))
		c.ReadMessage() // the client's close reply
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	for _, reader := range []string{"epoll", "goroutine"} {
		for _, transport := range []string{"sse", "ws"} {
			t.Run(reader+"/"+transport, func(t *testing.T) {
				code, rep, stdout, stderr := runBench(t, "--url", srv.URL, "--transport", transport, "--in-process",
					"--reader", reader, "--subscribers", "20", "--channels", "2", "--rate", "0", "--duration", "1s",
					"--workers", "2", "--source-ips", "127.0.0.2-127.0.0.3")
				if code != 1 || rep == nil {
					t.Fatalf("exit %d, report %+v\nstdout:\n%s\nstderr:\n%s", code, rep, stdout, stderr)
				}
				d := rep.Delivery
				if rep.Connect.Connected != 10 || rep.Connect.Failed != 10 || d.Disconnected != 10 || d.Other != 10 {
					t.Errorf("connected %d, failed %d, disconnected %d, other %d; want 10 each\n%s",
						rep.Connect.Connected, rep.Connect.Failed, d.Disconnected, d.Other, stdout)
				}
				var status, ended bool
				for _, e := range rep.Errors {
					status = status || strings.Contains(e, `connect: HTTP 503: {"error":{"code":"channel_full"}}`)
					ended = ended || strings.Contains(e, "disconnected: ") &&
						(strings.Contains(e, "EOF") || strings.Contains(e, "close 1012"))
				}
				if !status || !ended {
					t.Errorf("errors: %q", rep.Errors)
				}
			})
		}
	}
}

// TestEndToEndProcesses runs the workers as processes: the test binary
// re-executes itself as "bench --worker" (see TestMain).
func TestEndToEndProcesses(t *testing.T) {
	t.Setenv(workerEnv, "1")
	url := startServer(t)
	code, rep, stdout, stderr := runBench(t, "--url", url, "--transport", "sse",
		"--subscribers", "50", "--channels", "5", "--rate", "200", "--duration", "2s", "--drain", "1s",
		"--workers", "2", "--source-ips", "127.0.0.2-127.0.0.9", "--warmup", "500ms")
	checkClean(t, code, rep, stdout, stderr, 50, 5)
	if rep.Workers != 2 || rep.Server != nil {
		t.Errorf("workers %d, server %+v", rep.Workers, rep.Server)
	}
	if rep.Delivery.Measured >= rep.Delivery.Delivered {
		t.Errorf("warmup deliveries were timed: measured %d of %d", rep.Delivery.Measured, rep.Delivery.Delivered)
	}
}

// TestEndToEndSeveralURLs runs the bench against three "nodes" — three
// test servers over one hub, so a message published on any reaches the
// subscribers of all — with both readers: every node gets subscribers of
// every channel and publishes, and each subscriber still gets every
// message of its channel exactly once.
func TestEndToEndSeveralURLs(t *testing.T) {
	for _, reader := range []string{"epoll", "goroutine"} {
		t.Run(reader, func(t *testing.T) {
			h := testutil.NewHub(t, hub.Config{})
			wsh := ws.New(h, ws.Config{})
			mux := http.NewServeMux()
			mux.Handle("/v1/sse", sse.New(h, sse.Config{}))
			mux.Handle("/v1/ws", wsh)
			api.New(h, api.Config{}).Register(mux)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = wsh.Shutdown(ctx)
			})
			const nodes = 3
			var mu sync.Mutex
			subs := make([]map[string]int, nodes) // by node: channel → subscribers
			pubs := make([]int, nodes)
			var urls []string
			for n := range nodes {
				subs[n] = map[string]int{}
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					if r.URL.Path == "/v1/sse" {
						subs[n][r.URL.Query().Get("channel")]++
					} else {
						pubs[n]++
					}
					mu.Unlock()
					mux.ServeHTTP(w, r)
				}))
				t.Cleanup(srv.Close)
				urls = append(urls, srv.URL)
			}
			code, rep, stdout, stderr := runBench(t, "--url", strings.Join(urls, ","), "--transport", "sse",
				"--in-process", "--reader", reader, "--subscribers", "60", "--channels", "6", "--rate", "300",
				"--duration", "2s", "--drain", "1s", "--workers", "2", "--publishers", "6", "--source-ips", "127.0.0.2-127.0.0.4")
			checkClean(t, code, rep, stdout, stderr, 60, 6)
			if len(rep.URLs) != nodes || !strings.Contains(stdout, "(3 URLs") {
				t.Errorf("report URLs %q\n%s", rep.URLs, stdout)
			}
			mu.Lock()
			defer mu.Unlock()
			for n := range nodes {
				if len(subs[n]) != 6 || pubs[n] == 0 {
					t.Errorf("node %d: subscribers by channel %v, %d publish requests", n, subs[n], pubs[n])
				}
				for ch, k := range subs[n] {
					if k != 60/6/nodes && k != 60/6/nodes+1 {
						t.Errorf("node %d: %d subscribers of %s", n, k, ch)
					}
				}
			}
		})
	}
}

// TestIdleMode connects and holds without publishing.
func TestIdleMode(t *testing.T) {
	url := startServer(t)
	code, rep, stdout, stderr := runBench(t, "--url", url, "--transport", "ws", "--in-process",
		"--subscribers", "30", "--channels", "3", "--rate", "0", "--duration", "1s", "--workers", "3",
		"--server-pid", strconv.Itoa(os.Getpid()))
	if code != 0 || rep == nil || !rep.OK {
		t.Fatalf("exit %d, report %+v\nstdout:\n%s\nstderr:\n%s", code, rep, stdout, stderr)
	}
	if rep.Connect.Connected != 30 || rep.Delivery.Delivered != 0 || rep.Publish.Sent != 0 || rep.Server == nil {
		t.Errorf("report: %+v", rep)
	}
	if !strings.Contains(stdout, "idle        held 1s") || !strings.Contains(stdout, "per connection") {
		t.Errorf("summary:\n%s", stdout)
	}
}

// TestConnectFailure: nobody listens, so every subscriber fails and the
// run stops with a clear error instead of hanging.
func TestConnectFailure(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	code, rep, stdout, stderr := runBench(t, "--url", url, "--in-process", "--subscribers", "4", "--channels", "2",
		"--rate", "10", "--duration", "1s", "--drain", "0s", "--workers", "2", "--source-ips", "127.0.0.2")
	if code != 1 || rep == nil || rep.OK || rep.Connect.Failed != 4 || len(rep.Errors) == 0 {
		t.Fatalf("exit %d, report %+v\nstdout:\n%s\nstderr:\n%s", code, rep, stdout, stderr)
	}
	if !strings.Contains(stdout, "4 subscribers failed to connect") {
		t.Errorf("summary:\n%s", stdout)
	}
}

func TestMainRefusesBadFlags(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"--url", "http://10.1.2.3:8080", "--workers", "0"}, &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "loopback") || !strings.Contains(stderr.String(), "--workers") {
		t.Errorf("exit %d, stderr:\n%s", code, stderr.String())
	}
	if code := Main(context.Background(), []string{"--help"}, &stdout, &stderr); code != 0 {
		t.Errorf("--help exits %d", code)
	}
}
