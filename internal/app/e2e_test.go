package app

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/testutil"
)

const heraldPkg = "github.com/heraldhq/herald/cmd/herald"

// build is the binary shared by the tests, built once per run.
var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// buildHerald builds the real binary (once per test run) and returns its
// path.
func buildHerald(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skips building the herald binary; runs in every full `go test ./...` and in CI")
	}
	build.once.Do(func() {
		if build.dir, build.err = os.MkdirTemp("", "herald-e2e-"); build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "herald")
		build.err = goBuild(build.bin)
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.bin
}

func goBuild(bin string, extra ...string) error {
	args := append(append([]string{"build", "-o", bin}, extra...), heraldPkg)
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// herald is a running `herald serve` process.
type herald struct {
	cmd    *exec.Cmd
	url    string
	stderr *syncBuffer
	exited chan struct{}
	err    error // Wait's result, set before exited is closed
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var listenLine = regexp.MustCompile(`herald listening on (http://[0-9.]+:[0-9]+)`)

// startHerald runs `herald serve ARGS` with env added to a clean
// environment, waits for its "listening" line and for /healthz, and kills
// it at the end of the test if it is still running.
func startHerald(t *testing.T, env []string, args ...string) *herald {
	t.Helper()
	bin := buildHerald(t)
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	cmd.Dir = t.TempDir()
	// Killed with the test binary should it die without its clean-ups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	h := &herald{cmd: cmd, stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = io.MultiWriter(pw, h.stderr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		h.err = cmd.Wait()
		pw.Close()
		close(h.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-h.exited:
		default:
			_ = cmd.Process.Kill()
			<-h.exited
		}
		if t.Failed() {
			t.Logf("herald stderr:\n%s", h.stderr)
		}
	})

	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, pr) // keep the pipe drained
	}()
	select {
	case h.url = <-found:
	case <-h.exited:
		t.Fatalf("herald exited before listening: %v\n%s", h.err, h.stderr)
	case <-time.After(20 * time.Second):
		t.Fatalf("no listening line:\n%s", h.stderr)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		resp, err := http.Get(h.url + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("healthz %d", resp.StatusCode)
		}
		return nil
	})
	return h
}

// waitExit waits for the process to exit and returns its exit code.
func (h *herald) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-h.exited:
		return h.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("herald still running after %v", within)
		return -1
	}
}

// openSSE subscribes over SSE and returns the stream's lines.
func openSSE(t *testing.T, url string) <-chan string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("SSE: %d %s", resp.StatusCode, b)
	}
	return readLines(resp.Body)
}

// expectLine reads lines until one satisfies match.
func expectLine(t *testing.T, lines <-chan string, what string, match func(string) bool) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stream ended before %s", what)
			}
			if match(l) {
				return l
			}
		case <-timeout:
			t.Fatalf("no %s", what)
		}
	}
}

func publish(t *testing.T, url, body string, headers ...string) int {
	t.Helper()
	req, err := http.NewRequest("POST", url+"/v1/publish", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestServeEndToEnd runs the real binary: publish, receive over SSE, then
// SIGTERM: the stream gets a retry hint and ends, the process exits 0 in
// time.
func TestServeEndToEnd(t *testing.T) {
	const shutdownTimeout = 5 * time.Second
	h := startHerald(t, []string{"HERALD_SHUTDOWN_TIMEOUT=" + shutdownTimeout.String()}, "--listen", "127.0.0.1:0")
	if n := strings.Count(h.stderr.String(), "\n"); n != 1 {
		t.Errorf("start-up logged %d lines, want 1:\n%s", n, h.stderr)
	}

	lines := openSSE(t, h.url+"/v1/sse?channel=thread:42&channel=forum:tech")
	expectLine(t, lines, "retry hint", func(l string) bool { return l == "retry: 2000" })
	expectLine(t, lines, "initial id line", func(l string) bool { return strings.HasPrefix(l, "id: ") })

	if s := publish(t, h.url, `{"channels":["thread:42","forum:tech"],"type":"post.created","data":{"id":"p981"}}`); s != 200 {
		t.Fatalf("publish: %d", s)
	}
	expectLine(t, lines, "event line", func(l string) bool { return l == "event: post.created" })
	expectLine(t, lines, "thread message", func(l string) bool {
		return strings.HasPrefix(l, "data: ") && strings.Contains(l, `"channel":"thread:42"`) && strings.Contains(l, `"data":{"id":"p981"}`)
	})
	expectLine(t, lines, "forum message", func(l string) bool {
		return strings.HasPrefix(l, "data: ") && strings.Contains(l, `"channel":"forum:tech"`)
	})

	start := time.Now()
	if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expectLine(t, lines, "retry hint on shutdown", func(l string) bool { return strings.HasPrefix(l, "retry: ") })
	ended := time.After(shutdownTimeout)
	for done := false; !done; {
		select {
		case _, ok := <-lines:
			done = !ok
		case <-ended:
			t.Fatal("SSE stream did not end")
		}
	}
	if code := h.waitExit(t, shutdownTimeout); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if d := time.Since(start); d > shutdownTimeout {
		t.Fatalf("shutdown took %v", d)
	}
}

// TestServeConfigSources: the --config file, HERALD_* environment and flags
// all take effect, with env over file and flags over env.
func TestServeConfigSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "herald.yaml")
	if err := os.WriteFile(file, []byte(`
listen: 127.0.0.1:1          # overridden by the flag
api_keys: [file-key]
sse:
  retry: 3s                  # overridden by the environment
  heartbeat: 200ms
`), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHerald(t, []string{"HERALD_SSE_RETRY=1500ms", "HERALD_LISTEN=127.0.0.1:2"},
		"--config", file, "--listen", "127.0.0.1:0")

	if s := publish(t, h.url, `{"channel":"a"}`); s != 401 {
		t.Fatalf("publish without key: %d, want 401", s)
	}
	if s := publish(t, h.url, `{"channel":"a"}`, "Authorization: Bearer file-key"); s != 200 {
		t.Fatalf("publish with key: %d, want 200", s)
	}
	lines := openSSE(t, h.url+"/v1/sse?channel=a")
	expectLine(t, lines, "retry from env", func(l string) bool { return l == "retry: 1500" })
	expectLine(t, lines, "heartbeat from file", func(l string) bool { return strings.HasPrefix(l, ":") })
}

func TestServeBadConfig(t *testing.T) {
	bin := buildHerald(t)
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0")
	cmd.Env = []string{"HERALD_SSE_HEARTBEAT=often", "HERALD_LOG_FORMAT=xml"}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "HERALD_SSE_HEARTBEAT") {
		t.Fatalf("output does not name the bad setting:\n%s", out)
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(buildHerald(t), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^herald \S+\n$`).Match(out) {
		t.Fatalf("version printed %q", out)
	}
	bin := filepath.Join(t.TempDir(), "herald")
	if err := goBuild(bin, "-ldflags", "-X main.version=v9.8.7"); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "herald v9.8.7\n" {
		t.Fatalf("ldflags version printed %q", out)
	}
}
