package bench

import "sort"

// seqTracker records the sequence numbers one subscriber received on its
// channel, compactly: the highest number seen plus the ranges below it
// still missing. Messages of a channel arrive in order in the common case,
// so a tracker is two words and a nil slice, and Observe is one compare.
// A tracker is used by one goroutine (its connection's reader); it is read
// by the worker after that goroutine ended.
type seqTracker struct {
	hi      uint64     // highest sequence number received; 0 = none
	missing []seqRange // numbers in [1, hi] not received yet, ascending, disjoint
	dups    uint64     // numbers received more than once
	ooo     uint64     // numbers received after a higher one
	bogus   uint64     // sequence number 0
}

// seqRange is the inclusive range [lo, hi].
type seqRange struct{ lo, hi uint64 }

// Observe records the receipt of sequence number s.
func (t *seqTracker) Observe(s uint64) {
	switch {
	case s == 0:
		t.bogus++
	case s == t.hi+1:
		t.hi = s
	case s > t.hi:
		t.missing = append(t.missing, seqRange{t.hi + 1, s - 1})
		t.hi = s
	default:
		t.fill(s)
	}
}

// fill records a number at or below hi: either it closes part of a
// missing range (out of order) or it was seen before (duplicate).
func (t *seqTracker) fill(s uint64) {
	i := sort.Search(len(t.missing), func(i int) bool { return t.missing[i].hi >= s })
	if i == len(t.missing) || t.missing[i].lo > s {
		t.dups++
		return
	}
	t.ooo++
	r := t.missing[i]
	switch {
	case r.lo == r.hi:
		t.missing = append(t.missing[:i], t.missing[i+1:]...)
	case s == r.lo:
		t.missing[i].lo++
	case s == r.hi:
		t.missing[i].hi--
	default:
		t.missing = append(t.missing, seqRange{})
		copy(t.missing[i+2:], t.missing[i+1:])
		t.missing[i] = seqRange{r.lo, s - 1}
		t.missing[i+1] = seqRange{s + 1, r.hi}
	}
}

// received reports whether s was received.
func (t *seqTracker) received(s uint64) bool {
	if s == 0 || s > t.hi {
		return false
	}
	i := sort.Search(len(t.missing), func(i int) bool { return t.missing[i].hi >= s })
	return i == len(t.missing) || t.missing[i].lo > s
}

// notReceived counts the numbers in [lo, hi] that were not received.
func (t *seqTracker) notReceived(lo, hi uint64) uint64 {
	if lo > hi {
		return 0
	}
	var n uint64
	for _, r := range t.missing {
		a, b := max(r.lo, lo), min(r.hi, hi)
		if a <= b {
			n += b - a + 1
		}
	}
	if hi > t.hi {
		n += hi - max(t.hi+1, lo) + 1
	}
	return n
}

// seqVerdict is the comparison of what a subscriber received with what
// was published to its channel.
type seqVerdict struct {
	Lost       uint64 // published and acknowledged, never received
	Duplicates uint64 // received more than once
	OutOfOrder uint64 // received after a higher number
	Unexpected uint64 // received but never published (or number 0)
	// ReceivedFailed counts numbers whose publish reported an error but
	// that arrived anyway (the server took them); not an error.
	ReceivedFailed uint64
}

// Verdict compares the tracker with the publisher's account of the
// channel: numbers 1..published were sent, and those in failed (ascending)
// got no successful answer, so they may or may not exist.
func (t *seqTracker) Verdict(published uint64, failed []uint64) seqVerdict {
	v := seqVerdict{Duplicates: t.dups, OutOfOrder: t.ooo, Unexpected: t.bogus}
	v.Lost = t.notReceived(1, published)
	for _, f := range failed {
		if f < 1 || f > published {
			continue
		}
		if t.received(f) {
			v.ReceivedFailed++
		} else {
			v.Lost-- // never acknowledged, so its absence is no loss
		}
	}
	if t.hi > published {
		v.Unexpected += (t.hi - published) - t.notReceived(published+1, t.hi)
	}
	return v
}
