package hub

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
)

// TestMemoryHistoryInvariants appends, expires and sweeps at random, with
// and without a byte limit, and checks after every step what the store's
// bookkeeping must satisfy: each ring holds the channel's newest messages
// in order, within its size and slots; the byte and message counts are
// those of the rings, within the limit; and with a limit the oldest
// messages go first, whatever their channel.
func TestMemoryHistoryInvariants(t *testing.T) {
	defer func(s int64) { fifoSlack = s }(fifoSlack)
	fifoSlack = 8 // compact often
	for _, limit := range []int64{0, 40_000, 3_000} {
		for seed := range uint64(5) {
			t.Run(fmt.Sprintf("limit=%d/seed=%d", limit, seed), func(t *testing.T) {
				checkHistoryRandomly(t, limit, rand.New(rand.NewPCG(seed, uint64(limit))))
			})
		}
	}
}

func checkHistoryRandomly(t *testing.T, limit int64, rng *rand.Rand) {
	h := NewMemoryHistoryLimit(limit)
	clock := time.Unix(1_800_000_000, 0)
	h.now = func() time.Time { return clock }
	ctx := context.Background()
	chans := make([]string, 40)
	for i := range chans {
		chans[i] = fmt.Sprintf("c:%d", i)
	}
	sizes := []int{1, 3, 8, 100}
	// With a limit, no TTL and sizes large enough, only the limit drops
	// messages: model holds what must then be retained, oldest first.
	var model []*Message
	ttl := time.Duration(0)
	if rng.IntN(2) == 0 {
		ttl = 50 * time.Second
	}
	for step := range 3000 {
		swept := false
		switch op := rng.IntN(20); {
		case op < 16:
			ch := chans[rng.IntN(len(chans))]
			m := &Message{Message: broker.Message{Channel: ch, Type: "t", Time: clock,
				Data: []byte(`"` + strings.Repeat("x", rng.IntN(1200)) + `"`)}}
			size := sizes[rng.IntN(len(sizes))]
			if limit > 0 && ttl == 0 {
				size = 100 // only the limit drops messages: the model applies
			}
			if err := h.Append(ctx, m, HistoryOptions{Size: size, TTL: ttl}); err != nil {
				t.Fatal(err)
			}
			if limit > 0 {
				model = modelAppend(model, m, limit)
			}
			if r := h.shard(ch).channels[ch]; r.n > size || len(r.buf) > size {
				t.Fatalf("step %d: %s holds %d messages in %d slots, size %d", step, ch, r.n, len(r.buf), size)
			}
		case op < 18:
			clock = clock.Add(time.Duration(rng.IntN(20)) * time.Second)
		default:
			h.Sweep(func(string) time.Duration { return ttl }, time.Minute, time.Minute, func(string) bool { return false })
			swept = true
		}
		checkHistory(t, step, h, limit, ttl, model, swept)
	}
}

// modelAppend is what a history holding msgs retains after m is appended
// under limit, when nothing else drops messages: a message over the limit
// is not retained and its channel keeps nothing before it; otherwise the
// oldest messages go until the rest fit.
func modelAppend(msgs []*Message, m *Message, limit int64) []*Message {
	if historySize(m) > limit {
		return slices.DeleteFunc(msgs, func(old *Message) bool { return old.Channel == m.Channel })
	}
	msgs = append(msgs, m)
	var total int64
	for _, old := range msgs {
		total += historySize(old)
	}
	for total > limit {
		total -= historySize(msgs[0])
		msgs = msgs[1:]
	}
	return msgs
}

