package engine

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/heraldhq/herald/hub"
)

const pollerSupported = true

// Poller tuning.
const (
	maxEvents   = 512      // events taken per epoll_wait
	readBufSize = 64 << 10 // the poller's one read buffer, shared by all connections
	maxIOV      = 1024     // IOV_MAX
)

// poller waits for input, hang-ups and (for blocked sockets) writability
// on every connection with one epoll instance and one goroutine.
//
// Each connection's socket is a duplicate of the hijacked one, which is
// then closed: the Go runtime's poller forgets it, and the engine alone
// reads, writes and closes it, always under the connection's lock, so a
// descriptor number is never used after it is closed and reused. Events
// carry the descriptor and a generation, so a late event for a closed
// descriptor that has been reused is ignored.
type poller struct {
	e        *Engine
	epfd     int
	evfd     int // eventfd that wakes the poller for stop
	stopping atomic.Bool

	mu    sync.RWMutex
	table []*Conn // by descriptor; guarded by mu
}

func newPoller(e *Engine) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("engine: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("engine: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("engine: epoll_ctl: %w", err)
	}
	return &poller{e: e, epfd: epfd, evfd: evfd}, nil
}

// attach duplicates nc's socket, closes nc and registers the duplicate.
func (p *poller) attach(c *Conn, nc net.Conn) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return errors.New("engine: connection has no file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return err
	}
	if derr != nil {
		return fmt.Errorf("engine: dup: %w", derr)
	}
	nc.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return err
	}
	return p.attachFD(c, fd)
}

// attachFD registers fd, a non-blocking socket the engine owns from now
// on: on error it is closed.
func (p *poller) attachFD(c *Conn, fd int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead { // killed while attaching (Shutdown's deadline)
		unix.Close(fd)
		return errKilled
	}
	c.fd, c.gen = int32(fd), uint32(c.id)
	p.mu.Lock()
	if fd >= len(p.table) {
		p.table = append(p.table, make([]*Conn, fd+1-len(p.table)+len(p.table)/2)...)
	}
	p.table[fd] = c
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd), Pad: int32(c.gen)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.detachLocked(c)
		return fmt.Errorf("engine: epoll_ctl: %w", err)
	}
	return nil
}

// detachLocked unregisters and closes c's socket. c.mu is held.
func (p *poller) detachLocked(c *Conn) {
	fd := int(c.fd)
	if fd < 0 {
		return
	}
	p.mu.Lock()
	if fd < len(p.table) && p.table[fd] == c {
		p.table[fd] = nil
	}
	p.mu.Unlock()
	// Explicitly: a copy of the descriptor in a child between fork and
	// exec would otherwise keep the closed socket registered.
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	unix.Close(fd)
	c.fd = -1
}

func (p *poller) lookup(fd int32, gen uint32) *Conn {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if int(fd) >= len(p.table) {
		return nil
	}
	c := p.table[fd]
	if c == nil || c.gen != gen {
		return nil
	}
	return c
}

// run waits for events until stop. Input is read with one shared buffer
// and handed to the connection's protocol; a hang-up or read error closes
// the connection; writability wakes the connection's writer.
func (p *poller) run() {
	events := make([]unix.EpollEvent, maxEvents)
	buf := make([]byte, readBufSize)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.e.log.Error("engine: epoll_wait failed; no more input is read", "err", err)
			return
		}
		for i := range n {
			ev := &events[i]
			if int(ev.Fd) == p.evfd {
				if p.stopping.Load() {
					return
				}
				continue
			}
			c := p.lookup(ev.Fd, uint32(ev.Pad))
			if c == nil {
				continue
			}
			if ev.Events&unix.EPOLLOUT != 0 {
				c.writable()
			}
			if ev.Events&^unix.EPOLLOUT != 0 {
				c.readable(buf)
			}
		}
	}
}

func (p *poller) stop() {
	p.stopping.Store(true)
	var one = [8]byte{1}
	_, _ = unix.Write(p.evfd, one[:])
}

