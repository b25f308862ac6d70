package hub

import (
	"context"
	"fmt"
	"math/rand/v2"
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
	// Per shard, the messages appended in order: with no TTL and sizes
	// large enough, what a limited shard retains must be their suffix.
	appended := make(map[*historyShard][]*Message)
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
			appended[s] = append(appended[s], m)
			if r := s.channels[ch]; r.n > size || len(r.buf) > size {
				t.Fatalf("step %d: %s holds %d messages in %d slots, size %d", step, ch, r.n, len(r.buf), size)
			}
		case op < 18:
			clock = clock.Add(time.Duration(rng.IntN(20)) * time.Second)
		default:
			h.Sweep(func(string) time.Duration { return ttl }, time.Minute, time.Minute, func(string) bool { return false })
		}
		checkHistoryShards(t, step, h, limit, ttl, appended)
	}
}

func checkHistoryShards(t *testing.T, step int, h *MemoryHistory, limit int64, ttl time.Duration, appended map[*historyShard][]*Message) {
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
			all := appended[s]
			first := len(all) - len(kept)
			if first > 0 && s.bytes+historySize(all[first-1]) <= h.shardBytes {
				t.Fatalf("step %d: shard %d dropped message %d although it fits: %d + %d bytes, limit %d",
					step, i, first-1, s.bytes, historySize(all[first-1]), h.shardBytes)
			}
			for j, m := range all {
				if kept[m] != (j >= first) {
					t.Fatalf("step %d: shard %d retains %d of %d messages but not the newest: message %d kept=%v",
						step, i, len(kept), len(all), j, kept[m])
				}
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
