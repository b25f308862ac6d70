// Package brokertest is the conformance suite every broker.Broker
// implementation must pass. An implementation's test calls Run with a
// factory of single brokers and, if it connects several nodes (NATS, Redis),
// also RunCluster with a factory of connected brokers:
//
//	func TestConformance(t *testing.T) {
//		brokertest.Run(t, func(t *testing.T) broker.Broker { return newTestBroker(t) })
//	}
//
//	func TestClusterConformance(t *testing.T) {
//		brokertest.RunCluster(t, func(t *testing.T, n int) []broker.Broker {
//			return newTestBrokers(t, n) // n brokers on one engine
//		})
//	}
//
// Brokers that depend on an external engine also run RunOutage, with a
// handle on the engine that kills and restarts it:
//
//	func TestOutage(t *testing.T) {
//		srv := testutil.NATS(t)
//		brokertest.RunOutage(t, newTestCluster(srv.URL()), srv)
//	}
//
// Brokers that implement broker.Subscriber are subscribed to every channel
// a case uses before it publishes; RunCluster then also runs the cases of
// the Subscriber contract.
//
// The suite makes no assumption about when delivery happens: it waits for
// messages by polling with a deadline, so brokers that deliver synchronously
// (memory) and asynchronously (over a network) are tested alike. It imports
// only the broker package, so that broker tests never depend on the hub.
package brokertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
)

// waitTimeout bounds every wait for a delivery. It is generous because a
// networked broker under -race on a loaded CI machine can be slow; a passing
// run never waits for it.
const waitTimeout = 10 * time.Second

// Run runs the single-broker conformance cases. newBroker must return a new,
// ready broker on which Run has not been called, and must register its own
// clean-up (t.Cleanup), including Shutdown: the suite may already have shut
// the broker down, which Shutdown's idempotence allows.
func Run(t *testing.T, newBroker func(t *testing.T) broker.Broker) {
	t.Helper()
	cases := []struct {
		name string
		fn   func(*testing.T, func(*testing.T) broker.Broker)
	}{
		{"DeliversEveryMessageOnceIntact", testDeliversOnceIntact},
		{"KeepsPerChannelOrderUnderConcurrency", testOrderUnderConcurrency},
		{"KeepsOrderOfSerialisedPublishers", testOrderOfSerialisedPublishers},
		{"NeverCallsHandlerConcurrentlyForOneChannel", testNoConcurrentHandlerPerChannel},
		{"PublishAfterShutdownReturnsErrClosed", testPublishAfterShutdown},
		{"ShutdownIsIdempotent", testShutdownIdempotent},
		{"ShutdownHonoursContext", testShutdownHonoursContext},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newBroker) })
	}
}

// clusterSize is the number of nodes RunCluster asks for.
const clusterSize = 3

// RunCluster runs the cross-node conformance cases. newCluster must return n
// new brokers connected to one another (n Herald nodes on one engine), on
// none of which Run has been called, and register their clean-up like Run's
// factory. RunCluster does not repeat the single-broker cases: call Run too.
//
// When the brokers implement broker.Subscriber, every case subscribes each
// node to the channels it uses before publishing, and RunCluster adds the
// cases of the Subscriber contract (only a subscribed channel is delivered;
// Unsubscribe stops delivery; a subscription is in place when Subscribe
// returns; a channel can be subscribed again). For brokers that do not
// implement it, these cases are not listed at all. To tell, RunCluster
// first asks newCluster for a single broker and shuts it down.
func RunCluster(t *testing.T, newCluster func(t *testing.T, n int) []broker.Broker) {
	t.Helper()
	cases := []struct {
		name string
		fn   func(*testing.T, func(*testing.T, int) []broker.Broker)
	}{
		{"EveryNodeReceivesEveryMessageOnce", testClusterDeliversEverywhere},
		{"PerChannelOrderIsKeptOnEveryNode", testClusterOrder},
		{"ShutdownOfOneNodeLeavesTheOthersWorking", testClusterShutdownOneNode},
	}
	if implementsSubscriber(t, newCluster) {
		cases = append(cases, []struct {
			name string
			fn   func(*testing.T, func(*testing.T, int) []broker.Broker)
		}{
			{"OnlySubscribedChannelsAreDelivered", testOnlySubscribedDelivered},
			{"UnsubscribeStopsDelivery", testUnsubscribeStopsDelivery},
			{"SubscribeAgainAfterUnsubscribeDelivers", testResubscribe},
			{"SubscribeIsInPlaceWhenItReturns", testSubscribeInPlace},
		}...)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newCluster) })
	}
}

// ---- helpers ----

// recorder is a Handler that keeps every message it receives, per channel,
// and counts handler calls that overlap for one channel. It never calls t:
// an asynchronous broker may call it after the test has ended.
type recorder struct {
	mu     sync.Mutex
	byChan map[string][]*broker.Message // guarded by mu

	inflight   sync.Map // channel → *atomic.Int32
	overlaps   atomic.Int64
	overlapped sync.Map // channel → struct{}, channels that saw an overlap

	// slow makes each call yield a few times so that overlapping calls, if
	// the broker makes them, are likely to be caught.
	slow bool

	// block, if set, is called on every message before it is recorded.
	block func(*broker.Message)
}

func newRecorder() *recorder {
	return &recorder{byChan: make(map[string][]*broker.Message)}
}

