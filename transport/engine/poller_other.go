//go:build !linux

package engine

import (
	"errors"
	"net"
)

const pollerSupported = false

// poller exists only on Linux; elsewhere the engine runs in goroutine mode
// and never calls these.
type poller struct{}

var errNoPoller = errors.New("engine: no epoll on this system")

func newPoller(*Engine) (*poller, error)     { return nil, errNoPoller }
func (*poller) attach(*Conn, net.Conn) error { return errNoPoller }
func (*poller) attachFD(*Conn, int) error    { return errNoPoller }
func (*poller) detachLocked(*Conn)           {}
func (*poller) run()                         {}
func (*poller) stop()                        {}
func (*poller) close()                       {}
func (*Conn) writeLocked(*scratch) error     { return errNoPoller }
func (*Conn) writePendingLocked() error      { return errNoPoller }
func shutdownWrite(int) error                { return errNoPoller }
func (*Conn) inputWaitingLocked() bool       { return false }

type ioScratch struct{}
