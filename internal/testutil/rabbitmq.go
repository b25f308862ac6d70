package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitBoot bounds how long a rabbitmq-server may take to accept an AMQP
// connection: it boots in about 4s on a quiet machine, more on a loaded CI
// runner.
const rabbitBoot = 60 * time.Second

// RabbitMQ starts a rabbitmq-server for the test, as the current user, on
// free loopback ports, with its data, logs and Erlang cookie in a temporary
// directory, and stops it when the test ends. It returns the AMQP URL
// (user guest). restart kills the broker (SIGKILL, a crash) and starts it
// again on the same directory and ports: every message it confirmed is
// still there.
//
// The broker gets an epmd of its own, on a free port (ERL_EPMD_PORT),
// started in the foreground as a child of the test rather than left behind
// as a daemon. Both run in process groups of their own, killed whole when
// the test ends; the helpers beam.smp starts in other sessions
// (erl_child_setup, inet_gethost) exit when it does.
//
// The tests that need RabbitMQ fail, rather than skip, when rabbitmq-server
// is not installed: CI installs it (apt-get install -y rabbitmq-server).
func RabbitMQ(t testing.TB) (url string, restart func()) {
	t.Helper()
	bin, epmd, err := rabbitBinaries()
	if err != nil {
		t.Fatalf("testutil: %v: install it, e.g. apt-get install -y rabbitmq-server", err)
	}
	r := &rabbitServer{t: t, bin: bin, epmdBin: epmd, dir: t.TempDir()}
	// Another process may take a port between freePorts and the broker's
	// bind: try a few.
	for try := 1; ; try++ {
		ports := freePorts(t, 3)
		r.amqpPort, r.distPort, r.epmdPort = ports[0], ports[1], ports[2]
		err := r.start()
		if err == nil {
			break
		}
		r.stop()
		if try == 3 {
			t.Fatal(err)
		}
	}
	t.Cleanup(r.stop)
	return r.url(), func() {
		t.Helper()
		r.killBroker()
		// The node name is free again once epmd saw the old node's
		// connection close, which may take a moment: try again.
		var err error
		for try := 1; try <= 3; try++ {
			if err = r.startBroker(); err == nil {
				return
			}
			r.killBroker()
			time.Sleep(time.Second)
		}
		t.Fatal(err)
	}
}

// rabbitBinaries finds the rabbitmq-server script and epmd. On Debian and
// Ubuntu the rabbitmq-server on the PATH is a wrapper that switches to the
// rabbitmq user when run as root: the script it wraps is used instead.
func rabbitBinaries() (server, epmd string, err error) {
	server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
	if _, err := os.Stat(server); err != nil {
		if server, err = exec.LookPath("rabbitmq-server"); err != nil {
			if server, err = exec.LookPath("/usr/sbin/rabbitmq-server"); err != nil {
				return "", "", fmt.Errorf("rabbitmq-server not found (%w)", err)
			}
		}
	}
	if epmd, err = exec.LookPath("epmd"); err != nil {
		found, _ := filepath.Glob("/usr/lib/erlang/erts-*/bin/epmd")
		if len(found) == 0 {
			return "", "", fmt.Errorf("epmd (Erlang) not found (%w)", err)
		}
		epmd = found[len(found)-1]
	}
	return server, epmd, nil
}

// rabbitServer is one broker and its epmd, and the settings to start them
// again. Its methods run on the test's goroutine.
type rabbitServer struct {
	t       testing.TB
	bin     string
	epmdBin string
	dir     string

	amqpPort, distPort, epmdPort int

	epmd   *exec.Cmd
	epmdUp chan struct{} // closed when epmd has exited
	broker *exec.Cmd
	exited chan struct{} // closed when broker has exited
	out    *syncBuffer   // the broker's output, for failure messages
}

func (r *rabbitServer) url() string {
	return "amqp://guest:guest@" + net.JoinHostPort("127.0.0.1", strconv.Itoa(r.amqpPort)) + "/"
}

func (r *rabbitServer) nodeName() string {
	return "herald-test-" + strconv.Itoa(r.amqpPort) + "@localhost"
}

// start writes the configuration, then starts epmd and the broker.
func (r *rabbitServer) start() error {
	files := map[string]string{
		"rabbitmq-env.conf": "", // instead of /etc/rabbitmq's
		"rabbitmq.conf":     "",
		"enabled_plugins":   "[].\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(r.dir, name), []byte(content), 0o600); err != nil {
			return fmt.Errorf("testutil: %w", err)
		}
	}
	if err := r.startEpmd(); err != nil {
		return err
	}
	return r.startBroker()
}

