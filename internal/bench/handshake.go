package bench

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// The epoll reader speaks HTTP/1.1 by hand: it writes the subscribe
// request itself and parses the response head once, then reads the body
// (SSE, chunked) or the frames (WebSocket) with the incremental decoders.

const (
	maxHeadBytes    = 16 << 10 // response head
	errorBodyBytes  = 300      // of an error response, for the message
	wsAcceptGUID    = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	benchUserAgent  = "herald-bench"
	wsVersionHeader = "13"
)

// subscribeTarget is the server address and Host header of one of a
// run's base URLs.
type subscribeTarget struct {
	addr netip.AddrPort
	host string
}

// newSubscribeTargets resolves the run's URLs (loopback addresses or
// localhost, as validated) to the addresses subscribers connect to, by
// node.
func newSubscribeTargets(run *Config) ([]subscribeTarget, error) {
	out := make([]subscribeTarget, 0, len(run.URLs))
	for _, raw := range run.URLs {
		t, err := newSubscribeTarget(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

func newSubscribeTarget(raw string) (subscribeTarget, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return subscribeTarget{}, err
	}
	ip, err := targetAddr(raw)
	if err != nil {
		return subscribeTarget{}, err
	}
	port := 80
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
			return subscribeTarget{}, fmt.Errorf("--url %q: bad port", raw)
		}
	}
	return subscribeTarget{addr: netip.AddrPortFrom(ip, uint16(port)), host: u.Host}, nil
}

// requestURI returns the request target of the subscribe URL of channel
// name on node.
func requestURI(run *Config, node int, name string) (string, error) {
	u, err := url.Parse(run.subscribeURL(node, name))
	if err != nil {
		return "", err
	}
	return u.RequestURI(), nil
}

// appendSSERequest appends the GET of an event stream.
func appendSSERequest(dst []byte, host, uri string) []byte {
	dst = append(dst, "GET "...)
	dst = append(dst, uri...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, host...)
	dst = append(dst, "\r\nUser-Agent: "+benchUserAgent+"\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"...)
	return dst
}

// appendWSRequest appends the WebSocket upgrade request with key.
func appendWSRequest(dst []byte, host, uri, key string) []byte {
	dst = append(dst, "GET "...)
	dst = append(dst, uri...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	dst = append(dst, host...)
	dst = append(dst, "\r\nUser-Agent: "+benchUserAgent+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "...)
	dst = append(dst, key...)
	dst = append(dst, "\r\nSec-WebSocket-Version: "+wsVersionHeader+"\r\n\r\n"...)
	return dst
}

// newWSKey returns a fresh Sec-WebSocket-Key.
func newWSKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// wsAccept returns the Sec-WebSocket-Accept that answers key.
func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsAcceptGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// headEnd returns the length of the response head at the start of b,
// through the empty line that ends it, or -1 when b does not hold all of
// it yet.
func headEnd(b []byte) int {
	for start := 0; ; {
		i := bytes.IndexByte(b[start:], '\n')
		if i < 0 {
			return -1
		}
		line := b[start : start+i]
		start += i + 1
		if len(line) == 0 || len(line) == 1 && line[0] == '\r' {
			return start
		}
	}
}

// parseHead parses a complete response head.
func parseHead(head []byte) (*http.Response, error) {
	resp, err := http.ReadResponse(bufio.NewReaderSize(bytes.NewReader(head), len(head)+16), nil)
	if err != nil {
		return nil, fmt.Errorf("bad response head: %w", err)
	}
	return resp, nil
}

// checkSSEHead checks the answer to the event-stream request and tells
// how the body is framed: chunked, or (no Content-Length) until the
// connection closes.
func checkSSEHead(resp *http.Response) (chunked bool, err error) {
	if resp.StatusCode != http.StatusOK {
		return false, errNotOK
	}
	for _, te := range resp.TransferEncoding {
		if strings.EqualFold(te, "chunked") {
			return true, nil
		}
	}
	if len(resp.TransferEncoding) > 0 {
		return false, fmt.Errorf("unsupported Transfer-Encoding %q", resp.TransferEncoding)
	}
	if resp.ContentLength >= 0 {
		return false, fmt.Errorf("event stream with Content-Length %d", resp.ContentLength)
	}
	return false, nil
}

// checkWSHead checks the answer to the upgrade request sent with the key
// whose Sec-WebSocket-Accept is accept.
func checkWSHead(resp *http.Response, accept string) error {
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return errNotOK
	}
	h := resp.Header
	if !strings.EqualFold(h.Get("Upgrade"), "websocket") {
		return fmt.Errorf("websocket: upgrade response with Upgrade %q", h.Get("Upgrade"))
	}
	if !headerHasToken(h, "Connection", "upgrade") {
		return fmt.Errorf("websocket: upgrade response with Connection %q", h.Get("Connection"))
	}
	if got := h.Get("Sec-WebSocket-Accept"); got != accept {
		return fmt.Errorf("websocket: bad Sec-WebSocket-Accept %q, want %q", got, accept)
	}
	if ext := h.Get("Sec-WebSocket-Extensions"); ext != "" {
		return fmt.Errorf("websocket: extension %q not requested", ext)
	}
	return nil
}

// errNotOK marks a response with an unexpected status: the caller reads
// some of the body for the error message (errorBody).
var errNotOK = errors.New("unexpected status")

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// errorBody returns the start of an error response's body, given the
// bytes received after its head, and whether that is all there will be
// (or enough for the message). eof: the connection has closed.
func errorBody(resp *http.Response, raw []byte, eof bool) (string, bool) {
	var body []byte
	complete := eof || len(raw) >= errorBodyBytes+64
	switch {
	case len(resp.TransferEncoding) > 0:
		b, err := io.ReadAll(io.LimitReader(httputil.NewChunkedReader(bytes.NewReader(raw)), errorBodyBytes))
		body = b
		complete = complete || err == nil
	case resp.ContentLength >= 0:
		body = raw[:min(int64(len(raw)), resp.ContentLength)]
		complete = complete || int64(len(raw)) >= resp.ContentLength
	default:
		body = raw
	}
	body = body[:min(len(body), errorBodyBytes)]
	return strings.TrimSpace(string(body)), complete || len(body) >= errorBodyBytes
}

// statusError is the connect error of a response with an unexpected
// status, worded as the goroutine reader words it.
func statusError(resp *http.Response, body string) error {
	return fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
}
