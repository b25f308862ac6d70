// Package historytest is the conformance suite every hub.History
// implementation must pass. An implementation's test calls Run with a
// factory of empty stores and, if several Herald nodes can share one store
// (NATS JetStream, Redis Streams), also RunShared with a factory of n
// handles on one store:
//
//	func TestConformance(t *testing.T) {
//		historytest.Run(t, func(t *testing.T) hub.History { return newTestStore(t) })
//	}
//
//	func TestSharedConformance(t *testing.T) {
//		historytest.RunShared(t, func(t *testing.T, n int) []hub.History {
//			return newTestStores(t, n) // n clients of one engine
//		})
//	}
//
// A store that can lose what it holds while Herald keeps running (Redis
// restarted without persistence, flushed, or evicting its keys) or that
// Herald finds empty when it restarts (the memory store; a JetStream
// stream deleted) also calls RunLoss:
//
//	func TestLossConformance(t *testing.T) {
//		historytest.RunLoss(t, func(t *testing.T) (hub.History, func() hub.History) {
//			h, wipe := newTestStoreAndEngine(t)
//			return h, func() hub.History { wipe(); return h }
//		})
//	}
//
// Every case uses channels whose names are unique to the run, so stores
// kept between cases (one Redis for a whole test binary) are fine.
package historytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
)

// opts is the retention of cases that do not test retention: enough to
// keep every message they append.
var opts = hub.HistoryOptions{Size: 10000}

// waitTimeout bounds every wait; a passing run never reaches it.
const waitTimeout = 10 * time.Second

// Run runs the single-store conformance cases. newHistory must return a
// ready store and register its own clean-up with t.Cleanup.
func Run(t *testing.T, newHistory func(t *testing.T) hub.History) {
	t.Helper()
	cases := []struct {
		name string
		fn   func(*testing.T, hub.History)
	}{
		{"AppendAssignsOffsetsAndSeals", testAppendAssignsOffsetsAndSeals},
		{"ReadersNeverSeeUnsealedMessages", testReadersNeverSeeUnsealed},
		{"ChannelsAreIndependent", testChannelsIndependent},
		{"SinceReturnsEverythingAfterPosition", testSinceAfterPosition},
		{"SinceFromHeadReturnsNothing", testSinceFromHead},
		{"TrimmedBySizeGivesGap", testTrimmedBySize},
		{"SizeZeroKeepsNothing", testSizeZero},
		{"ExpiredByTTLGivesGap", testExpiredByTTL},
		{"OtherEpochGivesGap", testOtherEpoch},
		{"HeadCreatesTheEpochAppendsUse", testHeadCreatesEpoch},
		{"ConcurrentAppendsToDifferentChannels", testConcurrentAppends},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newHistory(t)) })
	}
}

// sharedNodes is the number of handles RunShared asks for.
const sharedNodes = 3

// RunShared runs the cases that several Herald nodes sharing one store
// depend on: a cursor from one node works on another. newHistories must
// return n handles on one store (as n nodes would hold) and register their
// clean-up. RunShared does not repeat Run's cases: call Run too.
func RunShared(t *testing.T, newHistories func(t *testing.T, n int) []hub.History) {
	t.Helper()
	cases := []struct {
		name string
		fn   func(*testing.T, []hub.History)
	}{
		{"NodesAgreeOnEpochAndOffsets", testNodesAgree},
		{"ConcurrentAppendsFromEveryNodeToOneChannel", testConcurrentAppendsOneChannel},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hs := newHistories(t, sharedNodes)
			if len(hs) != sharedNodes {
				t.Fatalf("factory returned %d stores, want %d", len(hs), sharedNodes)
			}
			c.fn(t, hs)
		})
	}
}

