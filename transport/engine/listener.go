package engine

import (
	"bufio"
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// ListenConfig configures Engine.Listen.
type ListenConfig struct {
	// Handler serves the requests the engine takes itself: GET requests
	// over HTTP/1.1, without a body, for one of Paths.
	Handler http.Handler
	// Paths are the URL paths (without query) the engine serves itself.
	Paths []string
	// HeaderTimeout closes a connection whose request head has not
	// arrived in this long. Zero means 5s.
	HeaderTimeout time.Duration
	// Logger receives panics of Handler and accept errors. Nil means the
	// engine's logger.
	Logger *slog.Logger
	// Workers, when positive, runs Handler on that many goroutines
	// instead of the accepting one, so that a handler waiting on the
	// network (a subscribe that reads history or subscribes at a broker
	// on another machine) does not hold up accepting. Zero runs handlers
	// on the accepting goroutine, which suits handlers that never wait.
	Workers int
}

// Limits of the engine's own handshakes.
const (
	// maxHeadBytes is the largest request head the engine reads itself; a
	// larger one goes to net/http, which applies its own limit.
	maxHeadBytes = 8 << 10
	// maxHandshakes bounds the connections whose request head is still
	// arriving; past it, new connections go to net/http.
	maxHandshakes = 4096
	// handoffQueue is how many connections may wait for net/http's Accept.
	handoffQueue = 128
)

// Listen returns a listener for an http.Server that serves ln: the engine
// accepts the connections itself and reads each request head without a
// goroutine. Requests for cfg.Paths (GET, HTTP/1.1, no body) are served
// there and then by cfg.Handler, whose hijacked connection (see
// transport.Hijack) Attach takes over without net/http ever having seen
// it. Every other connection — the API, long-polling, a head too large or
// malformed — is given, with the bytes already read, to the http.Server
// through the returned listener, which behaves like ln.
//
// This skips net/http's goroutine, buffers, request and response objects
// and hijack for the subscribe handshake, which is most of a connection's
// set-up cost. Handlers run on the accepting goroutine, one at a time, so
// they must not block (opening a hub session with in-memory history does
// not) — unless cfg.Workers gives them goroutines of their own.
//
// In goroutine mode, or for a listener that is not TCP, Listen returns ln
// itself. The returned listener owns ln and the accepting goroutine:
// closing it (http.Server.Shutdown does) stops accepting and closes ln.
// After the engine's Shutdown it goes on accepting, and the handlers
// answer 503 as they do on net/http.
func (e *Engine) Listen(ln net.Listener, cfg ListenConfig) net.Listener {
	if e.poller == nil || cfg.Handler == nil || len(cfg.Paths) == 0 {
		return ln
	}
	if _, ok := ln.(*net.TCPListener); !ok {
		return ln
	}
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = e.log
	}
	a, err := newAcceptor(e, ln, cfg)
	if err != nil {
		e.log.Warn("engine: accepting on the engine failed; net/http accepts instead", "err", err)
		return ln
	}
	return a
}

// nativeWriter is the http.ResponseWriter of a request the engine serves
// itself. A handler either hijacks the connection (the engine's Attach
// then takes the socket as it is) or writes a small response, sent with
// "Connection: close" once the handler returns.
type nativeWriter struct {
	header   http.Header
	status   int
	body     []byte
	conn     *rawConn
	input    []byte // what the client sent after its request head
	hijacked bool
}

// maxNativeBody bounds a response body written on the engine's path
// (handlers there write only short errors).
const maxNativeBody = 64 << 10

var errBodyTooLarge = errors.New("engine: response too large for the engine's handshake path")

func (w *nativeWriter) Header() http.Header { return w.header }

func (w *nativeWriter) WriteHeader(status int) {
	if w.status == 0 && !w.hijacked {
		w.status = status
	}
}

func (w *nativeWriter) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if len(w.body)+len(p) > maxNativeBody {
		return 0, errBodyTooLarge
	}
	w.body = append(w.body, p...)
	return len(p), nil
}

// Hijack gives the handler the socket. The reader holds the input the
// client sent after its request head, like net/http's.
func (w *nativeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	w.hijacked = true
	r := noInput
	if len(w.input) > 0 {
		r = bufio.NewReaderSize(bytes.NewReader(w.input), len(w.input))
		_, _ = r.Peek(len(w.input))
	}
	return w.conn, bufio.NewReadWriter(r, nil), nil
}

// noInput is the reader a hijack gets when the client sent nothing after
// its request: Buffered is 0 and never changes. It is shared: a handler on
// the engine's path only asks it for Buffered (transport.Hijack), never
// reads it.
var noInput = bufio.NewReaderSize(bytes.NewReader(nil), 16)

// response returns the status line, headers and body of a response the
// handler wrote instead of hijacking.
func (w *nativeWriter) response() []byte {
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	b := make([]byte, 0, 256+len(w.body))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\n"...)
	w.header.Del("Connection")
	w.header.Del("Content-Length")
	w.header.Del("Transfer-Encoding")
	if w.header.Get("Content-Type") == "" && len(w.body) > 0 {
		w.header.Set("Content-Type", http.DetectContentType(w.body))
	}
	if w.header.Get("Date") == "" {
		w.header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	bw := bytesWriter{b: b}
	_ = w.header.Write(&bw)
	b = bw.b
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(w.body)), 10)
	b = append(b, "\r\nConnection: close\r\n\r\n"...)
	return append(b, w.body...)
}

type bytesWriter struct{ b []byte }

func (w *bytesWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// handoff is the listener net/http accepts from: the connections the
// engine does not serve itself.
type handoff struct {
	addr  net.Addr
	conns chan net.Conn
	quit  chan struct{} // closed by Close
	once  sync.Once
	stop  func() // stops the acceptor and waits for it
	err   error  // why accepting ended, when not Close; set before quit is closed
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.quit:
	}
	// Connections already handed over are served before Accept fails.
	select {
	case c := <-h.conns:
		return c, nil
	default:
	}
	if h.err != nil {
		return nil, h.err
	}
	return nil, net.ErrClosed
}

func (h *handoff) Addr() net.Addr { return h.addr }

// Close stops accepting, closes the listening socket and every connection
// not yet accepted, and waits for the accepting goroutine to end.
func (h *handoff) Close() error {
	h.stop()
	return nil
}

// prefixConn replays what the engine read from a connection before it
// handed it to net/http.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite lets net/http half-close the connection as it does a TCP
// connection's.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
