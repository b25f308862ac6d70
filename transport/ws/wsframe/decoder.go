package wsframe

import (
	"encoding/binary"
	"math"
)

// Config configures a Decoder. The zero value works.
type Config struct {
	// MaxMessageBytes is the largest message (the sum of its fragments'
	// payloads) a client may send; a frame that would take a message past
	// it fails with 1009 as soon as its length is read, before any of its
	// payload is buffered. Control frames are limited to 125 bytes
	// regardless. Zero (or negative) means DefaultMaxMessageBytes.
	MaxMessageBytes int
	// RejectBinary makes a binary frame fail with 1003 (unsupported data)
	// as soon as its first byte is read, for protocols that only speak
	// text. False delivers binary messages like text ones, without the
	// UTF-8 check.
	RejectBinary bool
}

// Message is what the Decoder delivers: a complete data message
// (OpText or OpBinary, fragments already joined) or a control frame
// (OpClose, OpPing or OpPong).
//
// Payload is unmasked and, for OpText, valid UTF-8. It aliases the
// Decoder's buffer: it is valid only until the next call to Decode,
// Release or Reset on that Decoder. Copy it to keep it.
type Message struct {
	Op      Opcode
	Payload []byte
}

// CloseCode returns the status code of an OpClose message, or
// CloseNoStatus (1005) when the frame carried none. The Decoder has
// already checked that the code is one a peer may send.
func (m Message) CloseCode() int {
	if len(m.Payload) < 2 {
		return CloseNoStatus
	}
	return int(binary.BigEndian.Uint16(m.Payload))
}

// CloseReason returns the reason of an OpClose message (valid UTF-8,
// possibly empty). It aliases Payload.
func (m Message) CloseReason() []byte {
	if len(m.Payload) < 2 {
		return nil
	}
	return m.Payload[2:]
}

// Decoder states.
const (
	stateHeader  uint8 = iota // reading a frame header into hdr
	statePayload              // copying (and unmasking) a frame's payload into buf
	stateClosed               // a close frame was delivered; input is discarded
)

// Header lengths: two fixed bytes, then 0, 2 or 8 extended length bytes,
// then the 4-byte masking key.
const (
	maskKeyLen   = 4
	maxHeaderLen = 2 + 8 + maskKeyLen
)

// A Decoder turns the byte stream a client sends after the handshake into
// messages. It is push-style: the caller reads from the socket whatever is
// available and passes it to Decode, in pieces of any size, split at any
// byte. Nothing blocks and nothing is read ahead.
//
// State kept between calls is the header bytes of the current frame (at
// most 14) and the payload received so far of the current message (at most
// Config.MaxMessageBytes, plus up to 125 bytes of a control frame received
// in the middle of a fragmented message). The payload buffer comes from a
// package-wide pool of size classes when the first payload byte is needed,
// and goes back by Release once nothing is buffered, so an idle connection
// holds no buffer at all; in the steady state decoding allocates nothing.
//
// After an error every call returns the same error: the caller sends a
// close frame with the error's Code and closes the connection. After a
// close frame has been delivered, further input is discarded (RFC 6455
// §5.5.1: nothing may follow it).
//
// The zero Decoder is ready to use with Config{}'s defaults. A Decoder is
// not safe for concurrent use; it belongs to its connection's reader.
type Decoder struct {
	limit        int  // MaxMessageBytes, 0 meaning the default
	rejectBinary bool // Config.RejectBinary
	state        uint8

	// Current frame header (stateHeader).
	hdr    [maxHeaderLen]byte
	hn     uint8 // bytes of hdr received
	lenEnd uint8 // offset of the masking key in hdr: 2, 4 or 10; set once hn >= 2
	op     Opcode
	fin    bool

	// Current frame payload (statePayload).
	key        [maskKeyLen]byte
	remain     int // payload bytes of the current frame still to come
	frameStart int // offset in buf of the current frame's first payload byte

	// Current message. buf[:msgLen] holds the fragments received so far;
	// buf[msgLen:w] the part of the current frame received so far (data
	// frame: the message's next fragment; control frame: its payload).
	bufp   *[]byte // pooled; nil while nothing is buffered and Release was called
	w      int
	msgLen int
	msgOp  Opcode // OpText or OpBinary while a fragmented message is open, else 0
	valid  int    // for text: buf[:valid] is checked UTF-8 (all but an incomplete last rune)

	err *Error // sticky
}

// NewDecoder returns a Decoder configured by cfg.
func NewDecoder(cfg Config) *Decoder {
	d := new(Decoder)
	d.Reset(cfg)
	return d
}

