package engine

import (
	"net"

	"github.com/heraldhq/herald/hub"
)

// readBufGoroutine is the read buffer of a connection's reader in goroutine
// mode.
const readBufGoroutine = 4 << 10

// attachGoroutines runs c on two goroutines of its own: a writer that
// flushes on every wake-up and a reader that feeds the protocol. Both end
// when the connection dies.
func attachGoroutines(c *Conn, nc net.Conn) error {
	c.mu.Lock()
	x := c.extra()
	x.nc = nc
	x.wakeCh = make(chan struct{}, 1)
	c.gmode = true
	c.mu.Unlock()
	if !c.e.goTracked(c.writeLoop) {
		return ErrClosed
	}
	if !c.e.goTracked(c.readLoop) {
		c.kill(hub.DisconnectShutdown) // the writer ends on the wake-up
		return errKilled
	}
	return nil
}

func (c *Conn) writeLoop() {
	var s scratch
	for range c.x.wakeCh {
		c.flush(&s)
		c.mu.Lock()
		dead := c.dead
		c.mu.Unlock()
		if dead {
			return
		}
	}
}

func (c *Conn) readLoop() {
	buf := make([]byte, readBufGoroutine)
	for {
		n, err := c.x.nc.Read(buf)
		if n > 0 {
			c.input(buf[:n])
		}
		if err != nil {
			c.kill(hub.DisconnectNormal)
			return
		}
	}
}
