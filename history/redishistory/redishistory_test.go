package redishistory_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/history/redishistory"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/hub/historytest"
	"github.com/heraldhq/herald/internal/testutil"
)

// connect returns a client of the Redis at addr, closed when the test ends.
func connect(t testing.TB, addr string) *goredis.Client {
	t.Helper()
	rdb := goredis.NewClient(&goredis.Options{Addr: addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// open returns a History on its own client of the Redis at addr, as a
// Herald node holds one.
func open(t testing.TB, addr string, cfg redishistory.Config) *redishistory.History {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := redishistory.New(ctx, connect(t, addr), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestConformance runs every case on one redis-server: the cases use
// channels of their own.
func TestConformance(t *testing.T) {
	addr, _ := testutil.Redis(t)
	historytest.Run(t, func(t *testing.T) hub.History { return open(t, addr, redishistory.Config{}) })
}

// TestSharedConformance: three nodes, each with its own client, on one
// redis-server.
func TestSharedConformance(t *testing.T) {
	addr, _ := testutil.Redis(t)
	historytest.RunShared(t, func(t *testing.T, n int) []hub.History {
		hs := make([]hub.History, n)
		for i := range hs {
			hs[i] = open(t, addr, redishistory.Config{})
		}
		return hs
	})
}

// TestRedisClusterConformance: the cases on a Redis Cluster of three
// masters, three nodes each with a cluster client. A channel's keys share
// a hash slot, so its scripts and reads run on the one master that owns it.
func TestRedisClusterConformance(t *testing.T) {
	addrs := testutil.RedisCluster(t, 3)
	newStore := func(t *testing.T) hub.History {
		rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
		t.Cleanup(func() { rdb.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h, err := redishistory.New(ctx, rdb, redishistory.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	historytest.Run(t, newStore)
	historytest.RunShared(t, func(t *testing.T, n int) []hub.History {
		hs := make([]hub.History, n)
		for i := range hs {
			hs[i] = newStore(t)
		}
		return hs
	})
}

// TestLossConformance: Redis crashes and comes back empty, as one without
// persistence does; the History carries on with the same client, which
// reconnects (and finds its scripts gone).
func TestLossConformance(t *testing.T) {
	historytest.RunLoss(t, func(t *testing.T) (hub.History, func() hub.History) {
		addr, _, restartEmpty := testutil.RedisLossy(t)
		h := open(t, addr, redishistory.Config{})
		return h, func() hub.History { restartEmpty(); return h }
	})
}

var keepAll = hub.HistoryOptions{Size: 100, TTL: time.Hour}

// newMsg returns a message as the hub hands it to Append.
func newMsg(ch, key string, i int) *hub.Message {
	m := &hub.Message{Key: key}
	m.Channel, m.Type, m.Data, m.Time = ch, "post.created", fmt.Appendf(nil, `{"i":%d}`, i), time.Now()
	return m
}

func mustAppend(t *testing.T, h hub.History, m *hub.Message, opts hub.HistoryOptions) {
	t.Helper()
	if err := h.Append(t.Context(), m, opts); err != nil {
		t.Fatalf("Append(%s): %v", m.Channel, err)
	}
}

// TestSurvivesRestart: after redis-server crashes and restarts on its
// append-only file, the channel keeps its epoch, offsets and messages —
// for the History that was running (its client reconnects) and for a new
// one, as a restarted Herald node opens.
func TestSurvivesRestart(t *testing.T) {
	addr, restart := testutil.Redis(t)
	const ch = "thread:t1"
	h := open(t, addr, redishistory.Config{})
	var msgs []*hub.Message
	for i := range 3 {
		m := newMsg(ch, "", i)
		mustAppend(t, h, m, keepAll)
		msgs = append(msgs, m)
	}
	epoch := msgs[0].Epoch

	restart()

	for i, h := range []hub.History{h, open(t, addr, redishistory.Config{})} {
		got, head, gap, err := h.Since(t.Context(), ch, hub.Position{Epoch: epoch, Offset: 1}, keepAll)
		if err != nil || gap || head != (hub.Position{Epoch: epoch, Offset: uint64(3 + i)}) || len(got) != 2+i ||
			string(got[1].Envelope) != string(msgs[2].Envelope) {
			t.Fatalf("History %d after restart: %d messages, head %+v, gap %v, err %v", i, len(got), head, gap, err)
		}
		m := newMsg(ch, "", 3+i)
		mustAppend(t, h, m, keepAll)
		if m.Epoch != epoch || m.Offset != uint64(4+i) {
			t.Fatalf("History %d: append after restart got %s:%d, want %s:%d", i, m.Epoch, m.Offset, epoch, 4+i)
		}
		msgs = append(msgs, m)
	}
}

// TestDuplicateKeyAcrossNodes: a message stored under an idempotency key
// by one node is not stored again by another within the window; Append
// reports hub.ErrDuplicate and hands back the stored message, or offset 0
// once it is no longer retained. After the window the key is free again.
func TestDuplicateKeyAcrossNodes(t *testing.T) {
	addr, _ := testutil.Redis(t)
	cfg := redishistory.Config{Duplicates: 500 * time.Millisecond}
	a, b := open(t, addr, cfg), open(t, addr, cfg)
	const ch = "post:p1"

	first := newMsg(ch, "public:evt-1", 1)
	mustAppend(t, a, first, keepAll)
	mustAppend(t, b, newMsg(ch, "public:evt-2", 2), keepAll)

	again := newMsg(ch, "public:evt-1", 99) // a retry: same key, any content
	if err := b.Append(t.Context(), again, keepAll); !errors.Is(err, hub.ErrDuplicate) {
		t.Fatalf("repeat on another node: %v, want hub.ErrDuplicate", err)
	}
	if again.Epoch != first.Epoch || again.Offset != first.Offset || string(again.Envelope) != string(first.Envelope) {
		t.Fatalf("repeat: %s:%d %s, want the stored %s:%d %s",
			again.Epoch, again.Offset, again.Envelope, first.Epoch, first.Offset, first.Envelope)
	}
	msgs, head, _, err := a.Since(t.Context(), ch, hub.Position{Epoch: first.Epoch}, keepAll)
	if err != nil || len(msgs) != 2 || head.Offset != 2 {
		t.Fatalf("Since: %d messages, head %+v, %v: want 2", len(msgs), head, err)
	}

	// Pushed out of a history of 1: a duplicate with offset 0.
	one := hub.HistoryOptions{Size: 1}
	const ch2 = "post:p2"
	mustAppend(t, a, newMsg(ch2, "public:evt-3", 3), one)
	mustAppend(t, a, newMsg(ch2, "", 4), one)
	gone := newMsg(ch2, "public:evt-3", 3)
	if err := b.Append(t.Context(), gone, one); !errors.Is(err, hub.ErrDuplicate) || gone.Offset != 0 {
		t.Fatalf("repeat of a trimmed message: %v, offset %d; want hub.ErrDuplicate, 0", err, gone.Offset)
	}

	// After the window, the key is a new message.
	testutil.Eventually(t, 10*time.Second, func() error {
		m := newMsg(ch, "public:evt-1", 5)
		err := b.Append(t.Context(), m, keepAll)
		switch {
		case errors.Is(err, hub.ErrDuplicate):
			return errors.New("still a duplicate after the window")
		case err != nil:
			t.Fatal(err)
		case m.Offset != 3:
			t.Fatalf("stored after the window at offset %d, want 3", m.Offset)
		}
		return nil
	})
}

// TestLossAcrossNodes: after Redis comes back empty, two nodes agree on
// the channel's new epoch, whichever of them starts it.
func TestLossAcrossNodes(t *testing.T) {
	addr, _, restartEmpty := testutil.RedisLossy(t)
	a, b := open(t, addr, redishistory.Config{}), open(t, addr, redishistory.Config{})
	const ch = "room:r1"
	old := newMsg(ch, "", 0)
	mustAppend(t, a, old, keepAll)

	restartEmpty()

	hd, err := b.Head(t.Context(), ch, keepAll)
	if err != nil || hd.Epoch == old.Epoch || hd.Offset != 0 {
		t.Fatalf("Head on node b after the loss = %+v, %v; want a new epoch at 0", hd, err)
	}
	m := newMsg(ch, "", 1)
	mustAppend(t, a, m, keepAll)
	if m.Epoch != hd.Epoch || m.Offset != 1 {
		t.Fatalf("Append on node a after the loss got %s:%d, want %s:1", m.Epoch, m.Offset, hd.Epoch)
	}
}

// TestRedisKeys: the stream holds at most MaxPerChannel entries whatever
// the namespace's size, and the channel's keys expire after MaxAge plus
// the TTL.
func TestRedisKeys(t *testing.T) {
	addr, _ := testutil.Redis(t)
	rdb := connect(t, addr)
	cfg := redishistory.Config{Prefix: "t", MaxPerChannel: 5, MaxAge: time.Hour}
	h := open(t, addr, cfg)
	const ch = "feed:f1"
	opts := hub.HistoryOptions{Size: 100, TTL: time.Hour}
	var last *hub.Message
	for i := range 8 {
		last = newMsg(ch, fmt.Sprint("k", i), i)
		mustAppend(t, h, last, opts)
	}
	if n := rdb.XLen(t.Context(), "t:h:{feed:f1}").Val(); n != 5 {
		t.Errorf("stream holds %d entries, want MaxPerChannel 5", n)
	}
	msgs, _, gap, err := h.Since(t.Context(), ch, hub.Position{Epoch: last.Epoch}, opts)
	if err != nil || !gap || len(msgs) != 5 || msgs[0].Offset != 4 {
		t.Errorf("Since(0) = %d messages, gap %v, %v; want 4..8 and a gap", len(msgs), gap, err)
	}
	for _, key := range []string{"t:m:{feed:f1}", "t:h:{feed:f1}", "t:k:{feed:f1}:k7"} {
		ttl := rdb.PTTL(t.Context(), key).Val()
		want := 2 * time.Hour // MaxAge + TTL
		if strings.HasPrefix(key, "t:k:") {
			want = 2 * time.Minute // the default duplicate window
		}
		if ttl <= want-time.Minute || ttl > want {
			t.Errorf("%s expires in %v, want about %v", key, ttl, want)
		}
	}
	// A channel that only had a Head expires after MaxAge.
	if _, err := h.Head(t.Context(), "feed:quiet", opts); err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(t.Context(), "t:m:{feed:quiet}").Val(); ttl <= 59*time.Minute || ttl > time.Hour {
		t.Errorf("meta of a channel without messages expires in %v, want about 1h", ttl)
	}
}

func TestConfigErrors(t *testing.T) {
	addr, _ := testutil.Redis(t)
	_, err := redishistory.New(t.Context(), connect(t, addr), redishistory.Config{MaxPerChannel: -1, MaxAge: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "MaxPerChannel") || !strings.Contains(err.Error(), "MaxAge") {
		t.Errorf("New with two bad fields: %v; want both reported", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if _, err := redishistory.Open(ctx, "redis://127.0.0.1:1", redishistory.Config{}); err == nil {
		t.Error("Open of an address where no Redis listens succeeded")
	}
	h, err := redishistory.Open(t.Context(), "redis://"+addr, redishistory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Head(t.Context(), "x", hub.HistoryOptions{}); err != nil {
		t.Fatal(err)
	}
	if err, again := h.Close(), h.Close(); err != nil || again != nil {
		t.Errorf("Close = %v, then %v; want nil twice", err, again)
	}
}

// BenchmarkAppend appends to one channel of a redis-server that fsyncs
// every write (appendfsync always), from one goroutine and from several
// (as channels of several nodes or hub stripes would).
func BenchmarkAppend(b *testing.B) {
	addr, _ := testutil.Redis(b)
	h := open(b, addr, redishistory.Config{})
	opts := hub.HistoryOptions{Size: 100, TTL: time.Hour}
	b.Run("serial", func(b *testing.B) {
		m := newMsg("bench:serial", "", 0)
		for b.Loop() {
			if err := h.Append(b.Context(), m, opts); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			m := newMsg("bench:parallel", "", 0)
			for pb.Next() {
				if err := h.Append(context.Background(), m, opts); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
	})
}

// BenchmarkSince reads the last n messages of a channel, as a client
// resuming n messages behind does.
func BenchmarkSince(b *testing.B) {
	addr, _ := testutil.Redis(b)
	h := open(b, addr, redishistory.Config{})
	opts := hub.HistoryOptions{Size: 1000, TTL: time.Hour}
	var last *hub.Message
	for i := range 1000 {
		last = newMsg("bench:since", "", i)
		if err := h.Append(b.Context(), last, opts); err != nil {
			b.Fatal(err)
		}
	}
	for _, n := range []uint64{0, 10, 100, 1000} {
		b.Run(fmt.Sprintf("behind=%d", n), func(b *testing.B) {
			pos := hub.Position{Epoch: last.Epoch, Offset: last.Offset - n}
			for b.Loop() {
				msgs, _, gap, err := h.Since(b.Context(), "bench:since", pos, opts)
				if err != nil || gap || uint64(len(msgs)) != n {
					b.Fatalf("%d messages, gap %v, %v", len(msgs), gap, err)
				}
			}
			b.ReportMetric(float64(b.N*int(n))/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// TestKeep: a quiet channel with subscribers keeps its head past MaxAge
// while the hub keeps it. Keep runs every MaxAge/8, so a stall of the
// test or of Redis longer than 7/8 of MaxAge expires the keys: 2s leaves
// room for a CI machine busy with other packages (1s did not, once).
func TestKeep(t *testing.T) {
	addr, _ := testutil.Redis(t)
	const maxAge = 2 * time.Second
	historytest.RunKeep(t, func(t *testing.T) hub.History { return open(t, addr, redishistory.Config{MaxAge: maxAge}) }, maxAge)
}