// Reset discards all state, including any error and partial message,
// returns the buffer to the pool and configures d by cfg: d is then as
// NewDecoder(cfg) returned it. It is how a Decoder embedded by value in a
// connection struct is initialised.
func (d *Decoder) Reset(cfg Config) {
	if d.bufp != nil {
		putBuf(d.bufp)
	}
	// Negative means the default; the top is clamped so that the limit plus
	// a control frame's payload still fits an int.
	limit := min(max(cfg.MaxMessageBytes, 0), math.MaxInt-MaxControlPayload)
	*d = Decoder{limit: limit, rejectBinary: cfg.RejectBinary}
}

// MaxMessageBytes returns the message size limit in effect.
func (d *Decoder) MaxMessageBytes() int {
	if d.limit == 0 {
		return DefaultMaxMessageBytes
	}
	return d.limit
}

// Release returns d's payload buffer to the pool when no partial message or
// frame payload is buffered in it; otherwise it does nothing (the partial
// payload must be kept). The payload of the last Message returned becomes
// invalid. Call it when the connection goes idle, e.g. when a read would
// block, so that idle connections hold no buffer.
func (d *Decoder) Release() {
	if d.bufp == nil {
		return
	}
	if d.state == stateClosed || d.err != nil || (d.state == stateHeader && d.w == 0) {
		putBuf(d.bufp)
		d.bufp = nil
	}
}

// Buffered returns the number of payload bytes d holds for the message or
// control frame being received. It is at most MaxMessageBytes + 125.
func (d *Decoder) Buffered() int { return d.w }

// Err returns the error that stopped d, or nil.
func (d *Decoder) Err() error {
	if d.err == nil {
		return nil
	}
	return d.err
}

// Decode consumes bytes from the front of p until it completes a message or
// p runs out, and returns how many bytes it consumed. When it completes a
// message it returns it with ok true and stops there: the caller handles the
// message and calls Decode again with p[n:] (which may be empty; Decode then
// returns 0, false, nil). When ok is false and err is nil, all of p was
// consumed and the Decoder waits for more.
//
// A protocol violation returns a non-nil err, always an *Error, and no
// message; every later call returns the same error with n == 0. The error
// depends only on the bytes received, never on how reads split them.
//
// Decode never retains p; it copies the payload it needs.
func (d *Decoder) Decode(p []byte) (n int, m Message, ok bool, err error) {
	if d.err != nil {
		return 0, Message{}, false, d.err
	}
	if d.state == stateClosed {
		d.Release()
		return len(p), Message{}, false, nil
	}
	for n < len(p) {
		if d.state == stateHeader {
			for n < len(p) {
				e := d.headerByte(p[n])
				n++
				if e != nil {
					return n, Message{}, false, d.fail(e)
				}
				if d.lenEnd != 0 && d.hn == d.lenEnd+maskKeyLen {
					break
				}
			}
			if d.lenEnd == 0 || d.hn < d.lenEnd+maskKeyLen {
				return n, Message{}, false, nil // header incomplete: need more input
			}
			d.startFrame()
			if d.remain > 0 {
				continue
			}
		} else {
			k := min(d.remain, len(p)-n)
			buf := *d.bufp
			maskCopy(buf[d.w:d.w+k], p[n:n+k], d.key, d.w-d.frameStart)
			d.w += k
			n += k
			d.remain -= k
			if d.remain > 0 {
				return n, Message{}, false, nil
			}
		}
		m, ok, e := d.endFrame()
		if e != nil {
			return n, Message{}, false, d.fail(e)
		}
		if ok {
			return n, m, true, nil
		}
	}
	return n, Message{}, false, nil
}

// fail makes e sticky and drops the buffer: no payload is returned with an
// error, so nothing can alias it.
func (d *Decoder) fail(e *Error) error {
	d.err = e
	d.Release()
	return e
}

// headerByte takes the next header byte and checks everything that byte
// decides, so that a bad frame is refused as early as possible and the
// error depends only on the bytes, never on how they were split.
func (d *Decoder) headerByte(b byte) *Error {
	d.hdr[d.hn] = b
	d.hn++
	switch d.hn {
	case 1:
		return d.firstByte(b)
	case 2:
		return d.secondByte(b)
	}
	if d.hn != d.lenEnd {
		return nil // extended length or masking key still arriving
	}
	var v uint64
	if d.lenEnd == 4 {
		v = uint64(binary.BigEndian.Uint16(d.hdr[2:4]))
		if v < 126 {
			return errNonMinimalLength
		}
	} else {
		v = binary.BigEndian.Uint64(d.hdr[2:10])
		if v>>63 != 0 {
			return errLengthHighBit
		}
		if v <= 0xFFFF {
			return errNonMinimalLength
		}
	}
	return d.setLength(v)
}

