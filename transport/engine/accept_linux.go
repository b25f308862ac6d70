package engine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// acceptor accepts a listener's connections and reads their request heads
// with an epoll instance and a goroutine of its own, so that a client
// slow to send its request never delays the engine's poller. It serves
// the engine's paths itself (Listen) and hands every other connection to
// net/http.
type acceptor struct {
	*handoff
	e   *Engine
	cfg ListenConfig

	lfd      int // the listening socket (a duplicate; ln is closed)
	epfd     int
	evfd     int // wakes run for stop
	stopping atomic.Bool
	done     chan struct{} // closed when run has ended and cleaned up

	// Owned by run.
	pending   map[int]*handshake
	listenOff bool      // the listener is out of epoll after an accept error
	resumeAt  time.Time // when to put it back
	buf       []byte    // the read buffer, shared by every handshake
	hr        bytes.Reader
	br        *bufio.Reader

	// With cfg.Workers: requests for the handler workers.
	jobs    chan serveJob
	workers sync.WaitGroup
}

// serveJob is one request for a handler worker.
type serveJob struct {
	w *nativeWriter
	r *http.Request
}

// handshake is a connection whose request head is still arriving.
type handshake struct {
	fd       int
	remote   netip.AddrPort
	head     []byte
	deadline time.Time
}

func newAcceptor(e *Engine, ln net.Listener, cfg ListenConfig) (*acceptor, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, errors.New("listener has no file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	lfd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { lfd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("dup: %w", derr)
	}
	fail := func(err error) (*acceptor, error) {
		unix.Close(lfd)
		return nil, err
	}
	if err := unix.SetNonblock(lfd, true); err != nil {
		return fail(err)
	}
	// Accepted sockets inherit TCP_NODELAY from the listener (one system
	// call less per connection). TCP_DEFER_ACCEPT has the kernel hold a
	// connection until its first bytes arrive, so that accept4 mostly
	// returns connections whose request head can be read at once. Both are
	// optimisations: failing to set them changes nothing else.
	_ = unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	// TCP keepalive as net/http sets it (15s), also inherited.
	_ = unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	_ = unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15)
	_ = unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15)
	_ = unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, max(1, int(cfg.HeaderTimeout/time.Second)))
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fail(fmt.Errorf("epoll_create1: %w", err))
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return fail(fmt.Errorf("eventfd: %w", err))
	}
	for _, fd := range []int{lfd, evfd} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			unix.Close(epfd)
			unix.Close(evfd)
			return fail(fmt.Errorf("epoll_ctl: %w", err))
		}
	}
	a := &acceptor{
		e: e, cfg: cfg, lfd: lfd, epfd: epfd, evfd: evfd,
		done:    make(chan struct{}),
		pending: make(map[int]*handshake),
		buf:     make([]byte, maxHeadBytes),
	}
	a.br = bufio.NewReaderSize(&a.hr, 4096)
	a.handoff = &handoff{
		addr:  ln.Addr(),
		conns: make(chan net.Conn, handoffQueue),
		quit:  make(chan struct{}),
		stop:  a.close,
	}
	if cfg.Workers > 0 {
		a.jobs = make(chan serveJob, 4*cfg.Workers)
		for range cfg.Workers {
			a.workers.Add(1)
			go a.work() // owned by the listener, like run
		}
	}
	go func() { a.cleanup(a.run()) }() // owned by the listener: its Close stops it and waits
	// The duplicate is the listening socket now; closing ln takes the
	// original out of the Go runtime's poller.
	ln.Close()
	return a, nil
}

// close stops run and waits for it. It is idempotent.
func (a *acceptor) close() {
	a.once.Do(func() {
		close(a.quit)
		a.stopping.Store(true)
		var one = [8]byte{1}
		_, _ = unix.Write(a.evfd, one[:])
	})
	<-a.done
}

// run accepts connections and reads request heads until close. It
// returns why it stopped when that was not close.
func (a *acceptor) run() error {
	events := make([]unix.EpollEvent, 128)
	for {
		timeout := -1
		if len(a.pending) > 0 || a.listenOff {
			timeout = 250
		}
		n, err := unix.EpollWait(a.epfd, events, timeout)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			a.cfg.Logger.Error("engine: accepting stopped", "err", err)
			return fmt.Errorf("engine: epoll_wait: %w", err)
		}
		for i := range n {
			switch fd := int(events[i].Fd); fd {
			case a.evfd:
				// Only here, once close has written to evfd, may run end:
				// cleanup closes evfd.
				if a.stopping.Load() {
					return nil
				}
			case a.lfd:
				a.accept()
			default:
				if h := a.pending[fd]; h != nil {
					a.readMore(h)
				}
			}
		}
		if len(a.pending) > 0 || a.listenOff {
			a.expire(time.Now())
		}
	}
}