// RunLoss runs the cases for a store whose engine loses everything it
// held: after the loss every channel starts a new epoch, so that a cursor
// from before gets a gap and is never matched against reused offsets.
//
// newHistory returns a ready store, with its clean-up registered, and
// lose, which makes the engine lose everything the store holds the way it
// would in production, and returns the store to use afterwards: h itself
// when the store is meant to carry on through the loss (a Redis client
// reconnects to a Redis that came back empty), or a new store when Herald
// only recovers by building one (a restarted node's fresh memory store;
// the JetStream store, whose New creates the stream again). Every case
// calls newHistory and lose once.
func RunLoss(t *testing.T, newHistory func(t *testing.T) (h hub.History, lose func() hub.History)) {
	t.Helper()
	cases := []struct {
		name string
		fn   func(*testing.T, hub.History, func() hub.History)
	}{
		{"LostHistoryStartsNewEpochs", testLossStartsNewEpochs},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, lose := newHistory(t)
			c.fn(t, h, lose)
		})
	}
}

// RunKeep checks a hub.HistoryKeeper: a quiet channel whose head would
// expire after maxAge keeps its epoch and offsets for as long as Keep is
// called (every eighth of maxAge here), and goes on from them (whether
// the messages themselves are still there is the store's matter); a quiet
// channel that nobody keeps starts a new epoch, as without Keep.
// newHistory returns a store whose heads expire after maxAge.
func RunKeep(t *testing.T, newHistory func(t *testing.T) hub.History, maxAge time.Duration) {
	t.Helper()
	h := newHistory(t)
	hk, ok := h.(hub.HistoryKeeper)
	if !ok {
		t.Fatalf("%T is not a hub.HistoryKeeper", h)
	}
	o := hub.HistoryOptions{Size: 10}
	kept, idle, empty := channel(t, "kept"), channel(t, "idle"), channel(t, "empty")
	last := appendN(t, h, kept, 2, o)[1]
	idleLast := appendN(t, h, idle, 2, o)[1]
	emptyHead := head(t, h, empty, o) // subscribed, never published to
	for end := time.Now().Add(3 * maxAge); time.Now().Before(end); time.Sleep(maxAge / 8) {
		for _, ch := range []string{kept, empty} {
			if err := hk.Keep(t.Context(), ch, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkSince(t, h, kept, pos(last.Epoch, 2), o, nil, pos(last.Epoch, 2), false)
	if next := appendN(t, h, kept, 1, o)[0]; next.Epoch != last.Epoch || next.Offset != 3 {
		t.Errorf("kept channel: the next append got %s:%d, want %s:3", next.Epoch, next.Offset, last.Epoch)
	}
	if got := head(t, h, empty, o); got != emptyHead {
		t.Errorf("kept empty channel: head %v, want %v", got, emptyHead)
	}
	if next := appendN(t, h, empty, 1, o)[0]; next.Epoch != emptyHead.Epoch || next.Offset != 1 {
		t.Errorf("kept empty channel: the first append got %s:%d, want %s:1", next.Epoch, next.Offset, emptyHead.Epoch)
	}
	if got := head(t, h, idle, o); got.Epoch == idleLast.Epoch {
		t.Errorf("a channel nobody kept still has its epoch %q after %v: the store did not expire it, so this test proves nothing", got.Epoch, 3*maxAge)
	}
}

// ---- helpers ----

// channel returns a channel name unique to this run.
func channel(t *testing.T, name string) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "historytest." + hex.EncodeToString(b[:]) + "." + name
}

// newMsg returns an unsealed message as the hub hands it to Append: no
// epoch, offset or envelope yet.
func newMsg(ch string, i int) *hub.Message {
	return &hub.Message{Message: broker.Message{
		Channel: ch,
		Type:    "post.created",
		Data:    fmt.Appendf(nil, `{"i":%d,"html":"\u003cp\u003e"}`, i),
		Time:    time.Now(),
	}}
}

// appendN appends n new messages to ch and returns them, sealed.
func appendN(t *testing.T, h hub.History, ch string, n int, o hub.HistoryOptions) []*hub.Message {
	t.Helper()
	out := make([]*hub.Message, n)
	for i := range out {
		m := newMsg(ch, i)
		if err := h.Append(t.Context(), m, o); err != nil {
			t.Fatalf("Append(%s): %v", ch, err)
		}
		if err := checkSealed(m); err != nil {
			t.Fatalf("after Append: %v", err)
		}
		out[i] = m
	}
	return out
}

// checkSealed reports whether m carries an epoch, an offset and the
// envelope that Seal builds from them.
func checkSealed(m *hub.Message) error {
	if m.Epoch == "" || m.Offset == 0 {
		return fmt.Errorf("%s: epoch %q offset %d: not assigned", m.Channel, m.Epoch, m.Offset)
	}
	if m.Envelope == nil {
		return fmt.Errorf("%s #%d: Envelope is nil: not sealed", m.Channel, m.Offset)
	}
	var env struct {
		Channel string `json:"channel"`
		Epoch   string `json:"epoch"`
		Offset  uint64 `json:"offset"`
	}
	if err := json.Unmarshal(m.Envelope, &env); err != nil {
		return fmt.Errorf("%s #%d: envelope %q: %v", m.Channel, m.Offset, m.Envelope, err)
	}
	if env.Channel != m.Channel || env.Epoch != m.Epoch || env.Offset != m.Offset {
		return fmt.Errorf("%s #%d: envelope %s does not match the message's channel, epoch %q and offset: sealed before the offset was assigned?",
			m.Channel, m.Offset, m.Envelope, m.Epoch)
	}
	want := &hub.Message{Message: m.Message}
	want.Seal()
	if !bytes.Equal(m.Envelope, want.Envelope) {
		return fmt.Errorf("%s #%d: envelope %s, Seal gives %s", m.Channel, m.Offset, m.Envelope, want.Envelope)
	}
	return nil
}

// checkEpoch fails the test unless e can travel in a client cursor.
func checkEpoch(t *testing.T, ch, e string) {
	t.Helper()
	if e == "" {
		t.Fatalf("%s: empty epoch", ch)
	}
	if _, err := hub.ParseCursor(ch + "@" + e + ":0"); err != nil {
		t.Fatalf("%s: epoch %q cannot be carried in a cursor: %v", ch, e, err)
	}
}

func since(t *testing.T, h hub.History, ch string, pos hub.Position, o hub.HistoryOptions) ([]*hub.Message, hub.Position, bool) {
	t.Helper()
	msgs, head, gap, err := h.Since(t.Context(), ch, pos, o)
	if err != nil {
		t.Fatalf("Since(%s, %v): %v", ch, pos, err)
	}
	return msgs, head, gap
}

func head(t *testing.T, h hub.History, ch string, o hub.HistoryOptions) hub.Position {
	t.Helper()
	p, err := h.Head(t.Context(), ch, o)
	if err != nil {
		t.Fatalf("Head(%s): %v", ch, err)
	}
	return p
}

// checkSince calls Since and checks every part of its answer.
func checkSince(t *testing.T, h hub.History, ch string, pos hub.Position, o hub.HistoryOptions,
	want []*hub.Message, wantHead hub.Position, wantGap bool) {
	t.Helper()
	got, gotHead, gap := since(t, h, ch, pos, o)
	call := fmt.Sprintf("Since(%s, %s:%d)", ch, pos.Epoch, pos.Offset)
	if gap != wantGap {
		t.Errorf("%s: gap = %v, want %v (returned offsets %v)", call, gap, wantGap, offsets(got))
	}
	if gotHead != wantHead {
		t.Errorf("%s: head = %v, want %v", call, gotHead, wantHead)
	}
	if err := sameMessages(got, want); err != nil {
		t.Errorf("%s: %v", call, err)
	}
}

// sameMessages reports how got differs from want, message by message.
func sameMessages(got, want []*hub.Message) error {
	if len(got) != len(want) {
		return fmt.Errorf("returned offsets %v, want %v", offsets(got), offsets(want))
	}
	for i, g := range got {
		w := want[i]
		switch {
		case g.Offset != w.Offset || g.Epoch != w.Epoch:
			return fmt.Errorf("returned offsets %v, want %v", offsets(got), offsets(want))
		case g.Channel != w.Channel:
			return fmt.Errorf("#%d: channel %q, want %q", w.Offset, g.Channel, w.Channel)
		case g.Type != w.Type || !bytes.Equal(g.Data, w.Data) || !g.Time.Equal(w.Time):
			return fmt.Errorf("#%d: type %q data %s time %v, want %q %s %v", w.Offset, g.Type, g.Data, g.Time, w.Type, w.Data, w.Time)
		case !bytes.Equal(g.Envelope, w.Envelope):
			return fmt.Errorf("#%d: envelope %s, want %s", w.Offset, g.Envelope, w.Envelope)
		}
	}
	return nil
}

func offsets(ms []*hub.Message) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.Offset
	}
	return out
}

