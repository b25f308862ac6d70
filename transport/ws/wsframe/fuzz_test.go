package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"unicode/utf8"
)

// fuzzSeeds are valid and invalid client streams for FuzzDecoder's corpus.
func fuzzSeeds() [][]byte {
	hello := []byte("Hello")
	op := []byte(`{"op":"subscribe","channel":"thread:42","cursor":"thread:42@k3j4h5g6:17"}`)
	closeWith := func(code uint16, reason string) []byte {
		return clientFrame(OpClose, true, append(binary.BigEndian.AppendUint16(nil, code), reason...))
	}
	return [][]byte{
		// Valid.
		{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58},
		{0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58},
		clientFrame(OpText, true, op),
		cat(clientFrame(OpText, false, []byte("Hel")), clientFrame(OpContinuation, true, []byte("lo"))),
		cat(clientFrame(OpText, false, op[:10]), clientFrame(OpPing, true, hello),
			clientFrame(OpContinuation, false, op[10:20]), clientFrame(OpPong, true, nil),
			clientFrame(OpContinuation, true, op[20:]), clientFrame(OpText, true, op)),
		cat(clientFrame(OpText, false, []byte("a\xe2")), clientFrame(OpContinuation, true, []byte("\x82\xacb"))),
		clientFrame(OpBinary, true, bytes.Repeat([]byte{0xAB}, 256)),
		cat(clientFrame(OpPing, true, bytes.Repeat([]byte("p"), 125)), closeWith(1000, "bye"), []byte("ignored")),
		cat(clientFrame(OpText, true, nil), closeWith(4008, "")),
		clientFrame(OpClose, true, nil),
		// Invalid.
		{0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f},
		rawFrame(0xC1, true, 0, testKey, hello),
		rawFrame(0x83, true, 0, testKey, nil),
		rawFrame(0x09, true, 0, testKey, nil),
		clientFrame(OpContinuation, true, hello),
		cat(clientFrame(OpText, false, hello), clientFrame(OpText, true, hello)),
		clientFrame(OpPing, true, make([]byte, 126)),
		rawFrame(0x81, true, 2, testKey, hello),
		rawFrame(0x82, true, 8, testKey, make([]byte, 200)),
		{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0},
		{0x82, 0xFF, 0, 0, 0, 0, 0, 0x01, 0, 0, 1, 2, 3, 4},
		clientFrame(OpText, true, make([]byte, 5000)),
		clientFrame(OpText, true, []byte{'a', 0xff}),
		clientFrame(OpText, true, []byte{0xed, 0xa0, 0x80}),
		cat(clientFrame(OpText, false, []byte("€")[:1]), clientFrame(OpContinuation, true, []byte("ab"))),
		clientFrame(OpClose, true, []byte{3}),
		closeWith(1005, ""),
		closeWith(1000, "\xff"),
	}
}

// FuzzDecoder feeds arbitrary bytes to the decoder whole, in pieces whose
// sizes come from cuts, and one byte at a time: all three must deliver the
// same messages and stop on the same error, the decoder must never panic,
// and what it buffers must stay within the message limit. limit picks the
// Decoder's MaxMessageBytes (0: the default); the top bit of cuts[0] turns
// on RejectBinary.
func FuzzDecoder(f *testing.F) {
	for i, s := range fuzzSeeds() {
		f.Add(s, []byte{byte(i), 3, 200, 1}, uint16(0))
		f.Add(s, []byte{0x80 | byte(i)}, uint16(100))
	}
	f.Fuzz(func(t *testing.T, stream, cuts []byte, limit uint16) {
		cfg := Config{MaxMessageBytes: int(limit), RejectBinary: len(cuts) > 0 && cuts[0]&0x80 != 0}
		max := NewDecoder(cfg).MaxMessageBytes()
		check := func(d *Decoder) {
			if d.Buffered() > max+MaxControlPayload {
				t.Fatalf("buffered %d bytes, limit %d", d.Buffered(), max)
			}
			if d.bufp != nil && cap(*d.bufp) > 2*(max+MaxControlPayload) && cap(*d.bufp) > 1<<minClassBits {
				t.Fatalf("buffer of %d bytes, limit %d", cap(*d.bufp), max)
			}
		}
		wantMsgs, wantErr := decodeChunks(cfg, [][]byte{stream}, check)

		var pieces [][]byte
		for i, p := 0, stream; len(p) > 0; i++ {
			n := 1
			if len(cuts) > 0 {
				c := int(cuts[i%len(cuts)])
				if c < 128 {
					n = c%8 + 1 // mostly tiny pieces: splits inside headers
				} else {
					n = (c-128)*4 + 1
				}
			}
			n = min(n, len(p))
			pieces = append(pieces, p[:n])
			p = p[n:]
		}
		for name, chunks := range map[string][][]byte{"pieces": pieces, "bytewise": bytewise(stream)} {
			msgs, err := decodeChunks(cfg, chunks, check)
			if diff := sameResult(wantMsgs, wantErr, msgs, err); diff != "" {
				t.Fatalf("whole vs %s: %s", name, diff)
			}
		}

		// What the decoder accepts is well-formed.
		for i, m := range wantMsgs {
			switch m.Op {
			case OpText:
				if !utf8.ValidString(m.Payload) {
					t.Fatalf("message %d: invalid UTF-8 text delivered", i)
				}
				fallthrough
			case OpBinary:
				if len(m.Payload) > max {
					t.Fatalf("message %d: %d bytes over the limit %d", i, len(m.Payload), max)
				}
				if m.Op == OpBinary && cfg.RejectBinary {
					t.Fatalf("message %d: binary delivered with RejectBinary", i)
				}
			case OpPing, OpPong:
				if len(m.Payload) > MaxControlPayload {
					t.Fatalf("message %d: control payload of %d bytes", i, len(m.Payload))
				}
			case OpClose:
				if i != len(wantMsgs)-1 {
					t.Fatalf("message %d: close is not the last message", i)
				}
				if c := (Message{Op: OpClose, Payload: []byte(m.Payload)}).CloseCode(); c != CloseNoStatus && !validCloseCode(c) {
					t.Fatalf("close code %d delivered", c)
				}
			default:
				t.Fatalf("message %d: opcode %v delivered", i, m.Op)
			}
		}
		if wantErr != nil {
			var e *Error
			if !errors.As(wantErr, &e) {
				t.Fatalf("error %T %v is not an *Error", wantErr, wantErr)
			}
			switch e.Code {
			case CloseProtocolError, CloseUnsupportedData, CloseInvalidPayload, CloseMessageTooBig:
			default:
				t.Fatalf("error %v has close code %d", e, e.Code)
			}
		}
	})
}
