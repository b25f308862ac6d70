package bench

import (
	"math/rand/v2"
	"testing"
	"unsafe"
)

func TestSeqTracker(t *testing.T) {
	tests := []struct {
		name      string
		recv      []uint64
		published uint64
		failed    []uint64
		want      seqVerdict
	}{
		{name: "all in order", recv: seq(1, 400), published: 400},
		{name: "nothing received", published: 5, want: seqVerdict{Lost: 5}},
		{name: "tail lost", recv: seq(1, 7), published: 10, want: seqVerdict{Lost: 3}},
		{name: "holes", recv: []uint64{1, 2, 5, 6, 9, 10}, published: 10, want: seqVerdict{Lost: 4}},
		{name: "duplicates", recv: []uint64{1, 2, 2, 3, 1, 3}, published: 3, want: seqVerdict{Duplicates: 3}},
		{name: "out of order, complete", recv: []uint64{1, 4, 2, 3, 5}, published: 5, want: seqVerdict{OutOfOrder: 2}},
		{name: "out of order splits a hole", recv: []uint64{1, 9, 5, 2, 8}, published: 10,
			want: seqVerdict{OutOfOrder: 3, Lost: 5}}, // 3 4 6 7 10
		{name: "filled hole then duplicate", recv: []uint64{1, 3, 2, 2}, published: 3,
			want: seqVerdict{OutOfOrder: 1, Duplicates: 1}},
		{name: "beyond published", recv: seq(1, 12), published: 10, want: seqVerdict{Unexpected: 2}},
		{name: "beyond published with hole", recv: []uint64{1, 2, 11, 14}, published: 10,
			want: seqVerdict{Lost: 8, Unexpected: 2}},
		{name: "zero", recv: []uint64{0, 1}, published: 1, want: seqVerdict{Unexpected: 1}},
		{name: "failed publish missing is no loss", recv: []uint64{1, 3}, published: 3, failed: []uint64{2}},
		{name: "failed publish received", recv: seq(1, 3), published: 3, failed: []uint64{2},
			want: seqVerdict{ReceivedFailed: 1}},
		{name: "failed last publish", recv: seq(1, 2), published: 3, failed: []uint64{3}},
		{name: "failed and lost", recv: []uint64{1}, published: 4, failed: []uint64{2},
			want: seqVerdict{Lost: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr seqTracker
			for _, s := range tt.recv {
				tr.Observe(s)
			}
			if got := tr.Verdict(tt.published, tt.failed); got != tt.want {
				t.Errorf("verdict = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestSeqTrackerRandom checks the tracker against a plain set over random
// loss, duplication and local reordering.
func TestSeqTrackerRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 200 {
		published := uint64(rng.IntN(500) + 1)
		var stream []uint64
		for s := uint64(1); s <= published; s++ {
			switch r := rng.IntN(100); {
			case r < 5: // lost
			case r < 8:
				stream = append(stream, s, s)
			default:
				stream = append(stream, s)
			}
		}
		for i := range stream { // local reordering
			if j := i + rng.IntN(4); rng.IntN(10) == 0 && j < len(stream) {
				stream[i], stream[j] = stream[j], stream[i]
			}
		}
		var tr seqTracker
		seen := map[uint64]int{}
		for _, s := range stream {
			tr.Observe(s)
			seen[s]++
		}
		var want seqVerdict
		for s := uint64(1); s <= published; s++ {
			if seen[s] == 0 {
				want.Lost++
			}
			if seen[s] > 1 {
				want.Duplicates += uint64(seen[s] - 1)
			}
		}
		got := tr.Verdict(published, nil)
		got.OutOfOrder = 0
		if got != want {
			t.Fatalf("round %d: verdict %+v, want %+v", round, got, want)
		}
		for s := uint64(1); s <= published+2; s++ {
			if tr.received(s) != (seen[s] > 0) {
				t.Fatalf("round %d: received(%d) = %v", round, s, tr.received(s))
			}
		}
	}
}

// TestSeqTrackerIsSmall: 10 000 subscribers × 400 in-order messages must
// stay cheap — the tracker is a few words and allocates nothing.
func TestSeqTrackerIsSmall(t *testing.T) {
	if size := unsafe.Sizeof(seqTracker{}); size > 64 {
		t.Errorf("seqTracker is %d bytes", size)
	}
	trackers := make([]seqTracker, 10_000)
	allocs := testing.AllocsPerRun(1, func() {
		for i := range trackers {
			trackers[i] = seqTracker{}
			for s := uint64(1); s <= 400; s++ {
				trackers[i].Observe(s)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("in-order tracking allocated %v times", allocs)
	}
}

func seq(lo, hi uint64) []uint64 {
	var out []uint64
	for s := lo; s <= hi; s++ {
		out = append(out, s)
	}
	return out
}
