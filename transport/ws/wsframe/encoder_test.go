package wsframe

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// The unmasked examples of RFC 6455 §5.7 are what a server sends.
func TestAppendRFCExamples(t *testing.T) {
	hello := []byte("Hello")
	frag := AppendFrameHeader(nil, OpText, false, 3)
	frag = append(frag, "Hel"...)
	frag = AppendFrameHeader(frag, OpContinuation, true, 2)
	frag = append(frag, "lo"...)
	bin256 := bytes.Repeat([]byte{7}, 256)
	bin64k := bytes.Repeat([]byte{9}, 65536)
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{"single-frame text", AppendText(nil, hello), []byte{0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}},
		{"fragmented text", frag, []byte{0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f}},
		{"ping", AppendPing(nil, hello), []byte{0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}},
		{"pong", AppendPong(nil, hello), []byte{0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}},
		{"256-byte binary header", AppendFrameHeader(nil, OpBinary, true, len(bin256)), []byte{0x82, 0x7E, 0x01, 0x00}},
		{"64 KiB binary header", AppendFrameHeader(nil, OpBinary, true, len(bin64k)), []byte{0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00}},
	}
	for _, tt := range tests {
		if !bytes.Equal(tt.got, tt.want) {
			t.Errorf("%s: % x, want % x", tt.name, tt.got, tt.want)
		}
	}
}

func TestAppendFrameHeaderLengths(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 0xFFFF, 0x10000, math.MaxInt - MaxControlPayload} {
		h := AppendFrameHeader([]byte("prefix"), OpText, true, n)
		h = h[len("prefix"):]
		if len(h) != HeaderLen(n) {
			t.Errorf("n=%d: header % x is %d bytes, HeaderLen says %d", n, h, len(h), HeaderLen(n))
		}
		// The decoder reads back the same length (its minimality checks
		// pass). No masking key: the payload is never reserved.
		d := NewDecoder(Config{MaxMessageBytes: math.MaxInt})
		hdr := bytes.Clone(h)
		hdr[1] |= 0x80
		if _, _, _, err := d.Decode(hdr); err != nil || d.remain != n {
			t.Errorf("n=%d: decoder read %d, %v", n, d.remain, err)
		}
	}
}

func TestAppendClose(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	tests := []struct {
		name   string
		code   int
		reason string
		want   []byte
	}{
		{"code and reason", CloseServiceRestart, "restart", append([]byte{0x88, 9, 0x03, 0xf4}, "restart"...)},
		{"code only", CloseNormal, "", []byte{0x88, 2, 0x03, 0xe8}},
		{"no status", CloseNoStatus, "ignored", []byte{0x88, 0}},
		{"zero", 0, "", []byte{0x88, 0}},
		{"application code", 4008, "slow", append([]byte{0x88, 6, 0x0f, 0xa8}, "slow"...)},
		{"long reason cut at a rune", CloseNormal, long,
			append([]byte{0x88, 2 + 122, 0x03, 0xe8}, long[:122]...)},
	}
	for _, tt := range tests {
		got := AppendClose(nil, tt.code, tt.reason)
		if !bytes.Equal(got, tt.want) {
			t.Errorf("%s: % x, want % x", tt.name, got, tt.want)
		}
		// A client decoding it (after masking) accepts it.
		in := maskServerFrames(t, got, func(int) [4]byte { return testKey })
		msgs, err := decodeChunks(Config{}, [][]byte{in}, nil)
		if err != nil || len(msgs) != 1 || msgs[0].Op != OpClose {
			t.Errorf("%s: decoded %v %v", tt.name, msgs, err)
		}
	}
	// Every decoder error closes with a code AppendClose sends.
	for _, e := range []*Error{errUnmasked, errTooBig, errInvalidUTF8Text, errBinaryRejected} {
		f := AppendClose(nil, e.Code, e.Reason)
		if !utf8.Valid(f[4:]) || int(f[2])<<8|int(f[3]) != e.Code {
			t.Errorf("%v: % x", e, f)
		}
	}
}

