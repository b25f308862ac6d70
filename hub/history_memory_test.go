package hub_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/hub/historytest"
	"github.com/heraldhq/herald/internal/testutil"
)

func TestMemoryHistoryConformance(t *testing.T) {
	historytest.Run(t, func(*testing.T) hub.History { return hub.NewMemoryHistory() })
}

// TestMemoryHistorySharedConformance: nodes of one process share one
// MemoryHistory, so n handles are the same store n times.
func TestMemoryHistorySharedConformance(t *testing.T) {
	historytest.RunShared(t, func(_ *testing.T, n int) []hub.History {
		h := hub.NewMemoryHistory()
		hs := make([]hub.History, n)
		for i := range hs {
			hs[i] = h
		}
		return hs
	})
}

// TestMemoryHistoryLossConformance: the memory store loses its history
// only when the process restarts, and a restarted node starts with a new,
// empty store.
func TestMemoryHistoryLossConformance(t *testing.T) {
	historytest.RunLoss(t, func(*testing.T) (hub.History, func() hub.History) {
		return hub.NewMemoryHistory(), func() hub.History { return hub.NewMemoryHistory() }
	})
}

var (
	keep   = hub.HistoryOptions{Size: 10}
	noTTL  = func(string) time.Duration { return 0 }
	bgCtx  = context.Background()
	anyMsg = func(ch string) *hub.Message {
		m := &hub.Message{}
		m.Channel, m.Type, m.Data, m.Time = ch, "t", []byte("1"), time.Now()
		return m
	}
)

// sweepUntilForgotten sweeps with the given limits until ch is forgotten.
// Sweep compares idle time with the wall clock, so it polls rather than
// sleeping.
func sweepUntilForgotten(t *testing.T, h *hub.MemoryHistory, ch string, ttl func(string) time.Duration, idle, idleEmpty time.Duration, inUse func(string) bool) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		h.Sweep(ttl, idle, idleEmpty, inUse)
		if _, ok := h.Inspect(ch); ok {
			return errors.New(ch + " not forgotten by Sweep")
		}
		return nil
	})
}

func mustHead(t *testing.T, h hub.History, ch string) hub.Position {
	t.Helper()
	p, err := h.Head(bgCtx, ch, keep)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustKeep(t *testing.T, h *hub.MemoryHistory, why string, chans ...string) {
	t.Helper()
	for _, ch := range chans {
		if _, ok := h.Inspect(ch); !ok {
			t.Fatalf("%s forgotten %s", ch, why)
		}
	}
}

func TestMemoryHistorySweepForgetsOnlyIdleEmptyUnusedChannels(t *testing.T) {
	h := hub.NewMemoryHistory()
	const (
		never = "sweep:never" // Head only: never published to
		empty = "sweep:empty" // published to, retains nothing (Size 0)
		busy  = "sweep:busy"  // never published to, but in use
		full  = "sweep:full"  // retains a message
	)
	oldNever := mustHead(t, h, never)
	if err := h.Append(bgCtx, anyMsg(empty), hub.HistoryOptions{}); err != nil {
		t.Fatal(err)
	}
	oldEmpty := mustHead(t, h, empty)
	mustHead(t, h, busy)
	if err := h.Append(bgCtx, anyMsg(full), keep); err != nil {
		t.Fatal(err)
	}
	inUse := func(ch string) bool { return ch == busy }

	h.Sweep(noTTL, time.Hour, time.Hour, inUse)
	mustKeep(t, h, "before being idle for the idle time", never, empty, busy, full)

	// Never-published channels go after idleEmpty; published ones wait
	// for idle.
	sweepUntilForgotten(t, h, never, noTTL, time.Hour, time.Millisecond, inUse)
	mustKeep(t, h, "after idleEmpty although it was published to and idle is an hour", empty)
	mustKeep(t, h, "although inUse reports it", busy)

	sweepUntilForgotten(t, h, empty, noTTL, time.Millisecond, time.Millisecond, inUse)
	mustKeep(t, h, "although inUse reports it", busy)
	mustKeep(t, h, "although it retains a message", full)
	if got, _ := h.Inspect(full); got.Retained != 1 {
		t.Errorf("Inspect(%s).Retained = %d, want 1", full, got.Retained)
	}

	// Used again, a forgotten channel starts a new epoch, and a cursor
	// from the old one gets a gap.
	for _, old := range []struct {
		ch  string
		pos hub.Position
	}{{never, oldNever}, {empty, oldEmpty}} {
		now := mustHead(t, h, old.ch)
		if now.Epoch == old.pos.Epoch || now.Offset != 0 {
			t.Fatalf("%s: Head after Sweep = %v, want a new epoch (old %q) at offset 0", old.ch, now, old.pos.Epoch)
		}
		m := anyMsg(old.ch)
		if err := h.Append(bgCtx, m, keep); err != nil {
			t.Fatal(err)
		}
		if m.Epoch != now.Epoch || m.Offset != 1 {
			t.Fatalf("%s: Append after Sweep got %s:%d, want %s:1", old.ch, m.Epoch, m.Offset, now.Epoch)
		}
		msgs, head, gap, err := h.Since(bgCtx, old.ch, old.pos, keep)
		if err != nil || !gap || len(msgs) != 1 || head != (hub.Position{Epoch: now.Epoch, Offset: 1}) {
			t.Errorf("%s: Since(old position %v) = %d msgs, head %v, gap %v, %v; want 1, %s:1, gap",
				old.ch, old.pos, len(msgs), head, gap, err, now.Epoch)
		}
	}
}

func TestMemoryHistorySweepForgetsExpiredChannel(t *testing.T) {
	h := hub.NewMemoryHistory()
	const ch = "sweep:expired"
	m := anyMsg(ch)
	if err := h.Append(bgCtx, m, keep); err != nil {
		t.Fatal(err)
	}
	old := hub.Position{Epoch: m.Epoch, Offset: m.Offset}
	ttl := func(string) time.Duration { return time.Millisecond }
	sweepUntilForgotten(t, h, ch, ttl, time.Millisecond, time.Hour, func(string) bool { return false })

	msgs, head, gap, err := h.Since(bgCtx, ch, old, keep)
	if err != nil || !gap || len(msgs) != 0 || head.Epoch == old.Epoch || head.Offset != 0 {
		t.Errorf("Since(%v) after the channel was forgotten = %d msgs, head %v, gap %v, %v; want none, a new epoch at 0, gap",
			old, len(msgs), head, gap, err)
	}
}
