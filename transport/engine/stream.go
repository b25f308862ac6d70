package engine

import (
	"net/http"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/transport"
)

// StreamRequest is a streaming transport's request, ready to serve:
// headers are set on the ResponseWriter, the encoder is built.
type StreamRequest struct {
	Hub       *hub.Hub
	Transport string // the transport's name in the hub's counts
	Request   transport.Request
	// Options configure the goroutine path; the engine path uses its
	// Encoder and Heartbeat, and the engine's write timeout.
	Options transport.StreamOptions
}

// connectionClose is the Connection header of a stream on the engine,
// shared by every response; nothing changes it in place.
var connectionClose = []string{"close"}

// ServeStream serves a one-way streaming transport (SSE, forever-iframe):
// it opens the session and, when e is not nil and the request is HTTP/1.x,
// hijacks the connection and attaches it to e; otherwise (no engine,
// HTTP/2) it streams on the request's goroutine with transport.Stream. On
// the engine the response is delimited by the end of the connection
// ("Connection: close", no chunked encoding), and client input is
// ignored.
func ServeStream(e *Engine, w http.ResponseWriter, r *http.Request, sr StreamRequest) {
	if e == nil || r.ProtoMajor != 1 {
		wake := transport.NewWakeup()
		sess := transport.Open(w, r, sr.Hub, sr.Transport, sr.Request, wake.Wake)
		if sess == nil {
			return
		}
		opts := sr.Options
		opts.Wake = wake
		transport.Stream(r.Context(), w, http.NewResponseController(w), sess, opts)
		return
	}
	if e.Closing() {
		httpx.HubError(w, hub.ErrShuttingDown)
		return
	}
	c := e.NewConn(streamProtocol{sr.Options.Encoder}, ConnOptions{Heartbeat: sr.Options.Heartbeat})
	sess := transport.Open(w, r, sr.Hub, sr.Transport, sr.Request, c.Wake)
	if sess == nil {
		return
	}
	w.Header()["Connection"] = connectionClose
	nc, head, _, err := transport.Hijack(w, http.StatusOK)
	if err != nil {
		sess.Close(hub.DisconnectWriteError)
		return
	}
	_ = e.Attach(c, sess, nc, head, nil) // on error Attach has closed both
}

// streamProtocol is a one-way transport's Protocol: its encoder, and
// input ignored (clients of these transports send nothing after the
// request; the end of the connection is noticed by the poller).
type streamProtocol struct{ transport.Encoder }

func (streamProtocol) Input(*Conn, []byte) {}
