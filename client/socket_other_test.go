//go:build !unix

package client

import "net"

// socketHandle is a no-op where descriptors cannot be duplicated: closing
// the net.Conn is all a test can do there.
type socketHandle struct{}

func holdSocket(net.Conn) socketHandle { return socketHandle{} }

func (socketHandle) shutdown() {}