// work runs the handler for requests run passes on, until close.
func (a *acceptor) work() {
	defer a.workers.Done()
	for {
		select {
		case j := <-a.jobs:
			a.serve(j.w, j.r)
		case <-a.quit:
			return
		}
	}
}

// cleanup closes what run leaves: the sockets still in their handshake,
// the connections net/http has not accepted, the listening socket. err,
// when run stopped by itself, is what Accept returns from then on.
func (a *acceptor) cleanup(err error) {
	defer close(a.done)
	for fd := range a.pending {
		unix.Close(fd)
	}
	a.pending = nil
	unix.Close(a.lfd)
	unix.Close(a.epfd)
	unix.Close(a.evfd)
	a.once.Do(func() { // run ended by itself (an epoll error)
		a.err = err
		close(a.quit)
	})
	// Handlers under way finish; requests not started are dropped.
	a.workers.Wait()
	for len(a.jobs) > 0 {
		(<-a.jobs).w.conn.Close()
	}
	for {
		select {
		case c := <-a.conns:
			c.Close()
		default:
			return
		}
	}
}

// accept takes the connections waiting on the listener. An accept error
// other than a connection that went away (out of descriptors, memory)
// takes the listener out of epoll for a moment, as net/http backs off.
func (a *acceptor) accept() {
	for range 256 {
		fd, remote, err := accept4(a.lfd)
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN):
			return
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			continue
		default:
			a.cfg.Logger.Warn("engine: accept failed; retrying in 100ms", "err", err)
			if unix.EpollCtl(a.epfd, unix.EPOLL_CTL_DEL, a.lfd, nil) == nil {
				a.listenOff, a.resumeAt = true, time.Now().Add(100*time.Millisecond)
			}
			return
		}
		n, err := unix.Read(fd, a.buf)
		switch {
		case n > 0:
			a.received(nil, fd, remote, a.buf[:n])
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			a.park(fd, remote, nil)
		default: // gone already
			unix.Close(fd)
		}
	}
}

// readMore reads what a waiting handshake's client sent.
func (a *acceptor) readMore(h *handshake) {
	n, err := unix.Read(h.fd, a.buf)
	switch {
	case n > 0:
		h.head = append(h.head, a.buf[:n]...)
		a.received(h, h.fd, h.remote, h.head)
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
	default:
		a.unpark(h)
		unix.Close(h.fd)
	}
}

// received looks at what a connection has sent so far (data, which for a
// waiting handshake h is h.head) and serves it, hands it to net/http or
// waits for more.
func (a *acceptor) received(h *handshake, fd int, remote netip.AddrPort, data []byte) {
	v, req, headLen := a.classify(data)
	if v == needMore {
		if h == nil {
			a.park(fd, remote, data)
		}
		return
	}
	if h != nil {
		a.unpark(h)
	}
	if v == handOff {
		a.handOff(fd, data)
		return
	}
	req.RemoteAddr = remote.String()
	w := &nativeWriter{
		header: make(http.Header),
		conn:   &rawConn{fd: fd, local: a.addr, remote: remote},
		input:  bytes.Clone(data[headLen:]),
	}
	if a.jobs != nil {
		select {
		case a.jobs <- serveJob{w, req}:
			return
		default: // every worker busy and the queue full: serve it here
		}
	}
	a.serve(w, req)
}

// verdict is what classify makes of a connection's first bytes.
type verdict uint8

const (
	needMore  verdict = iota // the request head is incomplete
	handOff                  // net/http's: not a request the engine serves, or one it cannot judge
	serveHere                // a complete GET for one of the engine's paths
)

