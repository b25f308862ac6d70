package transport

// ShareMin is the size from which Batch.Share references bytes instead of
// copying them: below it, one more I/O vector costs more than the copy.
const ShareMin = 512

// Batch collects the bytes of one write to one connection: bytes built for
// this connection (cursors, frame headers) are appended to Buf, and a
// message's shared wire bytes are added by reference with Share, so that a
// message fanned out to many connections is neither re-encoded nor copied
// per connection. Segments returns the pieces in order, ready for one
// vectored write (writev, net.Buffers).
//
// The zero Batch is ready to use. A Batch belongs to one writer at a time.
type Batch struct {
	// Buf holds this connection's own bytes; append to it freely.
	Buf []byte

	segs []segment
	mark int // Buf[:mark] is already covered by segs
	n    int // bytes in segs
}

// segment is a shared slice, or (shared == nil) the range Buf[from:to].
type segment struct {
	shared   []byte
	from, to int
}

// Share adds p, which the caller must not modify while the batch is in
// use, after what the batch already holds. Short slices are copied.
func (b *Batch) Share(p []byte) {
	if len(p) < ShareMin {
		b.Buf = append(b.Buf, p...)
		return
	}
	b.cut()
	b.segs = append(b.segs, segment{shared: p})
	b.n += len(p)
}

// cut closes the run of Buf appended since the last segment.
func (b *Batch) cut() {
	if len(b.Buf) > b.mark {
		b.segs = append(b.segs, segment{from: b.mark, to: len(b.Buf)})
		b.n += len(b.Buf) - b.mark
		b.mark = len(b.Buf)
	}
}

// Len returns the number of bytes in the batch.
func (b *Batch) Len() int { return b.n + len(b.Buf) - b.mark }

// Segments appends the batch's pieces, in order, to dst and returns it.
// They alias Buf and the shared slices: use them before the batch changes.
func (b *Batch) Segments(dst [][]byte) [][]byte {
	b.cut()
	for _, s := range b.segs {
		if s.shared != nil {
			dst = append(dst, s.shared)
		} else {
			dst = append(dst, b.Buf[s.from:s.to])
		}
	}
	return dst
}

// Buffers larger than these are not kept by Reset, so that a connection or
// worker does not hold a burst's memory.
const (
	keepBatchBytes    = 64 << 10
	keepBatchSegments = 1024
)

// Reset empties the batch, dropping its references to shared bytes.
func (b *Batch) Reset() {
	clear(b.segs)
	if cap(b.segs) > keepBatchSegments {
		b.segs = nil
	}
	b.segs = b.segs[:0]
	if cap(b.Buf) > keepBatchBytes {
		b.Buf = nil
	}
	b.Buf = b.Buf[:0]
	b.mark, b.n = 0, 0
}

// AppendTo appends the batch's bytes, flattened, to dst and returns it.
func (b *Batch) AppendTo(dst []byte) []byte {
	b.cut()
	for _, s := range b.segs {
		if s.shared != nil {
			dst = append(dst, s.shared...)
		} else {
			dst = append(dst, b.Buf[s.from:s.to]...)
		}
	}
	return dst
}