func (r *recorder) handle(m *broker.Message) {
	v, _ := r.inflight.LoadOrStore(m.Channel, new(atomic.Int32))
	n := v.(*atomic.Int32)
	if n.Add(1) > 1 {
		r.overlaps.Add(1)
		r.overlapped.Store(m.Channel, struct{}{})
	}
	defer n.Add(-1)
	if r.block != nil {
		r.block(m)
	}
	if r.slow {
		for range 3 {
			runtime.Gosched()
		}
	}
	r.mu.Lock()
	r.byChan[m.Channel] = append(r.byChan[m.Channel], m)
	r.mu.Unlock()
}

// received returns a copy of the messages received on ch so far.
func (r *recorder) received(ch string) []*broker.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*broker.Message(nil), r.byChan[ch]...)
}

// checkNoOverlap fails the test if the handler was ever called concurrently
// for one channel.
func (r *recorder) checkNoOverlap(t *testing.T, node string) {
	t.Helper()
	if n := r.overlaps.Load(); n > 0 {
		var chans []string
		r.overlapped.Range(func(k, _ any) bool { chans = append(chans, k.(string)); return true })
		t.Errorf("%shandler was called concurrently for one channel %d times (channels %v); the contract says never", node, n, chans)
	}
}

// eventually polls fn until it returns nil, failing the test with fn's last
// error after waitTimeout. It is the suite's only way to wait.
func eventually(t *testing.T, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	wait := time.Millisecond
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %v: %v", waitTimeout, err)
		}
		time.Sleep(wait)
		wait = min(wait*2, 50*time.Millisecond)
	}
}

// prefix returns a channel-name prefix unique to this run, so that tests
// sharing one engine never see one another's messages.
func prefix(t *testing.T) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "brokertest." + hex.EncodeToString(b[:]) + "."
}

// msg returns message number off of channel ch with every field set.
func msg(ch string, off uint64) *broker.Message {
	data := fmt.Sprintf(`{"n":%d,"text":"\u003cb\u003e h\u00e9llo — ünïcode \u2028","list":[1,2.5,null,true]}`, off)
	return &broker.Message{
		Channel: ch,
		Epoch:   "ep0ch-Z_9",
		Offset:  off,
		Type:    "post.created",
		Data:    []byte(data),
		Time:    time.Date(2024, 2, 29, 23, 59, 58, 123456789+int(off), time.UTC),
		Envelope: fmt.Appendf(nil, `{"channel":%q,"epoch":"ep0ch-Z_9","offset":%d,"type":"post.created","data":%s,"time":"2024-02-29T23:59:58.123Z"}`,
			ch, off, data),
	}
}

// odd returns messages that stress a transport's encoding: a large payload,
// a non-UTC time, a default type, null data.
func odd(ch string, first uint64) []*broker.Message {
	big := &broker.Message{
		Channel:  ch,
		Epoch:    "e",
		Offset:   first,
		Type:     "message",
		Data:     []byte(`"` + strings.Repeat("x", 32<<10) + `"`),
		Time:     time.Date(2030, 1, 2, 3, 4, 5, 6, time.FixedZone("UTC+5:30", 5*3600+1800)),
		Envelope: []byte(`{"big":"` + strings.Repeat("y", 32<<10) + `"}`),
	}
	null := &broker.Message{
		Channel:  ch,
		Epoch:    "e",
		Offset:   first + 1,
		Type:     "a.b-c_d:e",
		Data:     []byte("null"),
		Time:     time.Unix(0, 1).UTC(),
		Envelope: []byte(`{}`),
	}
	return []*broker.Message{big, null}
}

func clone(m *broker.Message) *broker.Message {
	c := *m
	c.Data = bytes.Clone(m.Data)
	c.Envelope = bytes.Clone(m.Envelope)
	return &c
}

// diff describes how got differs from want, or returns "" if every field
// is intact.
func diff(got, want *broker.Message) string {
	var d []string
	if got.Channel != want.Channel {
		d = append(d, fmt.Sprintf("Channel %q, want %q", got.Channel, want.Channel))
	}
	if got.Epoch != want.Epoch {
		d = append(d, fmt.Sprintf("Epoch %q, want %q", got.Epoch, want.Epoch))
	}
	if got.Offset != want.Offset {
		d = append(d, fmt.Sprintf("Offset %d, want %d", got.Offset, want.Offset))
	}
	if got.Type != want.Type {
		d = append(d, fmt.Sprintf("Type %q, want %q", got.Type, want.Type))
	}
	if !bytes.Equal(got.Data, want.Data) {
		d = append(d, fmt.Sprintf("Data %.80q, want %.80q", got.Data, want.Data))
	}
	if !got.Time.Equal(want.Time) {
		d = append(d, fmt.Sprintf("Time %v, want %v", got.Time, want.Time))
	}
	if !bytes.Equal(got.Envelope, want.Envelope) {
		d = append(d, fmt.Sprintf("Envelope %.80q, want %.80q", got.Envelope, want.Envelope))
	}
	return strings.Join(d, "; ")
}

// publish publishes m and checks that the broker left it unchanged.
func publish(t *testing.T, b broker.Broker, m *broker.Message) {
	t.Helper()
	before := clone(m)
	if err := b.Publish(t.Context(), m); err != nil {
		t.Fatalf("Publish(%s #%d): %v", m.Channel, m.Offset, err)
	}
	if d := diff(m, before); d != "" {
		t.Fatalf("Publish modified the message it was given: %s", d)
	}
}

// publishE is publish for goroutines other than the test's: it reports
// instead of stopping the test.
func publishE(ctx context.Context, b broker.Broker, m *broker.Message) error {
	if err := b.Publish(ctx, m); err != nil {
		return fmt.Errorf("Publish(%s #%d): %w", m.Channel, m.Offset, err)
	}
	return nil
}