func checkHistory(t *testing.T, step int, h *MemoryHistory, limit int64, ttl time.Duration, model []*Message, swept bool) {
	t.Helper()
	var bytes, retained int64
	kept := make(map[*Message]bool)
	for i := range h.shards {
		for ch, r := range h.shards[i].channels {
			if r.n > len(r.buf) {
				t.Fatalf("step %d: %s holds %d messages in %d slots", step, ch, r.n, len(r.buf))
			}
			for j := range r.n {
				m := r.buf[(r.start+j)%len(r.buf)]
				if want := r.head - uint64(r.n) + 1 + uint64(j); m.Offset != want || m.Channel != ch {
					t.Fatalf("step %d: %s slot %d holds %s:%d, want offset %d", step, ch, j, m.Channel, m.Offset, want)
				}
				bytes += historySize(m)
				kept[m] = true
			}
			retained += int64(r.n)
		}
	}
	if bytes != h.bytes.Load() || retained != h.retained.Load() {
		t.Fatalf("step %d: the history counts %d bytes in %d messages, its rings hold %d in %d",
			step, h.bytes.Load(), h.retained.Load(), bytes, retained)
	}
	if limit > 0 && bytes > limit {
		t.Fatalf("step %d: %d bytes retained, over the limit of %d", step, bytes, limit)
	}
	if n := int64(len(h.fifo) - h.next); limit > 0 && swept && n > 2*retained+fifoSlack {
		t.Fatalf("step %d: %d fifo entries after Sweep for %d messages", step, n, retained)
	}
	if limit > 0 && swept && h.next < len(h.fifo) && !h.fifo[h.next].live() {
		t.Fatalf("step %d: the fifo's front is stale after Sweep", step)
	}
	if limit == 0 && len(h.fifo) != 0 {
		t.Fatalf("step %d: %d fifo entries without a limit", step, len(h.fifo))
	}
	if limit > 0 && ttl == 0 {
		if len(model) != len(kept) || slices.ContainsFunc(model, func(m *Message) bool { return !kept[m] }) {
			t.Fatalf("step %d: %d messages retained, want the %d newest that fit", step, len(kept), len(model))
		}
	}
}

// TestMemoryHistoryLimitGap: a message dropped for the byte limit is
// gone like an expired one: a cursor from before it gets a gap signal
// and what is still retained, and the newest message is kept.
func TestMemoryHistoryLimitGap(t *testing.T) {
	h := NewMemoryHistoryLimit(8000)
	ctx := context.Background()
	opts := HistoryOptions{Size: 100}
	const ch = "thread:1"
	data := []byte(`"` + strings.Repeat("x", 200) + `"`)
	var last *Message
	for range 20 {
		last = &Message{Message: broker.Message{Channel: ch, Type: "t", Time: time.Now(), Data: data}}
		if err := h.Append(ctx, last, opts); err != nil {
			t.Fatal(err)
		}
	}
	got, ok := h.Inspect(ch)
	if !ok || got.Retained == 0 || got.Retained >= 20 || got.Head != 20 {
		t.Fatalf("Inspect = %+v, %v; want head 20 and some but not all of the 20 messages retained", got, ok)
	}
	msgs, head, gap, err := h.Since(ctx, ch, Position{Epoch: last.Epoch, Offset: 1}, opts)
	if err != nil || !gap || head.Offset != 20 || len(msgs) != got.Retained || msgs[len(msgs)-1] != last {
		t.Fatalf("Since(offset 1) = %d messages, head %v, gap %v, %v; want the %d retained ending with the last, and a gap",
			len(msgs), head, gap, err, got.Retained)
	}
	if msgs[0].Offset != uint64(20-got.Retained+1) {
		t.Fatalf("oldest retained offset %d, want %d", msgs[0].Offset, 20-got.Retained+1)
	}
}

