//go:build linux

package engine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
)

// The benchmarks' clients are raw non-blocking sockets driven with system
// calls, not net.Conns: they put nothing on the Go heap and start no
// goroutine per connection, so what the benchmarks measure in this process
// is the server's cost. Run them with a fixed count, for example
//
//	go test -run '^$' -bench . -benchtime 1x ./transport/engine/
//
// (BenchmarkIdleConnection does its whole measurement in each iteration).

// rawConns are client sockets opened with system calls.
type rawConns struct {
	fds    []int
	closed bool
}

// close closes the sockets once.
func (rc *rawConns) close() {
	if rc.closed {
		return
	}
	rc.closed = true
	for _, fd := range rc.fds {
		unix.Close(fd)
	}
}

// rawSSE opens n SSE connections to s for query and sends their requests.
// The sockets are closed when the benchmark ends, if not before.
func rawSSE(b *testing.B, s *server, query string, n int) *rawConns {
	b.Helper()
	sa, err := sockaddr(s.addr)
	if err != nil {
		b.Fatal(err)
	}
	req := []byte("GET /v1/sse?" + query + " HTTP/1.1\r\nHost: " + s.addr + "\r\n\r\n")
	rc := &rawConns{fds: make([]int, 0, n)}
	b.Cleanup(rc.close)
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatalf("socket: %v", err)
		}
		rc.fds = append(rc.fds, fd)
		if err := unix.Connect(fd, sa); err != nil {
			b.Fatalf("connect: %v", err)
		}
		if _, err := unix.Write(fd, req); err != nil {
			b.Fatalf("write: %v", err)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			b.Fatal(err)
		}
	}
	return rc
}

func sockaddr(addr string) (*unix.SockaddrInet4, error) {
	ta, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return nil, err
	}
	sa := &unix.SockaddrInet4{Port: ta.Port}
	copy(sa.Addr[:], ta.IP.To4())
	return sa, nil
}

// settledGoroutines waits until the goroutine count stops moving (the
// handshakes' net/http goroutines end just after Attach) and returns it.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for stable, deadline := 0, time.Now().Add(wait); stable < 5 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			stable++
		} else {
			n, stable = m, 0
		}
	}
	return n
}

func memStats() runtime.MemStats {
	runtime.GC()
	runtime.GC() // a second cycle empties sync.Pools' victim caches
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

// BenchmarkIdleConnection attaches idle SSE connections and reports what
// each costs the server: heap, goroutine stacks and goroutines.
func BenchmarkIdleConnection(b *testing.B) {
	const conns = 2000
	for _, m := range modes {
		b.Run("mode="+m.name, func(b *testing.B) {
			s := startServer(b, m, options{})
			// A first round leaves behind what the handshakes' goroutines
			// keep for reuse (dead goroutines' stacks, net/http's pools),
			// so that the baseline below already has it.
			warm := rawSSE(b, s, "channel=idle", conns)
			s.waitEngineConns(b, conns)
			warm.close()
			s.waitEngineConns(b, 0)
			var heap, stack, goroutines float64
			for range b.N {
				g0 := settledGoroutines()
				m0 := memStats()
				rc := rawSSE(b, s, "channel=idle", conns)
				s.waitEngineConns(b, conns)
				testutil.Eventually(b, wait, func() error {
					if st := s.hub.Stats(); st.Subscribers != conns {
						return fmt.Errorf("%d subscribers, want %d", st.Subscribers, conns)
					}
					return nil
				})
				g1 := settledGoroutines()
				m1 := memStats()
				heap = float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / conns
				stack = float64(int64(m1.StackInuse)-int64(m0.StackInuse)) / conns
				goroutines = float64(g1-g0) / conns
				rc.close()
				s.waitEngineConns(b, 0)
			}
			b.ReportMetric(heap, "heap-B/conn")
			b.ReportMetric(stack, "stack-B/conn")
			b.ReportMetric(goroutines, "goroutines/conn")
		})
	}
}

// eventCounter reads many sockets on one goroutine with its own epoll
// instance, discards the bytes and counts SSE event ends ("\n\n"), even
// when one is split between two reads.
type eventCounter struct {
	epfd   int
	last   []byte // by descriptor: the last byte read
	events atomic.Int64
	want   atomic.Int64 // when events reaches it, reached is signalled
	reach  chan struct{}
	stop   atomic.Bool
	done   sync.WaitGroup
}

func newEventCounter(b *testing.B, fds []int) *eventCounter {
	b.Helper()
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	r := &eventCounter{epfd: epfd, reach: make(chan struct{}, 1)}
	for _, fd := range fds {
		if fd >= len(r.last) {
			r.last = append(r.last, make([]byte, fd+1-len(r.last))...)
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			b.Fatal(err)
		}
	}
	r.done.Add(1)
	go r.run()
	b.Cleanup(func() {
		r.stop.Store(true)
		r.done.Wait()
		unix.Close(epfd)
	})
	return r
}

func (r *eventCounter) run() {
	defer r.done.Done()
	events := make([]unix.EpollEvent, 256)
	buf := make([]byte, 64<<10)
	for !r.stop.Load() {
		n, err := unix.EpollWait(r.epfd, events, 20)
		if err != nil && err != unix.EINTR {
			panic(err)
		}
		var counted int64
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			for {
				k, err := unix.Read(fd, buf)
				if k <= 0 || err != nil {
					if k == 0 && err == nil { // the server closed: stop watching
						_ = unix.EpollCtl(r.epfd, unix.EPOLL_CTL_DEL, fd, nil)
					}
					break
				}
				prev := r.last[fd]
				for _, c := range buf[:k] {
					if c == '\n' && prev == '\n' {
						counted++
					}
					prev = c
				}
				r.last[fd] = prev
			}
		}
		if counted > 0 {
			if total := r.events.Add(counted); total >= r.want.Load() && r.want.Load() > 0 {
				select {
				case r.reach <- struct{}{}:
				default:
				}
			}
		}
	}
}

