package bench

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

func TestBucketsCoverEveryValue(t *testing.T) {
	prevHi := uint64(0)
	for i := 0; i < numBuckets; i++ {
		lo, hi := bucketBounds(i)
		if i > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d = [%d, %d] but bucketOf gives %d and %d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		if lo >= subCount && float64(hi-lo+1)/float64(lo) > 1.0/halfCount+1e-12 {
			t.Fatalf("bucket %d = [%d, %d] is wider than 1/%d of its values", i, lo, hi, halfCount)
		}
		prevHi = hi
	}
	if prevHi != math.MaxUint64 {
		t.Fatalf("last bucket ends at %d", prevHi)
	}
}

// TestQuantilesOfKnownDistribution records a shuffled uniform and a
// log-normal distribution and compares with the exact order statistics.
func TestQuantilesOfKnownDistribution(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cases := map[string][]int64{}
	uniform := make([]int64, 100_000)
	for i := range uniform {
		uniform[i] = int64(i+1) * 1000 // 1µs … 100ms
	}
	rng.Shuffle(len(uniform), func(i, j int) { uniform[i], uniform[j] = uniform[j], uniform[i] })
	cases["uniform"] = uniform
	lognormal := make([]int64, 200_000)
	for i := range lognormal {
		lognormal[i] = int64(math.Exp(rng.NormFloat64()*1.2 + 14)) // median ~1.2ms, long tail
	}
	cases["lognormal"] = lognormal

	for name, vals := range cases {
		t.Run(name, func(t *testing.T) {
			var h Histogram
			for _, v := range vals {
				h.Record(v)
			}
			sorted := slices.Clone(vals)
			slices.Sort(sorted)
			if h.Count() != uint64(len(vals)) || h.Max() != sorted[len(sorted)-1] || h.Min() != sorted[0] {
				t.Fatalf("count/min/max = %d/%d/%d, want %d/%d/%d", h.Count(), h.Min(), h.Max(), len(vals), sorted[0], sorted[len(sorted)-1])
			}
			for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
				exact := sorted[int(math.Ceil(q*float64(len(sorted))))-1]
				got := h.Quantile(q)
				if got < exact || float64(got-exact) > float64(exact)/halfCount+1 {
					t.Errorf("q%v = %d, exact %d (allowed +%.2f%%)", q, got, exact, 100.0/halfCount)
				}
			}
			var sum float64
			for _, v := range vals {
				sum += float64(v)
			}
			if mean := sum / float64(len(vals)); math.Abs(h.Mean()-mean) > 1 {
				t.Errorf("mean = %v, want %v", h.Mean(), mean)
			}
		})
	}
}

func TestHistogramEmptyAndNegative(t *testing.T) {
	var h Histogram
	if h.Quantile(0.99) != 0 || h.Max() != 0 || h.Min() != 0 || h.Mean() != 0 {
		t.Fatal("empty histogram is not all zero")
	}
	h.Record(-5)
	if h.Count() != 1 || h.Quantile(0.5) != 0 || h.Min() != 0 {
		t.Fatalf("negative value not counted as zero: n=%d q50=%d", h.Count(), h.Quantile(0.5))
	}
}

// TestHistogramMergeAndJSON splits values over concurrent recorders,
// sends them through JSON and merges: the result equals recording all in
// one histogram.
func TestHistogramMergeAndJSON(t *testing.T) {
	var whole Histogram
	parts := make([]Histogram, 4)
	var wg sync.WaitGroup
	for p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20_000 {
				parts[p].Record(int64(i*(p+1)) * 37)
			}
		}()
		for i := range 20_000 {
			whole.Record(int64(i*(p+1)) * 37)
		}
	}
	wg.Wait()
	var merged Histogram
	for p := range parts {
		b, err := json.Marshal(&parts[p])
		if err != nil {
			t.Fatal(err)
		}
		var back Histogram
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		merged.Merge(&back)
	}
	if merged.Count() != whole.Count() || merged.Max() != whole.Max() || merged.Min() != whole.Min() || merged.Mean() != whole.Mean() {
		t.Fatalf("merged n/min/max/mean %d/%d/%d/%v, want %d/%d/%d/%v",
			merged.Count(), merged.Min(), merged.Max(), merged.Mean(), whole.Count(), whole.Min(), whole.Max(), whole.Mean())
	}
	for _, q := range []float64{0.1, 0.5, 0.9, 0.99, 0.999} {
		if merged.Quantile(q) != whole.Quantile(q) {
			t.Errorf("q%v: merged %d, whole %d", q, merged.Quantile(q), whole.Quantile(q))
		}
	}
	if err := json.Unmarshal([]byte(`{"n":1,"buckets":[999999,1]}`), new(Histogram)); err == nil {
		t.Error("out-of-range bucket accepted")
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h Histogram
	b.RunParallel(func(pb *testing.PB) {
		v := int64(1000)
		for pb.Next() {
			h.Record(v)
			v = v*7%5_000_000 + 1000
		}
	})
}
