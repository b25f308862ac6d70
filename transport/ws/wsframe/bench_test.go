package wsframe

import (
	"bytes"
	"testing"
)

// smallOpFrame is a 60-byte masked client frame: a subscribe op as clients
// send it (6-byte header, 54-byte payload).
var smallOpFrame = clientFrame(OpText, true, []byte(`{"op":"subscribe","channel":"thread:42","cursor":"k3"}`))

func decodeAllBench(b *testing.B, d *Decoder, p []byte) {
	for len(p) > 0 {
		n, _, _, err := d.Decode(p)
		if err != nil {
			b.Fatal(err)
		}
		p = p[n:]
	}
}

func BenchmarkDecodeSmallText(b *testing.B) {
	if len(smallOpFrame) != 60 {
		b.Fatalf("frame is %d bytes", len(smallOpFrame))
	}
	b.Run("whole", func(b *testing.B) {
		d := NewDecoder(Config{})
		b.SetBytes(int64(len(smallOpFrame)))
		b.ReportAllocs()
		for b.Loop() {
			decodeAllBench(b, d, smallOpFrame)
		}
	})
	// The idle-connection path: the buffer goes back to the pool after
	// every message and comes back for the next.
	b.Run("release", func(b *testing.B) {
		d := NewDecoder(Config{})
		b.SetBytes(int64(len(smallOpFrame)))
		b.ReportAllocs()
		for b.Loop() {
			decodeAllBench(b, d, smallOpFrame)
			d.Release()
		}
	})
	// A trickling client: the frame arrives in three reads, cut inside the
	// header and inside the payload.
	b.Run("split3", func(b *testing.B) {
		d := NewDecoder(Config{})
		b.SetBytes(int64(len(smallOpFrame)))
		b.ReportAllocs()
		for b.Loop() {
			decodeAllBench(b, d, smallOpFrame[:3])
			decodeAllBench(b, d, smallOpFrame[3:30])
			decodeAllBench(b, d, smallOpFrame[30:])
		}
	})
}

func BenchmarkDecodeText4K(b *testing.B) {
	frame := clientFrame(OpText, true, bytes.Repeat([]byte(`{"k":"value"},`), 4096/14))
	d := NewDecoder(Config{})
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		decodeAllBench(b, d, frame)
	}
}

func BenchmarkAppendText(b *testing.B) {
	for _, size := range []int{200, 4096} {
		payload := bytes.Repeat([]byte("x"), size)
		b.Run(map[int]string{200: "200B", 4096: "4KiB"}[size], func(b *testing.B) {
			dst := make([]byte, 0, size+16)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				dst = AppendText(dst[:0], payload)
			}
		})
	}
}

// BenchmarkPrepareText is the once-per-message cost of a shared frame.
func BenchmarkPrepareText(b *testing.B) {
	payload := bytes.Repeat([]byte("x"), 200)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		_ = PrepareText(payload)
	}
}
