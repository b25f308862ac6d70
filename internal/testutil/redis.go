package testutil

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strconv"
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
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testutil: redis-server not found (%v): install it, e.g. apt-get install -y redis-server", err)
	}
	r := &redisServer{t: t, bin: bin, dir: t.TempDir()}
	// Another process may take the port between freePort and the
	// server's bind: try a few.
	for try := 1; ; try++ {
		r.port = freePort(t)
		err := r.start()
		if err == nil {
			break
		}
		if try == 3 {
			t.Fatal(err)
		}
	}
	t.Cleanup(r.stop)
	return r.addr(), func() {
		t.Helper()
		r.kill()
		if err := r.start(); err != nil {
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
