package redis_test

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/broker/brokertest"
	"github.com/heraldhq/herald/broker/redis"
	"github.com/heraldhq/herald/internal/testutil"
)

// testPing is the tests' PingInterval and PingTimeout: short, so that the
// pinger runs during the tests, and long enough not to take a loaded
// machine for a dead server.
const testPing = 500 * time.Millisecond

// newBroker returns a broker on url, shut down when the test ends.
func newBroker(t testing.TB, url string) *redis.Broker {
	t.Helper()
	b, err := redis.New(redis.Config{URL: url, PingInterval: testPing, PingTimeout: testPing})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return b
}

// modes are the ways to use one redis-server, as URL query strings.
var modes = []struct{ name, query string }{
	{"Plain", ""},
	{"Sharded", "?sharded=true"},
}

// ---- conformance ----

// newCluster returns n brokers on url, each with a client of its own, as
// n Herald nodes.
func newCluster(t *testing.T, url string, n int) []broker.Broker {
	out := make([]broker.Broker, n)
	for i := range out {
		out[i] = newBroker(t, url)
	}
	return out
}

func TestConformance(t *testing.T) {
	srv := testutil.StartRedis(t)
	for _, mode := range modes {
		url := "redis://" + srv.Addr() + mode.query
		t.Run(mode.name, func(t *testing.T) {
			brokertest.Run(t, func(t *testing.T) broker.Broker { return newBroker(t, url) })
		})
	}
}

func TestClusterConformance(t *testing.T) {
	srv := testutil.StartRedis(t)
	for _, mode := range modes {
		url := "redis://" + srv.Addr() + mode.query
		t.Run(mode.name, func(t *testing.T) {
			brokertest.RunCluster(t, func(t *testing.T, n int) []broker.Broker { return newCluster(t, url, n) })
		})
	}
}

// TestOutageConformance kills the redis-server under two nodes and starts
// it again (see also TestOutage).
func TestOutageConformance(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			srv := testutil.StartRedis(t)
			url := "redis://" + srv.Addr() + mode.query
			brokertest.RunOutage(t, func(t *testing.T, n int) []broker.Broker { return newCluster(t, url, n) }, srv)
		})
	}
}

// TestRedisCluster runs the cross-node cases on a real Redis Cluster of
// three masters, in both modes: with sharded pub/sub the channels spread
// over the masters, and each node keeps a connection to every master
// holding one of its channels.
func TestRedisCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips starting a Redis Cluster of three servers; runs in every full `go test ./...` and in CI")
	}
	addrs := testutil.RedisCluster(t, 3)
	base := "redis://" + addrs[0] + "?cluster=true&addr=" + addrs[1] + "&addr=" + addrs[2]
	for _, mode := range []struct{ name, query string }{{"Plain", ""}, {"Sharded", "&sharded=true"}} {
		url := base + mode.query
		t.Run(mode.name, func(t *testing.T) {
			brokertest.RunCluster(t, func(t *testing.T, n int) []broker.Broker { return newCluster(t, url, n) })
			t.Run("SubscribeThenPublish", func(t *testing.T) { testSubscribeThenPublish(t, url) })
			if mode.name == "Sharded" {
				t.Run("ChannelsSpreadOverMasters", func(t *testing.T) { testSpread(t, url, addrs) })
			}
		})
	}
}

// testSpread: with sharded pub/sub, each channel is subscribed at the
// master of its slot, so a node's channels spread over the masters.
func testSpread(t *testing.T, url string, masters []string) {
	b := newBroker(t, url)
	run(t, b)
	p := unique(t)
	for i := range 30 {
		subscribe(t, b, fmt.Sprintf("%s%d", p, i))
	}
	total := 0
	for _, addr := range masters {
		rdb := goredis.NewClient(&goredis.Options{Addr: addr})
		chans, err := rdb.PubSubShardChannels(t.Context(), b.Channel(p)+"*").Result()
		rdb.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(chans) == 0 {
			t.Errorf("master %s holds none of the 30 channels", addr)
		}
		total += len(chans)
	}
	if total != 30 {
		t.Errorf("the masters hold %d channels, want 30", total)
	}
	if h := b.Health(); !h.Connected {
		t.Errorf("Health = %+v", h)
	}
}

