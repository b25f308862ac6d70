package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// sseStream decodes an SSE response body incrementally, for the epoll
// reader: the HTTP/1.1 chunked transfer coding (when chunked is set;
// otherwise the body runs until the connection closes), then the
// event-stream lines. Bytes may arrive split anywhere; complete lines
// inside one read are handed on in place, only a line cut by a read or
// chunk boundary is carried over (in line). It reads lines as readSSE
// does: data lines (each one message), event lines (to recognise the gap
// signal) and the blank line ending an event.
type sseStream struct {
	chunked bool
	maxLine int // longest line accepted; 0 = maxFrameBytes

	cst    uint8  // chunk decoder state (cs…)
	digits uint8  // hex digits of the chunk size read so far
	skip   uint16 // bytes of the chunk extension or trailer line so far
	remain uint64 // chunk size being read, then its data bytes left

	gapEvent bool   // the current event is a gap signal
	line     []byte // the start of a line cut by a boundary
}

// Chunk decoder states.
const (
	csSize        = iota // chunk-size hex digits
	csExt                // chunk extension, up to LF
	csSizeLF             // CR after the size seen, LF expected
	csData               // chunk data
	csDataCR             // CR (or a lenient bare LF) after the data expected
	csDataLF             // LF after the data expected
	csTrailer            // start of a trailer field line, or the final CRLF
	csTrailerLine        // inside a trailer field line, up to LF
	csTrailerLF          // CR of the final line seen, LF expected
	csDone               // the last chunk and trailer were read
)

const (
	maxChunkSize = 1 << 40
	maxChunkLine = 4096 // chunk extension or trailer line
	bigCarry     = 4096 // a carry-over buffer this big is dropped after use
)

// sseSink receives what an sseStream decodes: the value of a data line,
// and whether it belongs to a gap event. v is valid during the call only.
type sseSink interface {
	sseData(v []byte, gap bool)
}

var errChunk = errors.New("malformed chunked encoding")

// feed decodes b. It returns io.EOF when the body ended (the last chunk),
// another error when the stream is malformed; feed must not be called
// again after an error.
func (p *sseStream) feed(b []byte, sink sseSink) error {
	if !p.chunked {
		return p.lines(b, sink)
	}
	for len(b) > 0 {
		switch p.cst {
		case csData:
			n := uint64(len(b))
			if n > p.remain {
				n = p.remain
			}
			if err := p.lines(b[:n], sink); err != nil {
				return err
			}
			b = b[n:]
			if p.remain -= n; p.remain == 0 {
				p.cst = csDataCR
			}
			continue
		case csDone:
			return io.EOF
		}
		c := b[0]
		b = b[1:]
		switch p.cst {
		case csSize:
			switch d := unhex(c); {
			case d >= 0:
				if p.remain > maxChunkSize {
					return fmt.Errorf("%w: chunk too large", errChunk)
				}
				p.remain = p.remain<<4 | uint64(d)
				p.digits = min(p.digits+1, 100)
			case p.digits == 0:
				return fmt.Errorf("%w: bad chunk size byte %q", errChunk, c)
			case c == ';' || c == ' ' || c == '\t':
				p.cst, p.skip = csExt, 0
			case c == '\r':
				p.cst = csSizeLF
			case c == '\n':
				p.endSizeLine()
			default:
				return fmt.Errorf("%w: bad chunk size byte %q", errChunk, c)
			}
		case csExt:
			if c == '\n' {
				p.endSizeLine()
			} else if p.skip++; p.skip > maxChunkLine {
				return fmt.Errorf("%w: chunk extension too long", errChunk)
			}
		case csSizeLF:
			if c != '\n' {
				return fmt.Errorf("%w: CR without LF after the chunk size", errChunk)
			}
			p.endSizeLine()
		case csDataCR:
			switch c {
			case '\r':
				p.cst = csDataLF
			case '\n':
				p.cst = csSize
			default:
				return fmt.Errorf("%w: no CRLF after chunk data", errChunk)
			}
		case csDataLF:
			if c != '\n' {
				return fmt.Errorf("%w: no CRLF after chunk data", errChunk)
			}
			p.cst = csSize
		case csTrailer:
			switch c {
			case '\r':
				p.cst = csTrailerLF
			case '\n':
				p.cst = csDone
				return io.EOF
			default:
				p.cst, p.skip = csTrailerLine, 1
			}
		case csTrailerLine:
			if c == '\n' {
				p.cst = csTrailer
			} else if p.skip++; p.skip > maxChunkLine {
				return fmt.Errorf("%w: trailer line too long", errChunk)
			}
		case csTrailerLF:
			if c != '\n' {
				return fmt.Errorf("%w: CR without LF in the trailer", errChunk)
			}
			p.cst = csDone
			return io.EOF
		}
	}
	return nil
}

// endSizeLine starts the chunk whose size was just read.
func (p *sseStream) endSizeLine() {
	p.digits = 0
	if p.remain == 0 {
		p.cst = csTrailer
		return
	}
	p.cst = csData
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// lines splits de-chunked body bytes into lines.
func (p *sseStream) lines(b []byte, sink sseSink) error {
	limit := p.maxLine
	if limit <= 0 {
		limit = maxFrameBytes
	}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(p.line)+len(b) > limit {
				return fmt.Errorf("line longer than %d bytes", limit)
			}
			p.line = append(p.line, b...)
			return nil
		}
		if len(p.line)+i > limit {
			return fmt.Errorf("line longer than %d bytes", limit)
		}
		if len(p.line) == 0 {
			p.onLine(b[:i], sink)
		} else {
			p.line = append(p.line, b[:i]...)
			p.onLine(p.line, sink)
			if cap(p.line) > bigCarry {
				p.line = nil
			} else {
				p.line = p.line[:0]
			}
		}
		b = b[i+1:]
	}
	return nil
}

// onLine handles one line (without its LF), as readSSE does.
func (p *sseStream) onLine(line []byte, sink sseSink) {
	line = bytes.TrimRight(line, "\r\n")
	switch {
	case len(line) == 0:
		p.gapEvent = false
	case bytes.HasPrefix(line, sseData):
		sink.sseData(bytes.TrimPrefix(line[len(sseData):], space), p.gapEvent)
	case bytes.HasPrefix(line, sseEvent):
		p.gapEvent = bytes.Equal(bytes.TrimSpace(line[len(sseEvent):]), sseGap)
	}
}
