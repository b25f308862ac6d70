package sse_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/engine"
	"github.com/heraldhq/herald/transport/sse"
)

// healthyClient reads an SSE stream as fast as it can and checks that
// messages arrive in order with no hole and no duplicate.
type healthyClient struct {
	resp *http.Response
	got  atomic.Int64 // messages received in order
}

// run reads until the body is closed, reporting the first inconsistency
// with fail. It uses only bytes it must look at: the id offset and the
// envelope's channel and offset.
func (c *healthyClient) run(channel string, fail func(error)) {
	br := bufio.NewReaderSize(c.resp.Body, 32<<10)
	prefix := []byte(`{"channel":"` + channel + `",`)
	var idOff, dataOff int64 = -1, -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return // body closed at the end of the test
		}
		switch {
		case len(line) == 1: // end of an event
			if dataOff >= 0 {
				want := c.got.Load() + 1
				if dataOff != want || idOff != want {
					fail(fmt.Errorf("client got data offset %d with id offset %d, want %d", dataOff, idOff, want))
					return
				}
				c.got.Store(want)
			}
			idOff, dataOff = -1, -1
		case bytes.HasPrefix(line, []byte("id: ")):
			idOff = trailingOffset(line)
		case bytes.HasPrefix(line, []byte("data: ")):
			env := line[len("data: "):]
			if !bytes.HasPrefix(env, prefix) {
				fail(fmt.Errorf("unexpected data %.80q", env))
				return
			}
			dataOff = envelopeOffset(env)
		}
	}
}

// trailingOffset parses the offset that ends an "id: ch@epoch:N" line.
func trailingOffset(line []byte) int64 {
	line = bytes.TrimSuffix(line, []byte("\n"))
	n, err := strconv.ParseInt(string(line[bytes.LastIndexByte(line, ':')+1:]), 10, 64)
	if err != nil {
		return -2
	}
	return n
}

// envelopeOffset parses the "offset" field of an envelope.
func envelopeOffset(env []byte) int64 {
	_, rest, ok := bytes.Cut(env, []byte(`"offset":`))
	if !ok {
		return -2
	}
	end := bytes.IndexByte(rest, ',')
	if end < 0 {
		return -2
	}
	n, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	if err != nil {
		return -2
	}
	return n
}

