package wsframe

import (
	"math/bits"
	"sync"
)

// Payload buffers come in power-of-two size classes from minClass to
// maxClass bytes, one sync.Pool per class, so that a decoder holds a buffer
// only while it is receiving and a buffer is never more than twice the
// size asked for. Larger buffers (messages over 64 KiB, when the limit
// allows them) are allocated for the message and dropped after it.
const (
	minClassBits = 8  // 256 B
	maxClassBits = 16 // 64 KiB
)

var bufPools [maxClassBits - minClassBits + 1]sync.Pool

// classBits returns the size class, in bits, of a need-byte buffer.
func classBits(need int) int {
	return max(minClassBits, bits.Len(uint(need-1)))
}

// getBuf returns a buffer of at least need bytes (len == cap). old is the
// size of the buffer being replaced (0 if none) and ceiling the most a
// decoder may ever need; they steer growth past the pooled classes.
func getBuf(need, old, ceiling int) *[]byte {
	if need <= 1<<maxClassBits {
		c := classBits(need)
		if bp, _ := bufPools[c-minClassBits].Get().(*[]byte); bp != nil {
			return bp
		}
		b := make([]byte, 1<<c)
		return &b
	}
	// Beyond the classes, grow geometrically but never past ceiling, so a
	// message arriving in many fragments costs amortised linear copying.
	n := max(need, min(2*old, ceiling))
	b := make([]byte, n)
	return &b
}

// putBuf returns a buffer to its class pool; buffers of other sizes are
// left to the garbage collector.
func putBuf(bp *[]byte) {
	n := len(*bp)
	if n < 1<<minClassBits || n > 1<<maxClassBits || n&(n-1) != 0 {
		return
	}
	bufPools[bits.Len(uint(n))-1-minClassBits].Put(bp)
}