// waitExactly waits until r has received at least len(want) messages on
// ch, then checks that it received exactly want, in order, intact.
func waitExactly(t *testing.T, node string, r *recorder, ch string, want []*broker.Message) {
	t.Helper()
	eventually(t, func() error {
		if got := len(r.received(ch)); got < len(want) {
			return fmt.Errorf("%s%s: received %d of %d messages", node, ch, got, len(want))
		}
		return nil
	})
	checkExactly(t, node, r.received(ch), ch, want)
}

func checkExactly(t *testing.T, node string, got []*broker.Message, ch string, want []*broker.Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s%s: received %d messages, want exactly %d (received offsets %s)", node, ch, len(got), len(want), offsets(got))
		return
	}
	for i := range want {
		if got[i].Offset != want[i].Offset {
			t.Errorf("%s%s: message %d of %d has offset %d, want %d: order not kept (received offsets %s)",
				node, ch, i+1, len(want), got[i].Offset, want[i].Offset, offsets(got))
			return
		}
		if d := diff(got[i], want[i]); d != "" {
			t.Errorf("%s%s: message %d of %d: %s", node, ch, i+1, len(want), d)
			return
		}
	}
}

// offsets lists the offsets of ms, abridged past the first 30.
func offsets(ms []*broker.Message) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, m := range ms {
		if i == 30 {
			fmt.Fprintf(&b, " … %d more", len(ms)-i)
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprint(&b, m.Offset)
	}
	b.WriteByte(']')
	return b.String()
}

// start calls Run on b with a new recorder.
func start(t *testing.T, b broker.Broker) *recorder {
	t.Helper()
	r := newRecorder()
	if err := b.Run(r.handle); err != nil {
		t.Fatalf("Run: %v", err)
	}
	return r
}

// subscribe subscribes b to chans if b is a broker.Subscriber, and does
// nothing otherwise: a broker without it delivers every channel.
func subscribe(t *testing.T, node string, b broker.Broker, chans ...string) {
	t.Helper()
	s, ok := b.(broker.Subscriber)
	if !ok {
		return
	}
	for _, ch := range chans {
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		err := s.Subscribe(ctx, ch)
		cancel()
		if err != nil {
			t.Fatalf("%sSubscribe(%s): %v", node, ch, err)
		}
	}
}

// subscribeAll subscribes every node of bs to chans.
func subscribeAll(t *testing.T, bs []broker.Broker, chans ...string) {
	t.Helper()
	for i, b := range bs {
		subscribe(t, node(i), b, chans...)
	}
}

// implementsSubscriber asks newCluster for one broker, shuts it down, and
// reports whether it implements broker.Subscriber.
func implementsSubscriber(t *testing.T, newCluster func(*testing.T, int) []broker.Broker) bool {
	t.Helper()
	bs := newCluster(t, 1)
	if len(bs) != 1 {
		t.Fatalf("cluster factory returned %d brokers, want 1", len(bs))
	}
	_, ok := bs[0].(broker.Subscriber)
	if sd, isSd := bs[0].(broker.Shutdowner); isSd {
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		defer cancel()
		if err := sd.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown of the broker asked for to learn whether it is a broker.Subscriber: %v", err)
		}
	}
	return ok
}

func shutdowner(t *testing.T, b broker.Broker) broker.Shutdowner {
	t.Helper()
	sd, ok := b.(broker.Shutdowner)
	if !ok {
		t.Skipf("%T does not implement broker.Shutdowner", b)
	}
	return sd
}

// ---- single-broker cases ----

// testDeliversOnceIntact: every published message reaches the handler
// exactly once with every field as published.
func testDeliversOnceIntact(t *testing.T, newBroker func(*testing.T) broker.Broker) {
	b := newBroker(t)
	r := start(t, b)
	p := prefix(t)
	chans := []string{p + "thread:42", p + "user/7~x", p + "firehose"}
	subscribe(t, "", b, chans...)
	want := make(map[string][]*broker.Message)
	for i, ch := range chans {
		var ms []*broker.Message
		for off := uint64(1); off <= 5; off++ {
			ms = append(ms, msg(ch, off))
		}
		if i == 0 {
			ms = append(ms, odd(ch, 6)...)
		}
		want[ch] = ms
	}
	// Interleave channels, as a hub publishing one event to several does.
	for off := 0; off < 7; off++ {
		for _, ch := range chans {
			if off < len(want[ch]) {
				publish(t, b, want[ch][off])
			}
		}
	}
	// A last message per channel: once it has arrived, per-channel order
	// means every earlier one, and any duplicate of one, has arrived too.
	for _, ch := range chans {
		last := msg(ch, uint64(len(want[ch])+1))
		want[ch] = append(want[ch], last)
		publish(t, b, last)
	}
	for _, ch := range chans {
		waitExactly(t, "", r, ch, want[ch])
	}
	r.checkNoOverlap(t, "")
}

