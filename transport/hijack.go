package transport

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"strconv"
)

// ErrNotHijackable means the connection cannot be taken over (HTTP/2):
// serve the request on net/http's goroutine instead.
var ErrNotHijackable = errors.New("transport: connection cannot be hijacked")

// Hijack takes r's connection over from net/http for a response the caller
// writes itself. It returns the connection, the response head to write
// first — the status line and w's headers — and any input the client sent
// after its request that net/http had already read. On ErrNotHijackable
// nothing has happened and w is still usable.
func Hijack(w http.ResponseWriter, status int) (nc net.Conn, head, buffered []byte, err error) {
	rc := http.NewResponseController(w)
	head = make([]byte, 0, 256) // a usual head in one allocation
	head = append(head, "HTTP/1.1 "...)
	head = strconv.AppendInt(head, int64(status), 10)
	head = append(head, ' ')
	head = append(head, http.StatusText(status)...)
	head = append(head, "\r\n"...)
	hw := headWriter{b: head}
	if err := w.Header().Write(&hw); err != nil {
		return nil, nil, nil, err
	}
	head = append(hw.b, "\r\n"...)

	nc, rw, err := rc.Hijack()
	if errors.Is(err, http.ErrNotSupported) {
		return nil, nil, nil, ErrNotHijackable
	}
	if err != nil {
		return nil, nil, nil, err
	}
	buffered = takeBuffered(rw.Reader)
	return nc, head, buffered, nil
}

// takeBuffered returns a copy of what r holds.
func takeBuffered(r *bufio.Reader) []byte {
	n := r.Buffered()
	if n == 0 {
		return nil
	}
	p, _ := r.Peek(n)
	return append([]byte(nil), p...)
}

// headWriter collects a response head. As an io.StringWriter it spares
// http.Header.Write a conversion (an allocation) per string it writes.
type headWriter struct{ b []byte }

func (h *headWriter) Write(p []byte) (int, error) {
	h.b = append(h.b, p...)
	return len(p), nil
}

func (h *headWriter) WriteString(s string) (int, error) {
	h.b = append(h.b, s...)
	return len(s), nil
}
