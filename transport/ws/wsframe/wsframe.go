// Package wsframe is a standalone RFC 6455 frame codec for the server side
// of a WebSocket connection.
//
// The Decoder is push-style and incremental: the caller hands it whatever
// bytes a non-blocking read returned, split at any byte boundary, and gets
// back complete messages (reassembled text/binary messages, and control
// frames) one at a time. Between calls it keeps only the header bytes seen
// so far and the payload of the message being received, so a client that
// trickles half a frame costs a few dozen bytes of state and no goroutine.
// Every protocol violation is reported as an *Error carrying the close code
// the server should send.
//
// The Append functions build server frames (unmasked); Prepared holds a
// complete frame built once and shared by every subscriber; AcceptKey
// computes the handshake's Sec-WebSocket-Accept value.
//
// The package does no I/O and starts no goroutine.
package wsframe

import "fmt"

// Opcode is a frame's opcode (RFC 6455 §5.2).
type Opcode byte

// Opcodes defined by RFC 6455. Others are reserved and rejected.
const (
	OpContinuation Opcode = 0x0
	OpText         Opcode = 0x1
	OpBinary       Opcode = 0x2
	OpClose        Opcode = 0x8
	OpPing         Opcode = 0x9
	OpPong         Opcode = 0xA
)

// IsControl reports whether op is a control opcode (close, ping, pong or a
// reserved control opcode).
func (op Opcode) IsControl() bool { return op&0x8 != 0 }

func (op Opcode) String() string {
	switch op {
	case OpContinuation:
		return "continuation"
	case OpText:
		return "text"
	case OpBinary:
		return "binary"
	case OpClose:
		return "close"
	case OpPing:
		return "ping"
	case OpPong:
		return "pong"
	}
	return fmt.Sprintf("opcode(%#x)", byte(op))
}

// Close codes (RFC 6455 §7.4.1 and the IANA registry) used by this package
// and its callers. Herald's own 4xxx codes live with the transport.
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	CloseUnsupportedData = 1003
	CloseNoStatus        = 1005 // never sent: a close frame without a code
	CloseAbnormal        = 1006 // never sent: the connection dropped without a close frame
	CloseInvalidPayload  = 1007
	ClosePolicyViolation = 1008
	CloseMessageTooBig   = 1009
	CloseMandatoryExt    = 1010
	CloseInternalError   = 1011
	CloseServiceRestart  = 1012
	CloseTryAgainLater   = 1013
	CloseBadGateway      = 1014
)

// MaxControlPayload is the largest payload of a control frame (RFC 6455 §5.5).
const MaxControlPayload = 125

// DefaultMaxMessageBytes is the message size limit of a Decoder whose
// Config.MaxMessageBytes is zero. It matches ws.Config's default.
const DefaultMaxMessageBytes = 4096

// validCloseCode reports whether code may appear in a close frame on the
// wire (RFC 6455 §7.4): the defined codes other than the three reserved
// for local use, and the ranges for libraries (3000–3999) and applications
// (4000–4999).
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