// publishConcurrently publishes n messages on each channel, one goroutine
// per channel, all channels at once, spread over the given brokers
// (channel i is published through bs[i%len(bs)]). It returns what was
// published per channel.
func publishConcurrently(t *testing.T, bs []broker.Broker, chans []string, n int) map[string][]*broker.Message {
	t.Helper()
	want := make(map[string][]*broker.Message, len(chans))
	for _, ch := range chans {
		ms := make([]*broker.Message, n)
		for i := range ms {
			ms[i] = msg(ch, uint64(i+1))
		}
		want[ch] = ms
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(chans))
	begin := make(chan struct{})
	for i, ch := range chans {
		b := bs[i%len(bs)]
		wg.Go(func() {
			<-begin
			for _, m := range want[ch] {
				if err := publishE(t.Context(), b, m); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	close(begin)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return want
}

// testOrderUnderConcurrency: messages of one channel published from one
// goroutine arrive in that order while other channels are published at the
// same time.
func testOrderUnderConcurrency(t *testing.T, newBroker func(*testing.T) broker.Broker) {
	b := newBroker(t)
	r := start(t, b)
	p := prefix(t)
	var chans []string
	for i := range 8 {
		chans = append(chans, fmt.Sprintf("%sorder:%d", p, i))
	}
	subscribe(t, "", b, chans...)
	want := publishConcurrently(t, []broker.Broker{b}, chans, 300)
	for _, ch := range chans {
		waitExactly(t, "", r, ch, want[ch])
	}
	r.checkNoOverlap(t, "")
}

// testOrderOfSerialisedPublishers: the hub publishes a channel's messages
// from whichever goroutine handles the request, one at a time under a
// per-channel lock (hub.publishOne). Publish calls for one channel that do
// not overlap must arrive in call order even when made from different
// goroutines.
func testOrderOfSerialisedPublishers(t *testing.T, newBroker func(*testing.T) broker.Broker) {
	b := newBroker(t)
	r := start(t, b)
	p := prefix(t)
	const nchan, perChan, msgs = 4, 4, 200
	type lane struct {
		mu   sync.Mutex
		next uint64 // guarded by mu
		sent []*broker.Message
	}
	lanes := make([]*lane, nchan)
	for i := range lanes {
		lanes[i] = &lane{}
		subscribe(t, "", b, fmt.Sprintf("%sserial:%d", p, i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, nchan*perChan)
	for i, l := range lanes {
		ch := fmt.Sprintf("%sserial:%d", p, i)
		for range perChan {
			wg.Go(func() {
				for {
					l.mu.Lock()
					if l.next == msgs {
						l.mu.Unlock()
						return
					}
					l.next++
					m := msg(ch, l.next)
					l.sent = append(l.sent, m)
					err := publishE(t.Context(), b, m)
					l.mu.Unlock()
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, l := range lanes {
		waitExactly(t, "", r, fmt.Sprintf("%sserial:%d", p, i), l.sent)
	}
	r.checkNoOverlap(t, "")
}

// testNoConcurrentHandlerPerChannel: with many channels published at once
// and a handler slow enough to widen any window, the handler never runs
// twice at the same time for one channel.
func testNoConcurrentHandlerPerChannel(t *testing.T, newBroker func(*testing.T) broker.Broker) {
	b := newBroker(t)
	r := newRecorder()
	r.slow = true
	if err := b.Run(r.handle); err != nil {
		t.Fatalf("Run: %v", err)
	}
	p := prefix(t)
	var chans []string
	for i := range 4 {
		chans = append(chans, fmt.Sprintf("%sinflight:%d", p, i))
	}
	subscribe(t, "", b, chans...)
	want := publishConcurrently(t, []broker.Broker{b}, chans, 500)
	for _, ch := range chans {
		waitExactly(t, "", r, ch, want[ch])
	}
	r.checkNoOverlap(t, "")
}

// testPublishAfterShutdown: once Shutdown has returned, Publish returns
// broker.ErrClosed and delivers nothing.
func testPublishAfterShutdown(t *testing.T, newBroker func(*testing.T) broker.Broker) {
	b := newBroker(t)
	sd := shutdowner(t, b)
	r := start(t, b)
	ch := prefix(t) + "closed"
	subscribe(t, "", b, ch)
	first := msg(ch, 1)
	publish(t, b, first)
	waitExactly(t, "", r, ch, []*broker.Message{first})

	if err := sd.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for off := uint64(2); off <= 3; off++ {
		if err := b.Publish(t.Context(), msg(ch, off)); !errors.Is(err, broker.ErrClosed) {
			t.Fatalf("Publish after Shutdown: %v, want broker.ErrClosed", err)
		}
	}
	checkExactly(t, "", r.received(ch), ch, []*broker.Message{first})
}

// testShutdownIdempotent: Shutdown may be called again, and from several
// goroutines at once; every call succeeds.
func testShutdownIdempotent(t *testing.T, newBroker func(*testing.T) broker.Broker) {
	b := newBroker(t)
	sd := shutdowner(t, b)
	start(t, b)
	if err := sd.Shutdown(t.Context()); err != nil {
		t.Fatalf("first Shutdown: %v", err)
	}
	if err := sd.Shutdown(t.Context()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() { errs <- sd.Shutdown(t.Context()) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent Shutdown: %v", err)
		}
	}
	if err := b.Publish(t.Context(), msg(prefix(t)+"x", 1)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after repeated Shutdown: %v, want broker.ErrClosed", err)
	}
}

// shutdownGrace is how long after its context ends Shutdown may take to
// return.
const shutdownGrace = 2 * time.Second

// callShutdown runs Shutdown(ctx) and returns its error, failing the test
// if it has not returned within shutdownGrace of ctx's end.
func callShutdown(t *testing.T, sd broker.Shutdowner, ctx context.Context) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- sd.Shutdown(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		return err
	case <-time.After(shutdownGrace):
		t.Fatalf("Shutdown had not returned %v after its context ended", shutdownGrace)
		return nil
	}
}

// testShutdownHonoursContext: Shutdown returns no later than its context's
// end, with nil or ctx.Err() — even while a handler call is stuck — and the
// broker is closed afterwards either way.
func testShutdownHonoursContext(t *testing.T, newBroker func(*testing.T) broker.Broker) {
	t.Run("AlreadyCancelled", func(t *testing.T) {
		b := newBroker(t)
		sd := shutdowner(t, b)
		start(t, b)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := callShutdown(t, sd, ctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Shutdown(cancelled ctx) = %v, want nil or context.Canceled", err)
		}
		if err := b.Publish(t.Context(), msg(prefix(t)+"x", 1)); !errors.Is(err, broker.ErrClosed) {
			t.Errorf("Publish after Shutdown(cancelled ctx): %v, want broker.ErrClosed", err)
		}
		if err := sd.Shutdown(t.Context()); err != nil {
			t.Errorf("Shutdown after Shutdown(cancelled ctx): %v", err)
		}
	})
	t.Run("HandlerStuck", func(t *testing.T) {
		b := newBroker(t)
		sd := shutdowner(t, b)
		entered := make(chan struct{})
		release := make(chan struct{})
		var once sync.Once
		stuck := prefix(t) + "stuck"
		r := newRecorder()
		r.block = func(m *broker.Message) {
			if m.Channel == stuck {
				once.Do(func() { close(entered) })
				<-release
			}
		}
		if err := b.Run(r.handle); err != nil {
			t.Fatalf("Run: %v", err)
		}
		subscribe(t, "", b, stuck)
		// A synchronous broker delivers inside Publish, so publish from
		// another goroutine; it returns once release is closed.
		m := msg(stuck, 1)
		published := make(chan error, 1)
		go func() { published <- b.Publish(context.Background(), m) }()
		t.Cleanup(func() {
			close(release)
			<-published
		})
		select {
		case <-entered:
		case <-time.After(waitTimeout):
			t.Fatalf("handler not called within %v", waitTimeout)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		if err := callShutdown(t, sd, ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown with a stuck handler = %v, want nil or context.DeadlineExceeded", err)
		}
		if err := b.Publish(t.Context(), msg(prefix(t)+"x", 1)); !errors.Is(err, broker.ErrClosed) {
			t.Errorf("Publish after Shutdown: %v, want broker.ErrClosed", err)
		}
	})
}

// ---- cross-node cases ----

// startCluster asks for n brokers, runs each with its own recorder and
// waits until every node receives what every other node publishes: the
// contract does not say how soon after Run a node's interest reaches the
// others, so the suite waits for it instead of assuming it.
func startCluster(t *testing.T, newCluster func(*testing.T, int) []broker.Broker, n int) ([]broker.Broker, []*recorder) {
	t.Helper()
	bs := newCluster(t, n)
	if len(bs) != n {
		t.Fatalf("cluster factory returned %d brokers, want %d", len(bs), n)
	}
	rs := make([]*recorder, n)
	for i, b := range bs {
		rs[i] = start(t, b)
	}
	p := prefix(t)
	var warmup []string
	for i := range bs {
		warmup = append(warmup, fmt.Sprintf("%swarmup:%d", p, i))
	}
	subscribeAll(t, bs, warmup...)
	for i, b := range bs {
		ch := warmup[i]
		var off uint64
		eventually(t, func() error {
			off++
			if err := b.Publish(t.Context(), msg(ch, off)); err != nil {
				return fmt.Errorf("node %d: warm-up Publish: %w", i, err)
			}
			for j, r := range rs {
				if len(r.received(ch)) == 0 {
					return fmt.Errorf("node %d has not received a warm-up message from node %d", j, i)
				}
			}
			return nil
		})
	}
	return bs, rs
}

func node(i int) string { return fmt.Sprintf("node %d: ", i) }

// testClusterDeliversEverywhere: a message published on any node reaches
// the handler of every node, the publishing one included, exactly once and
// intact.
func testClusterDeliversEverywhere(t *testing.T, newCluster func(*testing.T, int) []broker.Broker) {
	bs, rs := startCluster(t, newCluster, clusterSize)
	p := prefix(t)
	want := make(map[string][]*broker.Message)
	var chans []string
	for i := range bs {
		chans = append(chans, fmt.Sprintf("%sfrom:%d", p, i))
	}
	subscribeAll(t, bs, chans...)
	for i, b := range bs {
		ch := chans[i]
		ms := []*broker.Message{msg(ch, 1), msg(ch, 2)}
		ms = append(ms, odd(ch, 3)...)
		ms = append(ms, msg(ch, 5)) // last: see testDeliversOnceIntact
		for _, m := range ms {
			publish(t, b, m)
		}
		want[ch] = ms
	}
	for j, r := range rs {
		for _, ch := range chans {
			waitExactly(t, node(j), r, ch, want[ch])
		}
		r.checkNoOverlap(t, node(j))
	}
}

// testClusterOrder: channels published concurrently from every node keep
// their order on every node.
func testClusterOrder(t *testing.T, newCluster func(*testing.T, int) []broker.Broker) {
	bs, rs := startCluster(t, newCluster, clusterSize)
	p := prefix(t)
	var chans []string
	for i := range 3 * clusterSize {
		chans = append(chans, fmt.Sprintf("%sorder:%d", p, i))
	}
	subscribeAll(t, bs, chans...)
	want := publishConcurrently(t, bs, chans, 200)
	for j, r := range rs {
		for _, ch := range chans {
			waitExactly(t, node(j), r, ch, want[ch])
		}
		r.checkNoOverlap(t, node(j))
	}
}

// testClusterShutdownOneNode: after one node shuts down, it refuses to
// publish and the others keep delivering to one another.
func testClusterShutdownOneNode(t *testing.T, newCluster func(*testing.T, int) []broker.Broker) {
	bs, rs := startCluster(t, newCluster, clusterSize)
	sd := shutdowner(t, bs[0])
	p := prefix(t)
	ch := p + "alive"
	// Node 0 subscribes too: its Shutdown, not a missing subscription,
	// must keep the messages from it.
	subscribeAll(t, bs, ch)
	if err := sd.Shutdown(t.Context()); err != nil {
		t.Fatalf("node 0: Shutdown: %v", err)
	}
	if err := bs[0].Publish(t.Context(), msg(p+"dead", 1)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("node 0: Publish after Shutdown: %v, want broker.ErrClosed", err)
	}
	want := []*broker.Message{msg(ch, 1), msg(ch, 2), msg(ch, 3)}
	for _, m := range want {
		publish(t, bs[1], m)
	}
	for j := 1; j < len(bs); j++ {
		waitExactly(t, node(j), rs[j], ch, want)
	}
	// Node 0's handler must have stopped. Without a sleep this cannot prove
	// that nothing arrives later, but it catches a node that still delivers.
	if got := rs[0].received(ch); len(got) != 0 {
		t.Errorf("node 0 received %d messages after its Shutdown returned", len(got))
	}
}

// ---- Subscriber cases (RunCluster, for brokers that implement broker.Subscriber) ----

func subscriber(t *testing.T, b broker.Broker) broker.Subscriber {
	t.Helper()
	s, ok := b.(broker.Subscriber)
	if !ok {
		t.Fatalf("%T does not implement broker.Subscriber", b) // RunCluster lists the case only if it does
	}
	return s
}

// unsubscribe calls Unsubscribe, failing the test on error.
func unsubscribe(t *testing.T, node string, b broker.Broker, ch string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if err := subscriber(t, b).Unsubscribe(ctx, ch); err != nil {
		t.Fatalf("%sUnsubscribe(%s): %v", node, ch, err)
	}
}

// testOnlySubscribedDelivered: node 0 subscribes channel X only; node 1,
// subscribed to X and Y, publishes both; node 0 receives every X and no Y.
func testOnlySubscribedDelivered(t *testing.T, newCluster func(*testing.T, int) []broker.Broker) {
	bs, rs := startCluster(t, newCluster, 2)
	p := prefix(t)
	x, y := p+"wanted", p+"unwanted"
	subscribe(t, node(0), bs[0], x)
	subscribe(t, node(1), bs[1], x, y)
	var wantX, wantY []*broker.Message
	for off := uint64(1); off <= 5; off++ {
		my, mx := msg(y, off), msg(x, off)
		publish(t, bs[1], my)
		publish(t, bs[1], mx)
		wantY = append(wantY, my)
		wantX = append(wantX, mx)
	}
	waitExactly(t, node(1), rs[1], y, wantY) // Y did travel
	waitExactly(t, node(1), rs[1], x, wantX)
	waitExactly(t, node(0), rs[0], x, wantX)
	// Every Y was published before the last X. Without a sleep this cannot
	// prove that no Y arrives later, but it catches a broker that delivers
	// every channel to every node.
	if got := rs[0].received(y); len(got) != 0 {
		t.Errorf("node 0: received %d messages of a channel it never subscribed to", len(got))
	}
	rs[0].checkNoOverlap(t, node(0))
}

// testUnsubscribeStopsDelivery: after node 0 unsubscribes channel X, the
// messages node 1 publishes on X no longer reach it. A marker published on
// another channel after them tells when they would have arrived.
func testUnsubscribeStopsDelivery(t *testing.T, newCluster func(*testing.T, int) []broker.Broker) {
	bs, rs := startCluster(t, newCluster, 2)
	p := prefix(t)
	x, marker := p+"leaving", p+"marker"
	subscribeAll(t, bs, x, marker)
	before := []*broker.Message{msg(x, 1), msg(x, 2)}
	for _, m := range before {
		publish(t, bs[1], m)
	}
	// Nothing of X is on its way to node 0 once it has both.
	waitExactly(t, node(0), rs[0], x, before)
	unsubscribe(t, node(0), bs[0], x)

	after := []*broker.Message{msg(x, 3), msg(x, 4), msg(x, 5)}
	for _, m := range after {
		publish(t, bs[1], m)
	}
	mk := msg(marker, 1)
	publish(t, bs[1], mk)
	waitExactly(t, node(1), rs[1], x, append(slices.Clone(before), after...)) // they did travel
	waitExactly(t, node(0), rs[0], marker, []*broker.Message{mk})
	if got := rs[0].received(x); len(got) != len(before) {
		t.Errorf("node 0: received %d messages of %s published after its Unsubscribe returned (received offsets %s)",
			len(got)-len(before), x, offsets(got))
	}
	rs[0].checkNoOverlap(t, node(0))
}

// testResubscribe: a channel unsubscribed and subscribed again is
// delivered again, once per message.
func testResubscribe(t *testing.T, newCluster func(*testing.T, int) []broker.Broker) {
	bs, rs := startCluster(t, newCluster, 2)
	ch := prefix(t) + "again"
	subscribe(t, node(0), bs[0], ch)
	want := []*broker.Message{msg(ch, 1)}
	publish(t, bs[1], want[0])
	waitExactly(t, node(0), rs[0], ch, want)
	for off := uint64(2); off <= 4; off++ {
		unsubscribe(t, node(0), bs[0], ch)
		subscribe(t, node(0), bs[0], ch)
		m := msg(ch, off)
		publish(t, bs[1], m)
		want = append(want, m)
		waitExactly(t, node(0), rs[0], ch, want)
	}
	rs[0].checkNoOverlap(t, node(0))
}

// testSubscribeInPlace: a message another node publishes right after
// Subscribe returns is received: the subscription is in place at the
// engine by then (the hub reads the channel's history only then).
func testSubscribeInPlace(t *testing.T, newCluster func(*testing.T, int) []broker.Broker) {
	bs, rs := startCluster(t, newCluster, 2)
	p := prefix(t)
	want := make(map[string]*broker.Message)
	var chans []string
	for i := range 20 {
		ch := fmt.Sprintf("%sfresh:%d", p, i)
		subscribe(t, node(0), bs[0], ch)
		m := msg(ch, 1)
		publish(t, bs[1], m)
		chans = append(chans, ch)
		want[ch] = m
	}
	for _, ch := range chans {
		waitExactly(t, node(0), rs[0], ch, []*broker.Message{want[ch]})
	}
}

// ---- outage (RunOutage) ----

// Engine is the external engine (NATS, Redis) that a networked broker
// depends on, as RunOutage drives it. Kill stops it abruptly, as a crash
// does (SIGKILL); Start starts it again at the same address and returns
// once it accepts connections. Both fail the test themselves when they
// cannot, and are called from the test's goroutine. The NATSServer of
// internal/testutil implements it.
type Engine interface {
	Kill()
	Start()
}

const (
	// outageCallTimeout is the context given to Publish and Subscribe
	// while the engine is down; they must return within it (and
	// shutdownGrace).
	outageCallTimeout = 100 * time.Millisecond
	// outageBurst is how many 32 KiB messages RunOutage publishes while
	// the engine is down: 1.5 MiB, enough to fill a small reconnect
	// buffer.
	outageBurst = 48
	// goroutineSlack is how many more goroutines than before the cluster
	// started RunOutage tolerates once every node has shut down.
	goroutineSlack = 1
)

// RunOutage runs an outage of the engine under a cluster of two nodes, for
// brokers that depend on one. newCluster is RunCluster's; engine runs the
// engine the brokers connect to. In order:
//
//   - Delivery works between the nodes.
//   - The engine is killed. Every node that implements
//     broker.HealthReporter reports Connected false.
//   - Publish, and Subscribe on a broker.Subscriber, return within their
//     context: Publish buffers or returns an error, never blocks. A
//     message whose Publish failed never arrives; buffered ones arrive at
//     most once, in order.
//   - The engine is started again. Health reports Connected true and a
//     reconnect.
//   - Subscriptions are back without any call to Subscribe: messages that
//     each node publishes on its channel after the outage reach every node
//     in order, without gaps, from the first that arrives.
//   - Shutdown succeeds on every node, and afterwards the process has no
//     more goroutines than before the cluster started (within
//     goroutineSlack): nothing leaked across the outage.
//
// RunOutage counts the process's goroutines: the test that calls it must
// not run in parallel with others (no t.Parallel).
func RunOutage(t *testing.T, newCluster func(t *testing.T, n int) []broker.Broker, engine Engine) {
	t.Helper()
	goroutinesBefore := runtime.NumGoroutine()
	bs, rs := startCluster(t, newCluster, 2)
	p := prefix(t)
	chans := []string{p + "node:0", p + "node:1"} // channel i is published by node i
	during, late := p+"during", p+"late"
	subscribeAll(t, bs, chans[0], chans[1], during)

	sent := make([][]*broker.Message, len(bs)) // per channel
	publishOn := func(i int) error {
		m := msg(chans[i], uint64(len(sent[i])+1))
		if err := publishE(t.Context(), bs[i], m); err != nil {
			return fmt.Errorf("node %d: %w", i, err)
		}
		sent[i] = append(sent[i], m)
		return nil
	}
	for i := range bs {
		for range 3 {
			if err := publishOn(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	for j, r := range rs {
		for i, ch := range chans {
			waitExactly(t, node(j), r, ch, sent[i])
		}
	}
	pre := []int{len(sent[0]), len(sent[1])} // per channel, what every node has before the outage

	// The engine goes down.
	engine.Kill()
	eachHealth(t, bs, func(i int, h broker.Health) error {
		if h.Connected {
			return fmt.Errorf("%sHealth().Connected is still true after the engine was killed", node(i))
		}
		return nil
	})

	var buffered []*broker.Message
	var refused int
	var lastErr error
	for off := uint64(1); off <= outageBurst; off++ {
		m := msg(during, off)
		m.Data = []byte(`"` + strings.Repeat("x", 32<<10) + `"`)
		err := callWithin(t, "node 1: Publish while the engine is down", func(ctx context.Context) error {
			return bs[1].Publish(ctx, m)
		})
		switch {
		case err == nil:
			buffered = append(buffered, m)
		case errors.Is(err, broker.ErrClosed):
			t.Fatalf("node 1: Publish while the engine is down: %v; the broker was not shut down", err)
		default:
			refused++
			lastErr = err
		}
	}
	t.Logf("while the engine was down, %d Publish calls buffered, %d failed (last error: %v)", len(buffered), refused, lastErr)
	var lateErr error
	if s, ok := bs[0].(broker.Subscriber); ok {
		lateErr = callWithin(t, "node 0: Subscribe while the engine is down", func(ctx context.Context) error {
			return s.Subscribe(ctx, late)
		})
		t.Logf("node 0: Subscribe while the engine was down: %v", lateErr)
	}

	// The engine comes back.
	engine.Start()
	eachHealth(t, bs, func(i int, h broker.Health) error {
		switch {
		case !h.Connected:
			return fmt.Errorf("%sHealth().Connected is still false after the engine came back (Err %q)", node(i), h.Err)
		case h.Reconnects == 0:
			return fmt.Errorf("%sHealth().Reconnects is 0 after the engine came back", node(i))
		}
		return nil
	})
	if lateErr != nil {
		subscribe(t, node(0), bs[0], late) // failed during the outage: the hub would try again
	}

	// The subscriptions are back. Each node publishes on its channel until
	// every node has received one message published after the outage,
	// then more: from there on nothing may be lost.
	const afterFirst = 20
	for i := range bs {
		eventually(t, func() error {
			if err := publishOn(i); err != nil {
				return err // refused while it reconnects: try again
			}
			for j, r := range rs {
				if len(r.received(chans[i])) <= pre[i] {
					return fmt.Errorf("%shas received no message of %s published since the engine came back", node(j), chans[i])
				}
			}
			return nil
		})
		for range afterFirst {
			if err := publishOn(i); err != nil {
				t.Fatalf("after the outage: %v", err)
			}
		}
	}
	for j, r := range rs {
		for i, ch := range chans {
			last := sent[i][len(sent[i])-1].Offset
			eventually(t, func() error {
				if got := r.received(ch); len(got) == 0 || got[len(got)-1].Offset < last {
					return fmt.Errorf("%s%s: the last message (offset %d) has not arrived (received offsets %s)", node(j), ch, last, offsets(got))
				}
				return nil
			})
			checkResumed(t, node(j), r.received(ch), ch, sent[i], pre[i], afterFirst+1)
		}
		checkSubsequence(t, node(j), r.received(during), during, buffered)
	}
	if _, ok := bs[0].(broker.Subscriber); ok {
		m := msg(late, 1)
		publish(t, bs[1], m)
		waitExactly(t, node(0), rs[0], late, []*broker.Message{m})
	}
	for j, r := range rs {
		r.checkNoOverlap(t, node(j))
	}

	// Shutdown still works, and leaves no goroutine behind.
	for i, b := range bs {
		sd, ok := b.(broker.Shutdowner)
		if !ok {
			return // goroutines cannot be expected to end
		}
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		err := callShutdown(t, sd, ctx)
		cancel()
		if err != nil {
			t.Fatalf("%sShutdown after the outage: %v", node(i), err)
		}
		if err := b.Publish(t.Context(), msg(chans[i], 1<<20)); !errors.Is(err, broker.ErrClosed) {
			t.Errorf("%sPublish after Shutdown: %v, want broker.ErrClosed", node(i), err)
		}
	}
	checkGoroutines(t, goroutinesBefore)
}

// eachHealth waits until ok accepts the Health of every node that is a
// broker.HealthReporter.
func eachHealth(t *testing.T, bs []broker.Broker, ok func(i int, h broker.Health) error) {
	t.Helper()
	for i, b := range bs {
		hr, isHR := b.(broker.HealthReporter)
		if !isHR {
			continue
		}
		eventually(t, func() error { return ok(i, hr.Health()) })
		t.Logf("%sHealth: %+v", node(i), hr.Health())
	}
}

// callWithin calls fn with a context that ends after outageCallTimeout and
// fails the test if fn has not returned shutdownGrace after that.
func callWithin(t *testing.T, what string, fn func(context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), outageCallTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	select {
	case err := <-done:
		return err
	case <-time.After(outageCallTimeout + shutdownGrace):
		t.Fatalf("%s: still blocked %v after its context ended", what, shutdownGrace)
		return nil
	}
}

// checkResumed checks that got is the first pre messages of sent, then an
// unbroken run of at least minRun later ones ending with the last, in
// order, intact: what a node receives when it misses some messages while
// reconnecting and none after.
func checkResumed(t *testing.T, node string, got []*broker.Message, ch string, sent []*broker.Message, pre, minRun int) {
	t.Helper()
	if len(got) < pre {
		t.Errorf("%s%s: received %d messages, fewer than the %d before the outage", node, ch, len(got), pre)
		return
	}
	checkExactly(t, node, got[:pre], ch, sent[:pre])
	run := got[pre:]
	k := len(sent) - len(run)
	if k < pre || len(run) < minRun {
		t.Errorf("%s%s: after the outage received offsets %s, want an unbroken run of at least %d ending with offset %d",
			node, ch, offsets(run), minRun, sent[len(sent)-1].Offset)
		return
	}
	checkExactly(t, node, run, ch, sent[k:])
}

// checkSubsequence checks that got holds some of want, in order, each at
// most once, intact, and nothing else.
func checkSubsequence(t *testing.T, node string, got []*broker.Message, ch string, want []*broker.Message) {
	t.Helper()
	i := 0
	for _, g := range got {
		for i < len(want) && want[i].Offset != g.Offset {
			i++
		}
		if i == len(want) {
			t.Errorf("%s%s: received offsets %s; want some of %s, in order, each at most once (a message whose Publish failed must never arrive)",
				node, ch, offsets(got), offsets(want))
			return
		}
		if d := diff(g, want[i]); d != "" {
			t.Errorf("%s%s: message with offset %d: %s", node, ch, g.Offset, d)
			return
		}
		i++
	}
}

// checkGoroutines waits until the process has at most goroutineSlack more
// goroutines than before, and otherwise fails the test with a dump.
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	wait := time.Millisecond
	for {
		n := runtime.NumGoroutine()
		if n <= before+goroutineSlack {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines %v after every node shut down, %d before the cluster started: leaked across the outage?\n%s",
				n, waitTimeout, before, buf)
		}
		time.Sleep(wait)
		wait = min(wait*2, 50*time.Millisecond)
	}
}