// ---- interest ----

// recorder keeps what a handler received, per channel.
type recorder struct {
	mu     sync.Mutex
	byChan map[string][]*broker.Message // guarded by mu
}

func run(t testing.TB, b *redis.Broker) *recorder {
	t.Helper()
	r := &recorder{byChan: make(map[string][]*broker.Message)}
	if err := b.Run(func(m *broker.Message) {
		r.mu.Lock()
		r.byChan[m.Channel] = append(r.byChan[m.Channel], m)
		r.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *recorder) count(ch string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byChan[ch])
}

// waitFor waits until r has received n messages on ch.
func (r *recorder) waitFor(t testing.TB, ch string, n int) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := r.count(ch); got < n {
			return fmt.Errorf("%s: received %d of %d messages", ch, got, n)
		}
		return nil
	})
}

func msg(ch string, off uint64) *broker.Message {
	return &broker.Message{Channel: ch, Epoch: "e", Offset: off, Type: "message",
		Data: []byte(`{"n":1}`), Time: time.Now(), Envelope: []byte(`{}`)}
}

func publish(t testing.TB, b *redis.Broker, m *broker.Message) {
	t.Helper()
	if err := b.Publish(t.Context(), m); err != nil {
		t.Fatal(err)
	}
}

func subscribe(t testing.TB, b *redis.Broker, ch string) {
	t.Helper()
	if err := b.Subscribe(t.Context(), ch); err != nil {
		t.Fatalf("Subscribe(%s): %v", ch, err)
	}
}

func unique(t testing.TB) string {
	return strings.ReplaceAll(t.Name(), "/", ".") + "." + fmt.Sprint(time.Now().UnixNano()) + "."
}

// testSubscribeThenPublish: a message that another node publishes as soon
// as Subscribe has returned arrives, every time; a node receives only the
// channels it subscribed to.
func testSubscribeThenPublish(t *testing.T, url string) {
	sub, pub := newBroker(t, url), newBroker(t, url)
	r := run(t, sub)
	run(t, pub)
	p := unique(t)
	const n = 50
	for i := range n {
		ch := fmt.Sprintf("%s%d", p, i)
		subscribe(t, sub, ch)
		publish(t, pub, msg(ch, 1))
	}
	publish(t, pub, msg(p+"other", 1))
	for i := range n {
		r.waitFor(t, fmt.Sprintf("%s%d", p, i), 1)
	}
	if got := r.count(p + "other"); got != 0 {
		t.Errorf("received %d messages of a channel it did not subscribe to", got)
	}
}

func TestSubscribeThenPublish(t *testing.T) {
	srv := testutil.StartRedis(t)
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) { testSubscribeThenPublish(t, "redis://"+srv.Addr()+mode.query) })
	}
}

// TestUnsubscribe: after Unsubscribe, Redis no longer counts the node as
// a subscriber, and what is published then does not arrive; subscribing
// again works.
func TestUnsubscribe(t *testing.T) {
	srv := testutil.StartRedis(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rdb.Close() })
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			b := newBroker(t, "redis://"+srv.Addr()+mode.query)
			r := run(t, b)
			ch := unique(t) + "x"
			numsub := func() int64 {
				if strings.Contains(mode.query, "sharded=true") {
					return rdb.PubSubShardNumSub(t.Context(), b.Channel(ch)).Val()[b.Channel(ch)]
				}
				return rdb.PubSubNumSub(t.Context(), b.Channel(ch)).Val()[b.Channel(ch)]
			}
			subscribe(t, b, ch)
			if n := numsub(); n != 1 {
				t.Fatalf("after Subscribe, Redis counts %d subscribers, want 1", n)
			}
			publish(t, b, msg(ch, 1))
			r.waitFor(t, ch, 1)
			if err := b.Unsubscribe(t.Context(), ch); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 5*time.Second, func() error {
				if n := numsub(); n != 0 {
					return fmt.Errorf("after Unsubscribe, Redis counts %d subscribers", n)
				}
				return nil
			})
			publish(t, b, msg(ch, 2))
			subscribe(t, b, ch)
			publish(t, b, msg(ch, 3))
			r.waitFor(t, ch, 2)
			r.mu.Lock()
			got := r.byChan[ch]
			r.mu.Unlock()
			if len(got) != 2 || got[1].Offset != 3 {
				t.Errorf("received offsets %v, want 1 and 3", offsets(got))
			}
		})
	}
}