func pos(e string, off uint64) hub.Position { return hub.Position{Epoch: e, Offset: off} }

// collect gathers errors from goroutines other than the test's.
type collect struct {
	mu   sync.Mutex
	errs []error
}

func (c *collect) add(err error) {
	c.mu.Lock()
	c.errs = append(c.errs, err)
	c.mu.Unlock()
}

func (c *collect) report(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, err := range c.errs {
		if i == 10 {
			t.Errorf("… and %d more errors", len(c.errs)-i)
			break
		}
		t.Error(err)
	}
}

// ---- cases ----

// testAppendAssignsOffsetsAndSeals: Append gives the channel's epoch and
// offsets 1, 2, 3… and seals the message; Head follows.
func testAppendAssignsOffsetsAndSeals(t *testing.T, h hub.History) {
	ch := channel(t, "append")
	ms := appendN(t, h, ch, 5, opts)
	e := ms[0].Epoch
	checkEpoch(t, ch, e)
	for i, m := range ms {
		if m.Epoch != e || m.Offset != uint64(i+1) {
			t.Fatalf("append %d got %s:%d, want %s:%d", i+1, m.Epoch, m.Offset, e, i+1)
		}
	}
	if got := head(t, h, ch, opts); got != pos(e, 5) {
		t.Errorf("Head = %v, want %v", got, pos(e, 5))
	}
	checkSince(t, h, ch, pos(e, 0), opts, ms, pos(e, 5), false)
}