// startEpmd starts epmd in the foreground and waits until it listens.
func (r *rabbitServer) startEpmd() error {
	r.epmd = exec.Command(r.epmdBin, "-port", strconv.Itoa(r.epmdPort), "-address", "127.0.0.1")
	// Pdeathsig: killed with the test binary even when it dies without
	// running its cleanups (a test timeout's panic).
	r.epmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out := &syncBuffer{}
	r.epmd.Stdout, r.epmd.Stderr = out, out
	r.epmd.WaitDelay = 5 * time.Second
	if err := r.epmd.Start(); err != nil {
		return fmt.Errorf("testutil: starting epmd: %w", err)
	}
	r.epmdUp = waitProcess(r.epmd)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(r.epmdPort))
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-r.epmdUp:
			return fmt.Errorf("testutil: epmd on port %d exited: %s", r.epmdPort, out.String())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testutil: epmd on port %d did not listen in 10s: %s", r.epmdPort, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startBroker starts rabbitmq-server and waits until it accepts an AMQP
// connection.
func (r *rabbitServer) startBroker() error {
	r.out = &syncBuffer{}
	r.broker = exec.Command(r.bin)
	r.broker.Dir = r.dir
	// Pdeathsig: should the test binary die without running its cleanups
	// (a test timeout's panic), the script gets SIGTERM, on which it stops
	// beam.smp.
	r.broker.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	r.broker.Stdout, r.broker.Stderr = r.out, r.out
	// Helpers of beam.smp in other sessions may hold its output open for a
	// moment after it died.
	r.broker.WaitDelay = 5 * time.Second
	r.broker.Env = append(rabbitFreeEnv(),
		"HOME="+r.dir, // the Erlang cookie goes there
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(r.dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(r.dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(r.dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(r.dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(r.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(r.dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(r.dir, "rabbitmq.pid"),
		"RABBITMQ_NODENAME="+r.nodeName(),
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(r.amqpPort),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(r.distPort),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_EPMD_PORT="+strconv.Itoa(r.epmdPort),
	)
	if err := r.broker.Start(); err != nil {
		return fmt.Errorf("testutil: starting rabbitmq-server: %w", err)
	}
	r.exited = waitProcess(r.broker)

	deadline := time.Now().Add(rabbitBoot)
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("testutil: rabbitmq-server on port %d exited: %s%s", r.amqpPort, r.out.String(), r.logTail())
		default:
		}
		if err := dialAMQP(r.url()); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			r.killBroker()
			return fmt.Errorf("testutil: rabbitmq-server on port %d did not accept an AMQP connection in %v: %s%s",
				r.amqpPort, rabbitBoot, r.out.String(), r.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rabbitFreeEnv is the test's environment without the variables that
// configure RabbitMQ or Erlang, or name the home directory.
func rabbitFreeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "RABBITMQ_") || strings.HasPrefix(kv, "ERL_") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// logTail returns the end of the broker's log file, for failure messages.
func (r *rabbitServer) logTail() string {
	b, err := os.ReadFile(filepath.Join(r.dir, "log", r.nodeName()+".log"))
	if err != nil {
		return ""
	}
	const keep = 4000
	if len(b) > keep {
		b = b[len(b)-keep:]
	}
	return "\nlog: ..." + string(b)
}

// stop kills the broker and epmd. A clean shutdown would take seconds, and
// the data goes with the temporary directory.
func (r *rabbitServer) stop() {
	r.killBroker()
	if r.epmd != nil && r.epmd.Process != nil {
		_ = syscall.Kill(-r.epmd.Process.Pid, syscall.SIGKILL)
		<-r.epmdUp
		r.epmd = nil
	}
}

// killBroker kills the broker's process group (the script and beam.smp)
// and waits until the script is gone and the AMQP port is closed.
func (r *rabbitServer) killBroker() {
	if r.broker == nil || r.broker.Process == nil {
		return
	}
	_ = syscall.Kill(-r.broker.Process.Pid, syscall.SIGKILL)
	<-r.exited
	r.broker = nil
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(r.amqpPort))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
	}
	r.t.Errorf("testutil: rabbitmq-server on port %d still accepts connections after SIGKILL", r.amqpPort)
}

// waitProcess waits for cmd in a goroutine and returns a channel closed
// when it has exited.
func waitProcess(cmd *exec.Cmd) chan struct{} {
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return exited
}

// dialAMQP opens and closes an AMQP connection to url: the broker has
// booted and its default virtual host is ready.
func dialAMQP(url string) error {
	c, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(time.Second)})
	if err != nil {
		return err
	}
	if c.IsClosed() {
		return errors.New("connection closed at once")
	}
	return c.Close()
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports
}
