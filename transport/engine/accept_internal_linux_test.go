package engine

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestAccept4PeerAddress accepts real IPv4 and IPv6 loopback connections
// with accept4 and checks the peer address it reads against the client's.
func TestAccept4PeerAddress(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		ln, err := net.Listen(tc.network, tc.addr)
		if err != nil {
			if tc.network == "tcp6" {
				t.Logf("no IPv6 loopback here, IPv6 not checked: %v", err)
				continue
			}
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial(tc.network, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rc, err := ln.(*net.TCPListener).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var (
			fd   int
			peer netip.AddrPort
			aerr error
		)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			if err := rc.Control(func(lfd uintptr) { fd, peer, aerr = accept4(int(lfd)) }); err != nil {
				t.Fatal(err)
			}
			if !errors.Is(aerr, unix.EAGAIN) || time.Now().After(deadline) {
				break
			}
		}
		if aerr != nil {
			t.Fatalf("%s: accept4: %v", tc.network, aerr)
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		unix.Close(fd)
		if err != nil || flags&unix.O_NONBLOCK == 0 {
			t.Errorf("%s: accepted socket flags %#x, %v: want non-blocking", tc.network, flags, err)
		}
		if want := c.LocalAddr().(*net.TCPAddr).AddrPort(); peer != want {
			t.Errorf("%s: peer %v, want %v", tc.network, peer, want)
		}
	}
}

// TestRawAddrPort reads the addresses the kernel writes: an IPv4-mapped
// IPv6 address comes out as IPv4, an unknown family as 0.0.0.0:0.
func TestRawAddrPort(t *testing.T) {
	var rsa unix.RawSockaddrAny
	sa6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
	sa6.Family = unix.AF_INET6
	sa6.Addr = netip.MustParseAddr("::ffff:127.0.0.2").As16()
	*(*[2]byte)(unsafe.Pointer(&sa6.Port)) = [2]byte{0x1f, 0x90} // 8080, network order
	if got, want := rawAddrPort(&rsa), netip.MustParseAddrPort("127.0.0.2:8080"); got != want {
		t.Errorf("mapped IPv6: %v, want %v", got, want)
	}
	rsa.Addr.Family = unix.AF_UNIX
	if got := rawAddrPort(&rsa); got != netip.AddrPortFrom(netip.IPv4Unspecified(), 0) {
		t.Errorf("unix socket: %v", got)
	}
}