// classify decides what to do with the first bytes a connection sent.
// For serveHere it returns the request and the length of its head; data
// after the head is the client's next input.
func (a *acceptor) classify(data []byte) (verdict, *http.Request, int) {
	// Whatever cannot be a GET for one of the engine's paths goes to
	// net/http as soon as that is known (a TLS hello, a POST), and so does
	// a head with a bare line feed, which net/http parses leniently.
	if !a.couldBeOurs(data) || hasBareLF(data) {
		return handOff, nil, 0
	}
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		if len(data) < maxHeadBytes {
			return needMore, nil, 0
		}
		return handOff, nil, 0 // too long: net/http's limit applies
	}
	head := data[:end+4]
	if !a.ours(head) {
		return handOff, nil, 0
	}
	req, ok := parseHead(head)
	if !ok {
		var err error
		a.hr.Reset(head)
		a.br.Reset(&a.hr)
		if req, err = http.ReadRequest(a.br); err != nil {
			return handOff, nil, 0
		}
	}
	if req.Method != http.MethodGet || req.ProtoMajor != 1 || req.ProtoMinor != 1 ||
		req.ContentLength != 0 || len(req.TransferEncoding) > 0 || !a.ourPath(req.URL.Path) ||
		!validHost(req.Host) || hostHeaders(head) != 1 {
		return handOff, nil, 0 // net/http answers what it makes of it (400 without one valid Host)
	}
	return serveHere, req, len(head)
}

// couldBeOurs reports whether data may still turn out to start with a
// request line "GET <one of the engine's paths>".
func (a *acceptor) couldBeOurs(data []byte) bool {
	line, _, complete := bytes.Cut(data, []byte("\n"))
	const method = "GET "
	if len(line) < len(method) {
		return complete == false && strings.HasPrefix(method, string(line))
	}
	if string(line[:len(method)]) != method {
		return false
	}
	target := line[len(method):]
	for _, p := range a.cfg.Paths {
		n := min(len(target), len(p))
		if string(target[:n]) != p[:n] {
			continue
		}
		if len(target) <= len(p) {
			return !complete // the path is still arriving
		}
		if c := target[len(p)]; c == '?' || c == ' ' {
			return true
		}
	}
	return false
}

// validHost reports whether a Host header is non-empty and made of the
// bytes a host (and port) may hold: net/http refuses the others with 400,
// so those requests go to it.
func validHost(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!$%&'()*+,-.:;=[]_~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// hostHeaders counts the Host header lines of a request head.
func hostHeaders(head []byte) int {
	n := 0
	for line := range bytes.SplitSeq(head, []byte("\r\n")) {
		if len(line) > 5 && line[4] == ':' && bytes.EqualFold(line[:4], []byte("host")) {
			n++
		}
	}
	return n
}

// hasBareLF reports whether data has a line feed not preceded by a
// carriage return.
func hasBareLF(data []byte) bool {
	for i := bytes.IndexByte(data, '\n'); i >= 0; {
		if i == 0 || data[i-1] != '\r' {
			return true
		}
		j := bytes.IndexByte(data[i+1:], '\n')
		if j < 0 {
			return false
		}
		i += 1 + j
	}
	return false
}

// ours reports whether a request head's first line asks for one of the
// engine's paths with GET. parseHead (or http.ReadRequest) checks the rest.
func (a *acceptor) ours(head []byte) bool {
	line, _, _ := bytes.Cut(head, []byte("\r\n"))
	target, ok := bytes.CutPrefix(line, []byte("GET "))
	if !ok {
		return false
	}
	target, _, _ = bytes.Cut(target, []byte(" "))
	path, _, _ := bytes.Cut(target, []byte("?"))
	return a.ourPath(string(path))
}

func (a *acceptor) ourPath(path string) bool {
	for _, p := range a.cfg.Paths {
		if path == p {
			return true
		}
	}
	return false
}

// park waits for the rest of a connection's request head. Past
// maxHandshakes waiting, the connection goes to net/http instead.
func (a *acceptor) park(fd int, remote netip.AddrPort, data []byte) {
	if len(a.pending) >= maxHandshakes {
		a.handOff(fd, data)
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
	if err := unix.EpollCtl(a.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		a.handOff(fd, data)
		return
	}
	a.pending[fd] = &handshake{fd: fd, remote: remote, head: bytes.Clone(data),
		deadline: time.Now().Add(a.cfg.HeaderTimeout)}
}

// unpark stops waiting for h's input: the socket leaves the acceptor's
// epoll before anyone else may register or duplicate it.
func (a *acceptor) unpark(h *handshake) {
	_ = unix.EpollCtl(a.epfd, unix.EPOLL_CTL_DEL, h.fd, nil)
	delete(a.pending, h.fd)
}

// expire closes handshakes past their header timeout and puts the
// listener back after an accept error's pause.
func (a *acceptor) expire(now time.Time) {
	for _, h := range a.pending {
		if now.After(h.deadline) {
			a.unpark(h)
			unix.Close(h.fd)
		}
	}
	if a.listenOff && now.After(a.resumeAt) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(a.lfd)}
		if unix.EpollCtl(a.epfd, unix.EPOLL_CTL_ADD, a.lfd, &ev) == nil {
			a.listenOff = false
		} else {
			a.resumeAt = now.Add(100 * time.Millisecond)
		}
	}
}