// testReadersNeverSeeUnsealed: a reader running beside Append only ever
// sees sealed messages. Under -race this also catches a store that seals
// after publishing the message to readers.
func testReadersNeverSeeUnsealed(t *testing.T, h hub.History) {
	ch := channel(t, "sealed")
	e := head(t, h, ch, opts).Epoch
	const n = 300
	var errs collect
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			msgs, _, _, err := h.Since(context.Background(), ch, pos(e, 0), opts)
			if err != nil {
				errs.add(fmt.Errorf("reader: Since: %v", err))
				return
			}
			for _, m := range msgs {
				if err := checkSealed(m); err != nil {
					errs.add(fmt.Errorf("reader saw %v", err))
					return
				}
			}
		}
	})
	appendN(t, h, ch, n, opts)
	close(done)
	wg.Wait()
	errs.report(t)
}

// testChannelsIndependent: each channel has its own offsets and its own
// messages.
func testChannelsIndependent(t *testing.T, h hub.History) {
	chans := []string{channel(t, "a"), channel(t, "b"), channel(t, "c")}
	want := make(map[string][]*hub.Message)
	for round := range 4 {
		for i, ch := range chans {
			if round <= i+1 { // a gets 2, b 3, c 4
				want[ch] = append(want[ch], appendN(t, h, ch, 1, opts)...)
			}
		}
	}
	for i, ch := range chans {
		ms := want[ch]
		if len(ms) != i+2 {
			t.Fatalf("%s: appended %d, want %d", ch, len(ms), i+2)
		}
		e := ms[0].Epoch
		for j, m := range ms {
			if m.Epoch != e || m.Offset != uint64(j+1) {
				t.Errorf("%s: append %d got %s:%d, want %s:%d", ch, j+1, m.Epoch, m.Offset, e, j+1)
			}
		}
		checkSince(t, h, ch, pos(e, 0), opts, ms, pos(e, uint64(len(ms))), false)
	}
}

