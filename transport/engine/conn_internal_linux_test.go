package engine

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestInputWaiting checks what the read timeout asks before closing a
// silent client: whether its bytes wait in the socket, unread.
func TestInputWaiting(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	c := &Conn{fd: int32(fds[0])}
	if c.inputWaitingLocked() {
		t.Fatal("input waiting in an empty socket")
	}
	if _, err := unix.Write(fds[1], []byte{0x8a, 0x80}); err != nil { // a pong's first bytes
		t.Fatal(err)
	}
	if !c.inputWaitingLocked() {
		t.Fatal("the client's bytes are not seen waiting")
	}
	var buf [8]byte
	if _, err := unix.Read(fds[0], buf[:]); err != nil {
		t.Fatal(err)
	}
	if c.inputWaitingLocked() {
		t.Fatal("input waiting once it was read")
	}
	if (&Conn{fd: -1}).inputWaitingLocked() {
		t.Fatal("input waiting on a dead connection")
	}
}
