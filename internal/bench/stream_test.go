package bench

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"reflect"
	"strings"
	"testing"
)

// recorder is an sseSink and a wsSink that writes down what it gets.
type recorder struct{ events []string }

func (r *recorder) sseData(v []byte, gap bool) {
	r.events = append(r.events, fmt.Sprintf("data gap=%v %q", gap, v))
}
func (r *recorder) wsText(msg []byte) { r.events = append(r.events, fmt.Sprintf("text %q", msg)) }
func (r *recorder) wsPing(payload []byte) {
	r.events = append(r.events, fmt.Sprintf("ping %q", payload))
}
func (r *recorder) wsClose(code int, reason []byte) {
	r.events = append(r.events, fmt.Sprintf("close %d %q", code, reason))
}

// pieces cuts b into pieces whose lengths come from cuts (1 to 17 bytes
// each, cycling; every byte its own piece when cuts is empty).
func pieces(b, cuts []byte) [][]byte {
	var out [][]byte
	for i := 0; len(b) > 0; i++ {
		n := 1
		if len(cuts) > 0 {
			n = int(cuts[i%len(cuts)])%17 + 1
		}
		n = min(n, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// feedSSE feeds the pieces to a fresh sseStream until an error and
// returns the events and the error (nil when the input ran out).
func feedSSE(chunked bool, maxLine int, in [][]byte) ([]string, error) {
	p := &sseStream{chunked: chunked, maxLine: maxLine}
	var r recorder
	for _, b := range in {
		// The decoder may keep no reference to b: scribble over it after.
		c := append([]byte(nil), b...)
		err := p.feed(c, &r)
		for i := range c {
			c[i] = '#'
		}
		if err != nil {
			return r.events, err
		}
	}
	return r.events, nil
}

func feedWS(maxMsg int, in [][]byte) ([]string, error) {
	p := &wsStream{maxMsg: maxMsg}
	var r recorder
	for _, b := range in {
		c := append([]byte(nil), b...)
		err := p.feed(c, &r)
		for i := range c {
			c[i] = '#'
		}
		if err != nil {
			return r.events, err
		}
	}
	return r.events, nil
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// chunk encodes body with chunk sizes from sizes (1 to 32 bytes, cycling),
// extensions now and then, and the last chunk with a trailer.
func chunk(body, sizes []byte) []byte {
	var out bytes.Buffer
	for i := 0; len(body) > 0; i++ {
		n := len(body)
		if len(sizes) > 0 {
			n = min(int(sizes[i%len(sizes)])%32+1, n)
		}
		if i%5 == 3 {
			fmt.Fprintf(&out, "%X;ext=1\r\n", n)
		} else {
			fmt.Fprintf(&out, "%x\r\n", n)
		}
		out.Write(body[:n])
		out.WriteString("\r\n")
		body = body[n:]
	}
	out.WriteString("0\r\nX-Trailer: 1\r\n\r\n")
	return out.Bytes()
}

// sseReference decodes a plain event stream the way readSSE does: only
// complete lines count.
func sseReference(body []byte) []string {
	var r recorder
	var p sseStream
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		if i < 0 {
			break
		}
		p.onLine(body[:i], &r)
		body = body[i+1:]
	}
	return r.events
}

func TestSSEStreamChunked(t *testing.T) {
	body := "retry: 2000\n\n" +
		"event: gap\ndata: {\"channels\":[\"a\"]}\n\n" +
		"id: a@e:1\nevent: message\ndata: {\"channel\":\"a\",\"data\":{\"seq\":1}}\r\n\r\n" +
		":\n\n" +
		"data:{\"seq\":2}\n\n"
	want := []string{
		`data gap=true "{\"channels\":[\"a\"]}"`,
		`data gap=false "{\"channel\":\"a\",\"data\":{\"seq\":1}}"`,
		`data gap=false "{\"seq\":2}"`,
	}
	enc := chunk([]byte(body), []byte{6, 30, 2, 0, 17})
	for _, cuts := range [][]byte{nil, {200}, {3, 9, 1}} {
		var in [][]byte
		if cuts == nil {
			in = [][]byte{enc}
		} else {
			in = pieces(enc, cuts)
		}
		got, err := feedSSE(true, 0, in)
		if err != io.EOF || !reflect.DeepEqual(got, want) {
			t.Errorf("cuts %v: err %v, events\n%s\nwant\n%s", cuts, err, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	// Go's own chunked writer, as Herald's server uses it.
	var buf bytes.Buffer
	cw := httputil.NewChunkedWriter(&buf)
	for _, part := range []string{body[:10], body[10:40], body[40:]} {
		io.WriteString(cw, part)
	}
	cw.Close()
	buf.WriteString("\r\n")
	if got, err := feedSSE(true, 0, pieces(buf.Bytes(), []byte{5})); err != io.EOF || !reflect.DeepEqual(got, want) {
		t.Errorf("Go chunked writer: err %v, events %q", err, got)
	}
	// Not chunked: the body runs until the connection closes.
	if got, err := feedSSE(false, 0, pieces([]byte(body), []byte{7})); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("identity: err %v, events %q", err, got)
	}
}

func TestSSEStreamErrors(t *testing.T) {
	for _, tc := range []struct {
		in, err string
	}{
		{"zz\r\n", "bad chunk size"},
		{"\r\n", "bad chunk size"},
		{"5\rx", "CR without LF"},
		{"3\r\nabcX", "no CRLF after chunk data"},
		{"3\r\nabc\rX", "no CRLF after chunk data"},
		{"fffffffffffffffff\r\n", "chunk too large"},
		{"40\r\n" + strings.Repeat("x", 64) + "\r\n", "line longer than 40 bytes"},
		{"3\r\nab\n\r\n" + "0\r\n\rX", "CR without LF in the trailer"},
	} {
		_, err := feedSSE(true, 40, [][]byte{[]byte(tc.in)})
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: err %v, want %q", tc.in, err, tc.err)
		}
	}
	// A long line split over several chunks is refused as well.
	_, err := feedSSE(true, 40, pieces(chunk([]byte(strings.Repeat("y", 50)+"\n"), []byte{9}), []byte{4}))
	if err == nil || !strings.Contains(err.Error(), "line longer") {
		t.Errorf("long split line: %v", err)
	}
}

// FuzzChunkedSSE: feeding a chunked event stream in arbitrary pieces gives
// the same events (and the same error) as feeding it whole; the decoder
// never panics; and a body chunk-encoded any which way decodes to what the
// plain line reader sees.
func FuzzChunkedSSE(f *testing.F) {
	f.Add([]byte("6\r\ndata: \r\n4\r\nabc\n\r\n0\r\n\r\n"), []byte{1, 2, 3})
	f.Add([]byte("event: gap\ndata: x\n\ndata: {\"seq\":1}\n\n"), []byte{0})
	f.Add([]byte("1a;x=y\r\nid: 1\ndata: hello world\n\n\r\n0\r\nT: v\r\n\r\n"), []byte{5, 200})
	f.Add([]byte(":\n\nretry: 10\n\ndata:a\r\ndata:b\n\n"), []byte{})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		const maxLine = 64
		for _, chunked := range []bool{true, false} {
			whole, werr := feedSSE(chunked, maxLine, [][]byte{data})
			split, serr := feedSSE(chunked, maxLine, pieces(data, cuts))
			if errString(werr) != errString(serr) || !reflect.DeepEqual(whole, split) {
				t.Fatalf("chunked %v: whole: %v %q\nsplit: %v %q", chunked, werr, whole, serr, split)
			}
		}
		enc := chunk(data, cuts)
		ref := sseReference(data)
		got, err := feedSSE(true, 1<<20, pieces(enc, append([]byte{7}, cuts...)))
		if err != io.EOF || !reflect.DeepEqual(got, ref) {
			t.Fatalf("encoded: %v %q\nreference %q", err, got, ref)
		}
	})
}

// frame builds a server (unmasked) frame.
func frame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		out = append(out, byte(n))
	case n <= 0xffff:
		out = append(out, 126)
		out = binary.BigEndian.AppendUint16(out, uint16(n))
	default:
		out = append(out, 127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	return append(out, payload...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestWSStream(t *testing.T) {
	long := bytes.Repeat([]byte("L"), 300)
	huge := bytes.Repeat([]byte("H"), 70000)
	in := cat(
		frame(true, wsText, []byte(`{"seq":1}`)),
		frame(true, wsPing, []byte("hb")),
		frame(false, wsText, []byte("frag-")),
		frame(true, wsPing, nil),
		frame(false, wsContinuation, nil),
		frame(true, wsContinuation, []byte("ment")),
		frame(true, wsBinary, []byte{1, 2, 3}),
		frame(false, wsBinary, []byte{1}),
		frame(true, wsContinuation, []byte{2}),
		frame(true, wsPong, []byte("p")),
		frame(true, wsText, long),
		frame(true, wsText, huge),
		frame(true, wsText, nil),
		frame(true, wsClose, append([]byte{0x03, 0xF4}, "restart"...)),
	)
	want := []string{
		`text "{\"seq\":1}"`, `ping "hb"`, `ping ""`, `text "frag-ment"`,
		fmt.Sprintf("text %q", long), fmt.Sprintf("text %q", huge), `text ""`, `close 1012 "restart"`,
	}
	for _, cuts := range [][]byte{{255}, nil, {1, 13, 2}} {
		chunks := [][]byte{in}
		if cuts == nil || cuts[0] != 255 {
			chunks = pieces(in, cuts)
		}
		got, err := feedWS(0, chunks)
		var ce *wsCloseError
		if !errors.As(err, &ce) || ce.Code != 1012 || !reflect.DeepEqual(got, want) {
			t.Fatalf("cuts %v: err %v, events %.200q", cuts, err, got)
		}
	}
	for _, tc := range []struct {
		in  []byte
		err string
	}{
		{[]byte{0x81 | 0x40, 0}, "RSV"},
		{[]byte{0x81, 0x80, 0, 0, 0, 0}, "masked"},
		{frame(true, wsContinuation, []byte("x")), "continuation frame outside"},
		{cat(frame(false, wsText, []byte("a")), frame(true, wsText, []byte("b"))), "new message inside"},
		{frame(false, wsPing, nil), "fragmented control"},
		{frame(true, 0x3, nil), "reserved opcode"},
		{frame(true, wsPing, make([]byte, 126)), "control frame of 126 bytes"},
		{frame(true, wsClose, []byte{3}), "close frame of 1 byte"},
		{frame(true, wsText, make([]byte, 41)), "longer than 40"},
		{cat(frame(false, wsText, make([]byte, 30)), frame(true, wsContinuation, make([]byte, 11))), "longer than 40"},
		{[]byte{0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 1}, "bad frame length"},
	} {
		_, err := feedWS(40, [][]byte{tc.in})
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("% x: err %v, want %q", tc.in, err, tc.err)
		}
	}
	// Nothing is read after the close frame.
	p := &wsStream{}
	var r recorder
	if err := p.feed(frame(true, wsClose, nil), &r); err == nil || p.feed([]byte{0x81, 0}, &r) == nil {
		t.Errorf("after close: %v", r.events)
	}
}

// FuzzWSFrames: feeding frames in arbitrary pieces gives the same events
// (and the same error) as feeding them whole; the decoder never panics.
func FuzzWSFrames(f *testing.F) {
	f.Add(cat(frame(true, wsText, []byte(`{"seq":1,"ts":2}`)), frame(true, wsPing, []byte("x"))), []byte{3})
	f.Add(cat(frame(false, wsText, []byte("ab")), frame(true, wsPong, nil), frame(true, wsContinuation, []byte("c"))), []byte{1})
	f.Add(cat(frame(true, wsText, bytes.Repeat([]byte("z"), 130)), frame(true, wsClose, []byte{3, 0xe8})), []byte{})
	f.Add(cat(frame(false, wsBinary, []byte("b")), frame(true, wsContinuation, []byte("c")), frame(true, wsText, nil)), []byte{9, 2})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		const maxMsg = 200
		whole, werr := feedWS(maxMsg, [][]byte{data})
		split, serr := feedWS(maxMsg, pieces(data, cuts))
		if errString(werr) != errString(serr) || !reflect.DeepEqual(whole, split) {
			t.Fatalf("whole: %v %q\nsplit: %v %q", werr, whole, serr, split)
		}
	})
}

func TestAppendClientFrame(t *testing.T) {
	b := appendClientFrame(nil, wsPong, []byte("ping-payload"))
	if b[0] != 0x80|wsPong || b[1] != 0x80|12 || len(b) != 2+4+12 {
		t.Fatalf("frame % x", b)
	}
	mask := b[2:6]
	got := make([]byte, 12)
	for i := range got {
		got[i] = b[6+i] ^ mask[i&3]
	}
	if string(got) != "ping-payload" {
		t.Errorf("unmasked %q", got)
	}
}

func TestHandshakeHelpers(t *testing.T) {
	// RFC 6455 section 1.3.
	if got := wsAccept("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("accept %s", got)
	}
	if k := newWSKey(); len(k) != 24 || k == newWSKey() {
		t.Errorf("key %q", k)
	}
	head := "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
	if n := headEnd([]byte(head + "5\r\nhello")); n != len(head) {
		t.Errorf("headEnd %d, want %d", n, len(head))
	}
	if n := headEnd([]byte(head[:len(head)-1])); n != -1 {
		t.Errorf("partial head: %d", n)
	}
	if n := headEnd([]byte("HTTP/1.1 200 OK\nA: b\n\nrest")); n != 22 {
		t.Errorf("LF head: %d", n)
	}
	resp, err := parseHead([]byte(head))
	if err != nil {
		t.Fatal(err)
	}
	if chunked, err := checkSSEHead(resp); !chunked || err != nil {
		t.Errorf("sse head: %v %v", chunked, err)
	}
	resp, _ = parseHead([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"))
	if _, err := checkSSEHead(resp); err == nil {
		t.Error("SSE with Content-Length accepted")
	}
	resp, _ = parseHead([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 20\r\n\r\n"))
	if _, err := checkSSEHead(resp); !errors.Is(err, errNotOK) {
		t.Errorf("503: %v", err)
	}
	if body, done := errorBody(resp, []byte(`{"error":`), false); done || body != `{"error":` {
		t.Errorf("partial error body %q %v", body, done)
	}
	if body, done := errorBody(resp, []byte(`{"error":"too many"} `), false); !done || body != `{"error":"too many"}` {
		t.Errorf("error body %q %v", body, done)
	}
	if got := statusError(resp, "x").Error(); got != "HTTP 503: x" {
		t.Errorf("status error %q", got)
	}
	resp, _ = parseHead([]byte("HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"))
	if body, done := errorBody(resp, []byte("4\r\nbad!\r\n0\r\n\r\n"), false); !done || body != "bad!" {
		t.Errorf("chunked error body %q %v", body, done)
	}

	accept := wsAccept("k")
	ok := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n\r\n"
	resp, _ = parseHead([]byte(ok))
	if err := checkWSHead(resp, accept); err != nil {
		t.Errorf("ws head: %v", err)
	}
	for _, bad := range []string{
		strings.Replace(ok, accept, wsAccept("other"), 1),
		strings.Replace(ok, "Upgrade: websocket", "Upgrade: h2c", 1),
		strings.Replace(ok, "keep-alive, Upgrade", "keep-alive", 1),
		strings.Replace(ok, "\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n", 1),
	} {
		resp, _ := parseHead([]byte(bad))
		if err := checkWSHead(resp, accept); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}

	req := appendWSRequest(nil, "127.0.0.1:9", "/v1/ws?channel=a", "KEY")
	r, err := http.ReadRequest(bufioReader(req))
	if err != nil || r.Header.Get("Sec-WebSocket-Key") != "KEY" || r.Header.Get("Upgrade") != "websocket" ||
		r.Host != "127.0.0.1:9" || r.URL.RequestURI() != "/v1/ws?channel=a" || r.Header.Get("Sec-WebSocket-Version") != "13" {
		t.Errorf("ws request %v: %+v", err, r)
	}
	r, err = http.ReadRequest(bufioReader(appendSSERequest(nil, "h", "/v1/sse?channel=b")))
	if err != nil || r.Header.Get("Accept") != "text/event-stream" || r.URL.Query().Get("channel") != "b" {
		t.Errorf("sse request %v: %+v", err, r)
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
