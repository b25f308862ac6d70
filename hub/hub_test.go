package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
)

func newHub(t testing.TB, cfg hub.Config) *hub.Hub {
	t.Helper()
	h, err := hub.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return h
}

func publish(t testing.TB, h *hub.Hub, data string, channels ...string) []hub.PublishResult {
	t.Helper()
	res, err := h.Publish(context.Background(), hub.Publication{Channels: channels, Type: "test", Data: json.RawMessage(data)})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return res
}

// drain collects the session's queued items.
func drain(s *hub.Session) []hub.Item { return s.Drain(nil) }

func messages(items []hub.Item) []*hub.Message {
	var out []*hub.Message
	for _, it := range items {
		if it.Kind == hub.ItemMessage {
			out = append(out, it.Msg)
		}
	}
	return out
}

func offsets(items []hub.Item, ch string) []uint64 {
	var out []uint64
	for _, m := range messages(items) {
		if m.Channel == ch {
			out = append(out, m.Offset)
		}
	}
	return out
}

func TestPublishDeliversEnvelopeToEveryChannel(t *testing.T) {
	h := newHub(t, hub.Config{})
	s, err := h.NewSession(hub.SessionOptions{Transport: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(hub.DisconnectNormal)
	if err := s.Subscribe(context.Background(), []string{"thread:42", "forum:tech"}, nil); err != nil {
		t.Fatal(err)
	}
	res := publish(t, h, `{"msg":"<b>hi</b>"}`, "thread:42", "forum:tech")
	if len(res) != 2 || res[0].Offset != 1 || res[1].Offset != 1 || res[0].Epoch == "" {
		t.Fatalf("results = %+v", res)
	}
	msgs := messages(drain(s))
	if len(msgs) != 2 {
		t.Fatalf("got %d messages, want 2", len(msgs))
	}
	var env struct {
		Channel string          `json:"channel"`
		Epoch   string          `json:"epoch"`
		Offset  uint64          `json:"offset"`
		Type    string          `json:"type"`
		Data    json.RawMessage `json:"data"`
		Time    time.Time       `json:"time"`
	}
	if err := json.Unmarshal(msgs[0].Envelope, &env); err != nil {
		t.Fatalf("envelope %s: %v", msgs[0].Envelope, err)
	}
	if env.Channel != "thread:42" || env.Offset != 1 || env.Type != "test" || env.Epoch != res[0].Epoch || time.Since(env.Time) > time.Minute {
		t.Fatalf("envelope = %+v", env)
	}
	if string(env.Data) != `{"msg":"\u003cb\u003ehi\u003c/b\u003e"}` {
		t.Fatalf("data not HTML-escaped: %s", env.Data)
	}
}

func TestResumeReplaysExactlyWhatWasMissed(t *testing.T) {
	h := newHub(t, hub.Config{})
	res := publish(t, h, `1`, "c")
	for i := 2; i <= 5; i++ {
		publish(t, h, fmt.Sprint(i), "c")
	}
	s, _ := h.NewSession(hub.SessionOptions{})
	defer s.Close(hub.DisconnectNormal)
	cur, err := hub.ParseCursor(fmt.Sprintf("c@%s:2", res[0].Epoch))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(context.Background(), []string{"c"}, &cur); err != nil {
		t.Fatal(err)
	}
	publish(t, h, `6`, "c")
	items := drain(s)
	if got := fmt.Sprint(offsets(items, "c")); got != "[3 4 5 6]" {
		t.Fatalf("offsets = %s, want [3 4 5 6]", got)
	}
	for _, it := range items {
		if it.Kind == hub.ItemGap {
			t.Fatal("unexpected gap")
		}
	}
}

func TestGapWhenHistoryTrimmedOrEpochUnknown(t *testing.T) {
	h := newHub(t, hub.Config{Default: hub.NamespaceConfig{HistorySize: 3}})
	res := publish(t, h, `1`, "c")
	for i := 2; i <= 10; i++ {
		publish(t, h, fmt.Sprint(i), "c")
	}
	for _, tc := range []struct{ name, cursor string }{
		{"trimmed", fmt.Sprintf("c@%s:1", res[0].Epoch)},
		{"other epoch", "c@zzzzzzzz:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := h.NewSession(hub.SessionOptions{})
			defer s.Close(hub.DisconnectNormal)
			cur, _ := hub.ParseCursor(tc.cursor)
			if err := s.Subscribe(context.Background(), []string{"c"}, &cur); err != nil {
				t.Fatal(err)
			}
			items := drain(s)
			if len(items) == 0 || items[0].Kind != hub.ItemGap || items[0].Channels[0] != "c" {
				t.Fatalf("first item is not a gap for c: %+v", items)
			}
			if got := fmt.Sprint(offsets(items, "c")); got != "[8 9 10]" {
				t.Fatalf("offsets after gap = %s, want [8 9 10]", got)
			}
		})
	}
}

func TestNoDuplicateOrHoleBetweenReplayAndLive(t *testing.T) {
	h := newHub(t, hub.Config{Default: hub.NamespaceConfig{HistorySize: 10000}})
	first := publish(t, h, `0`, "c")
	const total = 2000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; i < total; i++ {
			publish(t, h, fmt.Sprint(i), "c")
		}
	}()
	var sessions []*hub.Session
	for i := 0; i < 20; i++ {
		s, _ := h.NewSession(hub.SessionOptions{})
		cur, _ := hub.ParseCursor(fmt.Sprintf("c@%s:1", first[0].Epoch))
		if err := s.Subscribe(context.Background(), []string{"c"}, &cur); err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	for i, s := range sessions {
		got := offsets(drain(s), "c")
		if len(got) != total-1 {
			t.Fatalf("session %d: got %d messages, want %d", i, len(got), total-1)
		}
		for j, off := range got {
			if off != uint64(j+2) {
				t.Fatalf("session %d: message %d has offset %d, want %d", i, j, off, j+2)
			}
		}
		s.Close(hub.DisconnectNormal)
	}
}

func TestSlowConsumerIsClosedOthersUnaffected(t *testing.T) {
	h := newHub(t, hub.Config{MaxQueueBytes: 64 << 10})
	slow, _ := h.NewSession(hub.SessionOptions{})
	fast, _ := h.NewSession(hub.SessionOptions{})
	for _, s := range []*hub.Session{slow, fast} {
		if err := s.Subscribe(context.Background(), []string{"c"}, nil); err != nil {
			t.Fatal(err)
		}
		drain(s)
	}
	payload := fmt.Sprintf("%q", strings.Repeat("x", 4096))
	var got int
	for i := 0; i < 100; i++ {
		publish(t, h, payload, "c")
		got += len(messages(drain(fast)))
	}
	if got != 100 {
		t.Fatalf("fast consumer got %d of 100", got)
	}
	d, closed := slow.Closed()
	if !closed || d != hub.DisconnectSlowConsumer {
		t.Fatalf("slow consumer: closed=%v reason=%+v", closed, d)
	}
	slow.Close(hub.DisconnectNormal)
	if st := h.Stats(); st.Dropped == 0 || st.Subscribers != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestLimits(t *testing.T) {
	h := newHub(t, hub.Config{MaxConnections: 3, MaxConnectionsPerIP: 2, MaxChannelsPerSession: 2,
		Namespaces: map[string]hub.NamespaceConfig{"small": {MaxSubscribers: 1}}})
	a, err := h.NewSession(hub.SessionOptions{RemoteIP: "10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.NewSession(hub.SessionOptions{RemoteIP: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.NewSession(hub.SessionOptions{RemoteIP: "10.0.0.1"}); !errors.Is(err, hub.ErrTooManyConnectionsFromIP) {
		t.Fatalf("third from one IP: %v", err)
	}
	b, _ := h.NewSession(hub.SessionOptions{RemoteIP: "10.0.0.2"})
	if _, err := h.NewSession(hub.SessionOptions{RemoteIP: "10.0.0.3"}); !errors.Is(err, hub.ErrTooManyConnections) {
		t.Fatalf("fourth: %v", err)
	}
	if err := a.Subscribe(context.Background(), []string{"x", "y", "z"}, nil); !errors.Is(err, hub.ErrTooManyChannels) {
		t.Fatalf("three channels: %v", err)
	}
	if err := a.Subscribe(context.Background(), []string{"small:1"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe(context.Background(), []string{"small:1"}, nil); !errors.Is(err, hub.ErrChannelFull) {
		t.Fatalf("second subscriber of small:1: %v", err)
	}
	if got := b.Channels(); len(got) != 0 {
		t.Fatalf("failed subscribe left channels %v", got)
	}
	a.Close(hub.DisconnectNormal)
	if _, err := h.NewSession(hub.SessionOptions{RemoteIP: "10.0.0.1"}); err != nil {
		t.Fatalf("after close: %v", err)
	}
}

func TestIdempotentPublishDeliversOnce(t *testing.T) {
	h := newHub(t, hub.Config{})
	s, _ := h.NewSession(hub.SessionOptions{})
	defer s.Close(hub.DisconnectNormal)
	_ = s.Subscribe(context.Background(), []string{"c"}, nil)
	p := hub.Publication{Channels: []string{"c"}, Data: json.RawMessage(`1`), IdempotencyKey: "k1"}
	r1, err := h.Publish(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := h.Publish(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(r1) != fmt.Sprint(r2) {
		t.Fatalf("second answer %v differs from first %v", r2, r1)
	}
	if n := len(messages(drain(s))); n != 1 {
		t.Fatalf("delivered %d messages, want 1", n)
	}
}

// TestCloseRacingSubscribeLeavesNoSubscriber closes sessions while they
// subscribe: afterwards no channel may still count them.
func TestCloseRacingSubscribeLeavesNoSubscriber(t *testing.T) {
	h := newHub(t, hub.Config{})
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		s, err := h.NewSession(hub.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			_ = s.Subscribe(context.Background(), []string{"a", "b", "c"}, nil)
		}()
		go func() {
			defer wg.Done()
			s.Close(hub.DisconnectNormal)
		}()
	}
	wg.Wait()
	if st := h.Stats(); st.Subscribers != 0 || st.Connections != 0 {
		t.Fatalf("after closing every session: %+v", st)
	}
}

// TestReplayLargerThanQueueStillResumes: history may hold more than one
// queue's worth; resuming must replay it rather than disconnect forever.
func TestReplayLargerThanQueueStillResumes(t *testing.T) {
	h := newHub(t, hub.Config{MaxQueueBytes: 16 << 10})
	payload := fmt.Sprintf("%q", strings.Repeat("x", 4000))
	first := publish(t, h, payload, "c")
	for i := 0; i < 20; i++ {
		publish(t, h, payload, "c")
	}
	s, _ := h.NewSession(hub.SessionOptions{})
	defer s.Close(hub.DisconnectNormal)
	cur, _ := hub.ParseCursor(fmt.Sprintf("c@%s:1", first[0].Epoch))
	if err := s.Subscribe(context.Background(), []string{"c"}, &cur); err != nil {
		t.Fatal(err)
	}
	if _, closed := s.Closed(); closed {
		t.Fatal("session closed by its own replay")
	}
	if got := len(offsets(drain(s), "c")); got != 20 {
		t.Fatalf("replayed %d messages, want 20", got)
	}
	// After the drain the normal limit applies again.
	for i := 0; i < 10; i++ {
		publish(t, h, payload, "c")
	}
	if d, closed := s.Closed(); !closed || d != hub.DisconnectSlowConsumer {
		t.Fatalf("undrained live traffic over the limit: closed=%v %v", closed, d)
	}
}

// TestControlFloodIsBounded: a client that stops reading cannot grow its
// queue by sending ops (each answered with a control item) or by
// subscribing again and again.
func TestControlFloodIsBounded(t *testing.T) {
	h := newHub(t, hub.Config{MaxQueueBytes: 4 << 10})
	floods := map[string]func(s *hub.Session){
		"subscribe": func(s *hub.Session) {
			_ = s.Subscribe(context.Background(), []string{"a"}, nil)
			s.Unsubscribe("a")
		},
		"empty controls": func(s *hub.Session) { s.Enqueue(nil) },
	}
	for name, flood := range floods {
		t.Run(name, func(t *testing.T) {
			s, _ := h.NewSession(hub.SessionOptions{})
			defer s.Close(hub.DisconnectNormal)
			for i := 0; i < 10000; i++ {
				flood(s)
			}
			if d, closed := s.Closed(); !closed || d != hub.DisconnectSlowConsumer {
				t.Fatalf("flooded session: closed=%v %v", closed, d)
			}
		})
	}
}

// TestUnsubscribeDropsQueuedMessages: unsubscribe then subscribe again with
// a cursor must not deliver the still-queued messages a second time.
func TestUnsubscribeDropsQueuedMessages(t *testing.T) {
	h := newHub(t, hub.Config{})
	s, _ := h.NewSession(hub.SessionOptions{})
	defer s.Close(hub.DisconnectNormal)
	if err := s.Subscribe(context.Background(), []string{"a"}, nil); err != nil {
		t.Fatal(err)
	}
	drain(s)
	var res []hub.PublishResult
	for i := 1; i <= 5; i++ {
		res = publish(t, h, fmt.Sprint(i), "a")
	}
	s.Unsubscribe("a")
	cur, _ := hub.ParseCursor(fmt.Sprintf("a@%s:3", res[0].Epoch))
	if err := s.Subscribe(context.Background(), []string{"a"}, &cur); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(offsets(drain(s), "a")); got != "[4 5]" {
		t.Fatalf("offsets %s, want [4 5]", got)
	}
}

func TestPublishDuringShutdownIsRefused(t *testing.T) {
	h, err := hub.New(hub.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err = h.Publish(context.Background(), hub.Publication{Channels: []string{"a"}})
	if !errors.Is(err, hub.ErrShuttingDown) {
		t.Fatalf("publish after shutdown: %v", err)
	}
	if ch := h.Channel("a"); ch.History != nil && ch.History.Head != 0 {
		t.Fatalf("refused publish reached history: %+v", ch.History)
	}
}

func TestHostileCursorIsRejectedCheaply(t *testing.T) {
	var b strings.Builder
	for i := 0; i <= hub.MaxCursorEntries; i++ {
		fmt.Fprintf(&b, "c%d@e:1,", i)
	}
	if _, err := hub.ParseCursor(strings.TrimSuffix(b.String(), ",")); !errors.Is(err, hub.ErrInvalidCursor) {
		t.Fatalf("cursor of %d entries: %v", hub.MaxCursorEntries+1, err)
	}
}

// TestLiveAndReplayShareOneMessage checks that, with the in-process
// broker, subscribers get the message the history stores (one envelope
// and one SSE frame for both), and that a publish to several channels
// gives each the same time.
func TestLiveAndReplayShareOneMessage(t *testing.T) {
	h := newHub(t, hub.Config{})
	live, err := h.NewSession(hub.SessionOptions{Transport: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(hub.DisconnectNormal)
	chans := []string{"thread:1", "forum:1", "firehose"}
	if err := live.Subscribe(context.Background(), chans, nil); err != nil {
		t.Fatal(err)
	}
	res := publish(t, h, `{"a":1}`, chans...)
	got := messages(drain(live))
	if len(got) != len(chans) {
		t.Fatalf("live: %d messages, want %d", len(got), len(chans))
	}
	var stamp string
	for i, ch := range chans {
		var env struct {
			Time string `json:"time"`
		}
		if err := json.Unmarshal(got[i].Envelope, &env); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			stamp = env.Time
		} else if env.Time != stamp {
			t.Errorf("%s: time %q, %s had %q", ch, env.Time, chans[0], stamp)
		}
		replay, err := h.NewSession(hub.SessionOptions{Transport: "test"})
		if err != nil {
			t.Fatal(err)
		}
		cur, err := hub.ParseCursor(fmt.Sprintf("%s@%s:0", ch, res[i].Epoch))
		if err != nil {
			t.Fatal(err)
		}
		if err := replay.Subscribe(context.Background(), []string{ch}, &cur); err != nil {
			t.Fatal(err)
		}
		stored := messages(drain(replay))
		replay.Close(hub.DisconnectNormal)
		if len(stored) != 1 || stored[0] != got[i] {
			t.Errorf("%s: replayed %v, live %p: not the stored message", ch, stored, got[i])
		}
	}
}
