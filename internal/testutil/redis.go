package testutil

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Redis starts a redis-server for the test on a free loopback port, with
// its data in a temporary directory and an append-only file fsynced on
// every write, and stops it when the test ends. restart kills the server
// (SIGKILL, a crash) and starts it again on the same directory and port:
// every write it acknowledged is still there.
//
// The tests that need Redis fail, rather than skip, when redis-server is
// not installed: CI installs it (apt-get install -y redis-server).
func Redis(t testing.TB) (addr string, restart func()) {
	t.Helper()
	r := startRedisServer(t)
	t.Cleanup(r.stop)
	return r.addr(), func() {
		t.Helper()
		r.kill()
		if err := r.start(); err != nil {
			t.Fatal(err)
		}
	}
}

// startRedisServer starts a redis-server with args added to its command
// line, on a free port and a temporary directory, and fails the test when
// it cannot. The caller stops it.
func startRedisServer(t testing.TB, args ...string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testutil: redis-server not found (%v): install it, e.g. apt-get install -y redis-server", err)
	}
	r := &redisServer{t: t, bin: bin, dir: t.TempDir(), args: args}
	onFreePort(t, func(port int) { r.port = port }, r.start)
	return r
}

// onFreePort gives setPort a free port and calls start, a few times over:
// another process may take the port between freePort and the server's
// bind.
func onFreePort(t testing.TB, setPort func(int), start func() error) {
	t.Helper()
	for try := 1; ; try++ {
		setPort(freePort(t))
		err := start()
		if err == nil {
			return
		}
		if try == 3 {
			t.Fatal(err)
		}
	}
}

// redisServer is one redis-server process and the settings to start it
// again. Its methods run on the test's goroutine.
type redisServer struct {
	t    testing.TB
	bin  string
	dir  string
	port int

	// args are added to the command line (StartRedis, RedisCluster).
	args []string

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	out    *syncBuffer   // the server's output, for failure messages
}

func (r *redisServer) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// start starts the server and waits until it answers PING.
func (r *redisServer) start() error {
	r.out = &syncBuffer{}
	r.cmd = exec.Command(r.bin,
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--dir", r.dir,
		"--appendonly", "yes",
		"--appendfsync", "always",
		"--save", "", // no RDB snapshots: the append-only file holds everything
		"--daemonize", "no",
		"--loglevel", "warning",
	)
	r.cmd.Args = append(r.cmd.Args, r.args...)
	// Killed with the test binary should it die without its clean-ups
	// (a -timeout panic).
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("testutil: starting redis-server: %w", err)
	}
	r.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(r.cmd, r.exited)

	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("testutil: redis-server on port %d exited: %s", r.port, r.out.String())
		default:
		}
		if pingRedis(r.addr()) == nil {
			return nil
		}
		if time.Now().After(deadline) {
			r.kill()
			return fmt.Errorf("testutil: redis-server on port %d did not answer PING in 15s: %s", r.port, r.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop asks the server to shut down, and kills it after 10s.
func (r *redisServer) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		r.t.Errorf("testutil: redis-server did not stop in 10s; killing it")
		r.kill()
	}
}

// kill kills the server and waits until it is gone.
func (r *redisServer) kill() {
	_ = r.cmd.Process.Kill()
	<-r.exited
}

// pingRedis sends PING to addr and expects +PONG (a server still loading
// its data answers -LOADING).
func pingRedis(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING: %q", line)
	}
	return nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for a process's output and a reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ---- Redis that loses its data (added for history/redishistory) ----

// RedisLossy starts a redis-server like Redis, with a second way to
// restart it: restartEmpty kills the server (SIGKILL) and starts it again
// on the same port from a new, empty data directory, as a Redis without
// persistence comes back from a crash — everything it held is gone, and
// clients reconnect to the same address. restart is Redis's: data kept.
func RedisLossy(t testing.TB) (addr string, restart, restartEmpty func()) {
	t.Helper()
	r := startRedisServer(t)
	t.Cleanup(r.stop)
	restartIn := func(dir string) {
		t.Helper()
		r.kill()
		r.dir = dir
		if err := r.start(); err != nil {
			t.Fatal(err)
		}
	}
	return r.addr(), func() { t.Helper(); restartIn(r.dir) }, func() { t.Helper(); restartIn(t.TempDir()) }
}