func offsets(ms []*broker.Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.Offset)
	}
	return out
}

// TestMalformedMessagesAreDropped: what another client publishes on a
// broker's channel that is not broker.Encode's, or names another channel,
// is counted and dropped; the messages around it arrive.
func TestMalformedMessagesAreDropped(t *testing.T) {
	srv := testutil.StartRedis(t)
	b := newBroker(t, "redis://"+srv.Addr())
	r := run(t, b)
	ch := unique(t) + "x"
	subscribe(t, b, ch)
	publish(t, b, msg(ch, 1))
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rdb.Close() })
	for _, payload := range []any{"", "hello", "H\x01\xff", broker.Encode(msg("another", 1))} {
		if err := rdb.Publish(t.Context(), b.Channel(ch), payload).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, b, msg(ch, 2))
	r.waitFor(t, ch, 2)
	if st := b.Stats(); st.Malformed != 4 || st.Received != 2 {
		t.Errorf("Stats() = %+v, want 4 malformed, 2 received", st)
	}
}

// ---- outage ----

// TestOutage: while redis-server is down, Health says so, Publish fails
// within its context and Subscribe fails at once; once it is back, every
// subscription is restored by itself and Health says connected again.
func TestOutage(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			srv := testutil.StartRedis(t)
			url := "redis://" + srv.Addr() + mode.query
			a, b := newBroker(t, url), newBroker(t, url)
			ra, rb := run(t, a), run(t, b)
			ch := unique(t) + "x"
			subscribe(t, a, ch)
			subscribe(t, b, ch)
			publish(t, a, msg(ch, 1))
			ra.waitFor(t, ch, 1)
			rb.waitFor(t, ch, 1)
			for _, x := range []*redis.Broker{a, b} {
				if h := x.Health(); !h.Connected || h.Reconnects != 0 || h.Err != "" {
					t.Fatalf("Health before the outage = %+v", h)
				}
			}

			srv.Kill()
			for _, x := range []*redis.Broker{a, b} {
				testutil.Eventually(t, 5*time.Second, func() error {
					if h := x.Health(); h.Connected || h.Err == "" {
						return fmt.Errorf("Health during the outage = %+v, want disconnected with an error", h)
					}
					return nil
				})
			}
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			start := time.Now()
			err := a.Publish(ctx, msg(ch, 2))
			cancel()
			if err == nil {
				t.Fatal("Publish during the outage succeeded")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Publish during the outage took %v with a 300ms context", d)
			}
			start = time.Now()
			if err := a.Subscribe(t.Context(), ch+"2"); !errors.Is(err, redis.ErrNotConnected) {
				t.Errorf("Subscribe during the outage: %v, want ErrNotConnected", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Subscribe during the outage took %v, want at once", d)
			}

			srv.Start()
			for _, x := range []*redis.Broker{a, b} {
				testutil.Eventually(t, 10*time.Second, func() error {
					if h := x.Health(); !h.Connected || h.Reconnects != 1 || h.Err != "" {
						return fmt.Errorf("Health after the outage = %+v, want connected, 1 reconnect", h)
					}
					return nil
				})
			}
			// Connected means the subscriptions are back: no waiting.
			publish(t, b, msg(ch, 3))
			ra.waitFor(t, ch, 2)
			rb.waitFor(t, ch, 2)
			subscribe(t, a, ch+"2")
			publish(t, b, msg(ch+"2", 1))
			ra.waitFor(t, ch+"2", 1)
		})
	}
}

