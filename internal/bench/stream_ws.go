package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
)

// wsStream decodes the server's WebSocket frames incrementally, for the
// epoll reader (RFC 6455: server frames are unmasked; no extension was
// negotiated, so the RSV bits are zero). Bytes may arrive split anywhere.
// A text message whose frame lies inside one read is handed on in place;
// only a frame cut by a read boundary, or a fragmented message, is carried
// over. Binary messages are skipped (as readWS skips them), pongs ignored.
type wsStream struct {
	maxMsg int // largest message accepted; 0 = maxFrameBytes

	hdr    [14]byte // frame header being collected
	nhdr   uint8    // bytes of hdr collected; 0 between frames
	inBody bool     // reading the payload of the frame described by op, fin
	op     byte
	fin    bool
	remain uint64 // payload bytes of the current frame still to come

	msgOp  byte   // opcode of the data message in progress (its first frame's); 0 = none
	msgLen uint64 // its length so far
	msg    []byte // its text so far (text messages only)
	ctl    []byte // a control frame's payload cut by a read boundary
	closed bool   // a close frame was received
}

// WebSocket opcodes.
const (
	wsContinuation = 0x0
	wsText         = 0x1
	wsBinary       = 0x2
	wsClose        = 0x8
	wsPing         = 0x9
	wsPong         = 0xA
)

// wsSink receives what a wsStream decodes. Slices are valid during the
// call only.
type wsSink interface {
	wsText(msg []byte)
	wsPing(payload []byte)
	wsClose(code int, reason []byte) // the stream ends with a *wsCloseError
}

// wsCloseError is the end of the stream by the server's close frame.
type wsCloseError struct {
	Code   int
	Reason string
}

func (e *wsCloseError) Error() string {
	return fmt.Sprintf("websocket: close %d: %s", e.Code, e.Reason)
}

var errWSProtocol = errors.New("websocket protocol error")

// feed decodes b. It returns a *wsCloseError after a close frame and
// another error when the stream is malformed; feed must not be called
// again after an error.
func (p *wsStream) feed(b []byte, sink wsSink) error {
	if p.closed {
		return errors.New("websocket: data after the close frame")
	}
	for {
		if !p.inBody {
			if len(b) == 0 {
				return nil
			}
			n, err := p.header(b)
			if err != nil {
				return err
			}
			b = b[n:]
			if !p.inBody {
				return nil // header incomplete; b is used up
			}
		}
		if p.remain > 0 && len(b) == 0 {
			return nil
		}
		k := uint64(len(b))
		if k > p.remain {
			k = p.remain
		}
		chunk := b[:k]
		b = b[k:]
		p.remain -= k
		if err := p.payload(chunk, sink); err != nil {
			return err
		}
	}
}

// header collects the frame header from b and returns how many bytes it
// took; inBody is set once the header is complete and valid.
func (p *wsStream) header(b []byte) (int, error) {
	used := 0
	need := 2
	for {
		if p.nhdr >= 2 {
			switch p.hdr[1] & 0x7f {
			case 126:
				need = 4
			case 127:
				need = 10
			default:
				need = 2
			}
		}
		if int(p.nhdr) >= need {
			break
		}
		if used == len(b) {
			return used, nil
		}
		n := copy(p.hdr[p.nhdr:need], b[used:])
		p.nhdr += uint8(n)
		used += n
		if p.nhdr == 2 {
			if err := p.checkFirst(); err != nil {
				return used, err
			}
		}
	}
	var length uint64
	switch need {
	case 2:
		length = uint64(p.hdr[1] & 0x7f)
	case 4:
		length = uint64(binary.BigEndian.Uint16(p.hdr[2:4]))
	default:
		length = binary.BigEndian.Uint64(p.hdr[2:10])
		if length>>63 != 0 {
			return used, fmt.Errorf("%w: bad frame length", errWSProtocol)
		}
	}
	p.nhdr = 0
	if p.op >= wsClose {
		if length > 125 {
			return used, fmt.Errorf("%w: control frame of %d bytes", errWSProtocol, length)
		}
	} else {
		limit := uint64(p.maxMsg)
		if limit == 0 {
			limit = maxFrameBytes
		}
		if length > limit || p.msgLen+length > limit {
			return used, fmt.Errorf("websocket: message longer than %d bytes", limit)
		}
		if p.op != wsContinuation {
			p.msgOp = p.op
		}
		p.msgLen += length
	}
	p.inBody, p.remain = true, length
	return used, nil
}

