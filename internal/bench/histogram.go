package bench

import (
	"encoding/json"
	"errors"
	"math"
	"math/bits"
	"sync/atomic"
)

// Histogram buckets non-negative values (nanoseconds, here) on a
// log-linear scale, HDR style: values below 2^subBits each have their own
// bucket; above that every power of two is split into 2^(subBits-1) equal
// buckets, so a bucket is at most 1/2^(subBits-1) (0.8 %) wide relative to
// its values. It is safe for concurrent use: Record is a few atomic adds,
// so every subscriber goroutine of a worker records into one Histogram.
// Histograms merge by adding counts, which is how the parent combines its
// workers' figures.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64
	min    atomic.Uint64 // stored as value+1 so that zero means "none yet"
	max    atomic.Uint64
}

const (
	subBits    = 8
	subCount   = 1 << subBits
	halfCount  = subCount / 2
	numBuckets = subCount + (64-subBits)*halfCount
)

// bucketOf returns the bucket index of v.
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - subBits // ≥ 1
	return subCount + (shift-1)*halfCount + int(v>>uint(shift)) - halfCount
}

// bucketBounds returns the smallest and largest value of bucket i.
func bucketBounds(i int) (lo, hi uint64) {
	if i < subCount {
		return uint64(i), uint64(i)
	}
	shift := (i-subCount)/halfCount + 1
	top := uint64((i-subCount)%halfCount + halfCount)
	lo = top << uint(shift)
	return lo, lo + (1 << uint(shift)) - 1
}

// Record adds one value. Negative values count as zero.
func (h *Histogram) Record(v int64) {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	h.counts[bucketOf(u)].Add(1)
	h.n.Add(1)
	h.sum.Add(u)
	for {
		cur := h.max.Load()
		if u <= cur || h.max.CompareAndSwap(cur, u) {
			break
		}
	}
	for {
		cur := h.min.Load()
		if (cur != 0 && u+1 >= cur) || h.min.CompareAndSwap(cur, u+1) {
			break
		}
	}
}

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Max returns the largest recorded value (exact), or 0.
func (h *Histogram) Max() int64 { return int64(h.max.Load()) }

// Min returns the smallest recorded value (exact), or 0.
func (h *Histogram) Min() int64 {
	m := h.min.Load()
	if m == 0 {
		return 0
	}
	return int64(m - 1)
}

// Mean returns the exact mean of the recorded values, or 0.
func (h *Histogram) Mean() float64 {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return float64(h.sum.Load()) / float64(n)
}

// Quantile returns the value at quantile q (0 < q ≤ 1): the largest value
// of the bucket holding the ceil(q·n)-th smallest value, capped by the
// exact maximum — so it is never below the true quantile and at most one
// bucket width (0.8 %) above it. It returns 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) int64 {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			_, hi := bucketBounds(i)
			return min(int64(hi), h.Max())
		}
	}
	return h.Max()
}

// Merge adds o's values to h. o may be recorded into concurrently; the
// merge then sees some consistent-enough snapshot of it.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil {
		return
	}
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
	h.n.Add(o.n.Load())
	h.sum.Add(o.sum.Load())
	if m := o.max.Load(); m > 0 {
		for {
			cur := h.max.Load()
			if m <= cur || h.max.CompareAndSwap(cur, m) {
				break
			}
		}
	}
	if m := o.min.Load(); m > 0 {
		for {
			cur := h.min.Load()
			if (cur != 0 && m >= cur) || h.min.CompareAndSwap(cur, m) {
				break
			}
		}
	}
}

// histogramJSON is the sparse wire form: Buckets holds index, count pairs
// of the non-empty buckets.
type histogramJSON struct {
	N       uint64   `json:"n"`
	Sum     uint64   `json:"sum"`
	Min     uint64   `json:"min"`
	Max     uint64   `json:"max"`
	Buckets []uint64 `json:"buckets,omitempty"`
}

// MarshalJSON encodes h sparsely (only non-empty buckets).
func (h *Histogram) MarshalJSON() ([]byte, error) {
	j := histogramJSON{N: h.n.Load(), Sum: h.sum.Load(), Min: h.min.Load(), Max: h.max.Load()}
	for i := range h.counts {
		if c := h.counts[i].Load(); c != 0 {
			j.Buckets = append(j.Buckets, uint64(i), c)
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes what MarshalJSON wrote into an empty h.
func (h *Histogram) UnmarshalJSON(b []byte) error {
	var j histogramJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if len(j.Buckets)%2 != 0 {
		return errors.New("bench: histogram: odd bucket list")
	}
	for k := 0; k < len(j.Buckets); k += 2 {
		i := j.Buckets[k]
		if i >= numBuckets {
			return errors.New("bench: histogram: bucket index out of range")
		}
		h.counts[i].Store(j.Buckets[k+1])
	}
	h.n.Store(j.N)
	h.sum.Store(j.Sum)
	h.min.Store(j.Min)
	h.max.Store(j.Max)
	return nil
}