// TestFrozenServer: a server that stops answering without closing its
// connections (SIGSTOP) is noticed within about PingInterval+PingTimeout;
// once it answers again, the subscriptions are back.
func TestFrozenServer(t *testing.T) {
	srv := testutil.StartRedis(t)
	b := newBroker(t, "redis://"+srv.Addr())
	r := run(t, b)
	ch := unique(t) + "x"
	subscribe(t, b, ch)
	srv.Freeze()
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			srv.Thaw()
		}
	})
	start := time.Now()
	testutil.Eventually(t, 10*time.Second, func() error {
		if h := b.Health(); h.Connected || !strings.Contains(h.Err, "timeout") {
			return fmt.Errorf("Health with a frozen server = %+v, want disconnected after a timeout", h)
		}
		return nil
	})
	if d := time.Since(start); d > 4*testPing {
		t.Errorf("the frozen server was noticed after %v, want about %v", d, 2*testPing)
	}
	srv.Thaw()
	thawed = true
	testutil.Eventually(t, 10*time.Second, func() error {
		if h := b.Health(); !h.Connected || h.Reconnects == 0 {
			return fmt.Errorf("Health after the thaw = %+v", h)
		}
		return nil
	})
	publish(t, b, msg(ch, 1))
	r.waitFor(t, ch, 1)
}

// TestNoServer: with nothing listening, Run still succeeds, Health says
// why the broker is not connected, Subscribe fails at once and Publish
// within its context; Shutdown is prompt.
func TestNoServer(t *testing.T) {
	srv := testutil.StartRedis(t)
	addr := srv.Addr()
	srv.Kill() // a port nothing listens on
	b := newBroker(t, "redis://"+addr)
	run(t, b)
	// At once after Run, Subscribe waits for the first connection attempt,
	// and fails with it.
	start := time.Now()
	if err := b.Subscribe(t.Context(), "x"); !errors.Is(err, redis.ErrNotConnected) {
		t.Errorf("Subscribe at once after Run: %v, want ErrNotConnected", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Subscribe at once after Run took %v", d)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if h := b.Health(); h.Connected || !strings.Contains(h.Err, "refused") || h.Engine != "redis "+addr {
			return fmt.Errorf("Health = %+v", h)
		}
		return nil
	})
	if err := b.Subscribe(t.Context(), "x"); !errors.Is(err, redis.ErrNotConnected) {
		t.Errorf("Subscribe: %v, want ErrNotConnected", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if err := b.Publish(ctx, msg("x", 1)); err == nil {
		t.Error("Publish succeeded")
	}
	ctx, cancel = context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if h := b.Health(); h.Connected {
		t.Errorf("Health after Shutdown = %+v", h)
	}
}

// ---- configuration ----

func TestNew(t *testing.T) {
	for _, c := range []struct {
		url, engine string
	}{
		{"", "redis localhost:6379"},
		{"redis://127.0.0.1:7000", "redis 127.0.0.1:7000"},
		{"redis://user:secret@127.0.0.1:7000/3?dial_timeout=2s", "redis 127.0.0.1:7000"},
		{"rediss://:secret@example.com?sharded=true", "redis example.com:6379 sharded"},
		{"redis://:secret@10.0.0.1:7000?cluster=true&addr=10.0.0.2:7000&addr=10.0.0.3:7000",
			"redis cluster 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000"},
		{"redis://10.0.0.1:7000?cluster=1&sharded=1", "redis cluster 10.0.0.1:7000 sharded"},
		{"unix:///run/redis.sock?sharded=false", "redis /run/redis.sock"},
	} {
		b, err := redis.New(redis.Config{URL: c.url})
		if err != nil {
			t.Errorf("New(%q): %v", c.url, err)
			continue
		}
		if h := b.Health(); h.Engine != c.engine || h.Connected {
			t.Errorf("New(%q).Health() = %+v, want engine %q, not connected", c.url, h, c.engine)
		}
		if err := b.Shutdown(t.Context()); err != nil {
			t.Errorf("New(%q).Shutdown: %v", c.url, err)
		}
	}
}

func TestNewRejects(t *testing.T) {
	for _, c := range []struct {
		cfg  redis.Config
		want []string // in the error
	}{
		{redis.Config{URL: "http://secret@x"}, []string{"scheme"}},
		{redis.Config{URL: "redis://:secret@x?sharded=maybe&cluster=yes"}, []string{"sharded=", "cluster="}},
		{redis.Config{URL: "redis://:secret@x?bogus=1"}, []string{"bogus"}},
		{redis.Config{URL: "redis://:secret@x/3?cluster=true"}, []string{"databases"}},
		{redis.Config{URL: "redis://:secret@x:port"}, []string{"port"}},
		{redis.Config{URL: "redis://x", PingInterval: -1, PingTimeout: -1}, []string{"PingInterval", "PingTimeout"}},
	} {
		_, err := redis.New(c.cfg)
		if err == nil {
			t.Errorf("New(%+v) succeeded", c.cfg)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("New(%+v) = %v, want it to mention %q", c.cfg, err, w)
			}
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("New(%+v) = %v: the error shows the password", c.cfg, err)
		}
	}
}

