package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// testKey is the masking key of RFC 6455 §5.7's masked examples.
var testKey = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// maskClient masks payload the way a client does, byte by byte (a second,
// plain implementation to check maskCopy against).
func maskClient(key [4]byte, payload []byte) []byte {
	out := make([]byte, len(payload))
	for i, b := range payload {
		out[i] = b ^ key[i%4]
	}
	return out
}

// clientFrame builds a masked client frame with the shortest length
// encoding.
func clientFrame(op Opcode, fin bool, payload []byte) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	return rawFrame(b0, true, 0, testKey, payload)
}

// rawFrame builds a frame from its parts: b0 as given (FIN, RSV, opcode);
// masked sets the mask bit and adds key; lenBytes forces the length
// encoding (0: shortest, 2: 16-bit, 8: 64-bit) to build non-minimal ones.
func rawFrame(b0 byte, masked bool, lenBytes int, key [4]byte, payload []byte) []byte {
	n := len(payload)
	if lenBytes == 0 {
		switch {
		case n <= 125:
		case n <= 0xFFFF:
			lenBytes = 2
		default:
			lenBytes = 8
		}
	}
	var m byte
	if masked {
		m = 0x80
	}
	b := []byte{b0}
	switch lenBytes {
	case 2:
		b = binary.BigEndian.AppendUint16(append(b, m|126), uint16(n))
	case 8:
		b = binary.BigEndian.AppendUint64(append(b, m|127), uint64(n))
	default:
		b = append(b, m|byte(n))
	}
	if !masked {
		return append(b, payload...)
	}
	b = append(b, key[:]...)
	return append(b, maskClient(key, payload)...)
}

// maskServerFrames turns a stream of server (unmasked) frames, as the
// Append functions write them, into the same frames as a client sends
// them: mask bit set, a key per frame, payload masked. It is the client
// side of the round trip tests.
func maskServerFrames(t testing.TB, in []byte, keyOf func(i int) [4]byte) []byte {
	t.Helper()
	var out []byte
	for i := 0; len(in) > 0; i++ {
		if len(in) < 2 || in[1]&0x80 != 0 {
			t.Fatalf("maskServerFrames: bad server frame at % x", in[:min(len(in), 14)])
		}
		h := 2
		n := int(in[1] & 0x7F)
		switch n {
		case 126:
			n, h = int(binary.BigEndian.Uint16(in[2:])), 4
		case 127:
			n, h = int(binary.BigEndian.Uint64(in[2:])), 10
		}
		key := keyOf(i)
		out = append(out, in[0], in[1]|0x80)
		out = append(out, in[2:h]...)
		out = append(out, key[:]...)
		out = append(out, maskClient(key, in[h:h+n])...)
		in = in[h+n:]
	}
	return out
}

// msg is a delivered message, copied out of the decoder's buffer.
type msg struct {
	Op      Opcode
	Payload string
}

func (m msg) String() string {
	if len(m.Payload) > 40 {
		return fmt.Sprintf("%v[%d bytes]", m.Op, len(m.Payload))
	}
	return fmt.Sprintf("%v%q", m.Op, m.Payload)
}

// decodeChunks feeds chunks to a new decoder one after the other, the way
// a reader feeds what each read returned, and collects every message until
// the first error. check, if not nil, runs after every call.
func decodeChunks(cfg Config, chunks [][]byte, check func(d *Decoder)) ([]msg, error) {
	d := NewDecoder(cfg)
	var msgs []msg
	for _, c := range chunks {
		for {
			n, m, ok, err := d.Decode(c)
			if check != nil {
				check(d)
			}
			if err != nil {
				return msgs, err
			}
			c = c[n:]
			if ok {
				msgs = append(msgs, msg{m.Op, string(m.Payload)})
				continue
			}
			if len(c) != 0 {
				panic("Decode returned without a message, an error or consuming its input")
			}
			break
		}
	}
	return msgs, nil
}

// splitAt cuts b at the given offsets (sorted, within b).
func splitAt(b []byte, offsets ...int) [][]byte {
	var out [][]byte
	prev := 0
	for _, o := range offsets {
		out = append(out, b[prev:o])
		prev = o
	}
	return append(out, b[prev:])
}

// bytewise cuts b into one-byte pieces.
func bytewise(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}

// sameResult reports how two decodings of the same stream differ, or "".
func sameResult(m1 []msg, e1 error, m2 []msg, e2 error) string {
	if len(m1) != len(m2) {
		return fmt.Sprintf("%d messages %v vs %d %v", len(m1), m1, len(m2), m2)
	}
	for i := range m1 {
		if m1[i] != m2[i] {
			return fmt.Sprintf("message %d: %v vs %v", i, m1[i], m2[i])
		}
	}
	if e1 != e2 { // the decoder's errors are shared values
		return fmt.Sprintf("error %v vs %v", e1, e2)
	}
	return ""
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func closeCodeOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