// testSinceAfterPosition: from every position of the current epoch, Since
// returns exactly the later messages, in order, with no gap.
func testSinceAfterPosition(t *testing.T, h hub.History) {
	ch := channel(t, "since")
	ms := appendN(t, h, ch, 10, opts)
	e := ms[0].Epoch
	for p := range uint64(len(ms) + 1) {
		checkSince(t, h, ch, pos(e, p), opts, ms[p:], pos(e, 10), false)
	}
}

// testSinceFromHead: a reader that is up to date gets nothing and no gap,
// on a new channel and on one with messages.
func testSinceFromHead(t *testing.T, h hub.History) {
	ch := channel(t, "head")
	hd := head(t, h, ch, opts)
	checkSince(t, h, ch, hd, opts, nil, hd, false)
	ms := appendN(t, h, ch, 3, opts)
	checkSince(t, h, ch, pos(ms[2].Epoch, 3), opts, nil, pos(ms[2].Epoch, 3), false)
}

// testTrimmedBySize: with Size 3 and 5 messages, positions before the
// oldest retained message get a gap and every retained message; later ones
// get no gap.
func testTrimmedBySize(t *testing.T, h hub.History) {
	small := hub.HistoryOptions{Size: 3}
	ch := channel(t, "trim")
	ms := appendN(t, h, ch, 5, small)
	e := ms[0].Epoch
	for i, m := range ms {
		if m.Offset != uint64(i+1) {
			t.Fatalf("append %d got offset %d: trimming must not change offsets", i+1, m.Offset)
		}
	}
	hd := pos(e, 5)
	checkSince(t, h, ch, pos(e, 0), small, ms[2:], hd, true) // 1 and 2 trimmed
	checkSince(t, h, ch, pos(e, 1), small, ms[2:], hd, true) // 2 trimmed
	checkSince(t, h, ch, pos(e, 2), small, ms[2:], hd, false)
	checkSince(t, h, ch, pos(e, 4), small, ms[4:], hd, false)
	checkSince(t, h, ch, pos(e, 5), small, nil, hd, false)
}

// testSizeZero: Size 0 keeps nothing, but offsets are still assigned, so
// any reader behind the head is told of the gap.
func testSizeZero(t *testing.T, h hub.History) {
	none := hub.HistoryOptions{}
	ch := channel(t, "none")
	ms := appendN(t, h, ch, 2, none)
	e := ms[0].Epoch
	if ms[1].Offset != 2 {
		t.Fatalf("second append got offset %d, want 2", ms[1].Offset)
	}
	checkSince(t, h, ch, pos(e, 0), none, nil, pos(e, 2), true)
	checkSince(t, h, ch, pos(e, 1), none, nil, pos(e, 2), true)
	checkSince(t, h, ch, pos(e, 2), none, nil, pos(e, 2), false)
}

// ttl is short so that the case is quick, and long enough that a message
// read right after its Append has not expired even under -race.
const ttl = 400 * time.Millisecond

// testExpiredByTTL: once messages expire, readers from before them get a
// gap and what remains; a reader at the head gets no gap.
func testExpiredByTTL(t *testing.T, h hub.History) {
	short := hub.HistoryOptions{Size: 100, TTL: ttl}
	ch := channel(t, "ttl")
	ms := appendN(t, h, ch, 2, short)
	e := ms[0].Epoch
	checkSince(t, h, ch, pos(e, 0), short, ms, pos(e, 2), false)

	testutil.Eventually(t, waitTimeout, func() error {
		got, hd, gap, err := h.Since(t.Context(), ch, pos(e, 0), short)
		switch {
		case err != nil:
			return err
		case len(got) != 0 || !gap:
			return fmt.Errorf("Since(%s:0) = offsets %v, gap %v; want no messages and a gap once the TTL (%v) has passed", e, offsets(got), gap, ttl)
		case hd != pos(e, 2):
			return fmt.Errorf("head %v after expiry, want %v", hd, pos(e, 2))
		}
		return nil
	})
	checkSince(t, h, ch, pos(e, 1), short, nil, pos(e, 2), true)
	checkSince(t, h, ch, pos(e, 2), short, nil, pos(e, 2), false)

	fresh := appendN(t, h, ch, 1, short)
	if fresh[0].Epoch != e || fresh[0].Offset != 3 {
		t.Fatalf("append after expiry got %s:%d, want %s:3", fresh[0].Epoch, fresh[0].Offset, e)
	}
	checkSince(t, h, ch, pos(e, 0), short, fresh, pos(e, 3), true)
	checkSince(t, h, ch, pos(e, 2), short, fresh, pos(e, 3), false)
}

