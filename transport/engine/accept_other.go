//go:build !linux

package engine

import "net"

// The engine accepts connections itself only on Linux (Listen returns its
// listener unchanged elsewhere); these never run.

type acceptor struct{ *handoff }

func newAcceptor(*Engine, net.Listener, ListenConfig) (*acceptor, error) { return nil, errNoPoller }

func (*acceptor) close() {}

type rawConn struct{ net.Conn }

func (*rawConn) take() int { return -1 }

func (c *rawConn) netConn() (net.Conn, error) { return c.Conn, nil }
