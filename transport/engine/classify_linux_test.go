package engine

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"
)

// FuzzClassify feeds arbitrary first bytes of a connection to the
// acceptor's decision: it must never panic, wait only for an incomplete
// head of bounded size, and serve itself only a complete GET over
// HTTP/1.1 without a body for one of its paths.
func FuzzClassify(f *testing.F) {
	for _, seed := range []string{
		"GET /v1/sse?channel=a HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/ws?channel=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x80abcd",
		"GET /v1/sse HTTP/1.0\r\n\r\n",
		"GET /v1/sse HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
		"GET /v1/sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST /v1/publish/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
		"GET /v1/sse HTTP/1.1\n\n",
		"GET /v1/sse HTTP/1.1\r\nHo",
		"GET http://x/v1/sse HTTP/1.1\r\n\r\n",
		"GET /v1/sse?channel=%zz HTTP/1.1\r\nHost: \x00\r\n\r\n",
		"GET /v1/sse HTTP/1.1\nHost: x\n\r\n",
		"GET /v1/sse HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
		"GE",
		"GET /v1/ss",
		"",
	} {
		f.Add([]byte(seed))
	}
	a := &acceptor{cfg: ListenConfig{Paths: []string{"/v1/sse", "/v1/ws"}}}
	a.br = bufio.NewReaderSize(&a.hr, 4096)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, req, headLen := a.classify(data)
		end := bytes.Index(data, []byte("\r\n\r\n"))
		switch v {
		case needMore:
			if end >= 0 || len(data) >= maxHeadBytes || hasBareLF(data) || !a.couldBeOurs(data) {
				t.Fatalf("waits for more of %q", data)
			}
		case handOff:
		case serveHere:
			if req == nil || headLen != end+4 {
				t.Fatalf("serves %q with request %v, head length %d", data, req, headLen)
			}
			if hasBareLF(data[:headLen]) || !validHost(req.Host) || hostHeaders(data[:headLen]) != 1 {
				t.Fatalf("serves %q: bare LF or bad Host", data)
			}
			if req.Method != http.MethodGet || req.ProtoMinor != 1 || req.ContentLength != 0 ||
				(req.URL.Path != "/v1/sse" && req.URL.Path != "/v1/ws") {
				t.Fatalf("serves %q: %s %s HTTP/1.%d, body %d", data, req.Method, req.URL.Path, req.ProtoMinor, req.ContentLength)
			}
		default:
			t.Fatalf("verdict %d", v)
		}
	})
}