// testOtherEpoch: a position the history cannot vouch for — another
// epoch, no epoch, or an offset it never reached — gets a gap and every
// retained message.
func testOtherEpoch(t *testing.T, h hub.History) {
	ch := channel(t, "epoch")
	ms := appendN(t, h, ch, 3, opts)
	e := ms[0].Epoch
	other := "x" + e
	if len(other) > 64 {
		other = other[:64]
	}
	hd := pos(e, 3)
	checkSince(t, h, ch, pos(other, 0), opts, ms, hd, true)
	checkSince(t, h, ch, pos(other, 2), opts, ms, hd, true)
	checkSince(t, h, ch, pos("", 0), opts, ms, hd, true)
	checkSince(t, h, ch, pos(e, 7), opts, ms, hd, true)
}

// testHeadCreatesEpoch: Head of a new channel creates its epoch at offset
// 0, and that epoch is the one Appends then use.
func testHeadCreatesEpoch(t *testing.T, h hub.History) {
	ch := channel(t, "new")
	hd := head(t, h, ch, opts)
	checkEpoch(t, ch, hd.Epoch)
	if hd.Offset != 0 {
		t.Fatalf("Head of a new channel = %v, want offset 0", hd)
	}
	if again := head(t, h, ch, opts); again != hd {
		t.Fatalf("second Head = %v, want %v", again, hd)
	}
	ms := appendN(t, h, ch, 2, opts)
	if ms[0].Epoch != hd.Epoch || ms[0].Offset != 1 {
		t.Fatalf("first Append after Head got %s:%d, want %s:1", ms[0].Epoch, ms[0].Offset, hd.Epoch)
	}
	if got := head(t, h, ch, opts); got != pos(hd.Epoch, 2) {
		t.Errorf("Head after two Appends = %v, want %v", got, pos(hd.Epoch, 2))
	}
	checkSince(t, h, ch, hd, opts, ms, pos(hd.Epoch, 2), false)
}

