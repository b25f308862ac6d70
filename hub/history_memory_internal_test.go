package hub

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
)

// TestMemoryHistoryInvariants appends, expires and sweeps at random, with
// and without a byte limit, and checks after every step what the store's
// bookkeeping must satisfy: each ring holds the channel's newest messages
// in order, within its size and slots; each shard's byte and message
// counts are those of its rings, within the limit; and a shard with a
// limit loses its messages oldest first.
func TestMemoryHistoryInvariants(t *testing.T) {
	for _, limit := range []int64{0, 64 * 3000, 64 * 700} {
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
	// messages: model holds, per shard, what must then be retained,
	// oldest first.
	model := make(map[*historyShard][]*Message)
	ttl := time.Duration(0)
	if rng.IntN(2) == 0 {
		ttl = 50 * time.Second
	}
	for step := range 3000 {
		switch op := rng.IntN(20); {
		case op < 16:
			ch := chans[rng.IntN(len(chans))]
			m := &Message{Message: broker.Message{Channel: ch, Type: "t", Time: clock,
				Data: []byte(`"` + strings.Repeat("x", rng.IntN(600)) + `"`)}}
			size := sizes[rng.IntN(len(sizes))]
			if limit > 0 && ttl == 0 {
				size = 100 // only the limit drops messages: the suffix check applies
			}
			if err := h.Append(ctx, m, HistoryOptions{Size: size, TTL: ttl}); err != nil {
				t.Fatal(err)
			}
			s := h.shard(ch)
			if limit > 0 {
				model[s] = modelAppend(model[s], m, h.shardBytes)
			}
			if r := s.channels[ch]; r.n > size || len(r.buf) > size {
				t.Fatalf("step %d: %s holds %d messages in %d slots, size %d", step, ch, r.n, len(r.buf), size)
			}
		case op < 18:
			clock = clock.Add(time.Duration(rng.IntN(20)) * time.Second)
		default:
			h.Sweep(func(string) time.Duration { return ttl }, time.Minute, time.Minute, func(string) bool { return false })
		}
		checkHistoryShards(t, step, h, limit, ttl, model)
	}
}

// modelAppend is what a shard holding msgs retains after m is appended
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

func checkHistoryShards(t *testing.T, step int, h *MemoryHistory, limit int64, ttl time.Duration, model map[*historyShard][]*Message) {
	t.Helper()
	for i := range h.shards {
		s := &h.shards[i]
		var bytes int64
		retained := 0
		kept := make(map[*Message]bool)
		for ch, r := range s.channels {
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
			retained += r.n
		}
		if bytes != s.bytes || retained != s.retained {
			t.Fatalf("step %d: shard %d counts %d bytes in %d messages, its rings hold %d in %d", step, i, s.bytes, s.retained, bytes, retained)
		}
		if limit > 0 && s.bytes > h.shardBytes {
			t.Fatalf("step %d: shard %d holds %d bytes, over its limit of %d", step, i, s.bytes, h.shardBytes)
		}
		if limit > 0 && len(s.order) > 2*s.retained+64 {
			t.Fatalf("step %d: shard %d keeps %d order entries for %d messages", step, i, len(s.order), s.retained)
		}
		if limit > 0 && ttl == 0 {
			want := model[s]
			if len(want) != len(kept) || slices.ContainsFunc(want, func(m *Message) bool { return !kept[m] }) {
				t.Fatalf("step %d: shard %d retains %d messages, want the %d newest that fit", step, i, len(kept), len(want))
			}
		}
	}
}

// TestMemoryHistoryLimitGap: a message dropped for the byte limit is
// gone like an expired one: a cursor from before it gets a gap signal
// and what is still retained, and the newest message is kept.
func TestMemoryHistoryLimitGap(t *testing.T) {
	h := NewMemoryHistoryLimit(64 * 2000) // about 2000 bytes per shard
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

// TestMemoryHistoryOversizeMessage: a message over its shard's part of
// the limit is not retained and takes its channel's older messages with
// it (a ring holds an unbroken run of offsets), but not the other
// channels' in its shard.
func TestMemoryHistoryOversizeMessage(t *testing.T) {
	h := NewMemoryHistoryLimit(64 * 4000)
	ctx := context.Background()
	opts := HistoryOptions{Size: 100}
	a := "a:0"
	var b string
	for i := 1; b == ""; i++ {
		if c := fmt.Sprintf("b:%d", i); h.shard(c) == h.shard(a) {
			b = c
		}
	}
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
		t.Fatalf("%s, in the same shard: %+v, want its 2 messages kept", b, got)
	}
	if msgs, _, gap, _ := h.Since(ctx, a, Position{Epoch: big.Epoch, Offset: 1}, opts); !gap || len(msgs) != 0 {
		t.Fatalf("Since(%s, 1) = %d messages, gap %v; want none and a gap", a, len(msgs), gap)
	}
	if st := h.Stats(); st.Trimmed != 3 || st.Messages != 2 {
		t.Fatalf("stats %+v, want 3 trimmed (two older messages and the oversize one), 2 retained", st)
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
