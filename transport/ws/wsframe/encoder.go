package wsframe

import (
	"encoding/binary"
	"unicode/utf8"
)

// HeaderLen returns the length of a server (unmasked) frame header for an
// n-byte payload: 2, 4 or 10 bytes.
func HeaderLen(n int) int {
	switch {
	case n <= 125:
		return 2
	case n <= 0xFFFF:
		return 4
	}
	return 10
}

// AppendFrameHeader appends the header of an unmasked frame with opcode op,
// the FIN bit fin and an n-byte payload, using the shortest length
// encoding. The caller appends the payload. It panics if n is negative, or
// if op is a control opcode and the frame is fragmented or longer than 125
// bytes: such a frame is a bug in the caller, never a client's doing.
func AppendFrameHeader(dst []byte, op Opcode, fin bool, n int) []byte {
	if n < 0 {
		panic("wsframe: negative payload length")
	}
	if op.IsControl() && (!fin || n > MaxControlPayload) {
		panic("wsframe: control frame must be final and at most 125 bytes")
	}
	b0 := byte(op) & 0x0F
	if fin {
		b0 |= 0x80
	}
	switch {
	case n <= 125:
		return append(dst, b0, byte(n))
	case n <= 0xFFFF:
		return append(dst, b0, 126, byte(n>>8), byte(n))
	}
	return binary.BigEndian.AppendUint64(append(dst, b0, 127), uint64(n))
}

// AppendText appends a complete, unfragmented text frame carrying payload,
// which the caller guarantees is UTF-8.
func AppendText(dst, payload []byte) []byte {
	dst = AppendFrameHeader(dst, OpText, true, len(payload))
	return append(dst, payload...)
}

// AppendPing appends a ping frame. It panics if payload is over 125 bytes.
func AppendPing(dst, payload []byte) []byte {
	dst = AppendFrameHeader(dst, OpPing, true, len(payload))
	return append(dst, payload...)
}

// AppendPong appends a pong frame; to answer a ping, pass the ping's
// payload (the Decoder guarantees it is at most 125 bytes). It panics if
// payload is over 125 bytes.
func AppendPong(dst, payload []byte) []byte {
	dst = AppendFrameHeader(dst, OpPong, true, len(payload))
	return append(dst, payload...)
}

// maxCloseReason is the most reason bytes a close frame can carry.
const maxCloseReason = MaxControlPayload - 2

// AppendClose appends a close frame with code and reason. A code that may
// not be sent (0, 1005, 1006, 1015 and the other reserved or out-of-range
// values) gives a close frame without a body; an *Error's Code is always
// sendable. A reason over 123 bytes is cut at a rune boundary; it should be
// UTF-8.
func AppendClose(dst []byte, code int, reason string) []byte {
	if !validCloseCode(code) {
		return AppendFrameHeader(dst, OpClose, true, 0)
	}
	if len(reason) > maxCloseReason {
		i := maxCloseReason
		for i > 0 && !utf8.RuneStart(reason[i]) {
			i--
		}
		reason = reason[:i]
	}
	dst = AppendFrameHeader(dst, OpClose, true, 2+len(reason))
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	return append(dst, reason...)
}
