//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The epoll reader holds a worker's subscribers on a few event loops
// instead of a goroutine each: a loop owns its connections' sockets (plain
// non-blocking TCP sockets, bound to their source address) and an epoll
// instance (level-triggered), writes the subscribe request by hand, parses
// the response head, then decodes the stream incrementally (stream_sse.go,
// stream_ws.go) straight out of one read buffer per loop. A connection
// keeps only its decoder state and the bytes of a line or frame cut by a
// read boundary. The counters, histograms and trackers are the worker's,
// as with the goroutine reader.

const defaultReader = "epoll"

// Epoll reader tuning.
const (
	loopConns       = 4096 // connections per event loop before another is started (up to GOMAXPROCS)
	loopReadBuf     = 4096 // read buffer, one per loop
	loopEvents      = 256  // events per epoll_wait
	readsPerWakeup  = 4    // reads of one ready connection before the others get a turn
	handshakeScan   = 100 * time.Millisecond
	epollConnEvents = unix.EPOLLIN | unix.EPOLLRDHUP
)

// epollReader is a worker's set of event loops.
type epollReader struct {
	w       *worker
	targets []subscribeTarget // by node
	loops   []*eloop
	next    int // loop of the next subscriber; used by the dial loop only
}

func newEpollReader(w *worker) (*epollReader, error) {
	targets, err := newSubscribeTargets(w.run)
	if err != nil {
		return nil, err
	}
	r := &epollReader{w: w, targets: targets}
	n := min(runtime.GOMAXPROCS(0), max(1, ceilDiv(w.cfg.Count, loopConns)))
	for range n {
		l, err := newLoop(r)
		if err != nil {
			for _, l := range r.loops {
				l.closeFDs()
			}
			return nil, err
		}
		r.loops = append(r.loops, l)
	}
	return r, nil
}

// start runs the loops until ctx ends. They are part of w.conns.
func (r *epollReader) start(ctx context.Context) {
	for _, l := range r.loops {
		r.w.conns.Add(1)
		go func() {
			defer r.w.conns.Done()
			l.run(ctx)
		}()
	}
}

// open hands s to a loop, which connects it. The caller holds one of
// w.slots, which the loop releases when the handshake ended.
func (r *epollReader) open(s *subscriber, t0 time.Time) {
	l := r.loops[r.next]
	r.next = (r.next + 1) % len(r.loops)
	l.add(s, t0)
}

// eloop is one event loop. Everything but mu, pending and closed belongs
// to its goroutine.
//
// The loop does not block in epoll_wait: its epoll descriptor is itself
// registered with the Go runtime's network poller (an epoll set is
// readable while it has ready events), so an idle loop is a parked
// goroutine, and epoll_wait is only called with a zero timeout. A thread
// blocked in epoll_wait would instead cost a syscall hand-off of its P at
// every wakeup.
type eloop struct {
	r       *epollReader
	w       *worker
	ctx     context.Context
	epfd    int
	epf     *os.File        // epfd, registered with the Go poller
	epc     syscall.RawConn // of epf
	evfd    int             // eventfd: new subscribers pending, or ctx ended
	scanAt  time.Time       // deadline set on epf for the handshake scan; zero = none
	pollFn  func(uintptr) bool
	ready   int   // poll's results
	waitErr error // poll's results
	events  []unix.EpollEvent
	buf     []byte
	conns   []*econn // by file descriptor
	now     int64    // when the bytes being decoded were read, Unix ns

	handshaking int // connections before their response head
	lastScan    time.Time

	mu      sync.Mutex
	pending []pendingSub // guarded by mu
	closed  bool         // guarded by mu; the loop no longer takes subscribers
}

type pendingSub struct {
	s  *subscriber
	t0 time.Time
}