// serve runs the handler for a request on the engine's path. A response
// the handler writes instead of hijacking is sent and the connection
// closed; a panic closes it, as net/http would.
func (a *acceptor) serve(w *nativeWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				a.cfg.Logger.Error("engine: panic serving "+r.URL.Path, "panic", p, "stack", string(debug.Stack()))
			}
			w.conn.Close()
		}
	}()
	a.cfg.Handler.ServeHTTP(w, r)
	if w.hijacked {
		// A handler that took the connection gives it to Attach before it
		// returns; one that did not has dropped it.
		if w.conn.fd >= 0 {
			w.conn.Close()
		}
		return
	}
	// A fresh socket's send buffer holds a short response; what it does
	// not take is lost with the connection, which closes either way.
	_, _ = unix.Write(w.conn.fd, w.response())
	_ = unix.Shutdown(w.conn.fd, unix.SHUT_WR)
	w.conn.Close()
}

// handOff gives a connection to net/http with the bytes already read.
func (a *acceptor) handOff(fd int, data []byte) {
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f) // a duplicate in the Go runtime's poller
	f.Close()
	if err != nil {
		a.cfg.Logger.Warn("engine: cannot hand a connection to net/http", "err", err)
		return
	}
	if len(data) > 0 {
		nc = &prefixConn{Conn: nc, prefix: bytes.Clone(data)}
	}
	select {
	case a.conns <- nc:
	case <-a.quit:
		nc.Close()
	}
}

// accept4 accepts a connection on the listening socket lfd, non-blocking
// and close-on-exec, and returns its peer's address as a value (an
// allocation only when a net.Addr or a string is asked of it).
// unix.Accept4 would also ask the kernel for the socket's protocol, a
// second system call per connection, and allocate a unix.Sockaddr.
func accept4(lfd int) (int, netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	fd, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)),
		uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if errno != 0 {
		return -1, netip.AddrPort{}, errno
	}
	return int(fd), rawAddrPort(&rsa), nil
}

// rawAddrPort reads an IPv4 or IPv6 address the kernel wrote. An
// IPv4-mapped IPv6 address is unmapped, as net.IP prints it.
func rawAddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), networkPort(&sa.Port))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), networkPort(&sa.Port))
	}
	return netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
}

// networkPort reads a port stored in network byte order.
func networkPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// rawConn is the connection a handler on the engine's path hijacks: the
// socket, which only Attach may use (it takes it as it is) or Close.
type rawConn struct {
	fd     int // -1 once taken or closed
	local  net.Addr
	remote netip.AddrPort
}

var errRawConn = errors.New("engine: this connection is the engine's: give it to Attach")

// take hands the socket over; Close no longer closes it.
func (c *rawConn) take() int {
	fd := c.fd
	c.fd = -1
	return fd
}

// netConn turns the socket into a net.Conn of the Go runtime's poller,
// for an engine in goroutine mode. The rawConn no longer holds it.
func (c *rawConn) netConn() (net.Conn, error) {
	if c.fd < 0 {
		return nil, net.ErrClosed
	}
	f := os.NewFile(uintptr(c.fd), "")
	nc, err := net.FileConn(f) // a duplicate
	f.Close()
	c.fd = -1
	return nc, err
}

func (c *rawConn) Read([]byte) (int, error)  { return 0, errRawConn }
func (c *rawConn) Write([]byte) (int, error) { return 0, errRawConn }

func (c *rawConn) Close() error {
	if c.fd < 0 {
		return net.ErrClosed
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

func (c *rawConn) LocalAddr() net.Addr              { return c.local }
func (c *rawConn) RemoteAddr() net.Addr             { return net.TCPAddrFromAddrPort(c.remote) }
func (c *rawConn) SetDeadline(time.Time) error      { return nil }
func (c *rawConn) SetReadDeadline(time.Time) error  { return nil }
func (c *rawConn) SetWriteDeadline(time.Time) error { return nil }
