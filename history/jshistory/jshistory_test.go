package jshistory_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
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
	// Keep is called every maxAge/8; 2s leaves a slow machine room for
	// the calls to come late.
	const maxAge = 2 * time.Second
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

// TestKeptHeadNeverReusesOffsets: the head Keep carries on is stored in
// the stream, so it goes with the messages: after the stream is purged or
// lost, the channel starts a new epoch (going on from the kept head 2
// would give offset 3, appended after it, to another message).
func TestKeptHeadNeverReusesOffsets(t *testing.T) {
	const maxAge = time.Second
	for _, tc := range []struct {
		name string
		lose func(t *testing.T, js natsjs.JetStream)
	}{
		{"purged", func(t *testing.T, js natsjs.JetStream) {
			st, err := js.Stream(t.Context(), "herald_history")
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Purge(t.Context()); err != nil {
				t.Fatal(err)
			}
		}},
		{"deleted", func(t *testing.T, js natsjs.JetStream) {
			if err := js.DeleteStream(t.Context(), "herald_history"); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := embedded(t)
			h := openWith(t, ns, jshistory.Config{MaxAge: maxAge, Duplicates: maxAge / 2})
			js := jsOf(t, ns)
			const ch = "thread:b"
			appendOne(t, h, ch)
			first := appendOne(t, h, ch)
			subject := "herald.history." + base64.RawURLEncoding.EncodeToString([]byte(ch))
			// Keep until it has appended its marker of the head 2 (once the
			// messages are half MaxAge old).
			testutil.Eventually(t, 2*maxAge, func() error {
				if err := h.(hub.HistoryKeeper).Keep(t.Context(), ch, hub.HistoryOptions{Size: 10}); err != nil {
					return err
				}
				st, err := js.Stream(t.Context(), "herald_history")
				if err != nil {
					return err
				}
				last, err := st.GetLastMsgForSubject(t.Context(), subject)
				if err != nil || last.Header.Get("Herald-Keep") == "" || last.Header.Get("Herald-Offset") != "2" {
					return fmt.Errorf("last message %v, %v: no marker of the head 2 yet", last, err)
				}
				return nil
			})
			for range 3 {
				appendOne(t, h, ch)
			}
			if msgs, _, _, err := h.Since(t.Context(), ch, hub.Position{Epoch: first.Epoch, Offset: 1}, hub.HistoryOptions{Size: 10}); err != nil ||
				len(msgs) != 4 || msgs[0].Offset != 2 || msgs[3].Offset != 5 {
				t.Fatalf("Since(1) = %d messages, %v; want offsets 2-5 and no marker", len(msgs), err)
			}
			tc.lose(t, js)
			if next := appendOne(t, h, ch); next.Epoch == first.Epoch {
				t.Fatalf("after the stream was %s, the next append got %s:%d in the old epoch", tc.name, next.Epoch, next.Offset)
			}
		})
	}
}

// TestKeepMarkersDoNotEvict: a channel holding MaxPerChannel messages
// keeps all of them when Keep adds its marker.
func TestKeepMarkersDoNotEvict(t *testing.T) {
	const maxAge = 2 * time.Second
	h := openWith(t, embedded(t), jshistory.Config{MaxAge: maxAge, Duplicates: maxAge / 2, MaxPerChannel: 3})
	const ch = "thread:full"
	var first *hub.Message
	for i := range 3 {
		if m := appendOne(t, h, ch); i == 0 {
			first = m
		}
	}
	time.Sleep(maxAge/2 + 100*time.Millisecond)
	if err := h.(hub.HistoryKeeper).Keep(t.Context(), ch, hub.HistoryOptions{Size: 3}); err != nil {
		t.Fatal(err)
	}
	msgs, head, gap, err := h.Since(t.Context(), ch, hub.Position{Epoch: first.Epoch}, hub.HistoryOptions{Size: 3})
	if err != nil || gap || len(msgs) != 3 || head.Offset != 3 {
		t.Fatalf("Since(0) after Keep = %d messages, head %v, gap %v, %v; want the 3 messages, head 3, no gap", len(msgs), head, gap, err)
	}
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
