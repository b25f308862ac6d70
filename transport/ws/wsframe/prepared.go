package wsframe

// Prepared is a complete server frame, header and payload in one slice,
// built once and then written as is to every connection that should get
// it: a message fanned out to 10 000 subscribers is framed once, and the
// same bytes can go into each connection's net.Buffers without copying.
//
// A Prepared is immutable and safe for concurrent use. The zero Prepared
// holds no frame (Frame returns nil).
type Prepared struct {
	frame []byte // header + payload; never modified after construction
	hdr   int    // header length
}

// PrepareText frames payload (UTF-8) as one unfragmented text frame. It
// makes one allocation of exactly the frame's size and copies payload, so
// the caller may reuse payload afterwards.
func PrepareText(payload []byte) Prepared {
	h := HeaderLen(len(payload))
	b := AppendText(make([]byte, 0, h+len(payload)), payload)
	return Prepared{frame: b, hdr: h}
}

// PrepareClose builds a close frame once, e.g. the 1012 every connection
// gets on shutdown. See AppendClose for code and reason.
func PrepareClose(code int, reason string) Prepared {
	b := AppendClose(make([]byte, 0, 2+MaxControlPayload), code, reason)
	return Prepared{frame: b[:len(b):len(b)], hdr: 2}
}

// Frame returns the wire bytes. They are shared: the caller must not
// modify them. Appending to the returned slice copies (its capacity is its
// length).
func (p Prepared) Frame() []byte { return p.frame }

// Payload returns the frame's payload, shared like Frame.
func (p Prepared) Payload() []byte {
	if p.frame == nil {
		return nil
	}
	return p.frame[p.hdr:]
}

// Len returns the frame's length on the wire.
func (p Prepared) Len() int { return len(p.frame) }
