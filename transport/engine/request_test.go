package engine

import (
	"bufio"
	"bytes"
	"net/http"
	neturl "net/url"
	"reflect"
	"testing"
)

// headSeeds are request heads parseHead sees in practice, and near misses.
var headSeeds = []string{
	"GET /v1/sse?channel=a HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET /v1/sse?channel=thread:42&channel=forum:tech HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n" +
		"Accept: text/event-stream\r\nCache-Control: no-cache\r\nLast-Event-ID: thread:42@ab:1\r\nOrigin: http://example.com\r\n\r\n",
	"GET /v1/ws?channel=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nPragma: no-cache\r\n" +
		"Cache-Control: no-cache\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
	"GET /v1/ws HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Upgrade\r\npragma: no-cache\r\n\r\n",
	"GET /v1/sse HTTP/1.1\r\nHost: x\r\nConnection: Close\r\nX-A: 1\r\nx-a:  2 \t\r\nX-Empty:\r\n\r\n",
	"GET /v1/sse HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"GET /v1/sse HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
	"GET /v1/sse HTTP/1.1\r\n Host: x\r\n\r\n",
	"GET /v1/sse HTTP/1.1\r\nHost : x\r\n\r\n",
	"GET /v1/sse HTTP/1.1\r\nX_Y: z\r\nHost: x\r\n\r\n",
	"GET /v1/sse HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
	"GET /v1/sse HTTP/1.0\r\nHost: x\r\n\r\n",
	"GET http://x/v1/sse HTTP/1.1\r\nHost: y\r\n\r\n",
	"GET /v1/%zz HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET /v1/sse?x=%zz#f HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET  /v1/sse HTTP/1.1\r\nHost: x\r\n\r\n",
	"GET /v1/sse HTTP/1.1\r\nHost: x\xff\r\n\r\n",
	"GET /v1/sse HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n",
}

// FuzzParseHead checks parseHead against http.ReadRequest: whatever
// parseHead accepts, http.ReadRequest reads without error into the same
// request.
func FuzzParseHead(f *testing.F) {
	for _, s := range headSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		got, ok := parseHead(head)
		if !ok {
			return
		}
		want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("parseHead accepted %q; http.ReadRequest: %v", head, err)
		}
		compareRequests(t, head, got, want)
	})
}

func compareRequests(t *testing.T, head []byte, got, want *http.Request) {
	t.Helper()
	type view struct {
		Method, Proto, Host, RequestURI, RemoteAddr string
		ProtoMajor, ProtoMinor                      int
		URL                                         neturl.URL
		Header                                      http.Header
		ContentLength                               int64
		TransferEncoding                            []string
		Close, NoBody                               bool
		Trailer                                     http.Header
	}
	v := func(r *http.Request) view {
		return view{r.Method, r.Proto, r.Host, r.RequestURI, r.RemoteAddr, r.ProtoMajor, r.ProtoMinor,
			*r.URL, r.Header, r.ContentLength, r.TransferEncoding, r.Close, r.Body == http.NoBody, r.Trailer}
	}
	if g, w := v(got), v(want); !reflect.DeepEqual(g, w) {
		t.Fatalf("for %q\nparseHead:        %#v\nhttp.ReadRequest: %#v", head, g, w)
	}
}

func TestParseHeadAcceptsTheUsualRequests(t *testing.T) {
	for _, s := range headSeeds[:5] {
		got, ok := parseHead([]byte(s))
		if !ok {
			t.Errorf("parseHead refused %q", s)
			continue
		}
		want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader([]byte(s))))
		if err != nil {
			t.Fatal(err)
		}
		compareRequests(t, []byte(s), got, want)
	}
}