func TestAppendControlPanics(t *testing.T) {
	for name, f := range map[string]func(){
		"ping 126":         func() { AppendPing(nil, make([]byte, 126)) },
		"pong 126":         func() { AppendPong(nil, make([]byte, 126)) },
		"fragmented close": func() { AppendFrameHeader(nil, OpClose, false, 0) },
		"negative":         func() { AppendFrameHeader(nil, OpText, true, -1) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func TestPrepared(t *testing.T) {
	for _, n := range []int{0, 60, 125, 126, 70000} {
		payload := bytes.Repeat([]byte("x"), n)
		p := PrepareText(payload)
		if want := AppendText(nil, payload); !bytes.Equal(p.Frame(), want) {
			t.Fatalf("n=%d: frame differs from AppendText", n)
		}
		if cap(p.Frame()) != p.Len() || p.Len() != HeaderLen(n)+n || !bytes.Equal(p.Payload(), payload) {
			t.Fatalf("n=%d: len %d cap %d payload %d", n, p.Len(), cap(p.Frame()), len(p.Payload()))
		}
		if n > 0 {
			payload[0] = 'y' // the caller may reuse its payload
			if p.Payload()[0] != 'x' {
				t.Fatal("Prepared aliases the caller's payload")
			}
		}
	}
	c := PrepareClose(CloseServiceRestart, "shutting down")
	if !bytes.Equal(c.Frame(), AppendClose(nil, CloseServiceRestart, "shutting down")) || cap(c.Frame()) != c.Len() {
		t.Fatalf("PrepareClose: % x", c.Frame())
	}
	if string(c.Payload()[2:]) != "shutting down" {
		t.Fatalf("close payload %q", c.Payload())
	}
	var zero Prepared
	if zero.Frame() != nil || zero.Payload() != nil || zero.Len() != 0 {
		t.Fatal("zero Prepared")
	}
}

// Server frames, masked as a client would and split anywhere, decode back
// to what was sent — with control frames interleaved in fragmented
// messages, random keys and messages from 0 bytes to past 64 KiB.
func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const limit = 100 << 10
	runes := []rune("aZ0{}\":,é€😀\u0000\u007f\u0080\u07ff\u0800\uffff\U00010000\U0010ffff")
	randText := func(n int) []byte {
		var b []byte
		for len(b) < n {
			b = utf8.AppendRune(b, runes[rng.IntN(len(runes))])
		}
		return b
	}
	for round := range 200 {
		var wire []byte
		var want []msg
		for range 1 + rng.IntN(8) {
			var size int
			switch rng.IntN(4) {
			case 0:
				size = rng.IntN(126)
			case 1:
				size = 126 + rng.IntN(1000)
			case 2:
				size = rng.IntN(0x10000 + 10)
			default:
				size = 0x10000 + rng.IntN(limit-0x10000-8)
			}
			op, payload := OpText, randText(size)
			if rng.IntN(3) == 0 {
				op, payload = OpBinary, make([]byte, size)
				for i := range payload {
					payload[i] = byte(rng.Uint32())
				}
			}
			pieces := 1
			if rng.IntN(2) == 0 {
				pieces = 1 + rng.IntN(5)
			}
			// Cut the payload anywhere, even inside a rune.
			for i := range pieces {
				lo, hi := len(payload)*i/pieces, len(payload)*(i+1)/pieces
				fop := OpContinuation
				if i == 0 {
					fop = op
				}
				wire = AppendFrameHeader(wire, fop, i == pieces-1, hi-lo)
				wire = append(wire, payload[lo:hi]...)
				if i == pieces-1 {
					want = append(want, msg{op, string(payload)})
				}
				if rng.IntN(3) == 0 {
					ping := randText(rng.IntN(40))
					wire = AppendPing(wire, ping)
					want = append(want, msg{OpPing, string(ping)})
				}
			}
		}
		wire = AppendClose(wire, CloseNormal, "done")
		want = append(want, msg{OpClose, "\x03\xe8done"})

		in := maskServerFrames(t, wire, func(int) [4]byte {
			var k [4]byte
			for i := range k {
				k[i] = byte(rng.Uint32())
			}
			return k
		})
		var chunks [][]byte
		for p := in; len(p) > 0; {
			n := min(len(p), 1+rng.IntN(3000))
			if rng.IntN(4) == 0 {
				n = min(len(p), 1+rng.IntN(3))
			}
			chunks = append(chunks, p[:n])
			p = p[n:]
		}
		got, err := decodeChunks(Config{MaxMessageBytes: limit}, chunks, nil)
		if diff := sameResult(got, err, want, nil); diff != "" {
			t.Fatalf("round %d: %s", round, diff)
		}
	}
}
