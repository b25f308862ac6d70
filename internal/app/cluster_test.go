package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/client"
	"github.com/heraldhq/herald/internal/testutil"
)

// The cluster tests run three real `herald serve` processes on loopback
// ports, connected through a real nats-server or redis-server process,
// and check what a user of a cluster relies on: delivery across nodes in
// one order, resume on another node, a node killed mid-stream, an engine
// restarted mid-stream.

// clusterEngine is the engine a cluster runs on, killed and started again
// by the tests (its data is kept).
type clusterEngine interface {
	Kill()
	Start()
}

func TestClusterOnNATS(t *testing.T) {
	srv := testutil.NATS(t)
	nodes := runClusterTests(t, srv.URL(), srv, func() { srv.Restart(true) })
	t.Run("PublishOnTheNATSSubject", func(t *testing.T) { testPublishSubject(t, srv.URL(), nodes) })
}

// testPublishSubject: a service publishes with a NATS request on
// herald.publish, no HTTP; one node answers, every node's subscribers get
// the message; a bad body gets the API's error.
func testPublishSubject(t *testing.T, natsURL string, nodes []*herald) {
	ch := "thread:nats-subject"
	var fs []*follower
	for _, n := range nodes[:2] { // node 2 was killed
		fs = append(fs, follow(t, n.url, ch, ""))
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := range 10 {
		reply, err := nc.Request(PublishSubject, fmt.Appendf(nil, `{"channel":%q,"type":"note","data":{"i":%d}}`, ch, i), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if st := reply.Header.Get("Status"); st != "200" || !strings.Contains(string(reply.Data), `"offset":`) {
			t.Fatalf("reply %s %s", st, reply.Data)
		}
	}
	for i, f := range fs {
		if err := checkRun(f.waitFor(t, 10, 10*time.Second), 10); err != nil {
			t.Errorf("node %d: %v", i, err)
		}
	}
	reply, err := nc.Request(PublishSubject, []byte(`{"channel":"bad channel!"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st := reply.Header.Get("Status"); st != "400" || !strings.Contains(string(reply.Data), `"code":"invalid_channel"`) {
		t.Errorf("a bad publish got %s %s, want 400 invalid_channel", st, reply.Data)
	}
}

func TestClusterOnRedis(t *testing.T) {
	srv := testutil.StartRedis(t)
	lose := func() {
		rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
		defer rdb.Close()
		if err := rdb.FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	}
	nodes := runClusterTests(t, "redis://"+srv.Addr(), srv, lose)
	t.Run("PublishOnTheRedisStream", func(t *testing.T) { testPublishStream(t, srv.Addr(), nodes) })
}

// testPublishStream: a service publishes by adding entries to the Redis
// stream herald:publish, no HTTP; the nodes share the entries, every
// node's subscribers get each message once; an invalid entry is refused
// and acknowledged, not retried for ever.
func testPublishStream(t *testing.T, addr string, nodes []*herald) {
	ch := "thread:redis-stream"
	var fs []*follower
	for _, n := range nodes[:2] { // node 2 was killed
		fs = append(fs, follow(t, n.url, ch, ""))
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: addr})
	defer rdb.Close()
	add := func(body string) {
		t.Helper()
		if err := rdb.XAdd(t.Context(), &goredis.XAddArgs{Stream: PublishStream, Values: []string{"publish", body}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	add(`{"channel":"bad channel!"}`)
	for i := range 20 {
		add(fmt.Sprintf(`{"channel":%q,"type":"note","data":{"i":%d},"idempotency_key":"rs-%d"}`, ch, i, i))
	}
	for i, f := range fs {
		evs := f.waitFor(t, 20, 10*time.Second)
		if err := checkRun(evs, 20); err != nil {
			t.Errorf("node %d: %v", i, err)
		}
		seen := map[string]bool{}
		for _, ev := range evs {
			seen[string(ev.Data)] = true
		}
		if len(seen) != 20 {
			t.Errorf("node %d: %d distinct messages of 20", i, len(seen))
		}
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		p, err := rdb.XPending(t.Context(), PublishStream, "herald").Result()
		if err != nil {
			return err
		}
		if p.Count != 0 {
			return fmt.Errorf("%d entries still pending", p.Count)
		}
		return nil
	})
}

// runClusterTests runs the cluster cases on three nodes on brokerURL.
// lose makes the engine lose every message it holds (a restart without
// its data).
func runClusterTests(t *testing.T, brokerURL string, eng clusterEngine, lose func()) []*herald {
	nodes := startNodes(t, brokerURL)
	t.Run("CrossNodeDeliveryInOneOrder", func(t *testing.T) { testCrossNodeOrder(t, nodes) })
	t.Run("ResumeOnAnotherNode", func(t *testing.T) { testResumeOnAnotherNode(t, nodes) })
	t.Run("IdempotencyKeyHoldsAcrossNodes", func(t *testing.T) { testIdempotencyAcrossNodes(t, nodes) })
	t.Run("EngineRestartMidStream", func(t *testing.T) { testEngineRestart(t, nodes, eng) })
	t.Run("EngineLosesItsData", func(t *testing.T) { testEngineLosesData(t, nodes, lose) })
	t.Run("NodeKilledMidStream", func(t *testing.T) { testNodeKill(t, nodes) })
	return nodes
}

// TestClusterOnRedisCluster: the nodes on a Redis Cluster of three masters
// (broker and history in cluster mode).
func TestClusterOnRedisCluster(t *testing.T) {
	addrs := testutil.RedisCluster(t, 3)
	nodes := startNodes(t, "redis://"+addrs[0]+"?cluster=true&addr="+addrs[1]+"&addr="+addrs[2])
	t.Run("CrossNodeDeliveryInOneOrder", func(t *testing.T) { testCrossNodeOrder(t, nodes) })
	t.Run("ResumeOnAnotherNode", func(t *testing.T) { testResumeOnAnotherNode(t, nodes) })
}

// startNodes starts three nodes on brokerURL and waits until each sees
// the three.
func startNodes(t *testing.T, brokerURL string) []*herald {
	t.Helper()
	var nodes []*herald
	for i := range 3 {
		nodes = append(nodes, startHerald(t, []string{"HERALD_BROKER=" + brokerURL, fmt.Sprintf("HERALD_NODE_ID=n%d", i)},
			"--listen", "127.0.0.1:0"))
	}
	// Every node sees the three.
	for _, n := range nodes {
		waitStatus(t, n.url, func(st map[string]any) bool {
			cl, _ := st["cluster"].([]any)
			return len(cl) == 3
		})
	}
	return nodes
}

// follower is a subscriber that records what it receives, in order, and
// can move to another node with its cursor.
type follower struct {
	t       *testing.T
	channel string

	mu          sync.Mutex
	events      []client.Event
	gaps        int
	disconnects int
	sub         *client.Subscription

	moved chan struct{} // receives when the connection ended (NoReconnect)
}

func follow(t *testing.T, url, channel, cursor string) *follower {
	t.Helper()
	f := &follower{t: t, channel: channel, moved: make(chan struct{}, 1)}
	f.connect(t, url, cursor)
	t.Cleanup(func() {
		f.mu.Lock()
		sub := f.sub
		f.mu.Unlock()
		if sub != nil {
			sub.Close()
		}
	})
	return f
}

// connect subscribes on url from cursor; the connection is not re-opened
// when it ends (the test decides where to go).
func (f *follower) connect(t *testing.T, url, cursor string) {
	t.Helper()
	sub, err := client.New(url).Subscribe(context.Background(), client.SubscribeOptions{
		Channels:    []string{f.channel},
		Cursor:      cursor,
		NoReconnect: true,
		OnEvent: func(ev client.Event) {
			f.mu.Lock()
			f.events = append(f.events, ev)
			f.mu.Unlock()
		},
		OnGap: func([]string) {
			f.mu.Lock()
			f.gaps++
			f.mu.Unlock()
		},
		OnDisconnect: func(error) {
			f.mu.Lock()
			f.disconnects++
			f.mu.Unlock()
			select {
			case f.moved <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatalf("subscribe %s on %s: %v", f.channel, url, err)
	}
	f.mu.Lock()
	f.sub = sub
	f.mu.Unlock()
}

// move re-subscribes on url from where the follower is.
func (f *follower) move(t *testing.T, url string) {
	t.Helper()
	f.mu.Lock()
	cursor := f.sub.Cursor()
	f.mu.Unlock()
	f.connect(t, url, cursor)
}

func (f *follower) snapshot() (events []client.Event, gaps, disconnects int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events), f.gaps, f.disconnects
}

// waitFor waits until the follower has n events.
func (f *follower) waitFor(t *testing.T, n int, within time.Duration) []client.Event {
	t.Helper()
	var evs []client.Event
	testutil.Eventually(t, within, func() error {
		evs, _, _ = f.snapshot()
		if len(evs) < n {
			return fmt.Errorf("%s: %d of %d events; missing offsets %v", f.channel, len(evs), n, missing(evs, n))
		}
		return nil
	})
	return evs
}

// missing lists the offsets from 1 to n that evs lacks, at most 20.
func missing(evs []client.Event, n int) []uint64 {
	have := make(map[uint64]bool, len(evs))
	for _, ev := range evs {
		have[ev.Offset] = true
	}
	var out []uint64
	for o := uint64(1); o <= uint64(n) && len(out) < 20; o++ {
		if !have[o] {
			out = append(out, o)
		}
	}
	return out
}

// checkRun checks that evs are offsets 1…n of one epoch, in order.
func checkRun(evs []client.Event, n int) error {
	if len(evs) != n {
		return fmt.Errorf("%d events, want %d", len(evs), n)
	}
	for i, ev := range evs {
		if ev.Offset != uint64(i+1) || ev.Epoch != evs[0].Epoch {
			return fmt.Errorf("event %d is %s:%d, want offset %d of epoch %s", i, ev.Epoch, ev.Offset, i+1, evs[0].Epoch)
		}
	}
	return nil
}

func publishTo(ctx context.Context, url, channel, key string, data any) error {
	_, err := client.New(url).Publish(ctx, client.Publication{Channels: []string{channel}, Type: "test", Data: data, IdempotencyKey: key})
	return err
}

// testCrossNodeOrder: three publishers, one per node, publish to one
// channel at once; a subscriber on each node receives every message, and
// all three receive them in the same order, with offsets 1…n.
func testCrossNodeOrder(t *testing.T, nodes []*herald) {
	const perNode = 100
	ch := "thread:order"
	var fs []*follower
	for _, n := range nodes {
		fs = append(fs, follow(t, n.url, ch, ""))
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for i, n := range nodes {
		wg.Go(func() {
			for j := range perNode {
				if err := publishTo(t.Context(), n.url, ch, "", map[string]int{"node": i, "j": j}); err != nil {
					errs <- fmt.Errorf("node %d publish %d: %w", i, j, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := len(nodes) * perNode
	first := fs[0].waitFor(t, want, 20*time.Second)
	if err := checkRun(first, want); err != nil {
		t.Fatalf("node 0: %v", err)
	}
	for i, f := range fs {
		evs := f.waitFor(t, want, 20*time.Second)
		if err := checkRun(evs, want); err != nil {
			t.Errorf("node %d: %v", i, err)
			continue
		}
		for k := range evs {
			if string(evs[k].Data) != string(first[k].Data) {
				t.Errorf("node %d: event %d is %s, node 0 got %s: the order differs", i, k, evs[k].Data, first[k].Data)
				break
			}
		}
		if _, gaps, _ := f.snapshot(); gaps != 0 {
			t.Errorf("node %d: %d gap signals", i, gaps)
		}
	}
}

// testResumeOnAnotherNode: a client leaves node 0 and comes back on node 2
// with its cursor; it gets exactly what it missed.
func testResumeOnAnotherNode(t *testing.T, nodes []*herald) {
	ch := "thread:resume"
	f := follow(t, nodes[0].url, ch, "")
	for j := range 20 {
		if err := publishTo(t.Context(), nodes[1].url, ch, "", j); err != nil {
			t.Fatal(err)
		}
	}
	f.waitFor(t, 20, 10*time.Second)
	f.mu.Lock()
	sub := f.sub
	f.mu.Unlock()
	sub.Close() // not under f.mu: OnDisconnect takes it
	for j := 20; j < 50; j++ {
		if err := publishTo(t.Context(), nodes[1].url, ch, "", j); err != nil {
			t.Fatal(err)
		}
	}
	f.move(t, nodes[2].url)
	evs := f.waitFor(t, 50, 10*time.Second)
	if err := checkRun(evs, 50); err != nil {
		t.Fatal(err)
	}
	if _, gaps, _ := f.snapshot(); gaps != 0 {
		t.Errorf("%d gap signals on resume", gaps)
	}
}

// testIdempotencyAcrossNodes: a publish retried on another node with the
// same idempotency key gets the first answer and is delivered once.
func testIdempotencyAcrossNodes(t *testing.T, nodes []*herald) {
	ch := "thread:idempotent"
	var fs []*follower
	for _, n := range nodes {
		fs = append(fs, follow(t, n.url, ch, ""))
	}
	var results [][]client.Result
	for _, n := range nodes {
		res, err := client.New(n.url).Publish(t.Context(), client.Publication{Channels: []string{ch}, Data: "once", IdempotencyKey: "k-1"})
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	for i, res := range results {
		if len(res) != 1 || res[0] != results[0][0] {
			t.Errorf("node %d answered %+v, node 0 %+v: want the same position", i, res, results[0])
		}
	}
	if err := publishTo(t.Context(), nodes[1].url, ch, "", "next"); err != nil {
		t.Fatal(err)
	}
	for i, f := range fs {
		evs := f.waitFor(t, 2, 10*time.Second)
		if err := checkRun(evs, 2); err != nil || string(evs[0].Data) != `"once"` {
			t.Errorf("node %d: %v (first %s); want the keyed message once, then the next", i, err, evs[0].Data)
		}
	}
}

// steadyPublisher publishes numbered messages to one channel, round robin
// over urls, every few milliseconds, retrying a refused publish with the
// same idempotency key until it is accepted. It stops after max messages
// or when stop is closed, and returns how many were accepted.
func steadyPublisher(ctx context.Context, urls []string, ch string, max int, stop <-chan struct{}, accepted *atomic.Int64) error {
	for i := range max {
		select {
		case <-stop:
			return nil
		case <-time.After(3 * time.Millisecond):
		}
		key := fmt.Sprintf("%s-%d", ch, i)
		for attempt := 0; ; attempt++ {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := publishTo(pctx, urls[(i+attempt)%len(urls)], ch, key, i)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			time.Sleep(50 * time.Millisecond)
		}
		accepted.Add(1)
	}
	return nil
}

// testNodeKill: subscribers on node 2 while messages are published on
// nodes 0 and 1; node 2 is killed (SIGKILL); its clients move to the other
// nodes with their cursors and miss nothing.
func testNodeKill(t *testing.T, nodes []*herald) {
	ch := "thread:kill"
	var fs []*follower
	for range 5 {
		fs = append(fs, follow(t, nodes[2].url, ch, ""))
	}
	var accepted atomic.Int64
	const total = 400
	done := make(chan error, 1)
	go func() {
		done <- steadyPublisher(t.Context(), []string{nodes[0].url, nodes[1].url}, ch, total, nil, &accepted)
	}()
	testutil.Eventually(t, 10*time.Second, func() error {
		if accepted.Load() < total/4 {
			return errors.New("waiting for the stream to be under way")
		}
		return nil
	})
	if err := nodes[2].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-nodes[2].exited
	for i, f := range fs {
		select {
		case <-f.moved:
		case <-time.After(10 * time.Second):
			t.Fatalf("subscriber %d never saw its node go", i)
		}
		f.move(t, nodes[i%2].url)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, f := range fs {
		evs := f.waitFor(t, total, 20*time.Second)
		if err := checkRun(evs, total); err != nil {
			t.Errorf("subscriber %d: %v", i, err)
		}
		if _, gaps, _ := f.snapshot(); gaps != 0 {
			t.Errorf("subscriber %d: %d gap signals", i, gaps)
		}
	}
}

// testEngineRestart: the broker's engine is killed while messages flow
// and started again. Nodes keep their subscribers, say they are not ready
// meanwhile, and afterwards every accepted message reaches every
// subscriber once, in order.
func testEngineRestart(t *testing.T, nodes []*herald, eng clusterEngine) {
	ch := "thread:engine"
	var fs []*follower
	for _, n := range nodes {
		fs = append(fs, follow(t, n.url, ch, ""))
	}
	urls := []string{nodes[0].url, nodes[1].url, nodes[2].url}
	var accepted atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- steadyPublisher(t.Context(), urls, ch, 100000, stop, &accepted) }()
	testutil.Eventually(t, 10*time.Second, func() error {
		if accepted.Load() < 50 {
			return errors.New("waiting for the stream to be under way")
		}
		return nil
	})
	eng.Kill()
	for _, u := range urls {
		testutil.Eventually(t, 20*time.Second, func() error { return readyz(u, http.StatusServiceUnavailable) })
	}
	before := accepted.Load()
	time.Sleep(300 * time.Millisecond) // publishes are refused meanwhile
	if n := accepted.Load(); n > before+1 {
		t.Errorf("%d publishes accepted while the engine was down", n-before)
	}
	eng.Start()
	for _, u := range urls {
		testutil.Eventually(t, 30*time.Second, func() error { return readyz(u, http.StatusOK) })
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		if accepted.Load() < before+50 {
			return errors.New("waiting for publishes after the restart")
		}
		return nil
	})
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	total := int(accepted.Load())
	for i, f := range fs {
		evs := f.waitFor(t, total, 30*time.Second)
		if err := checkRun(evs, total); err != nil {
			t.Errorf("node %d: %v", i, err)
		}
		if _, gaps, disc := f.snapshot(); gaps != 0 || disc != 0 {
			t.Errorf("node %d: %d gap signals, %d disconnects; want none (the engine kept its data, the node its subscribers)", i, gaps, disc)
		}
	}
}

// testEngineLosesData: the engine comes back without its data. Nodes
// carry on: subscribers stay connected, get the gap signal, then the
// channel's new messages in a new epoch.
func testEngineLosesData(t *testing.T, nodes []*herald, lose func()) {
	ch := "thread:lost-data"
	var fs []*follower
	for _, n := range nodes {
		fs = append(fs, follow(t, n.url, ch, ""))
	}
	urls := []string{nodes[0].url, nodes[1].url, nodes[2].url}
	for i := range 10 {
		if err := publishTo(t.Context(), urls[i%3], ch, "", i); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range fs {
		f.waitFor(t, 10, 10*time.Second)
	}
	lose()
	for i := 10; i < 20; i++ {
		testutil.Eventually(t, 30*time.Second, func() error {
			return publishTo(t.Context(), urls[i%3], ch, fmt.Sprintf("lost-data-%d", i), i)
		})
	}
	for i, f := range fs {
		evs := f.waitFor(t, 20, 20*time.Second)
		_, gaps, disc := f.snapshot()
		if gaps != 1 || disc != 0 {
			t.Errorf("node %d: %d gap signals and %d disconnects, want 1 and 0", i, gaps, disc)
		}
		if err := checkRun(evs[10:], 10); err != nil || evs[10].Epoch == evs[0].Epoch {
			t.Errorf("node %d: after the loss: %v (epochs %s then %s), want offsets 1…10 of a new epoch", i, err, evs[0].Epoch, evs[10].Epoch)
		}
	}
}

func readyz(url string, want int) error {
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return fmt.Errorf("readyz %d, want %d (%v)", resp.StatusCode, want, body)
	}
	return nil
}

// TestRemoveIdleConsumers: the publish group loses the consumers of nodes
// that left — idle, nothing pending — and keeps the others: one holding
// an entry (another node claims it first), one that read recently, and
// this node's own.
func TestRemoveIdleConsumers(t *testing.T) {
	srv := testutil.StartRedis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	ctx := t.Context()
	if err := rdb.XGroupCreateMkStream(ctx, PublishStream, publishGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"gone-1", "gone-2", "self", "holder"} {
		if err := rdb.XGroupCreateConsumer(ctx, PublishStream, publishGroup, c).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.XAdd(ctx, &goredis.XAddArgs{Stream: PublishStream, Values: []string{"publish", "{}"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: publishGroup, Consumer: "holder",
		Streams: []string{PublishStream, ">"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	// The others are idle for 1.5s, "recent" for much less than the 1s
	// limit, even on a slow machine.
	time.Sleep(1500 * time.Millisecond)
	if err := rdb.XGroupCreateConsumer(ctx, PublishStream, publishGroup, "recent").Err(); err != nil {
		t.Fatal(err)
	}
	others := func(name string) bool { return name != "self" }
	gone, err := removeIdleConsumers(ctx, rdb, time.Second, others)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(gone)
	if !slices.Equal(gone, []string{"gone-1", "gone-2"}) {
		t.Errorf("removed %q, want gone-1 and gone-2", gone)
	}
	names := func() []string {
		cs, err := rdb.XInfoConsumers(ctx, PublishStream, publishGroup).Result()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range cs {
			out = append(out, c.Name)
		}
		slices.Sort(out)
		return out
	}
	if got := names(); !slices.Equal(got, []string{"holder", "recent", "self"}) {
		t.Errorf("consumers left %q, want holder, recent and self", got)
	}
	// Stopping, a node removes its own consumer, whatever its idle time,
	// and nothing else.
	self := func(name string) bool { return name == "self" }
	if gone, err := removeIdleConsumers(ctx, rdb, 0, self); err != nil || !slices.Equal(gone, []string{"self"}) {
		t.Errorf("removing self: %q, %v", gone, err)
	}
	if got := names(); !slices.Equal(got, []string{"holder", "recent"}) {
		t.Errorf("consumers left %q, want holder and recent", got)
	}
}