// waitFor waits until n events have been counted in all.
func (r *eventCounter) waitFor(b *testing.B, n int64) {
	b.Helper()
	r.want.Store(n)
	if r.events.Load() >= n {
		return
	}
	for {
		select {
		case <-r.reach:
			if r.events.Load() >= n {
				return
			}
		case <-time.After(time.Minute):
			b.Fatalf("%d SSE events after a minute, want %d", r.events.Load(), n)
		}
	}
}

// BenchmarkDelivery publishes to one channel with 1000 SSE subscribers,
// read by one goroutine that discards the bytes, and reports deliveries
// per second from the first publish to the last event read, and the
// server's allocations per delivery.
func BenchmarkDelivery(b *testing.B) {
	const subscribers = 1000
	for _, m := range modes {
		b.Run(fmt.Sprintf("mode=%s/subscribers=%d", m.name, subscribers), func(b *testing.B) {
			s := startServer(b, m, options{hub: hub.Config{MaxQueueBytes: 256 << 20}})
			rc := rawSSE(b, s, "channel=bench", subscribers)
			r := newEventCounter(b, rc.fds)
			s.waitEngineConns(b, subscribers)
			// Each stream opens with two events: the retry hint and the
			// subscribed id.
			r.waitFor(b, 2*subscribers)

			p := hub.Publication{Channels: []string{"bench"}, Type: "post.created", Data: json.RawMessage(`{"id":"p981","body":"a comment of modest length"}`)}
			m0 := memStats()
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if _, err := s.hub.Publish(context.Background(), p); err != nil {
					b.Fatal(err)
				}
			}
			r.waitFor(b, int64(subscribers*(2+b.N)))
			elapsed := time.Since(start)
			b.StopTimer()
			var m1 runtime.MemStats
			runtime.ReadMemStats(&m1)

			if st := s.hub.Stats(); st.SlowConsumers != 0 || st.Connections != subscribers {
				b.Fatalf("hub stats %+v", st)
			}
			deliveries := float64(b.N * subscribers)
			b.ReportMetric(deliveries/elapsed.Seconds(), "deliveries/s")
			b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/deliveries, "allocs/delivery")
			b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/deliveries, "B/delivery")
		})
	}
}

// BenchmarkHandshake opens SSE connections one after another: connect,
// send the request, read the response head and the stream's two opening
// events, close, while one other subscriber stays on the same channels.
// It reports the server's allocations and heap bytes per
// connection, and the process's CPU time per connection (the raw-socket
// client's system calls included).
func BenchmarkHandshake(b *testing.B) {
	for _, m := range modes {
		b.Run("mode="+m.name, func(b *testing.B) {
			s := startServer(b, m, options{})
			sa, err := sockaddr(s.addr)
			if err != nil {
				b.Fatal(err)
			}
			req := []byte("GET /v1/sse?channel=thread:42&channel=forum:tech HTTP/1.1\r\nHost: " + s.addr +
				"\r\nUser-Agent: bench\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
			buf := make([]byte, 4096)
			handshake := func() {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					b.Fatalf("socket: %v", err)
				}
				defer unix.Close(fd)
				if err := unix.Connect(fd, sa); err != nil {
					b.Fatalf("connect: %v", err)
				}
				if _, err := unix.Write(fd, req); err != nil {
					b.Fatalf("write: %v", err)
				}
				// The head ends with "\r\n\r\n"; each of the two events
				// with "\n\n".
				events, prev := 0, byte(0)
				for events < 2 {
					n, err := unix.Read(fd, buf)
					if n <= 0 {
						b.Fatalf("read: %d %v (after %d events)", n, err, events)
					}
					for _, c := range buf[:n] {
						if c == '\n' && prev == '\n' {
							events++
						}
						prev = c
					}
				}
			}
			// One subscriber stays on the channels, as in a storm of
			// subscribers to channels in use.
			rawSSE(b, s, "channel=thread:42&channel=forum:tech", 1)
			for range 200 { // warm the pools and the heap
				handshake()
			}
			s.waitEngineConns(b, 1)
			m0 := memStats()
			var r0, r1 unix.Rusage
			_ = unix.Getrusage(unix.RUSAGE_SELF, &r0)
			b.ResetTimer()
			for range b.N {
				handshake()
			}
			s.waitEngineConns(b, 1)
			b.StopTimer()
			_ = unix.Getrusage(unix.RUSAGE_SELF, &r1)
			var m1 runtime.MemStats
			runtime.ReadMemStats(&m1)
			cpu := time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
			b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(b.N), "allocs/conn")
			b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/float64(b.N), "B/conn")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/conn")
		})
	}
}