// appendConcurrently runs writers goroutines appending perWriter messages
// to channels[i%len(channels)] through hs[i%len(hs)], with readers calling
// Since and Head meanwhile. It returns every appended message.
func appendConcurrently(t *testing.T, hs []hub.History, channels []string, writers, perWriter int) []*hub.Message {
	t.Helper()
	var errs collect
	var mu sync.Mutex
	var all []*hub.Message
	done := make(chan struct{})
	var readers, wg sync.WaitGroup
	for i, ch := range channels {
		h := hs[i%len(hs)]
		readers.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				hd, err := h.Head(context.Background(), ch, opts)
				if err == nil {
					_, _, _, err = h.Since(context.Background(), ch, pos(hd.Epoch, 0), opts)
				}
				if err != nil {
					errs.add(fmt.Errorf("reader of %s: %v", ch, err))
					return
				}
			}
		})
	}
	for i := range writers {
		h, ch := hs[i%len(hs)], channels[i%len(channels)]
		wg.Go(func() {
			mine := make([]*hub.Message, 0, perWriter)
			for j := range perWriter {
				m := newMsg(ch, i*perWriter+j)
				if err := h.Append(context.Background(), m, opts); err != nil {
					errs.add(fmt.Errorf("Append(%s): %v", ch, err))
					return
				}
				if err := checkSealed(m); err != nil {
					errs.add(err)
					return
				}
				mine = append(mine, m)
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()
	errs.report(t)
	if t.Failed() {
		t.FailNow()
	}
	return all
}

// checkChannelHolds checks that the appended messages of ch have one epoch
// and offsets 1..n with no hole or repeat, and that Since returns them all.
func checkChannelHolds(t *testing.T, h hub.History, ch string, appended []*hub.Message) {
	t.Helper()
	var ms []*hub.Message
	for _, m := range appended {
		if m.Channel == ch {
			ms = append(ms, m)
		}
	}
	if len(ms) == 0 {
		t.Fatalf("%s: nothing appended", ch)
	}
	e := ms[0].Epoch
	byOffset := make([]*hub.Message, len(ms))
	for _, m := range ms {
		if m.Epoch != e {
			t.Fatalf("%s: epochs %q and %q in one run without history loss", ch, e, m.Epoch)
		}
		if m.Offset < 1 || m.Offset > uint64(len(ms)) || byOffset[m.Offset-1] != nil {
			t.Fatalf("%s: offset %d repeated or outside 1..%d", ch, m.Offset, len(ms))
		}
		byOffset[m.Offset-1] = m
	}
	checkSince(t, h, ch, pos(e, 0), opts, byOffset, pos(e, uint64(len(ms))), false)
}

// testConcurrentAppends: Appends to different channels run at once, with
// readers beside them, and every channel still gets 1..n.
func testConcurrentAppends(t *testing.T, h hub.History) {
	var chans []string
	for i := range 16 {
		chans = append(chans, channel(t, fmt.Sprintf("conc:%d", i)))
	}
	// One writer per channel: the hub serialises Appends to one channel.
	all := appendConcurrently(t, []hub.History{h}, chans, len(chans), 100)
	for _, ch := range chans {
		checkChannelHolds(t, h, ch, all)
	}
}

// ---- shared-store cases ----

// testNodesAgree: every node sees one epoch and one sequence of offsets
// per channel, whichever node appends.
func testNodesAgree(t *testing.T, hs []hub.History) {
	ch := channel(t, "agree")
	hd := head(t, hs[0], ch, opts)
	for i, h := range hs[1:] {
		if got := head(t, h, ch, opts); got != hd {
			t.Fatalf("node %d: Head = %v, node 0 said %v", i+1, got, hd)
		}
	}
	var ms []*hub.Message
	for i := range 3 * len(hs) {
		m := appendN(t, hs[i%len(hs)], ch, 1, opts)[0]
		if m.Epoch != hd.Epoch || m.Offset != uint64(i+1) {
			t.Fatalf("append %d on node %d got %s:%d, want %s:%d", i+1, i%len(hs), m.Epoch, m.Offset, hd.Epoch, i+1)
		}
		ms = append(ms, m)
	}
	last := pos(hd.Epoch, uint64(len(ms)))
	for _, h := range hs {
		checkSince(t, h, ch, hd, opts, ms, last, false)
		checkSince(t, h, ch, pos(hd.Epoch, 4), opts, ms[4:], last, false)
	}
}

// testConcurrentAppendsOneChannel: nodes append to one channel at the same
// time (each hub serialises only its own Appends), and still get distinct
// offsets without holes.
func testConcurrentAppendsOneChannel(t *testing.T, hs []hub.History) {
	ch := channel(t, "shared")
	all := appendConcurrently(t, hs, []string{ch}, 2*len(hs), 50)
	for _, h := range hs {
		checkChannelHolds(t, h, ch, all)
	}
}

// ---- loss cases ----

// testLossStartsNewEpochs: after the engine loses everything, each of
// Head, Since and Append — whichever comes first for a channel — starts a
// new epoch at offset 0, the others use it, and positions from before the
// loss get a gap. Offset 1 of the new epoch is not offset 1 of the old.
func testLossStartsNewEpochs(t *testing.T, h hub.History, lose func() hub.History) {
	var (
		byHead   = channel(t, "loss-head")   // messages; Head first after the loss
		byAppend = channel(t, "loss-append") // messages; Append first
		bySince  = channel(t, "loss-since")  // messages; Since first
		empty    = channel(t, "loss-empty")  // an epoch, no messages
	)
	before := map[string][]*hub.Message{
		byHead:   appendN(t, h, byHead, 3, opts),
		byAppend: appendN(t, h, byAppend, 2, opts),
		bySince:  appendN(t, h, bySince, 2, opts),
	}
	emptyHead := head(t, h, empty, opts)
	old := func(ch string) hub.Position { // the last position before the loss
		if ms := before[ch]; len(ms) > 0 {
			return pos(ms[0].Epoch, uint64(len(ms)))
		}
		return emptyHead
	}
	// newEpoch checks that p starts an epoch other than ch's before the loss.
	newEpoch := func(ch string, p hub.Position, what string) {
		t.Helper()
		checkEpoch(t, ch, p.Epoch)
		if p.Epoch == old(ch).Epoch {
			t.Fatalf("%s: %s after the loss uses the epoch from before it, %q: old cursors would match new offsets", ch, what, p.Epoch)
		}
	}

	h = lose()

	// Head first: a new epoch at 0 that stays put and that Append uses.
	hd := head(t, h, byHead, opts)
	newEpoch(byHead, hd, "Head")
	if hd.Offset != 0 {
		t.Fatalf("%s: Head after the loss = %v, want offset 0", byHead, hd)
	}
	if again := head(t, h, byHead, opts); again != hd {
		t.Fatalf("%s: second Head after the loss = %v, want %v", byHead, again, hd)
	}
	checkSince(t, h, byHead, old(byHead), opts, nil, hd, true)
	checkSince(t, h, byHead, pos(old(byHead).Epoch, 0), opts, nil, hd, true)
	ms := appendN(t, h, byHead, 1, opts)
	if ms[0].Epoch != hd.Epoch || ms[0].Offset != 1 {
		t.Fatalf("%s: Append after the loss got %s:%d, want %s:1", byHead, ms[0].Epoch, ms[0].Offset, hd.Epoch)
	}
	now := pos(hd.Epoch, 1)
	// The old offset 1 names another message than the new one.
	checkSince(t, h, byHead, pos(old(byHead).Epoch, 1), opts, ms, now, true)
	checkSince(t, h, byHead, old(byHead), opts, ms, now, true)
	checkSince(t, h, byHead, hd, opts, ms, now, false)

	// Append first: offset 1 of a new epoch, which Head then reports.
	ms = appendN(t, h, byAppend, 1, opts)
	newEpoch(byAppend, pos(ms[0].Epoch, ms[0].Offset), "Append")
	if ms[0].Offset != 1 {
		t.Fatalf("%s: first Append after the loss got offset %d, want 1", byAppend, ms[0].Offset)
	}
	now = pos(ms[0].Epoch, 1)
	if got := head(t, h, byAppend, opts); got != now {
		t.Fatalf("%s: Head = %v, want %v", byAppend, got, now)
	}
	checkSince(t, h, byAppend, old(byAppend), opts, ms, now, true)

	// Since first: a gap, nothing retained, and a new epoch at 0 that
	// Append then uses.
	_, hd, gap := since(t, h, bySince, old(bySince), opts)
	newEpoch(bySince, hd, "Since")
	if hd.Offset != 0 || !gap {
		t.Fatalf("%s: Since(%v) after the loss: head %v, gap %v; want offset 0 and a gap", bySince, old(bySince), hd, gap)
	}
	checkSince(t, h, bySince, old(bySince), opts, nil, hd, true)
	ms = appendN(t, h, bySince, 1, opts)
	if ms[0].Epoch != hd.Epoch || ms[0].Offset != 1 {
		t.Fatalf("%s: Append after Since got %s:%d, want %s:1", bySince, ms[0].Epoch, ms[0].Offset, hd.Epoch)
	}

	// A channel that had an epoch but no messages gets a new one too.
	hd = head(t, h, empty, opts)
	newEpoch(empty, hd, "Head")
	if hd.Offset != 0 {
		t.Fatalf("%s: Head after the loss = %v, want offset 0", empty, hd)
	}
	checkSince(t, h, empty, emptyHead, opts, nil, hd, true)
}