func newLoop(r *epollReader) (*eloop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	l := &eloop{r: r, w: r.w, epfd: epfd, evfd: evfd, epf: os.NewFile(uintptr(epfd), "epoll"),
		events: make([]unix.EpollEvent, loopEvents), buf: make([]byte, loopReadBuf)}
	l.pollFn = l.poll
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		l.closeFDs()
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	if l.epc, err = l.epf.SyscallConn(); err != nil {
		l.closeFDs()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	return l, nil
}

func (l *eloop) closeFDs() {
	unix.Close(l.evfd)
	l.epf.Close()
}

// wait returns the ready events, parking until there are some. It
// returns 0 events when the handshake scan is due.
func (l *eloop) wait() (int, error) {
	switch {
	case l.handshaking > 0 && l.scanAt.IsZero():
		l.scanAt = time.Now().Add(handshakeScan)
		_ = l.epf.SetReadDeadline(l.scanAt)
	case l.handshaking == 0 && !l.scanAt.IsZero():
		l.scanAt = time.Time{}
		_ = l.epf.SetReadDeadline(time.Time{})
	}
	l.ready, l.waitErr = 0, nil
	err := l.epc.Read(l.pollFn)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		l.scanAt = time.Time{}
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return l.ready, l.waitErr
}

// poll is the RawConn.Read callback of wait (as l.pollFn, so that wait
// allocates no closure): it reports whether there is anything to do.
func (l *eloop) poll(fd uintptr) bool {
	l.ready, l.waitErr = epollWaitNow(int(fd), l.events)
	return l.ready > 0 || l.waitErr != nil
}

// epollWaitNow is epoll_wait with a zero timeout: it never blocks, so it
// needs none of the runtime's blocking-syscall bookkeeping.
func epollWaitNow(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		if e == unix.EINTR {
			return 0, nil
		}
		return 0, e
	}
	return int(n), nil
}

// readNow is read(2) on a non-blocking socket: it never blocks.
func readNow(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// add queues s for the loop (any goroutine).
func (l *eloop) add(s *subscriber, t0 time.Time) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.w.slots
		l.w.connectFailure(context.Canceled)
		return
	}
	l.pending = append(l.pending, pendingSub{s, t0})
	if len(l.pending) == 1 {
		// Under mu: once closed is set the eventfd may be gone.
		l.wake()
	}
	l.mu.Unlock()
}

func (l *eloop) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(l.evfd, one[:])
}

// run is the loop: wait for events, handle them, connect new subscribers,
// time out handshakes; at the end of ctx close everything.
func (l *eloop) run(ctx context.Context) {
	l.ctx = ctx
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		l.wake()
	})
	defer func() {
		if !stop() {
			<-fired
		}
		l.closeFDs()
	}()
	for {
		n, err := l.wait()
		if err != nil {
			l.shutdown(fmt.Errorf("epoll_wait: %w", err))
			return
		}
		woken := false
		for i := range n {
			ev := &l.events[i]
			fd := int(ev.Fd)
			if fd == l.evfd {
				woken = true
				continue
			}
			if fd < len(l.conns) && l.conns[fd] != nil {
				l.handle(l.conns[fd], ev.Events)
			}
		}
		if ctx.Err() != nil {
			l.shutdown(nil)
			return
		}
		// New sockets only after the batch: a descriptor closed above
		// and reused now must not receive the old one's events.
		if woken {
			var b [8]byte
			_, _ = unix.Read(l.evfd, b[:])
			l.dialPending()
		}
		if l.handshaking > 0 && time.Since(l.lastScan) >= handshakeScan {
			l.scanHandshakes()
		}
	}
}

// shutdown closes every connection and refuses further subscribers.
// fatal is nil at the end of the run; otherwise the loop failed, and its
// open connections count as disconnected.
func (l *eloop) shutdown(fatal error) {
	l.mu.Lock()
	l.closed = true
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	cause := fatal
	if cause == nil {
		cause = context.Cause(l.ctx)
	}
	for range pending {
		l.w.connectFailure(cause)
		<-l.w.slots
	}
	for _, c := range l.conns {
		if c == nil {
			continue
		}
		if fatal != nil {
			l.end(c, fatal)
		} else if c.hs != nil {
			l.failConnect(c, cause)
		} else {
			l.closeConn(c)
		}
	}
}

// dialPending starts connecting the queued subscribers.
func (l *eloop) dialPending() {
	l.mu.Lock()
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	for _, p := range pending {
		if err := l.dial(p); err != nil {
			l.w.connectFailure(err)
			<-l.w.slots
		}
	}
}