// TestMemoryHistoryOversizeMessage: a message over the whole limit is not
// retained and takes its channel's older messages with it (a ring holds an
// unbroken run of offsets), but not the other channels'.
func TestMemoryHistoryOversizeMessage(t *testing.T) {
	h := NewMemoryHistoryLimit(4000)
	ctx := context.Background()
	opts := HistoryOptions{Size: 100}
	const a, b = "a:0", "b:0"
	msg := func(ch string, n int) *Message {
		return &Message{Message: broker.Message{Channel: ch, Type: "t", Time: time.Now(), Data: []byte(`"` + strings.Repeat("x", n) + `"`)}}
	}
	for _, ch := range []string{a, a, b, b} {
		if err := h.Append(ctx, msg(ch, 10), opts); err != nil {
			t.Fatal(err)
		}
	}
	big := msg(a, 4000)
	if err := h.Append(ctx, big, opts); err != nil {
		t.Fatal(err)
	}
	if big.Offset != 3 || big.Envelope == nil {
		t.Fatalf("the oversize message got offset %d (sealed: %v), want 3 and sealed: subscribers still get it live", big.Offset, big.Envelope != nil)
	}
	if got, _ := h.Inspect(a); got.Retained != 0 || got.Head != 3 {
		t.Fatalf("%s after the oversize message: %+v, want head 3 and nothing retained", a, got)
	}
	if got, _ := h.Inspect(b); got.Retained != 2 {
		t.Fatalf("%s: %+v, want its 2 messages kept", b, got)
	}
	if msgs, _, gap, _ := h.Since(ctx, a, Position{Epoch: big.Epoch, Offset: 1}, opts); !gap || len(msgs) != 0 {
		t.Fatalf("Since(%s, 1) = %d messages, gap %v; want none and a gap", a, len(msgs), gap)
	}
	if st := h.Stats(); st.Trimmed != 3 || st.Messages != 2 {
		t.Fatalf("stats %+v, want 3 trimmed (two older messages and the oversize one), 2 retained", st)
	}
}

// TestMemoryHistoryOneChannelUsesTheWholeLimit: the limit is shared by
// all channels, so one busy channel can fill it (the history a slow
// consumer resumes from); other channels' newer messages still push its
// oldest out.
func TestMemoryHistoryOneChannelUsesTheWholeLimit(t *testing.T) {
	data := []byte(`"` + strings.Repeat("x", 1000) + `"`)
	ctx := context.Background()
	opts := HistoryOptions{Size: 1000}
	fill := func(h *MemoryHistory) {
		for range 400 {
			if err := h.Append(ctx, &Message{Message: broker.Message{Channel: "thread:1", Type: "t", Time: time.Now(), Data: data}}, opts); err != nil {
				t.Fatal(err)
			}
		}
	}
	unlimited := NewMemoryHistory()
	fill(unlimited)
	h := NewMemoryHistoryLimit(unlimited.Stats().Bytes) // exactly the 400 messages
	fill(h)
	if got, _ := h.Inspect("thread:1"); got.Retained != 400 {
		t.Fatalf("thread:1 retains %d of 400 messages that fit the limit", got.Retained)
	}
	for range 10 {
		if err := h.Append(ctx, &Message{Message: broker.Message{Channel: "thread:2", Type: "t", Time: time.Now(), Data: data}}, opts); err != nil {
			t.Fatal(err)
		}
	}
	t1, _ := h.Inspect("thread:1")
	t2, _ := h.Inspect("thread:2")
	// Sizes differ by a few bytes with the offsets' digits: ten or eleven
	// of thread:1's oldest make room.
	if t2.Retained != 10 || t1.Retained < 389 || t1.Retained > 390 {
		t.Fatalf("retained %d of thread:1 and %d of thread:2, want 389-390 and 10", t1.Retained, t2.Retained)
	}
}

