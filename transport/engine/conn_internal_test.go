package engine

import (
	"testing"
	"time"
)

// TestSilentCountsFromTheHeartbeat checks the read timeout's decision: a
// client is silent only when it has not answered a heartbeat it had time
// to answer. A wheel that ran late (the server stalled past the next
// heartbeat) must not close a client that answered every heartbeat sent.
func TestSilentCountsFromTheHeartbeat(t *testing.T) {
	const hb = int64(100 * time.Millisecond)
	const ms = int64(time.Millisecond)
	conn := func(lastRead, lastBeat int64) *Conn {
		c := &Conn{readTimeout: 2 * hb, heartbeatEvery: hb, lastBeat: lastBeat}
		c.lastRead.Store(lastRead)
		return c
	}
	for _, tc := range []struct {
		name               string
		lastRead, lastBeat int64
		now                int64
		want               bool
	}{
		{"answered, checked on time", 1001 * ms, 1000 * ms, 1100 * ms, false},
		{"answered, wheel 250 ms late", 1001 * ms, 1000 * ms, 1251 * ms, false},
		{"unanswered, within the time to answer", 950 * ms, 1000 * ms, 1090 * ms, false},
		{"unanswered for a heartbeat, read timeout not yet", 950 * ms, 1000 * ms, 1100 * ms, false},
		{"unanswered for a heartbeat and the read timeout", 899 * ms, 1000 * ms, 1100 * ms, true},
		{"unanswered, wheel late", 950 * ms, 1000 * ms, 1400 * ms, true},
		{"no heartbeat sent yet", 0, 0, 1000 * ms, false},
	} {
		if got := conn(tc.lastRead, tc.lastBeat).silent(tc.now); got != tc.want {
			t.Errorf("%s: silent = %v, want %v", tc.name, got, tc.want)
		}
	}
	if c := (&Conn{heartbeatEvery: hb, lastBeat: 1000 * ms}); c.silent(9000 * ms) {
		t.Error("a connection without a read timeout is silent")
	}
}