func TestRunTwice(t *testing.T) {
	b := newBroker(t, "redis://127.0.0.1:1")
	run(t, b)
	if err := b.Run(func(*broker.Message) {}); err == nil {
		t.Error("second Run succeeded")
	}
	if err := newBroker(t, "redis://127.0.0.1:1").Subscribe(t.Context(), "x"); err == nil {
		t.Error("Subscribe before Run succeeded")
	}
}

// FuzzNew: any URL gives a broker or an error, never a panic, and neither
// the error nor Health shows the password.
func FuzzNew(f *testing.F) {
	for _, s := range []string{
		"redis://localhost:6379", "redis://u:p@h:1/2?sharded=true", "rediss://h?cluster=true&addr=h2:1",
		"unix:///s", "redis://h?dial_timeout=x", "redis://[::1]:7000", "redis://h/%zz", "",
	} {
		f.Add(s, "hunter2")
	}
	f.Fuzz(func(t *testing.T, url, password string) {
		if len(password) < 6 || strings.ContainsAny(password, "@/:?#%[]") ||
			!strings.Contains(url, "://") || strings.Contains(strings.ToLower(url), strings.ToLower(password)) {
			return // no password to hide, or its text is elsewhere in the URL too
		}
		url = strings.Replace(url, "://", "://user:"+password+"@", 1)
		if u, err := neturl.Parse(url); err == nil {
			if pw, _ := u.User.Password(); pw != password {
				return // e.g. "unix:/://": the text is part of a socket path, not a password
			}
		}
		b, err := redis.New(redis.Config{URL: url})
		if err != nil {
			if strings.Contains(err.Error(), password) {
				t.Fatalf("error %q shows the password", err)
			}
			return
		}
		if h := b.Health(); strings.Contains(h.Engine, password) {
			t.Fatalf("Engine %q shows the password", h.Engine)
		}
		_ = b.Shutdown(context.Background())
	})
}

// ---- benchmark ----

// BenchmarkPublishReceive: one node publishes to a channel another node
// subscribes to, one message at a time (each Publish waits for Redis's
// answer, as the hub's per-channel lock makes it), and the benchmark ends
// when the last one has arrived.
//
// With channels=16, sixteen goroutines publish to sixteen channels at
// once: Redis then works on several messages at a time.
func BenchmarkPublishReceive(b *testing.B) {
	srv := testutil.StartRedis(b)
	for _, mode := range modes {
		for _, nch := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/channels=%d", mode.name, nch), func(b *testing.B) {
				benchPublishReceive(b, "redis://"+srv.Addr()+mode.query, nch)
			})
		}
	}
}

func benchPublishReceive(b *testing.B, url string, nch int) {
	pub, sub := newBroker(b, url), newBroker(b, url)
	var got atomic.Int64
	all := make(chan struct{})
	target := int64(b.N / nch * nch)
	if err := sub.Run(func(*broker.Message) {
		if got.Add(1) == target {
			close(all)
		}
	}); err != nil {
		b.Fatal(err)
	}
	run(b, pub)
	p := unique(b)
	data := []byte(`{"text":"` + strings.Repeat("x", 200) + `"}`)
	ms := make([]*broker.Message, nch)
	for i := range ms {
		ch := fmt.Sprintf("%s%d", p, i)
		subscribe(b, sub, ch)
		ms[i] = msg(ch, 0)
		ms[i].Data = data
		ms[i].Envelope = append(append([]byte(`{"data":`), data...), '}')
	}
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Go(func() {
			for range b.N / nch {
				m.Offset++ // one goroutine per message
				if err := pub.Publish(context.Background(), m); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if target > 0 {
		select {
		case <-all:
		case <-time.After(30 * time.Second):
			b.Fatalf("received %d of %d", got.Load(), target)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(target)/b.Elapsed().Seconds(), "msgs/s")
}
