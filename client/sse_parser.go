package client

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"time"
)

// maxSSELine bounds one line and one event's data of an event stream; a
// longer one ends the connection with a protocol error.
const maxSSELine = 8 << 20

// sseEvent is one dispatched block of an event stream. Its slices are
// reused by the parser: they are valid until the next call of next.
type sseEvent struct {
	typ     []byte // the "event" field; empty means "message"
	data    []byte // the "data" lines joined by '\n'
	id      []byte // the last "id" field of the block, if hasID
	hasData bool   // the block had a "data" field (data may still be empty)
	hasID   bool   // the block had an "id" field
}

// sseParser reads an event stream as the HTML standard defines it
// (https://html.spec.whatwg.org/multipage/server-sent-events.html): lines
// end with CRLF, LF or CR; ':' starts a comment; a field's value follows
// "name:" with one optional space; a blank line dispatches the block. Only
// blocks with data or an id are returned; a block with only an id is the
// server's "replay done" mark.
type sseParser struct {
	r       *bufio.Reader
	line    []byte // a line that spans buffer refills
	consume int    // bytes of r's buffer the last returned line still uses
	skipLF  bool   // the last line ended with CR: a LF right after it belongs to it
	start   bool   // at the start of the stream: skip a byte order mark
	ev      sseEvent
	retry   time.Duration // the last valid "retry" field; 0 if none
}

// reset makes p read a new stream from r, reusing its buffers.
func (p *sseParser) reset(r io.Reader) {
	if p.r == nil {
		p.r = bufio.NewReaderSize(r, 4096)
	} else {
		p.r.Reset(r)
	}
	p.line = p.line[:0]
	p.consume = 0
	p.skipLF = false
	p.start = true
	p.retry = 0
	p.clear()
}

func (p *sseParser) clear() {
	p.ev.typ = p.ev.typ[:0]
	p.ev.data = p.ev.data[:0]
	p.ev.hasData = false
	p.ev.hasID = false
}

// next returns the next block that has data or an id. An error (io.EOF
// when the stream ends) drops the block being read, as browsers do.
func (p *sseParser) next() (*sseEvent, error) {
	p.clear()
	for {
		line, err := p.readLine()
		if err != nil {
			return nil, err
		}
		if len(line) == 0 {
			if p.ev.hasData || p.ev.hasID {
				if n := len(p.ev.data); n > 0 {
					p.ev.data = p.ev.data[:n-1] // the '\n' after the last line
				}
				return &p.ev, nil
			}
			p.clear()
			continue
		}
		if err := p.field(line); err != nil {
			return nil, err
		}
	}
}

// field processes one non-blank line.
func (p *sseParser) field(line []byte) error {
	if line[0] == ':' {
		return nil // comment
	}
	name, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		name, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(name) {
	case "data":
		if len(p.ev.data)+len(value)+1 > maxSSELine {
			return fmt.Errorf("%w: event data longer than %d bytes", ErrProtocol, maxSSELine)
		}
		p.ev.data = append(p.ev.data, value...)
		p.ev.data = append(p.ev.data, '\n')
		p.ev.hasData = true
	case "event":
		p.ev.typ = append(p.ev.typ[:0], value...)
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			p.ev.id = append(p.ev.id[:0], value...)
			p.ev.hasID = true
		}
	case "retry":
		if ms, ok := parseUint(value); ok {
			p.retry = time.Duration(min(ms, uint64(time.Hour/time.Millisecond))) * time.Millisecond
		}
	}
	return nil
}

// readLine returns the next line without its end. The line is valid until
// the next call.
func (p *sseParser) readLine() ([]byte, error) {
	if p.consume > 0 {
		_, _ = p.r.Discard(p.consume) // buffered: cannot fail
		p.consume = 0
	}
	p.line = p.line[:0]
	for {
		if _, err := p.r.Peek(1); err != nil {
			return nil, err
		}
		buf, _ := p.r.Peek(p.r.Buffered())
		if p.skipLF {
			p.skipLF = false
			if buf[0] == '\n' {
				_, _ = p.r.Discard(1)
				continue
			}
		}
		if p.start {
			// A byte order mark may open the stream. Peek(3) waits for 3
			// bytes, which any stream but a nearly empty one has at once.
			p.start = false
			if b, _ := p.r.Peek(3); bytes.Equal(b, []byte("\xEF\xBB\xBF")) {
				_, _ = p.r.Discard(3)
			}
			continue
		}
		end := bytes.IndexByte(buf, '\n')
		seg := buf
		if end >= 0 {
			seg = buf[:end]
		}
		if cr := bytes.IndexByte(seg, '\r'); cr >= 0 {
			end = cr
			p.skipLF = true
		}
		if end < 0 {
			if len(p.line)+len(buf) > maxSSELine {
				return nil, fmt.Errorf("%w: event stream line longer than %d bytes", ErrProtocol, maxSSELine)
			}
			p.line = append(p.line, buf...)
			_, _ = p.r.Discard(len(buf))
			continue
		}
		if len(p.line)+end > maxSSELine {
			return nil, fmt.Errorf("%w: event stream line longer than %d bytes", ErrProtocol, maxSSELine)
		}
		p.consume = end + 1
		if len(p.line) == 0 {
			return buf[:end], nil
		}
		p.line = append(p.line, buf[:end]...)
		return p.line, nil
	}
}