// firstByte checks FIN, RSV1-3 and the opcode.
func (d *Decoder) firstByte(b byte) *Error {
	if b&0x70 != 0 {
		return errReservedBits // no extension is ever negotiated
	}
	op := Opcode(b & 0x0F)
	fin := b&0x80 != 0
	switch op {
	case OpContinuation:
		if d.msgOp == 0 {
			return errUnexpectedContinue
		}
	case OpText, OpBinary:
		if d.msgOp != 0 {
			return errExpectedContinue
		}
		if op == OpBinary && d.rejectBinary {
			return errBinaryRejected
		}
	case OpClose, OpPing, OpPong:
		if !fin {
			return errFragmentedControl
		}
	default:
		return errUnknownOpcode
	}
	d.op, d.fin = op, fin
	return nil
}

// secondByte checks the mask bit and the 7-bit length.
func (d *Decoder) secondByte(b byte) *Error {
	if b&0x80 == 0 {
		return errUnmasked // RFC 6455 §5.1: a server must close on an unmasked frame
	}
	l := b & 0x7F
	if d.op.IsControl() && l > MaxControlPayload {
		return errControlTooLong
	}
	switch l {
	case 126:
		d.lenEnd = 4
	case 127:
		d.lenEnd = 10
	default:
		d.lenEnd = 2
		return d.setLength(uint64(l))
	}
	return nil
}

// setLength checks a data frame's length against what is left of the
// message limit and records it.
func (d *Decoder) setLength(v uint64) *Error {
	if !d.op.IsControl() && v > uint64(d.MaxMessageBytes()-d.msgLen) {
		return errTooBig
	}
	d.remain = int(v)
	return nil
}

// startFrame runs once a header is complete: it takes the masking key,
// makes room for the payload and resets the header state for the next
// frame.
func (d *Decoder) startFrame() {
	copy(d.key[:], d.hdr[d.lenEnd:d.lenEnd+maskKeyLen])
	d.hn, d.lenEnd = 0, 0
	d.frameStart = d.w
	if d.remain > 0 {
		d.reserve(d.w + d.remain)
		d.state = statePayload
	}
}

// reserve makes the buffer hold at least need bytes, keeping buf[:w].
func (d *Decoder) reserve(need int) {
	if d.bufp != nil && len(*d.bufp) >= need {
		return
	}
	old := 0
	if d.bufp != nil {
		old = len(*d.bufp)
	}
	nb := getBuf(need, old, d.MaxMessageBytes()+MaxControlPayload)
	if d.bufp != nil {
		copy(*nb, (*d.bufp)[:d.w])
		putBuf(d.bufp)
	}
	d.bufp = nb
}

// bytes returns the buffer, or nil when there is none.
func (d *Decoder) bytes() []byte {
	if d.bufp == nil {
		return nil
	}
	return *d.bufp
}

// endFrame runs once a frame's payload is complete. It returns the message
// the frame completes, if any.
func (d *Decoder) endFrame() (Message, bool, *Error) {
	d.state = stateHeader
	buf := d.bytes()
	if d.op.IsControl() {
		payload := buf[d.msgLen:d.w:d.w]
		d.w = d.msgLen // a control frame's payload is never kept past its delivery
		if d.op == OpClose {
			if e := checkClosePayload(payload); e != nil {
				return Message{}, false, e
			}
			d.state = stateClosed
		}
		return Message{Op: d.op, Payload: payload}, true, nil
	}
	if d.op != OpContinuation {
		d.msgOp = d.op
	}
	d.msgLen = d.w
	if d.msgOp == OpText {
		v, ok := validUTF8Prefix(buf[d.valid:d.msgLen], d.fin)
		if !ok {
			return Message{}, false, errInvalidUTF8Text
		}
		d.valid += v
	}
	if !d.fin {
		return Message{}, false, nil
	}
	m := Message{Op: d.msgOp, Payload: buf[:d.msgLen:d.msgLen]}
	d.msgOp, d.msgLen, d.w, d.valid = 0, 0, 0, 0
	return m, true, nil
}

// checkClosePayload checks a close frame's body: empty, or a valid code
// followed by a UTF-8 reason (RFC 6455 §5.5.1).
func checkClosePayload(p []byte) *Error {
	switch {
	case len(p) == 0:
		return nil
	case len(p) == 1:
		return errCloseOneByte
	case !validCloseCode(int(binary.BigEndian.Uint16(p))):
		return errInvalidCloseCode
	}
	if _, ok := validUTF8Prefix(p[2:], true); !ok {
		return errInvalidUTF8Close
	}
	return nil
}