// TestMemoryHistoryPrunesStaleEntries: messages that expire behind one
// that does not (a channel without TTL) leave stale fifo entries that the
// front cannot shed; Sweep compacts them away.
func TestMemoryHistoryPrunesStaleEntries(t *testing.T) {
	h := NewMemoryHistoryLimit(1 << 30)
	clock := time.Unix(1_800_000_000, 0)
	h.now = func() time.Time { return clock }
	ctx := context.Background()
	msg := func(ch string) *Message {
		return &Message{Message: broker.Message{Channel: ch, Type: "t", Time: clock, Data: []byte("1")}}
	}
	if err := h.Append(ctx, msg("keep:1"), HistoryOptions{Size: 10}); err != nil {
		t.Fatal(err)
	}
	for i := range 5000 {
		if err := h.Append(ctx, msg(fmt.Sprintf("post:%d", i)), HistoryOptions{Size: 10, TTL: time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	clock = clock.Add(time.Minute)
	ttl := func(ch string) time.Duration {
		if strings.HasPrefix(ch, "keep:") {
			return 0
		}
		return time.Second
	}
	h.Sweep(ttl, time.Hour, time.Hour, func(string) bool { return false })
	if n, st := len(h.fifo)-h.next, h.Stats(); st.Messages != 1 || int64(n) > 2+fifoSlack {
		t.Fatalf("after Sweep: %d messages retained, %d fifo entries; want 1 and at most %d", st.Messages, n, 2+fifoSlack)
	}
}

// TestMemoryHistoryConcurrentLimit: appends on many goroutines, with
// sweeps and stats alongside (run with -race), leave the history within
// its limit and its counts equal to what the rings hold.
func TestMemoryHistoryConcurrentLimit(t *testing.T) {
	const limit = 200_000
	h := NewMemoryHistoryLimit(limit)
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				m := &Message{Message: broker.Message{Channel: fmt.Sprintf("c:%d", (g*7+i)%50), Type: "t", Time: time.Now(),
					Data: []byte(`"` + strings.Repeat("x", i%700) + `"`)}}
				if err := h.Append(ctx, m, HistoryOptions{Size: 20, TTL: time.Minute}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			h.Sweep(func(string) time.Duration { return time.Minute }, time.Hour, time.Hour, func(string) bool { return false })
			_ = h.Stats()
		}
	})
	wg.Wait()
	checkHistory(t, -1, h, limit, time.Minute, nil, false)
}

// TestMemoryHistoryAppendWaitsToTrim: an Append that takes the history
// over its limit while another goroutine is trimming or pruning (here:
// the test, holding trimMu) does not return over the limit.
func TestMemoryHistoryAppendWaitsToTrim(t *testing.T) {
	h := NewMemoryHistoryLimit(3000)
	ctx := context.Background()
	msg := func() *Message {
		return &Message{Message: broker.Message{Channel: "c:1", Type: "t", Time: time.Now(), Data: []byte(`"` + strings.Repeat("x", 100) + `"`)}}
	}
	// Full: within one message's size of the limit, so the next goes over.
	for range 10 {
		if err := h.Append(ctx, msg(), HistoryOptions{Size: 100}); err != nil {
			t.Fatal(err)
		}
	}
	h.trimMu.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.Append(ctx, msg(), HistoryOptions{Size: 100})
	}()
	select {
	case <-done:
		t.Errorf("Append returned while another goroutine held the trim lock, with %d bytes retained (limit 3000)", h.bytes.Load())
	case <-time.After(50 * time.Millisecond):
	}
	h.trimMu.Unlock()
	<-done
	if b := h.bytes.Load(); b > 3000 {
		t.Fatalf("%d bytes retained after Append, limit 3000", b)
	}
}

// BenchmarkMemoryHistoryNewChannels appends one message to each of b.N
// channels, as the post:ID channel of every new comment does: the bytes
// per op are what one such channel costs.
func BenchmarkMemoryHistoryNewChannels(b *testing.B) {
	h := NewMemoryHistory()
	ctx := context.Background()
	opts := HistoryOptions{Size: 100, TTL: 10 * time.Minute}
	names := make([]string, b.N)
	for i := range names {
		names[i] = fmt.Sprintf("post:p%d", i)
	}
	data := []byte(`{"id":"p1"}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		m := &Message{Message: broker.Message{Channel: names[i], Type: "post.created", Time: time.Now(), Data: data}}
		if err := h.Append(ctx, m, opts); err != nil {
			b.Fatal(err)
		}
	}
}
