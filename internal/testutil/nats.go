package testutil

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// natsBoot bounds how long a nats-server may take to accept a connection.
// It takes a few tens of milliseconds on a quiet machine.
const natsBoot = 15 * time.Second

// errNATSExited is wrapped by start's error when the process exited
// before accepting connections (its port was taken, for one).
var errNATSExited = errors.New("exited")

// NATSServer is a nats-server process run for a test: the real server
// binary, not the embedded one, so that tests can kill it as an outage
// would. Its methods are meant for the test's goroutine: they fail the test
// (t.Fatal) when the server cannot start.
type NATSServer struct {
	t    testing.TB
	bin  string
	dir  string // JetStream store
	port int
	out  *syncBuffer // every run's output, for failure messages

	mu     sync.Mutex
	cmd    *exec.Cmd     // the current process, nil when killed; guarded by mu
	exited chan struct{} // closed when cmd has exited; guarded by mu
	runs   int           // processes started so far; guarded by mu
}

// NATS starts a nats-server for the test with JetStream on (-js), its
// store in a temporary directory, listening on 127.0.0.1 on a free port,
// waits until it accepts connections, and stops it when the test ends.
// When the test has failed, the server's output is logged.
//
// The tests that need NATS fail, rather than skip, when nats-server is not
// on the PATH: CI installs it (apt-get install -y nats-server).
func NATS(t testing.TB) *NATSServer {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatalf("testutil: nats-server not found on the PATH (%v): install it, e.g. apt-get install -y nats-server", err)
	}
	s := &NATSServer{t: t, bin: bin, dir: t.TempDir(), out: &syncBuffer{}}
	onFreePort(t, func(port int) { s.port = port }, s.start)
	t.Cleanup(s.stop)
	return s
}

// URL is the server's client URL, "nats://127.0.0.1:PORT". It stays the
// same across Kill and Start.
func (s *NATSServer) URL() string {
	return "nats://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Kill kills the server (SIGKILL, a crash) and waits until it is gone. Its
// store is kept. Killing a killed server does nothing.
func (s *NATSServer) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

// Start starts the killed server again on the same port and store, and
// waits until it accepts connections. The port may be briefly unavailable
// after Kill: Start tries again for a few seconds before failing the test.
// Starting a running server does nothing.
func (s *NATSServer) Start() {
	s.t.Helper()
	var err error
	for try := 1; try <= 20; try++ {
		if err = s.start(); err == nil || !errors.Is(err, errNATSExited) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatal(err)
	}
}

// Restart kills the server and starts it again. With wipe, the store is
// deleted in between: the server comes back empty, as one that lost its
// disk (or ran without persistence) does.
func (s *NATSServer) Restart(wipe bool) {
	s.t.Helper()
	s.Kill()
	if wipe {
		if err := os.RemoveAll(s.dir); err != nil {
			s.t.Fatalf("testutil: wiping the nats-server store: %v", err)
		}
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			s.t.Fatalf("testutil: wiping the nats-server store: %v", err)
		}
	}
	s.Start()
}

// Output returns what the server has written so far, over every run.
func (s *NATSServer) Output() string { return s.out.String() }

// start starts a process unless one runs, and waits until it accepts
// connections. On failure no process is left running.
func (s *NATSServer) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	s.runs++
	fmt.Fprintf(s.out, "---- testutil: nats-server run %d on port %d ----\n", s.runs, s.port)
	cmd := exec.Command(s.bin,
		"-a", "127.0.0.1",
		"-p", strconv.Itoa(s.port),
		"-js",
		"-sd", s.dir,
		"-n", "testutil-"+strconv.Itoa(s.port),
	)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	// Killed with the test binary should it die without its clean-ups
	// (a -timeout panic), like the other servers the helpers start.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("testutil: starting nats-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited

	deadline := time.Now().Add(natsBoot)
	for {
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("testutil: nats-server on port %d %w: %s", s.port, errNATSExited, s.tail())
		default:
		}
		err := s.hello()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.killLocked()
			return fmt.Errorf("testutil: nats-server on port %d did not accept a connection in %v (%v): %s", s.port, natsBoot, err, s.tail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hello connects and expects the server's INFO line.
func (s *NATSServer) hello() error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "INFO ") {
		return fmt.Errorf("unexpected greeting %.80q", line)
	}
	return nil
}

// killLocked kills the process, if one runs, and waits until it is gone.
// s.mu must be held.
func (s *NATSServer) killLocked() {
	if s.cmd == nil {
		return
	}
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		s.t.Errorf("testutil: killing nats-server: %v", err)
	}
	<-s.exited
	s.cmd = nil
}

// stop asks the server to shut down (SIGTERM) and kills it after 10s. It
// is the test's clean-up.
func (s *NATSServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.t.Failed() {
		s.t.Logf("testutil: nats-server output:\n%s", s.tail())
	}
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		s.cmd = nil
	case <-time.After(10 * time.Second):
		s.t.Errorf("testutil: nats-server did not stop in 10s; killing it")
		s.killLocked()
	}
}

// tail is the end of the server's output, for failure messages.
func (s *NATSServer) tail() string {
	const max = 8 << 10
	out := s.out.String()
	if len(out) > max {
		out = "…" + out[len(out)-max:]
	}
	return out
}