// TestSlowConsumerIsIsolated is the slow-consumer proof: one SSE client
// stops reading while 1 000 others keep reading. The stalled one is
// disconnected as a slow consumer; every other client receives every
// message, in order, without loss; the publisher never waits on anyone;
// and what the stalled client still reads is an in-order prefix.
func TestSlowConsumerIsIsolated(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips opening 1 001 connections; runs in every full `go test ./...` and in CI")
	}
	const (
		clients   = 1000
		channel   = "room:1"
		dataBytes = 8 << 10
		// window bounds how far the publisher runs ahead of the slowest
		// healthy client: 4 messages of ~8 KiB stay well under the 64 KiB
		// queue limit, so only a client that stops reading overflows.
		window = 4
		// after is how many messages are published once the stalled
		// client has been cut off.
		after = 10
	)
	h := testutil.NewHub(t, hub.Config{
		MaxQueueBytes: 64 << 10,
		Default:       hub.NamespaceConfig{HistorySize: 1000},
	})
	// Default config: a write blocks for up to 10s before it fails.
	srv := httptest.NewUnstartedServer(sse.New(h, sse.Config{Engine: testutil.Engine(t, engine.Config{})}))
	// Small kernel buffers on both sides of the stalled connection: on
	// loopback, autotuning would otherwise absorb megabytes before the
	// server's writer blocks.
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetWriteBuffer(16 << 10)
		}
		return ctx
	}
	srv.Start()
	t.Cleanup(srv.Close)
	url := srv.URL + "/v1/sse?channel=" + channel

	var (
		failMu  sync.Mutex
		failure error
	)
	fail := func(err error) {
		failMu.Lock()
		defer failMu.Unlock()
		if failure == nil {
			failure = err
		}
	}
	failed := func() error {
		failMu.Lock()
		defer failMu.Unlock()
		return failure
	}

	// The stalled client: a receive buffer of 4 KiB, and it stops reading
	// right after the stream starts.
	stalledTr := &http.Transport{DialContext: (&net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}).DialContext}
	t.Cleanup(stalledTr.CloseIdleConnections)
	stalledResp, err := (&http.Client{Transport: stalledTr}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stalledResp.Body.Close() })
	stalled := bufio.NewReader(stalledResp.Body)
	for _, want := range []string{"retry", "id"} {
		if ev, err := readEvent(stalled); err != nil || (want == "retry") != (ev.Retry != "") {
			t.Fatalf("stalled client start: %+v, %v; want %s", ev, err, want)
		}
	}

	// The healthy clients, connected in parallel, each read by its own
	// goroutine until the end of the test.
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	healthy := make([]*healthyClient, clients)
	var readers sync.WaitGroup
	t.Cleanup(func() {
		for _, c := range healthy {
			if c != nil {
				c.resp.Body.Close()
			}
		}
		readers.Wait()
	})
	var connecting sync.WaitGroup
	for i := range healthy {
		connecting.Go(func() {
			resp, err := client.Get(url)
			if err != nil {
				fail(err)
				return
			}
			if resp.StatusCode != http.StatusOK {
				resp.Body.Close()
				fail(fmt.Errorf("healthy client %d: status %d", i, resp.StatusCode))
				return
			}
			healthy[i] = &healthyClient{resp: resp}
		})
	}
	connecting.Wait()
	if err := failed(); err != nil {
		t.Fatal(err)
	}
	for _, c := range healthy {
		readers.Go(func() { c.run(channel, fail) })
	}
	if n := h.Channel(channel).Subscribers; n != clients+1 {
		t.Fatalf("%d subscribers, want %d", n, clients+1)
	}

	data := json.RawMessage(`"` + strings.Repeat("x", dataBytes) + `"`)
	var (
		published  int64
		maxPublish time.Duration
	)
	publishOne := func() {
		t.Helper()
		start := time.Now()
		if _, err := h.Publish(context.Background(), hub.Publication{Channels: []string{channel}, Type: "big", Data: data}); err != nil {
			t.Fatalf("publish %d: %v", published+1, err)
		}
		maxPublish = max(maxPublish, time.Since(start))
		published++
	}
	slowest := func() int64 {
		m := int64(-1)
		for _, c := range healthy {
			if n := c.got.Load(); m < 0 || n < m {
				m = n
			}
		}
		return m
	}
	waitHealthy := func(n int64) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, func() error {
			if failed() != nil {
				return nil
			}
			if m := slowest(); m < n {
				return fmt.Errorf("slowest healthy client has %d of %d messages", m, n)
			}
			return nil
		})
		if err := failed(); err != nil {
			t.Fatal(err)
		}
	}

	began := time.Now()
	for h.Stats().SlowConsumers == 0 {
		if published >= 500 {
			t.Fatalf("stalled client still connected after %d messages", published)
		}
		publishOne()
		waitHealthy(published - window)
	}
	cutOffAt := published
	for range after {
		publishOne()
		waitHealthy(published - window)
	}
	waitHealthy(published)
	t.Logf("stalled client cut off after %d messages; %d published to %d clients in %v; slowest publish %v",
		cutOffAt, published, clients+1, time.Since(began), maxPublish)

	for i, c := range healthy {
		if n := c.got.Load(); n != published {
			t.Fatalf("healthy client %d got %d messages, want %d", i, n, published)
		}
	}
	// The stalled client reads nothing until now, so a publisher that
	// waited on it would have been stuck until its 10s write timeout.
	if maxPublish > 5*time.Second {
		t.Errorf("slowest publish took %v: the publisher waited on a subscriber", maxPublish)
	}
	st := h.Stats()
	if st.SlowConsumers != 1 || st.Dropped == 0 {
		t.Errorf("stats: %d slow consumers, %d dropped; want 1 and some", st.SlowConsumers, st.Dropped)
	}
	// The stalled client reads again: what was in flight, in order, then
	// the end of the stream — the server has hung up on it. (It cannot
	// resume from history yet: the hub counts a replay against
	// MaxQueueBytes, and what a slow consumer missed always exceeds it.)
	var timedOut atomic.Bool
	timer := time.AfterFunc(2*waitFor, func() { timedOut.Store(true); stalledResp.Body.Close() })
	defer timer.Stop()
	var got int64
	for {
		ev, err := readEvent(stalled)
		if err != nil {
			break
		}
		if ev.isMessage() {
			if off := envelopeOffset([]byte(ev.Data)); off != got+1 {
				t.Fatalf("stalled client got offset %d after %d", off, got)
			}
			got++
		}
	}
	if timedOut.Load() {
		t.Fatalf("stalled client's stream still open %v after its session was closed", 2*waitFor)
	}
	if got == 0 || got >= cutOffAt {
		t.Fatalf("stalled client received %d messages before being cut off at %d", got, cutOffAt)
	}

	// Its writer has returned and released the session.
	testutil.Eventually(t, 10*time.Second, func() error {
		if st := h.Stats(); st.Connections != clients || h.Channel(channel).Subscribers != clients {
			return fmt.Errorf("%d connections, %d subscribers; want %d", st.Connections, h.Channel(channel).Subscribers, clients)
		}
		return nil
	})
}