// ---- Redis servers under the test's control (added for broker/redis) ----

// RedisServer is a redis-server that a test kills and starts again when it
// likes, e.g. to hold an outage for as long as it checks what clients do.
// Its methods run on the test's goroutine.
type RedisServer struct {
	r       *redisServer
	running bool
}

// StartRedis starts a redis-server like Redis does, with args added to its
// command line, and stops it when the test ends.
func StartRedis(t testing.TB, args ...string) *RedisServer {
	t.Helper()
	r := startRedisServer(t, args...)
	s := &RedisServer{r: r, running: true}
	t.Cleanup(func() {
		if s.running {
			r.stop()
		}
	})
	return s
}

// Addr returns the server's host:port.
func (s *RedisServer) Addr() string { return s.r.addr() }

// Kill kills the server (SIGKILL, a crash) and waits until it has exited:
// its clients' connections are reset. It does nothing if the server is
// not running.
func (s *RedisServer) Kill() {
	s.r.t.Helper()
	if !s.running {
		return
	}
	s.r.kill()
	s.running = false
}

// Start starts the killed server again on the same port and directory and
// waits until it answers PING. It does nothing if the server is running.
func (s *RedisServer) Start() {
	s.r.t.Helper()
	if s.running {
		return
	}
	if err := s.r.start(); err != nil {
		s.r.t.Fatal(err)
	}
	s.running = true
}

// Freeze stops the server with SIGSTOP: its connections stay open and
// nothing answers, as with a server that hangs or a network partition.
func (s *RedisServer) Freeze() {
	s.r.t.Helper()
	if err := s.r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.r.t.Fatal(err)
	}
}

// Thaw resumes a frozen server (SIGCONT).
func (s *RedisServer) Thaw() {
	s.r.t.Helper()
	if err := s.r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		s.r.t.Fatal(err)
	}
}

// RedisCluster starts a Redis Cluster of n masters without replicas
// (n >= 3, as redis-cli requires), each a redis-server on free loopback
// ports with its data in a temporary directory, and stops them when the
// test ends. It returns the masters' addresses once every node reports
// cluster_state:ok and knows every other. It needs redis-cli (the
// redis-tools package) to assign the slots.
func RedisCluster(t testing.TB, n int) []string {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("testutil: redis-cli not found (%v): install it, e.g. apt-get install -y redis-tools", err)
	}
	addrs := make([]string, n)
	for i := range addrs {
		// The cluster bus gets a free port of its own rather than the
		// default port+10000, which may be taken.
		bus := freePort(t)
		s := StartRedis(t,
			"--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000",
			"--appendonly", "no",
		)
		addrs[i] = s.Addr()
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("testutil: redis-cli --cluster create: %v: %s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, addr := range addrs {
		for {
			info, err := redisCommand(addr, "CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") &&
				strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(n)+"\r\n") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("testutil: Redis Cluster node %s not ready in 30s: %v %s", addr, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return addrs
}

// redisCommand sends one command to addr and returns its reply, which
// must be a simple or bulk string.
func redisCommand(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var req bytes.Buffer
	fmt.Fprintf(&req, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write(req.Bytes()); err != nil {
		return "", err
	}
	rd := bufio.NewReader(c)
	line, err := rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "$"):
		size, err := strconv.Atoi(line[1:])
		if err != nil || size < 0 {
			return "", fmt.Errorf("reply %q", line)
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return "", err
		}
		return string(buf[:size]), nil
	default:
		return "", fmt.Errorf("reply %q", line)
	}
}
