package jshistory_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/history/jshistory"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/hub/historytest"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/pipeline/jetstream"
)

// embedded starts an embedded NATS server with JetStream in a temporary
// directory, stopped when the test ends.
func embedded(t *testing.T) *server.Server {
	t.Helper()
	ns, err := jetstream.Embedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

func open(t *testing.T, ns *server.Server) hub.History {
	t.Helper()
	return openWith(t, ns, jshistory.Config{})
}

func openWith(t *testing.T, ns *server.Server, cfg jshistory.Config) hub.History {
	t.Helper()
	nc, err := jetstream.ConnectEmbedded(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := jshistory.New(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestKeep: a quiet channel with subscribers keeps its head after its
// messages aged out of the stream, while the hub keeps it.
func TestKeep(t *testing.T) {
	const maxAge = time.Second
	historytest.RunKeep(t, func(t *testing.T) hub.History {
		return openWith(t, embedded(t), jshistory.Config{MaxAge: maxAge, Duplicates: maxAge / 2})
	}, maxAge)
}

func TestConformance(t *testing.T) {
	historytest.Run(t, func(t *testing.T) hub.History { return open(t, embedded(t)) })
	historytest.RunShared(t, func(t *testing.T, n int) []hub.History {
		ns := embedded(t)
		hs := make([]hub.History, n)
		for i := range hs {
			hs[i] = open(t, ns)
		}
		return hs
	})
}

// keepFor calls Keep on ch every eighth of maxAge for d, as the hub does
// for a channel with subscribers.
func keepFor(t *testing.T, h hub.History, ch string, maxAge, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(maxAge / 8) {
		if err := h.(hub.HistoryKeeper).Keep(t.Context(), ch, hub.HistoryOptions{Size: 10}); err != nil {
			t.Fatal(err)
		}
	}
}

func appendOne(t *testing.T, h hub.History, ch string) *hub.Message {
	t.Helper()
	m := &hub.Message{Message: broker.Message{Channel: ch, Type: "t", Data: []byte("1"), Time: time.Now()}}
	if err := h.Append(t.Context(), m, hub.HistoryOptions{Size: 10}); err != nil {
		t.Fatal(err)
	}
	return m
}

// jsOf returns a JetStream client of ns, for what the tests do behind the
// store's back.
func jsOf(t *testing.T, ns *server.Server) natsjs.JetStream {
	t.Helper()
	nc, err := jetstream.ConnectEmbedded(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// epochsBucket returns the store's bucket of epochs (default prefix).
func epochsBucket(t *testing.T, ns *server.Server) natsjs.KeyValue {
	t.Helper()
	kv, err := jsOf(t, ns).KeyValue(t.Context(), "herald_epochs")
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// TestKeptHeadNeverReusesOffsets: the head Keep wrote is gone on from only
// while nothing newer can have been lost: not from an entry older than half
// MaxAge (a message appended after its head would have aged out too), and
// not after the stream alone was lost (offsets 3-5 were appended after the
// head 2 was written: going on from 2 would give offset 3 to another
// message).
func TestKeptHeadNeverReusesOffsets(t *testing.T) {
	const maxAge = time.Second
	t.Run("an entry written after a newer message", func(t *testing.T) {
		ns := embedded(t)
		h := openWith(t, ns, jshistory.Config{MaxAge: maxAge, Duplicates: maxAge / 2})
		appendOne(t, h, "thread:a")
		first := appendOne(t, h, "thread:a")
		appendOne(t, h, "thread:a")
		// A Keep on another node read the head 2 before offset 3 was
		// appended, and writes it after: the entry outlives offset 3.
		time.Sleep(maxAge / 3)
		kv := epochsBucket(t, ns)
		if _, err := kv.Put(t.Context(), base64.RawURLEncoding.EncodeToString([]byte("thread:a")), []byte(first.Epoch+"+@2")); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 3*maxAge, func() error {
			if got, err := h.Head(t.Context(), "thread:a", hub.HistoryOptions{Size: 10}); err != nil || got == (hub.Position{Epoch: first.Epoch, Offset: 3}) {
				return fmt.Errorf("head %v, %v: offset 3 not aged out yet", got, err)
			}
			return nil
		})
		if next := appendOne(t, h, "thread:a"); next.Epoch == first.Epoch && next.Offset <= 3 {
			t.Fatalf("after offset 3 aged out, the next append got %s:%d: offset reused", next.Epoch, next.Offset)
		}
	})
	t.Run("stream lost", func(t *testing.T) {
		const maxAge = 2 * time.Second // the entry stays fresh through the test
		ns := embedded(t)
		h := openWith(t, ns, jshistory.Config{MaxAge: maxAge, Duplicates: maxAge / 2})
		appendOne(t, h, "thread:b")
		first := appendOne(t, h, "thread:b")
		kv := epochsBucket(t, ns)
		// Keep until it has written the head 2 into the channel's entry
		// (once the messages are half MaxAge old): the entry is fresh.
		testutil.Eventually(t, 2*maxAge, func() error {
			if err := h.(hub.HistoryKeeper).Keep(t.Context(), "thread:b", hub.HistoryOptions{Size: 10}); err != nil {
				return err
			}
			e, err := kv.Get(t.Context(), base64.RawURLEncoding.EncodeToString([]byte("thread:b")))
			if err != nil || !strings.HasSuffix(string(e.Value()), "+@2") {
				return fmt.Errorf("entry %v, %v: the head not written yet", e, err)
			}
			return nil
		})
		for range 3 {
			appendOne(t, h, "thread:b")
		}
		if err := jsOf(t, ns).DeleteStream(t.Context(), "herald_history"); err != nil {
			t.Fatal(err)
		}
		if next := appendOne(t, h, "thread:b"); next.Epoch == first.Epoch {
			t.Fatalf("after the stream was lost, the next append got %s:%d in the old epoch", next.Epoch, next.Offset)
		}
	})
}

// TestLossConformance: the history is lost when its stream and epochs
// bucket are deleted (by an operator, or a JetStream that comes back
// without its store). The running History notices, creates both again
// and starts new epochs, which readers of old cursors see as a gap.
func TestLossConformance(t *testing.T) {
	historytest.RunLoss(t, func(t *testing.T) (hub.History, func() hub.History) {
		ns := embedded(t)
		h := open(t, ns)
		return h, func() hub.History {
			js := jsOf(t, ns)
			// The names jshistory.New gives them with the default prefix.
			if err := js.DeleteStream(t.Context(), "herald_history"); err != nil {
				t.Fatal(err)
			}
			if err := js.DeleteKeyValue(t.Context(), "herald_epochs"); err != nil {
				t.Fatal(err)
			}
			// The running store re-creates them: a node carries on
			// after its engine lost its data.
			return h
		}
	})
}

// TestSurvivesRestart: after the NATS server restarts on the same
// directory, a new History continues the channel's epoch and offsets, and
// a cursor from before reads what followed it without a gap.
func TestSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	start := func() *server.Server {
		ns, err := jetstream.Embedded(dir)
		if err != nil {
			t.Fatal(err)
		}
		return ns
	}
	opts := hub.HistoryOptions{Size: 100, TTL: time.Hour}
	ns := start()
	h := open(t, ns)
	var msgs []*hub.Message
	for i := range 3 {
		m := &hub.Message{}
		m.Channel, m.Type, m.Data, m.Time = "thread:t1", "post.created", []byte(`{"i":`+string(rune('0'+i))+`}`), time.Now()
		if err := h.Append(t.Context(), m, opts); err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	ns.Shutdown()
	ns.WaitForShutdown()

	ns = start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	h = open(t, ns)
	got, head, gap, err := h.Since(t.Context(), "thread:t1", hub.Position{Epoch: msgs[0].Epoch, Offset: 1}, opts)
	if err != nil || gap || head.Epoch != msgs[0].Epoch || head.Offset != 3 || len(got) != 2 || got[0].Offset != 2 ||
		string(got[1].Envelope) != string(msgs[2].Envelope) {
		t.Fatalf("after restart: %d messages, head %+v, gap %v, err %v", len(got), head, gap, err)
	}
	m := &hub.Message{}
	m.Channel, m.Type, m.Data, m.Time = "thread:t1", "post.created", []byte(`{"i":3}`), time.Now()
	if err := h.Append(t.Context(), m, opts); err != nil || m.Offset != 4 || m.Epoch != msgs[0].Epoch {
		t.Fatalf("append after restart: offset %d epoch %q (want 4, %q): %v", m.Offset, m.Epoch, msgs[0].Epoch, err)
	}
}

// TestDuplicateKey: a message whose idempotency key and channel were
// stored is not stored again; Append reports hub.ErrDuplicate with the
// original's position.
func TestDuplicateKey(t *testing.T) {
	h := open(t, embedded(t))
	opts := hub.HistoryOptions{Size: 100, TTL: time.Hour}
	newMsg := func(key string) *hub.Message {
		m := &hub.Message{Key: key}
		m.Channel, m.Type, m.Data, m.Time = "post:p1", "post.created", []byte(`{"a":1}`), time.Now()
		return m
	}
	first := newMsg("public:evt-1")
	if err := h.Append(t.Context(), first, opts); err != nil {
		t.Fatal(err)
	}
	if err := h.Append(t.Context(), newMsg("public:evt-2"), opts); err != nil {
		t.Fatal(err)
	}
	again := newMsg("public:evt-1")
	if err := h.Append(t.Context(), again, opts); !errors.Is(err, hub.ErrDuplicate) || again.Offset != first.Offset || again.Epoch != first.Epoch {
		t.Fatalf("repeat: %v, offset %d (first %d)", err, again.Offset, first.Offset)
	}
	msgs, head, _, err := h.Since(t.Context(), "post:p1", hub.Position{Epoch: first.Epoch}, opts)
	if err != nil || len(msgs) != 2 || head.Offset != 2 {
		t.Fatalf("%d messages, head %+v, %v: want 2", len(msgs), head, err)
	}
}
