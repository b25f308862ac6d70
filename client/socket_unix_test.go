//go:build unix

package client

import (
	"net"
	"syscall"
)

// socketHandle is a descriptor of an accepted socket that outlives the
// net.Conn's own, so that a test can shut the socket down after the server
// has handed it elsewhere.
type socketHandle int

func holdSocket(c net.Conn) socketHandle {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	_ = rc.Control(func(s uintptr) {
		if d, err := syscall.Dup(int(s)); err == nil {
			syscall.CloseOnExec(d)
			fd = d
		}
	})
	return socketHandle(fd)
}

// shutdown ends the socket both ways, whoever holds it, and releases the
// handle.
func (h socketHandle) shutdown() {
	if h < 0 {
		return
	}
	_ = syscall.Shutdown(int(h), syscall.SHUT_RDWR)
	_ = syscall.Close(int(h))
}