// econn is one subscriber connection of a loop.
type econn struct {
	s      *subscriber
	l      *eloop
	fd     int
	events uint32     // registered with epoll
	out    []byte     // bytes to write (request, pong, close)
	hs     *handshake // until the response head has been accepted
	sse    sseStream
	ws     wsStream
}

// handshake is a connection's state until it streams.
type handshake struct {
	t0        time.Time
	connected bool   // the TCP connection is established
	head      []byte // response head so far, then (error status) body so far
	accept    string // expected Sec-WebSocket-Accept
	resp      *http.Response
}

// dial opens p's socket and starts connecting it.
func (l *eloop) dial(p pendingSub) error {
	src := l.w.run.SourceIPs[p.s.src]
	target := l.r.targets[p.s.node]
	dst := target.addr
	family := unix.AF_INET
	if dst.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	fail := func(err error) error {
		unix.Close(fd)
		return fmt.Errorf("dial %v->%v: %w", src, dst, err)
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(src, 0))); err != nil {
		return fail(fmt.Errorf("bind: %w", err))
	}
	if err := unix.Connect(fd, sockaddr(dst)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fail(err)
	}
	uri, err := requestURI(l.w.run, p.s.node, p.s.name)
	if err != nil {
		return fail(err)
	}
	c := &econn{s: p.s, l: l, fd: fd, hs: &handshake{t0: p.t0}}
	switch l.w.run.Transport {
	case "sse":
		c.out = appendSSERequest(nil, target.host, uri)
	default:
		key := newWSKey()
		c.hs.accept = wsAccept(key)
		c.out = appendWSRequest(nil, target.host, uri, key)
	}
	c.events = epollConnEvents | unix.EPOLLOUT
	ev := unix.EpollEvent{Events: c.events, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fail(fmt.Errorf("epoll_ctl: %w", err))
	}
	for fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*econn, max(len(l.conns), 64))...)
	}
	l.conns[fd] = c
	l.handshaking++
	return nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// handle reacts to the events of c.
func (l *eloop) handle(c *econn, events uint32) {
	if c.hs != nil && !c.hs.connected {
		if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		if errno, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || errno != 0 {
			if err == nil {
				err = unix.Errno(errno)
			}
			l.failConnect(c, fmt.Errorf("dial %v->%v: %w", l.w.run.SourceIPs[c.s.src], l.r.targets[c.s.node].addr, err))
			return
		}
		c.hs.connected = true
	}
	if len(c.out) > 0 && events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		if err := l.flush(c); err != nil {
			l.end(c, err)
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		l.read(c)
	}
}

// flush writes what c has queued; the rest waits for EPOLLOUT.
func (l *eloop) flush(c *econn) error {
	for len(c.out) > 0 {
		n, err := unix.Write(c.fd, c.out)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return l.setEvents(c, epollConnEvents|unix.EPOLLOUT)
		}
		if err != nil {
			return err
		}
		c.out = c.out[n:]
	}
	c.out = nil
	return l.setEvents(c, epollConnEvents)
}

// send queues b (a pong or the close reply) and writes what it can.
func (l *eloop) send(c *econn, b []byte) {
	c.out = append(c.out, b...)
	_ = l.flush(c) // a write error shows on the next read
}

