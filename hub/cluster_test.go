package hub_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
)

// These tests run several hubs in one process on a network the test
// controls, to produce on demand what a real engine does only now and then:
// messages from two nodes arriving out of order, messages lost while a node
// was disconnected. The real engines are tested in broker/nats, broker/redis
// and internal/cluster.

// testNet connects test brokers. Delivery to each node is asynchronous and
// in order, through a bounded queue, like a network connection.
type testNet struct {
	mu    sync.Mutex
	nodes []*netBroker
	// intercept, if set, decides per message and receiving node: deliver
	// (true) or hold back (false) until release.
	intercept func(to int, m *broker.Message) bool
	held      []heldMsg
}

type heldMsg struct {
	to int
	m  *broker.Message
}

// netBroker is one node's broker on a testNet: a broker.Subscriber with
// health, like the networked brokers.
type netBroker struct {
	net            *testNet
	id             int
	handler        broker.Handler
	q              chan *broker.Message
	done           chan struct{}
	wg             sync.WaitGroup
	connected      atomic.Bool
	reconnects     atomic.Uint64
	subscribeCalls atomic.Int64
	dropped        atomic.Uint64                 // messages "dropped as a slow consumer", for Health
	gate           atomic.Pointer[chan struct{}] // if set, Subscribe waits until it is closed

	mu   sync.Mutex
	subs map[string]bool // guarded by mu
}

func (n *testNet) add() *netBroker {
	n.mu.Lock()
	defer n.mu.Unlock()
	b := &netBroker{net: n, id: len(n.nodes), q: make(chan *broker.Message, 10000), done: make(chan struct{}), subs: map[string]bool{}}
	b.connected.Store(true)
	n.nodes = append(n.nodes, b)
	return b
}

func (b *netBroker) Run(h broker.Handler) error {
	b.handler = h
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			select {
			case <-b.done:
				return
			case m := <-b.q:
				b.handler(m)
			}
		}
	}()
	return nil
}

func (b *netBroker) Publish(_ context.Context, m *broker.Message) error {
	select {
	case <-b.done:
		return broker.ErrClosed
	default:
	}
	n := b.net
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, to := range n.nodes {
		if !to.subscribed(m.Channel) || !to.connected.Load() {
			continue // not interested, or a disconnected node misses it
		}
		if n.intercept != nil && !n.intercept(to.id, m) {
			n.held = append(n.held, heldMsg{to.id, m})
			continue
		}
		to.q <- m
	}
	return nil
}

// setIntercept sets intercept.
func (n *testNet) setIntercept(f func(to int, m *broker.Message) bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.intercept = f
}

// release delivers the held messages to their nodes, in the order given.
func (n *testNet) release(order func([]heldMsg) []heldMsg) {
	n.mu.Lock()
	defer n.mu.Unlock()
	held := n.held
	n.held = nil
	if order != nil {
		held = order(held)
	}
	for _, h := range held {
		n.nodes[h.to].q <- h.m
	}
}

func (b *netBroker) subscribed(ch string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs[ch]
}