// checkFirst validates the first two header bytes and sets op and fin.
func (p *wsStream) checkFirst() error {
	b0, b1 := p.hdr[0], p.hdr[1]
	if b0&0x70 != 0 {
		return fmt.Errorf("%w: RSV bits set", errWSProtocol)
	}
	if b1&0x80 != 0 {
		return fmt.Errorf("%w: masked frame from the server", errWSProtocol)
	}
	p.op, p.fin = b0&0x0f, b0&0x80 != 0
	switch p.op {
	case wsContinuation:
		if p.msgOp == 0 {
			return fmt.Errorf("%w: continuation frame outside a message", errWSProtocol)
		}
	case wsText, wsBinary:
		if p.msgOp != 0 {
			return fmt.Errorf("%w: new message inside a fragmented one", errWSProtocol)
		}
	case wsClose, wsPing, wsPong:
		if !p.fin {
			return fmt.Errorf("%w: fragmented control frame", errWSProtocol)
		}
	default:
		return fmt.Errorf("%w: reserved opcode %d", errWSProtocol, p.op)
	}
	return nil
}

// payload takes the next bytes of the current frame's payload (none for
// an empty frame); the frame is complete when remain is 0.
func (p *wsStream) payload(chunk []byte, sink wsSink) error {
	done := p.remain == 0
	if done {
		p.inBody = false
	}
	if p.op >= wsClose {
		if !done {
			p.ctl = append(p.ctl, chunk...)
			return nil
		}
		if len(p.ctl) > 0 {
			chunk = append(p.ctl, chunk...)
			p.ctl = p.ctl[:0]
		}
		return p.control(chunk, sink)
	}
	if p.msgOp != wsText {
		if done && p.fin {
			p.msgOp, p.msgLen = 0, 0
		}
		return nil // binary: skipped
	}
	if done && p.fin && len(p.msg) == 0 {
		// The whole message is in chunk: hand it on in place.
		p.msgOp, p.msgLen = 0, 0
		sink.wsText(chunk)
		return nil
	}
	p.msg = append(p.msg, chunk...)
	if done && p.fin {
		p.msgOp, p.msgLen = 0, 0
		sink.wsText(p.msg)
		if cap(p.msg) > bigCarry {
			p.msg = nil
		} else {
			p.msg = p.msg[:0]
		}
	}
	return nil
}

// control handles a complete control frame.
func (p *wsStream) control(payload []byte, sink wsSink) error {
	switch p.op {
	case wsPing:
		sink.wsPing(payload)
	case wsClose:
		p.closed = true
		code := 1005 // no status received
		var reason []byte
		switch {
		case len(payload) == 1:
			return fmt.Errorf("%w: close frame of 1 byte", errWSProtocol)
		case len(payload) >= 2:
			code = int(binary.BigEndian.Uint16(payload))
			reason = payload[2:]
		}
		sink.wsClose(code, reason)
		return &wsCloseError{Code: code, Reason: string(reason)}
	}
	return nil
}

// appendClientFrame appends a masked client frame (FIN set) with a
// payload of at most 125 bytes: pongs and the close reply.
func appendClientFrame(dst []byte, op byte, payload []byte) []byte {
	if len(payload) > 125 {
		payload = payload[:125]
	}
	key := rand.Uint32()
	var mask [4]byte
	binary.BigEndian.PutUint32(mask[:], key)
	dst = append(dst, 0x80|op, 0x80|byte(len(payload)))
	dst = append(dst, mask[:]...)
	for i, c := range payload {
		dst = append(dst, c^mask[i&3])
	}
	return dst
}