func (l *eloop) setEvents(c *econn, events uint32) error {
	if c.events == events {
		return nil
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(c.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	c.events = events
	return nil
}

// read reads what c has, a few buffers at most (the level-triggered
// epoll reports the rest), and decodes it.
func (l *eloop) read(c *econn) {
	for range readsPerWakeup {
		n, err := readNow(c.fd, l.buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			l.end(c, err)
			return
		}
		if n == 0 {
			l.end(c, io.EOF)
			return
		}
		l.now = time.Now().UnixNano()
		if !l.consume(c, l.buf[:n]) || n < len(l.buf) {
			return
		}
	}
}

// consume decodes b, read from c. It returns false when c was closed.
func (l *eloop) consume(c *econn, b []byte) bool {
	if hs := c.hs; hs != nil {
		return l.consumeHead(c, b)
	}
	var err error
	if l.w.run.Transport == "sse" {
		err = c.sse.feed(b, c)
	} else {
		err = c.ws.feed(b, c)
	}
	if err != nil {
		l.end(c, err)
		return false
	}
	return true
}

// consumeHead collects the response head, checks it and starts the
// stream with the bytes after it; or, after an error status, collects
// the start of the body for the message.
func (l *eloop) consumeHead(c *econn, b []byte) bool {
	hs := c.hs
	hs.head = append(hs.head, b...)
	if hs.resp != nil {
		return l.errorStatus(c, false)
	}
	end := headEnd(hs.head)
	if end < 0 {
		if len(hs.head) > maxHeadBytes {
			l.failConnect(c, fmt.Errorf("response head longer than %d bytes", maxHeadBytes))
			return false
		}
		return true
	}
	resp, err := parseHead(hs.head[:end])
	if err == nil {
		if l.w.run.Transport == "sse" {
			c.sse.chunked, err = checkSSEHead(resp)
		} else {
			err = checkWSHead(resp, hs.accept)
		}
	}
	rest := hs.head[end:]
	if errors.Is(err, errNotOK) {
		hs.resp = resp
		hs.head = append(hs.head[:0], rest...)
		return l.errorStatus(c, false)
	}
	if err != nil {
		l.failConnect(c, err)
		return false
	}
	l.connected(c)
	if len(rest) > 0 {
		return l.consume(c, rest)
	}
	return true
}

// errorStatus fails c's connect with the error response once enough of
// its body is there.
func (l *eloop) errorStatus(c *econn, eof bool) bool {
	body, done := errorBody(c.hs.resp, c.hs.head, eof)
	if !done {
		return true
	}
	l.failConnect(c, statusError(c.hs.resp, body))
	return false
}

// connected records c's successful handshake.
func (l *eloop) connected(c *econn) {
	now := time.Now()
	w := l.w
	w.handshake.Record(int64(now.Sub(c.hs.t0)))
	c.hs = nil
	l.handshaking--
	<-w.slots
	c.s.connected = true
	w.connected.Add(1)
	storeMax(&w.lastConnect, now.UnixNano())
	w.attemptDone()
}

// failConnect closes c, whose handshake failed.
func (l *eloop) failConnect(c *econn, err error) {
	l.closeConn(c)
	c.hs = nil
	l.handshaking--
	<-l.w.slots
	l.w.connectFailure(err)
}

// end closes c when its stream ended by err (or its handshake failed).
func (l *eloop) end(c *econn, err error) {
	if hs := c.hs; hs != nil {
		if hs.resp != nil {
			l.errorStatus(c, true)
			return
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		l.failConnect(c, err)
		return
	}
	l.closeConn(c)
	if l.ctx.Err() == nil {
		l.w.disconnected.Add(1)
		l.w.noteError("disconnected: %v", err)
	}
}

func (l *eloop) closeConn(c *econn) {
	unix.Close(c.fd) // also leaves the epoll set
	l.conns[c.fd] = nil
	c.fd = -1
}

// scanHandshakes fails the handshakes that took too long.
func (l *eloop) scanHandshakes() {
	now := time.Now()
	l.lastScan = now
	for _, c := range l.conns {
		if c != nil && c.hs != nil && now.Sub(c.hs.t0) > handshakeTimeout {
			l.failConnect(c, fmt.Errorf("no response within %v", handshakeTimeout))
		}
	}
}

// sseData implements sseSink.
func (c *econn) sseData(v []byte, gap bool) {
	if gap {
		c.l.w.gaps.Add(1)
		return
	}
	c.l.w.onData(c.s, v, c.l.now)
}

// wsText implements wsSink.
func (c *econn) wsText(msg []byte) {
	if control, gap := isControl(msg); control {
		if gap {
			c.l.w.gaps.Add(1)
		}
		return
	}
	c.l.w.onData(c.s, msg, c.l.now)
}

// wsPing implements wsSink: answer with a pong.
func (c *econn) wsPing(payload []byte) {
	c.l.send(c, appendClientFrame(nil, wsPong, payload))
}

// wsClose implements wsSink: echo the close code, as gorilla's default
// close handler does; the connection is closed after.
func (c *econn) wsClose(code int, _ []byte) {
	var payload []byte
	if code != 1005 {
		payload = []byte{byte(code >> 8), byte(code)}
	}
	c.l.send(c, appendClientFrame(nil, wsClose, payload))
}