func (b *netBroker) Subscribe(_ context.Context, ch string) error {
	if !b.connected.Load() {
		return fmt.Errorf("node %d: not connected", b.id)
	}
	if !strings.HasPrefix(ch, "$") { // not the hub's own heartbeat channel
		b.subscribeCalls.Add(1)
		if g := b.gate.Load(); g != nil {
			<-*g // the test holds the subscription up
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs[ch] {
		return fmt.Errorf("node %d: %s subscribed twice", b.id, ch)
	}
	b.subs[ch] = true
	return nil
}

func (b *netBroker) Unsubscribe(_ context.Context, ch string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.subs, ch)
	return nil
}

func (b *netBroker) Health() broker.Health {
	return broker.Health{Connected: b.connected.Load(), Engine: "test", Reconnects: b.reconnects.Load(), Dropped: b.dropped.Load()}
}

// reconnect ends an outage of the node's connection.
func (b *netBroker) reconnect() {
	b.reconnects.Add(1)
	b.connected.Store(true)
}

func (b *netBroker) Shutdown(context.Context) error {
	select {
	case <-b.done:
	default:
		close(b.done)
	}
	b.wg.Wait()
	return nil
}

// sharedHistory is one in-memory store shared by the test's hubs, as a
// NATS or Redis store is shared by nodes. Wrapping it makes the hubs treat
// it as shared.
type sharedHistory struct{ *hub.MemoryHistory }

// cluster starts n hubs on one testNet and one shared history.
func cluster(t *testing.T, n int, cfg hub.Config) (*testNet, []*hub.Hub, []*netBroker) {
	t.Helper()
	tn := &testNet{}
	hist := sharedHistory{hub.NewMemoryHistory()}
	var hubs []*hub.Hub
	var brokers []*netBroker
	for i := range n {
		b := tn.add()
		c := cfg
		c.Broker, c.History, c.NodeID = b, hist, fmt.Sprintf("node-%d", i)
		if c.NodeHeartbeat == 0 {
			c.NodeHeartbeat = 20 * time.Millisecond
		}
		hubs = append(hubs, testutil.NewHub(t, c))
		brokers = append(brokers, b)
	}
	return tn, hubs, brokers
}

// collect subscribes a session on h to ch and returns a function that
// waits until the session has received want messages, returning every item
// it got.
func collect(t *testing.T, h *hub.Hub, ch string) func(want int) []hub.Item {
	t.Helper()
	s, err := h.NewSession(hub.SessionOptions{Transport: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(hub.DisconnectShutdown) })
	if err := s.Subscribe(t.Context(), []string{ch}, nil); err != nil {
		t.Fatal(err)
	}
	var items []hub.Item
	return func(want int) []hub.Item {
		t.Helper()
		testutil.Eventually(t, 5*time.Second, func() error {
			items = append(items, s.Drain(nil)...)
			if got := len(messages(items)); got < want {
				return fmt.Errorf("%s: %d of %d messages", ch, got, want)
			}
			return nil
		})
		return items
	}
}

func gaps(items []hub.Item) int {
	n := 0
	for _, it := range items {
		if it.Kind == hub.ItemGap {
			n++
		}
	}
	return n
}

func TestClusterDeliversAcrossNodesInOffsetOrder(t *testing.T) {
	tn, hubs, _ := cluster(t, 3, hub.Config{})
	// Node 2 gets every even offset late: after the next message.
	tn.setIntercept(func(to int, m *broker.Message) bool { return to != 2 || m.Offset%2 == 1 })
	ch := "thread:order"
	got := []func(int) []hub.Item{collect(t, hubs[0], ch), collect(t, hubs[1], ch), collect(t, hubs[2], ch)}
	for i := range 20 {
		publish(t, hubs[i%2], fmt.Sprintf(`{"i":%d}`, i), ch)
		if i%2 == 1 {
			// Release the held one after its successor went out.
			tn.release(nil)
		}
	}
	want := make([]uint64, 20)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	for node, wait := range got {
		items := wait(20)
		if o := offsets(items, ch); !slices.Equal(o, want) {
			t.Errorf("node %d: offsets %v, want %v", node, o, want)
		}
		if n := gaps(items); n != 0 {
			t.Errorf("node %d: %d gap signals for messages that were only late", node, n)
		}
	}
}

// TestClusterFillsLostMessagesFromHistory: messages a node never receives
// (lost while its connection was down) are read from shared history.
func TestClusterFillsLostMessagesFromHistory(t *testing.T) {
	tn, hubs, _ := cluster(t, 2, hub.Config{})
	tn.setIntercept(func(to int, m *broker.Message) bool { return to != 1 || m.Offset < 3 || m.Offset > 6 })
	ch := "thread:lost"
	wait := collect(t, hubs[1], ch)
	for i := range 10 {
		publish(t, hubs[0], fmt.Sprintf(`{"i":%d}`, i), ch)
	}
	items := wait(10)
	if o := offsets(items, ch); !slices.Equal(o, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
		t.Errorf("offsets %v, want 1…10", o)
	}
	if n := gaps(items); n != 0 {
		t.Errorf("%d gap signals, but history held every message", n)
	}
	if st := hubs[1].Stats().Sequencer; st.Filled != 4 || st.Skipped != 0 || st.Fills == 0 {
		t.Errorf("sequencer %+v, want 4 filled from history, none skipped", st)
	}
}

// TestClusterTrimmedLossGivesGap: what history no longer holds is skipped,
// and the subscriber is told with a gap signal before the next message.
func TestClusterTrimmedLossGivesGap(t *testing.T) {
	tn, hubs, _ := cluster(t, 2, hub.Config{Namespaces: map[string]hub.NamespaceConfig{"tiny": {HistorySize: 1}}})
	var dropping atomic.Bool
	dropping.Store(true)
	tn.setIntercept(func(to int, m *broker.Message) bool { return to != 1 || !dropping.Load() })
	ch := "tiny:1"
	wait := collect(t, hubs[1], ch)
	for i := range 5 {
		publish(t, hubs[0], fmt.Sprintf(`{"i":%d}`, i), ch)
	}
	dropping.Store(false)
	publish(t, hubs[0], `{"i":5}`, ch)
	items := wait(1)
	var kinds []hub.ItemKind
	for _, it := range items {
		kinds = append(kinds, it.Kind)
	}
	// Subscribed marker, then a gap, then offset 5 (retained) or 6.
	if n := gaps(items); n != 1 {
		t.Fatalf("%d gap signals, want 1 (items %v)", n, kinds)
	}
	gapAt := slices.IndexFunc(items, func(it hub.Item) bool { return it.Kind == hub.ItemGap })
	firstMsg := slices.IndexFunc(items, func(it hub.Item) bool { return it.Kind == hub.ItemMessage })
	if gapAt > firstMsg {
		t.Errorf("the gap signal came after a message (items %v)", kinds)
	}
	if o := offsets(items, ch); o[len(o)-1] != 6 {
		t.Errorf("offsets %v, want to end at 6", o)
	}
	// 1–5 went by while node 1 was cut off; history keeps only 6 (or 5
	// and 6, when the fill ran before 6 arrived): 4 or 5 were given up.
	if st := hubs[1].Stats().Sequencer; st.Skipped < 4 || st.Skipped > 5 {
		t.Errorf("sequencer %+v, want 4 or 5 skipped", st)
	}
}

// TestClusterResyncAfterReconnect: a node that was disconnected while
// messages were published hands them on when its broker reconnects, with
// no new publish needed.
func TestClusterResyncAfterReconnect(t *testing.T) {
	_, hubs, brokers := cluster(t, 2, hub.Config{})
	ch := "thread:resync"
	wait := collect(t, hubs[1], ch)
	publish(t, hubs[0], `{"i":0}`, ch)
	wait(1)
	brokers[1].connected.Store(false)
	// Let node 1's watcher see the outage before anything else happens.
	testutil.Eventually(t, 5*time.Second, func() error {
		for _, n := range hubs[0].Nodes() {
			if n.ID == "node-1" && !n.Broker.Connected {
				return nil
			}
		}
		return fmt.Errorf("node 0 has not heard that node 1 is disconnected: %+v", hubs[0].Nodes())
	})
	publish(t, hubs[0], `{"i":1}`, ch)
	publish(t, hubs[0], `{"i":2}`, ch)
	brokers[1].reconnect()
	items := wait(3)
	if o := offsets(items, ch); !slices.Equal(o, []uint64{1, 2, 3}) {
		t.Errorf("offsets %v, want 1 2 3", o)
	}
}

// TestClusterInterest: a node subscribes a channel at the broker only while
// it has subscribers for it.
func TestClusterInterest(t *testing.T) {
	_, hubs, brokers := cluster(t, 2, hub.Config{})
	if brokers[0].subscribed("thread:x") {
		t.Fatal("subscribed before any subscriber")
	}
	var sessions []*hub.Session
	for range 3 {
		s, err := hubs[0].NewSession(hub.SessionOptions{Transport: "test"})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Subscribe(t.Context(), []string{"thread:x"}, nil); err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
	}
	if !brokers[0].subscribed("thread:x") || brokers[1].subscribed("thread:x") {
		t.Fatal("the node with subscribers is not subscribed, or the other one is")
	}
	sessions[0].Close(hub.DisconnectShutdown)
	sessions[1].Unsubscribe("thread:x")
	if !brokers[0].subscribed("thread:x") {
		t.Fatal("unsubscribed while a subscriber remains")
	}
	sessions[2].Close(hub.DisconnectShutdown)
	// A worker unsubscribes: Close never waits on the network.
	testutil.Eventually(t, 5*time.Second, func() error {
		if brokers[0].subscribed("thread:x") {
			return errors.New("still subscribed after the last subscriber left")
		}
		return nil
	})
	// Subscribing again works (no "subscribed twice").
	collect(t, hubs[0], "thread:x")
	if !brokers[0].subscribed("thread:x") {
		t.Fatal("not subscribed again")
	}
}

// TestClusterSubscribeDuringOutage: a subscribe that needs the broker fails
// with ErrUnavailable, and leaves nothing behind.
func TestClusterSubscribeDuringOutage(t *testing.T) {
	_, hubs, brokers := cluster(t, 1, hub.Config{})
	brokers[0].connected.Store(false)
	s, err := hubs[0].NewSession(hub.SessionOptions{Transport: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(hub.DisconnectShutdown)
	if err := s.Subscribe(t.Context(), []string{"thread:down"}, nil); !errors.Is(err, hub.ErrUnavailable) {
		t.Fatalf("Subscribe during an outage: %v, want ErrUnavailable", err)
	}
	if len(s.Channels()) != 0 || hubs[0].Stats().Subscribers != 0 {
		t.Fatal("a failed subscribe left a subscription")
	}
	brokers[0].connected.Store(true)
	if err := s.Subscribe(t.Context(), []string{"thread:down"}, nil); err != nil {
		t.Fatalf("Subscribe after the outage: %v", err)
	}
}

// TestClusterNodesView: nodes see one another, with their connection
// counts, and forget a node that stopped.
func TestClusterNodesView(t *testing.T) {
	_, hubs, _ := cluster(t, 3, hub.Config{})
	collect(t, hubs[2], "thread:v")
	testutil.Eventually(t, 5*time.Second, func() error {
		nodes := hubs[0].Nodes()
		if len(nodes) != 3 || !nodes[0].Self || nodes[0].ID != "node-0" || nodes[2].ID != "node-2" {
			return fmt.Errorf("nodes %+v", nodes)
		}
		if nodes[2].Connections != 1 || !nodes[2].Broker.Connected {
			return fmt.Errorf("node-2 as seen by node-0: %+v", nodes[2])
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hubs[1].Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		for _, n := range hubs[0].Nodes() {
			if n.ID == "node-1" {
				return fmt.Errorf("node-1 still listed after it stopped")
			}
		}
		return nil
	})
}

// pausingHistory is shared history whose first Since (a fill) reads at
// once but returns only when the test says so, to order events around a
// fill in flight.
type pausingHistory struct {
	*hub.MemoryHistory
	once    sync.Once
	entered chan struct{}
	proceed chan struct{}
	resumed sync.Once
}

// resume lets the paused Since return.
func (p *pausingHistory) resume() { p.resumed.Do(func() { close(p.proceed) }) }

func (p *pausingHistory) Since(ctx context.Context, ch string, pos hub.Position, opts hub.HistoryOptions) ([]*hub.Message, hub.Position, bool, error) {
	msgs, head, gap, err := p.MemoryHistory.Since(ctx, ch, pos, opts)
	p.once.Do(func() {
		close(p.entered)
		<-p.proceed
	})
	return msgs, head, gap, err
}

func pausedCluster(t *testing.T, n int) (*testNet, *pausingHistory, []*hub.Hub, []*netBroker) {
	t.Helper()
	tn := &testNet{}
	hist := &pausingHistory{MemoryHistory: hub.NewMemoryHistory(), entered: make(chan struct{}), proceed: make(chan struct{})}
	t.Cleanup(hist.resume)
	var hubs []*hub.Hub
	var bs []*netBroker
	for i := range n {
		b := tn.add()
		hubs = append(hubs, testutil.NewHub(t, hub.Config{Broker: b, History: hist, NodeID: fmt.Sprintf("node-%d", i), NodeHeartbeat: 20 * time.Millisecond}))
		bs = append(bs, b)
	}
	return tn, hist, hubs, bs
}

// TestClusterFillKeepsLaterHoles: a message that arrives out of order while
// a fill reads history is waited for too, not skipped.
func TestClusterFillKeepsLaterHoles(t *testing.T) {
	tn, hist, hubs, _ := pausedCluster(t, 2)
	ch := "thread:fill"
	tn.setIntercept(func(to int, m *broker.Message) bool { return to != 1 || (m.Offset != 2 && m.Offset != 4) })
	wait := collect(t, hubs[1], ch)
	publish(t, hubs[0], `1`, ch)
	publish(t, hubs[0], `2`, ch) // late for node 1
	publish(t, hubs[0], `3`, ch) // node 1: hole at 2, a fill reads history (head 3)
	<-hist.entered
	publish(t, hubs[0], `4`, ch) // late for node 1
	publish(t, hubs[0], `5`, ch) // node 1 holds it: 4 is missing
	hist.resume()
	wait(3) // the fill handed on 2 and 3, and waits for 4
	tn.release(nil)
	items := wait(5)
	if o := offsets(items, ch); !slices.Equal(o, []uint64{1, 2, 3, 4, 5}) || gaps(items) != 0 {
		t.Errorf("offsets %v, %d gap signals; want 1…5 and none (4 was in history all along)", o, gaps(items))
	}
}

// TestClusterResyncDuringFill: a reconnection while a fill is in flight is
// followed by another check against history.
func TestClusterResyncDuringFill(t *testing.T) {
	tn, hist, hubs, bs := pausedCluster(t, 2)
	ch := "thread:resync-fill"
	tn.setIntercept(func(to int, m *broker.Message) bool { return to != 1 || m.Offset != 2 })
	wait := collect(t, hubs[1], ch)
	publish(t, hubs[0], `1`, ch)
	publish(t, hubs[0], `2`, ch) // never reaches node 1
	publish(t, hubs[0], `3`, ch) // node 1: hole at 2, a fill reads history (head 3)
	<-hist.entered
	bs[1].connected.Store(false)
	publish(t, hubs[0], `4`, ch) // node 1 misses it: disconnected
	bs[1].reconnect()
	// Node 1 checks for a reconnection before each heartbeat: once node 0
	// hears one saying so, node 1 has asked for a resync.
	testutil.Eventually(t, 5*time.Second, func() error {
		for _, n := range hubs[0].Nodes() {
			if n.ID == "node-1" && n.Broker.Reconnects == 1 {
				return nil
			}
		}
		return errors.New("node 1 has not reported its reconnection yet")
	})
	hist.resume()
	if o := offsets(wait(4), ch); !slices.Equal(o, []uint64{1, 2, 3, 4}) {
		t.Errorf("offsets %v, want 1 2 3 4", o)
	}
}

// TestClusterSecondSubscriberWaitsForTheFirst: while a node subscribes a
// channel at the broker for its first subscriber, a second subscriber of
// the channel waits for it: once its Subscribe returns, it gets every
// message published after.
func TestClusterSecondSubscriberWaitsForTheFirst(t *testing.T) {
	_, hubs, brokers := cluster(t, 2, hub.Config{})
	ch := "thread:slow-subscribe"
	gate := make(chan struct{})
	brokers[1].gate.Store(&gate)
	var gateOnce sync.Once
	open := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(open)
	first := make(chan func(int) []hub.Item, 1)
	go func() { first <- collect(t, hubs[1], ch) }()
	testutil.Eventually(t, 5*time.Second, func() error {
		if brokers[1].subscribeCalls.Load() == 0 {
			return errors.New("the first subscriber has not reached the broker")
		}
		return nil
	})
	second := make(chan func(int) []hub.Item, 1)
	go func() { second <- collect(t, hubs[1], ch) }()
	var wait2 func(int) []hub.Item
	select {
	case wait2 = <-second:
		// Returned while the broker subscription is not in place: the
		// message below would be lost for it.
	case <-time.After(50 * time.Millisecond):
	}
	open()
	if wait2 == nil {
		wait2 = <-second
	}
	publish(t, hubs[0], `"after"`, ch)
	wait1 := <-first
	for i, wait := range []func(int) []hub.Item{wait1, wait2} {
		items := wait(1)
		if o := offsets(items, ch); !slices.Equal(o, []uint64{1}) || gaps(items) != 0 {
			t.Errorf("subscriber %d: offsets %v, %d gaps; want 1 and none", i+1, o, gaps(items))
		}
	}
	if n := brokers[1].subscribeCalls.Load(); n != 1 {
		t.Errorf("%d broker subscriptions for one channel, want 1", n)
	}
}

// TestClusterResyncAfterDrops: when the broker reports messages it dropped
// (a slow consumer), the node checks its channels against history, so the
// last messages of a burst are not missing until the next one.
func TestClusterResyncAfterDrops(t *testing.T) {
	tn, hubs, brokers := cluster(t, 2, hub.Config{})
	ch := "thread:drops"
	wait := collect(t, hubs[1], ch)
	// Node 1's watcher has read the broker's figures once node 0 hears
	// its heartbeat: the drops below are news to it.
	testutil.Eventually(t, 5*time.Second, func() error {
		if len(hubs[0].Nodes()) != 2 {
			return errors.New("node 0 has not heard from node 1 yet")
		}
		return nil
	})
	tn.setIntercept(func(to int, m *broker.Message) bool { return to != 1 || m.Offset < 2 })
	for i := range 3 {
		publish(t, hubs[0], fmt.Sprintf(`{"i":%d}`, i), ch)
	}
	tn.release(func([]heldMsg) []heldMsg { return nil }) // 2 and 3 are dropped
	brokers[1].dropped.Add(2)
	if o := offsets(wait(3), ch); !slices.Equal(o, []uint64{1, 2, 3}) {
		t.Errorf("offsets %v, want 1 2 3", o)
	}
}

// keepingHistory is a memory history that records the channels the hub
// asks it to keep.
type keepingHistory struct {
	*hub.MemoryHistory
	mu   sync.Mutex
	kept map[string]int
}

func (k *keepingHistory) Keep(_ context.Context, ch string, _ hub.HistoryOptions) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.kept[ch]++
	return nil
}

// TestHubKeepsSubscribedChannels: a store that lets quiet channels expire
// is told, again and again, which channels have subscribers here, and
// only those.
func TestHubKeepsSubscribedChannels(t *testing.T) {
	hist := &keepingHistory{MemoryHistory: hub.NewMemoryHistory(), kept: map[string]int{}}
	h := testutil.NewHub(t, hub.Config{History: hist, HistoryKeepInterval: 10 * time.Millisecond})
	recv := collect(t, h, "thread:listened")
	if _, err := h.Publish(t.Context(), hub.Publication{Channels: []string{"thread:listened", "thread:nobody"}}); err != nil {
		t.Fatal(err)
	}
	recv(1)
	testutil.Eventually(t, 5*time.Second, func() error {
		hist.mu.Lock()
		defer hist.mu.Unlock()
		if hist.kept["thread:listened"] < 3 {
			return fmt.Errorf("kept %v, want thread:listened three times or more", hist.kept)
		}
		return nil
	})
	hist.mu.Lock()
	defer hist.mu.Unlock()
	if len(hist.kept) != 1 {
		t.Fatalf("kept %v, want thread:listened only", hist.kept)
	}
}