// close releases the poller's descriptors once its goroutine has ended.
func (p *poller) close() {
	unix.Close(p.epfd)
	unix.Close(p.evfd)
}

// inputWaitingLocked reports whether bytes from the client wait in the
// socket, not yet read. c.mu is held.
func (c *Conn) inputWaitingLocked() bool {
	if c.fd < 0 {
		return false
	}
	n, err := unix.IoctlGetInt(int(c.fd), unix.SIOCINQ)
	return err == nil && n > 0
}

// readable reads what the client sent (or learns that it left).
func (c *Conn) readable(buf []byte) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	n, err := unix.Read(int(c.fd), buf)
	c.mu.Unlock()
	switch {
	case n > 0:
		c.input(buf[:n])
	case err == unix.EAGAIN || err == unix.EINTR:
	default: // EOF, reset
		c.kill(hub.DisconnectNormal)
	}
}

// writable stops waiting for writability (level-triggered, it would fire
// until the writer runs) and wakes the writer.
func (c *Conn) writable() {
	c.mu.Lock()
	if !c.dead && c.outArmed {
		c.setOutLocked(false)
	}
	c.mu.Unlock()
	c.Wake()
}

// setOutLocked starts or stops waiting for writability.
func (c *Conn) setOutLocked(on bool) {
	events := uint32(unix.EPOLLIN | unix.EPOLLRDHUP)
	if on {
		events |= unix.EPOLLOUT
	}
	ev := unix.EpollEvent{Events: events, Fd: c.fd, Pad: int32(c.gen)}
	if err := unix.EpollCtl(c.e.poller.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev); err == nil {
		c.outArmed = on
	}
}

// ioScratch is a worker's I/O vector.
type ioScratch struct {
	iov []unix.Iovec
}

// writeLocked writes s.segs with non-blocking vectored writes. What the
// socket does not take is copied to c.pending and the poller watches for
// writability. c.mu is held.
func (c *Conn) writeLocked(s *scratch) error {
	segs := s.segs
	written, total := 0, 0
	for _, p := range segs {
		total += len(p)
	}
	for start := 0; start < len(segs); {
		end := min(start+maxIOV, len(segs))
		iov := s.io.iov[:0]
		want := 0
		for _, p := range segs[start:end] {
			v := unix.Iovec{Base: unsafe.SliceData(p)}
			v.SetLen(len(p))
			iov = append(iov, v)
			want += len(p)
		}
		s.io.iov = iov
		n, err := writev(int(c.fd), iov)
		clear(iov)
		if n > 0 {
			written += n
		}
		if err == unix.EAGAIN || err == unix.EINTR {
			break
		}
		if err != nil {
			return err
		}
		if n < want {
			break
		}
		start = end
	}
	if written < total {
		c.pending = appendFrom(make([]byte, 0, total-written), segs, written)
		c.since = c.e.now()
		c.e.blocked.Add(1)
		c.setOutLocked(true)
	}
	return nil
}

// writePendingLocked writes what a previous write left. c.mu is held.
func (c *Conn) writePendingLocked() error {
	n, err := unix.Write(int(c.fd), c.pending)
	if n > 0 {
		c.pending = c.pending[n:]
	}
	if len(c.pending) == 0 {
		c.pending = nil
		c.e.blocked.Add(-1)
		if c.outArmed {
			c.setOutLocked(false)
		}
		c.lastWrite.Store(c.e.now())
		return nil
	}
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		return err
	}
	if !c.outArmed {
		c.setOutLocked(true)
	}
	return nil
}

// appendFrom appends the bytes of segs after the first skip to dst.
func appendFrom(dst []byte, segs [][]byte, skip int) []byte {
	for _, p := range segs {
		if skip >= len(p) {
			skip -= len(p)
			continue
		}
		dst = append(dst, p[skip:]...)
		skip = 0
	}
	return dst
}

func writev(fd int, iov []unix.Iovec) (int, error) {
	if len(iov) == 0 {
		return 0, nil
	}
	n, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func shutdownWrite(fd int) error { return unix.Shutdown(fd, unix.SHUT_WR) }
