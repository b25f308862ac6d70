package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

func TestDecodeValid(t *testing.T) {
	bin256 := bytes.Repeat([]byte{0xAB}, 256)
	bin64k := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16)
	euro := []byte("€") // e2 82 ac
	tests := []struct {
		name  string
		cfg   Config
		input []byte
		want  []msg
	}{
		{
			name:  "RFC 6455 5.7 single-frame masked text",
			input: []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58},
			want:  []msg{{OpText, "Hello"}},
		},
		{
			name:  "RFC 6455 5.7 masked pong",
			input: []byte{0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58},
			want:  []msg{{OpPong, "Hello"}},
		},
		{
			name: "RFC 6455 5.7 fragmented text, masked",
			input: cat(
				clientFrame(OpText, false, []byte("Hel")),
				clientFrame(OpContinuation, true, []byte("lo"))),
			want: []msg{{OpText, "Hello"}},
		},
		{
			name:  "RFC 6455 5.7 256-byte binary, 16-bit length",
			input: clientFrame(OpBinary, true, bin256),
			want:  []msg{{OpBinary, string(bin256)}},
		},
		{
			name:  "RFC 6455 5.7 64 KiB binary, 64-bit length",
			cfg:   Config{MaxMessageBytes: 64 << 10},
			input: clientFrame(OpBinary, true, bin64k),
			want:  []msg{{OpBinary, string(bin64k)}},
		},
		{
			name: "ping and pong between fragments",
			input: cat(
				clientFrame(OpText, false, []byte(`{"op":`)),
				clientFrame(OpPing, true, []byte("p1")),
				clientFrame(OpContinuation, false, []byte(`"subscribe",`)),
				clientFrame(OpPong, true, nil),
				clientFrame(OpContinuation, true, []byte(`"channel":"x"}`))),
			want: []msg{{OpPing, "p1"}, {OpPong, ""}, {OpText, `{"op":"subscribe","channel":"x"}`}},
		},
		{
			name: "close between fragments ends the stream",
			input: cat(
				clientFrame(OpText, false, []byte("abc")),
				clientFrame(OpClose, true, []byte{0x03, 0xe8, 'b', 'y', 'e'}),
				[]byte("anything after a close frame is ignored")),
			want: []msg{{OpClose, "\x03\xe8bye"}},
		},
		{
			name: "empty frames",
			input: cat(
				clientFrame(OpText, true, nil),
				clientFrame(OpBinary, false, nil),
				clientFrame(OpContinuation, false, nil),
				clientFrame(OpContinuation, true, nil),
				clientFrame(OpPing, true, nil),
				clientFrame(OpClose, true, nil)),
			want: []msg{{OpText, ""}, {OpBinary, ""}, {OpPing, ""}, {OpClose, ""}},
		},
		{
			name: "rune split across fragments",
			input: cat(
				clientFrame(OpText, false, []byte{'a', euro[0]}),
				clientFrame(OpContinuation, false, euro[1:2]),
				clientFrame(OpContinuation, true, []byte{euro[2], 'b'})),
			want: []msg{{OpText, "a€b"}},
		},
		{
			name: "4-byte rune split after 3 bytes",
			input: cat(
				clientFrame(OpText, false, []byte("😀")[:3]),
				clientFrame(OpContinuation, true, []byte("😀")[3:])),
			want: []msg{{OpText, "😀"}},
		},
		{
			name:  "binary is not UTF-8 checked",
			input: clientFrame(OpBinary, true, []byte{0xff, 0xfe}),
			want:  []msg{{OpBinary, "\xff\xfe"}},
		},
		{
			name:  "message exactly at the limit, in fragments",
			cfg:   Config{MaxMessageBytes: 10},
			input: cat(clientFrame(OpText, false, []byte("01234")), clientFrame(OpContinuation, true, []byte("56789"))),
			want:  []msg{{OpText, "0123456789"}},
		},
		{
			name:  "control frames are not counted against a small limit",
			cfg:   Config{MaxMessageBytes: 1},
			input: clientFrame(OpPing, true, bytes.Repeat([]byte("x"), 125)),
			want:  []msg{{OpPing, strings.Repeat("x", 125)}},
		},
		{
			name: "close codes a client may send",
			input: cat(
				clientFrame(OpPing, true, nil),
				clientFrame(OpClose, true, []byte{0x0f, 0xa0})), // 4000
			want: []msg{{OpPing, ""}, {OpClose, "\x0f\xa0"}},
		},
		{
			name:  "several messages in one read",
			input: cat(clientFrame(OpText, true, []byte("one")), clientFrame(OpText, true, []byte("two")), clientFrame(OpPing, true, []byte("3"))),
			want:  []msg{{OpText, "one"}, {OpText, "two"}, {OpPing, "3"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := func(name string, chunks [][]byte) {
				t.Helper()
				got, err := decodeChunks(tt.cfg, chunks, nil)
				if diff := sameResult(got, err, tt.want, nil); diff != "" {
					t.Fatalf("%s: %s", name, diff)
				}
			}
			check("whole", [][]byte{tt.input})
			check("bytewise", bytewise(tt.input))
			step := 1
			if len(tt.input) > 4096 {
				step = 997 // every split of 64 KiB is too slow for little gain
			}
			for i := 0; i <= len(tt.input); i += step {
				check("split", splitAt(tt.input, i))
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	hello := []byte("Hello")
	closeFrame := func(code uint16, reason string) []byte {
		return clientFrame(OpClose, true, append(binary.BigEndian.AppendUint16(nil, code), reason...))
	}
	type errCase struct {
		name     string
		cfg      Config
		input    []byte
		wantMsgs []msg
		want     *Error
	}
	tests := []errCase{
		{name: "RFC 6455 5.7 unmasked Hello", input: []byte{0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}, want: errUnmasked},
		{name: "unmasked ping", input: rawFrame(0x89, false, 0, testKey, nil), want: errUnmasked},
		{name: "RSV1", input: rawFrame(0x81|0x40, true, 0, testKey, hello), want: errReservedBits},
		{name: "RSV2", input: rawFrame(0x81|0x20, true, 0, testKey, hello), want: errReservedBits},
		{name: "RSV3", input: rawFrame(0x81|0x10, true, 0, testKey, hello), want: errReservedBits},
		{name: "RSV on continuation", input: cat(clientFrame(OpText, false, hello), rawFrame(0x80|0x40, true, 0, testKey, hello)), want: errReservedBits},
		{name: "fragmented ping", input: rawFrame(byte(OpPing), true, 0, testKey, hello), want: errFragmentedControl},
		{name: "fragmented close", input: rawFrame(byte(OpClose), true, 0, testKey, nil), want: errFragmentedControl},
		{name: "continuation first", input: clientFrame(OpContinuation, true, hello), want: errUnexpectedContinue},
		{name: "continuation after a complete message", input: cat(clientFrame(OpText, true, hello), clientFrame(OpContinuation, true, hello)),
			wantMsgs: []msg{{OpText, "Hello"}}, want: errUnexpectedContinue},
		{name: "text inside a fragmented message", input: cat(clientFrame(OpText, false, hello), clientFrame(OpText, true, hello)), want: errExpectedContinue},
		{name: "binary inside a fragmented message", input: cat(clientFrame(OpBinary, false, hello), clientFrame(OpBinary, true, hello)), want: errExpectedContinue},
		{name: "ping with 126-byte payload", input: clientFrame(OpPing, true, make([]byte, 126)), want: errControlTooLong},
		{name: "close with 16-bit length", input: rawFrame(0x88, true, 2, testKey, []byte{3, 0xe8}), want: errControlTooLong},
		{name: "16-bit length under 126", input: rawFrame(0x81, true, 2, testKey, hello), want: errNonMinimalLength},
		{name: "16-bit length of 125", input: rawFrame(0x82, true, 2, testKey, make([]byte, 125)), want: errNonMinimalLength},
		{name: "64-bit length under 65536", cfg: Config{MaxMessageBytes: 1 << 20}, input: rawFrame(0x82, true, 8, testKey, make([]byte, 300)), want: errNonMinimalLength},
		{name: "64-bit length of 65535", cfg: Config{MaxMessageBytes: 1 << 20}, input: rawFrame(0x82, true, 8, testKey, make([]byte, 65535)), want: errNonMinimalLength},
		{name: "64-bit length with the high bit set", input: []byte{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0}, want: errLengthHighBit},
		{name: "7-bit length over the limit", cfg: Config{MaxMessageBytes: 4}, input: clientFrame(OpText, true, hello), want: errTooBig},
		{name: "16-bit length over the default limit", input: clientFrame(OpText, true, make([]byte, 4097)), want: errTooBig},
		{name: "64-bit length over the limit", input: []byte{0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, want: errTooBig},
		{name: "fragments over the limit", cfg: Config{MaxMessageBytes: 9},
			input: cat(clientFrame(OpText, false, hello), clientFrame(OpContinuation, true, hello)), want: errTooBig},
		{name: "binary rejected", cfg: Config{RejectBinary: true}, input: clientFrame(OpBinary, true, hello), want: errBinaryRejected},
		{name: "invalid UTF-8", input: clientFrame(OpText, true, []byte{'a', 0xff, 'b'}), want: errInvalidUTF8Text},
		{name: "overlong encoding", input: clientFrame(OpText, true, []byte{0xc0, 0xaf}), want: errInvalidUTF8Text},
		{name: "surrogate", input: clientFrame(OpText, true, []byte{0xed, 0xa0, 0x80}), want: errInvalidUTF8Text},
		{name: "above U+10FFFF", input: clientFrame(OpText, true, []byte{0xf4, 0x90, 0x80, 0x80}), want: errInvalidUTF8Text},
		{name: "rune cut at the end of the message", input: clientFrame(OpText, true, []byte("€")[:2]), want: errInvalidUTF8Text},
		{name: "rune cut at the end of fragmented message", input: cat(
			clientFrame(OpText, false, []byte("a")), clientFrame(OpContinuation, true, []byte("€")[:2])), want: errInvalidUTF8Text},
		{name: "invalid UTF-8 fails at its fragment, before FIN", input: cat(
			clientFrame(OpText, false, []byte{'a', 0xff}),
			[]byte{0x00}), // the next frame's header never completes
			want: errInvalidUTF8Text},
		{name: "invalid continuation of a split rune", input: cat(
			clientFrame(OpText, false, []byte("€")[:1]), clientFrame(OpContinuation, true, []byte("ab"))), want: errInvalidUTF8Text},
		{name: "close with 1-byte payload", input: clientFrame(OpClose, true, []byte{3}), want: errCloseOneByte},
		{name: "close reason invalid UTF-8", input: closeFrame(1000, "\xff"), want: errInvalidUTF8Close},
	}
	for _, op := range []byte{3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		tests = append(tests, errCase{name: "opcode " + Opcode(op).String(), input: rawFrame(0x80|op, true, 0, testKey, nil), want: errUnknownOpcode})
	}
	for _, code := range []uint16{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		tests = append(tests, errCase{name: "close code " + strconv.Itoa(int(code)), input: closeFrame(code, ""), want: errInvalidCloseCode})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.want.Code != closeCodeOf(tt.want) {
				t.Fatal("test error value is not an *Error")
			}
			for _, chunks := range [][][]byte{{tt.input}, bytewise(tt.input)} {
				got, err := decodeChunks(tt.cfg, chunks, nil)
				if diff := sameResult(got, err, tt.wantMsgs, tt.want); diff != "" {
					t.Fatalf("%d chunks: %s", len(chunks), diff)
				}
			}
		})
	}
}

func TestDecodeErrorIsSticky(t *testing.T) {
	d := NewDecoder(Config{})
	in := cat(clientFrame(OpText, true, []byte("ok")), rawFrame(0x81, false, 0, testKey, []byte("x")))
	n, m, ok, err := d.Decode(in)
	if err != nil || !ok || string(m.Payload) != "ok" {
		t.Fatalf("first message: %v %q %v", err, m.Payload, ok)
	}
	in = in[n:]
	_, _, ok, err = d.Decode(in)
	if err != errUnmasked || ok {
		t.Fatalf("got %v, %v; want %v", ok, err, errUnmasked)
	}
	for _, p := range [][]byte{nil, clientFrame(OpText, true, []byte("fine"))} {
		if n, _, ok, err := d.Decode(p); err != errUnmasked || ok || n != 0 {
			t.Fatalf("after the error: %d %v %v", n, ok, err)
		}
	}
	if d.Err() != errUnmasked {
		t.Fatalf("Err() = %v", d.Err())
	}
	var e *Error
	if !errors.As(err, &e) || e.Code != CloseProtocolError || err.Error() != "wsframe: unmasked client frame (close 1002)" {
		t.Fatalf("error %q, %+v", err, e)
	}
	d.Reset(Config{})
	if _, m, ok, err := d.Decode(clientFrame(OpText, true, []byte("again"))); err != nil || !ok || string(m.Payload) != "again" {
		t.Fatalf("after Reset: %v %v %q", err, ok, m.Payload)
	}
}

// A frame longer than the limit fails on its length bytes: nothing of its
// payload is read or buffered, and a huge declared length costs nothing.
func TestDecodeTooBigBeforeBuffering(t *testing.T) {
	for _, hdr := range [][]byte{
		{0x81, 0xFE, 0x10, 0x01},                                     // 4097, 16-bit
		{0x82, 0xFF, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00}, // 4 GiB, 64-bit
	} {
		d := NewDecoder(Config{})
		n, _, _, err := d.Decode(hdr)
		if err != errTooBig || n != len(hdr) || d.Buffered() != 0 || d.bufp != nil {
			t.Fatalf("% x: n=%d err=%v buffered=%d buf=%v", hdr, n, err, d.Buffered(), d.bufp != nil)
		}
	}
	// A fragment that would take the message over the limit fails the same
	// way, the fragments so far are dropped.
	d := NewDecoder(Config{MaxMessageBytes: 300})
	in := cat(clientFrame(OpText, false, make([]byte, 200)), []byte{0x80, 0xFE, 0x00, 0x80})
	if _, _, _, err := d.Decode(in); err != errTooBig || d.bufp != nil {
		t.Fatalf("err=%v buf held=%v", err, d.bufp != nil)
	}
}

// A client trickling a maximal message one byte at a time holds the
// decoder's memory to the message limit; a fragmented one as well.
func TestDecodeTrickleMemoryBound(t *testing.T) {
	const limit = 4096
	payload := bytes.Repeat([]byte("a"), limit)
	var in []byte
	for i := 0; i < limit; i += 512 {
		in = append(in, clientFrame(OpContinuation, i+512 == limit, payload[i:i+512])...)
		in = append(in, clientFrame(OpPing, true, bytes.Repeat([]byte("p"), 125))...)
	}
	in[0] = byte(OpText) // first fragment is text, not continuation
	maxCap := 0
	got, err := decodeChunks(Config{MaxMessageBytes: limit}, bytewise(in), func(d *Decoder) {
		if d.Buffered() > limit+MaxControlPayload {
			t.Fatalf("buffered %d", d.Buffered())
		}
		if d.bufp != nil {
			maxCap = max(maxCap, cap(*d.bufp))
		}
	})
	if err != nil || len(got) != 9 || got[7] != (msg{OpText, string(payload)}) {
		t.Fatalf("err=%v, %d messages", err, len(got))
	}
	// 4096 + a 125-byte ping in the middle rounds up to the 8 KiB class.
	if maxCap > 2*(limit+MaxControlPayload) {
		t.Fatalf("buffer grew to %d bytes", maxCap)
	}
}

func TestDecoderRelease(t *testing.T) {
	d := NewDecoder(Config{})
	frame := clientFrame(OpText, true, []byte("hello"))
	if _, _, ok, _ := d.Decode(frame); !ok || d.bufp == nil {
		t.Fatal("no message or no buffer")
	}
	d.Release()
	if d.bufp != nil {
		t.Fatal("Release kept the buffer when idle")
	}
	// Partial payload: kept.
	d.Decode(frame[:8])
	d.Release()
	if d.bufp == nil {
		t.Fatal("Release dropped a partial frame")
	}
	if _, m, ok, err := d.Decode(frame[8:]); !ok || err != nil || string(m.Payload) != "hello" {
		t.Fatalf("after Release of partial frame: %v %v %q", ok, err, m.Payload)
	}
	// Header complete, no payload byte yet: still kept (room is reserved).
	d.Decode(frame[:6])
	d.Release()
	if _, m, ok, err := d.Decode(frame[6:]); !ok || err != nil || string(m.Payload) != "hello" {
		t.Fatalf("after Release with empty payload so far: %v %v %q", ok, err, m.Payload)
	}
	// Partial fragmented message: kept by Release, dropped by Reset.
	d.Decode(clientFrame(OpText, false, []byte("frag")))
	d.Release()
	if d.bufp == nil {
		t.Fatal("Release dropped a partial message")
	}
	d.Reset(Config{})
	if d.bufp != nil || d.Buffered() != 0 || d.Err() != nil {
		t.Fatal("Reset kept state")
	}
	d.Decode(clientFrame(OpText, false, []byte("frag")))
	if _, m, ok, _ := d.Decode(clientFrame(OpContinuation, true, []byte("ment"))); !ok || string(m.Payload) != "fragment" {
		t.Fatalf("got %q", m.Payload)
	}
	d.Release()
	if d.bufp != nil {
		t.Fatal("buffer kept")
	}
	// Frames without payload never take a buffer.
	if _, _, ok, _ := d.Decode(clientFrame(OpPing, true, nil)); !ok || d.bufp != nil {
		t.Fatal("empty ping took a buffer")
	}
}

func TestDecodeAfterClose(t *testing.T) {
	d := NewDecoder(Config{})
	in := cat(clientFrame(OpClose, true, []byte{0x03, 0xe9, 'x'}), clientFrame(OpText, true, []byte("late")))
	n, m, ok, err := d.Decode(in)
	if !ok || err != nil || m.Op != OpClose || m.CloseCode() != CloseGoingAway || string(m.CloseReason()) != "x" {
		t.Fatalf("%v %v %+v", ok, err, m)
	}
	if n2, _, ok, err := d.Decode(in[n:]); n2 != len(in)-n || ok || err != nil {
		t.Fatalf("after close: %d %v %v", n2, ok, err)
	}
	if d.bufp != nil {
		t.Fatal("buffer kept after close")
	}
}

func TestMessageClose(t *testing.T) {
	if c := (Message{Op: OpClose}).CloseCode(); c != CloseNoStatus {
		t.Fatalf("empty close: %d", c)
	}
	if r := (Message{Op: OpClose}).CloseReason(); r != nil {
		t.Fatalf("empty close reason: %q", r)
	}
	m := Message{Op: OpClose, Payload: []byte{0x0f, 0xa0, 'h', 'i'}}
	if m.CloseCode() != 4000 || string(m.CloseReason()) != "hi" {
		t.Fatalf("%d %q", m.CloseCode(), m.CloseReason())
	}
}

func TestDecoderConfig(t *testing.T) {
	var d Decoder // the zero Decoder works
	if d.MaxMessageBytes() != DefaultMaxMessageBytes {
		t.Fatal(d.MaxMessageBytes())
	}
	if _, m, ok, err := d.Decode(clientFrame(OpText, true, []byte("zero"))); !ok || err != nil || string(m.Payload) != "zero" {
		t.Fatalf("%v %v", ok, err)
	}
	if NewDecoder(Config{MaxMessageBytes: -1}).MaxMessageBytes() != DefaultMaxMessageBytes {
		t.Fatal("negative limit not defaulted")
	}
	if NewDecoder(Config{MaxMessageBytes: 10}).MaxMessageBytes() != 10 {
		t.Fatal("limit not kept")
	}
}

func TestMaskCopy(t *testing.T) {
	src := make([]byte, 40)
	for i := range src {
		src[i] = byte(i * 7)
	}
	key := [4]byte{1, 2, 0x80, 0xff}
	full := maskClient(key, src)
	for start := 0; start <= len(src); start++ {
		for end := start; end <= len(src); end++ {
			dst := make([]byte, end-start)
			maskCopy(dst, src[start:end], key, start)
			if !bytes.Equal(dst, full[start:end]) {
				t.Fatalf("[%d:%d]: % x, want % x", start, end, dst, full[start:end])
			}
		}
	}
}

func TestValidUTF8Prefix(t *testing.T) {
	tests := []struct {
		in    string
		final bool
		n     int
		ok    bool
	}{
		{"abc", false, 3, true},
		{"ab\xe2\x82", false, 2, true},
		{"ab\xe2\x82", true, 4, false},
		{"ab\xf0\x9f\x98", false, 2, true},
		{"\xf0", false, 0, true},
		{"ab\xff", false, 3, false},
		{"ab\xed\xa0", false, 4, false}, // surrogate prefix: invalid at once
		{"ab\xe0\x80", false, 4, false}, // overlong prefix: invalid at once
		{"\x82\xac", false, 2, false},   // stray continuation bytes
		{"€", false, 3, true},
	}
	for _, tt := range tests {
		n, ok := validUTF8Prefix([]byte(tt.in), tt.final)
		if ok != tt.ok || (ok && n != tt.n) {
			t.Errorf("%q final=%v: %d %v, want %d %v", tt.in, tt.final, n, ok, tt.n, tt.ok)
		}
	}
}

func TestDecodeNoAllocs(t *testing.T) {
	if raceEnabled || testing.Short() {
		t.Skip("allocation counts need sync.Pool to keep buffers, which -race defeats on purpose, and -short skips it; .ci/run runs it without -race")
	}
	op := clientFrame(OpText, true, []byte(`{"op":"subscribe","channel":"thread:42"}`))
	frag := cat(
		clientFrame(OpText, false, []byte(`{"op":"unsub`)),
		clientFrame(OpPing, true, []byte("hb")),
		clientFrame(OpContinuation, true, []byte(`scribe","channel":"thread:42"}`)))
	for _, tc := range []struct {
		name    string
		in      []byte
		release bool
	}{
		{"small text", op, false},
		{"small text, released when idle", op, true},
		{"fragmented with ping", frag, false},
	} {
		d := NewDecoder(Config{})
		run := func() {
			p := tc.in
			for len(p) > 0 {
				n, _, _, err := d.Decode(p)
				if err != nil {
					t.Fatal(err)
				}
				p = p[n:]
			}
			if tc.release {
				d.Release()
			}
		}
		run() // warm the pool
		if a := testing.AllocsPerRun(1000, run); a != 0 {
			t.Errorf("%s: %v allocs per message", tc.name, a)
		}
	}
}

// The Decoder lives in every connection, idle ones included: keep it small.
func TestDecoderSize(t *testing.T) {
	if s := unsafe.Sizeof(Decoder{}); s > 128 {
		t.Fatalf("Decoder is %d bytes", s)
	} else {
		t.Logf("Decoder is %d bytes", s)
	}
}
