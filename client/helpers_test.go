package client

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/testutil"
)

// recorder collects what a subscription's callbacks receive.
type recorder struct {
	mu          sync.Mutex
	events      []Event
	gaps        [][]string
	connects    int
	disconnects []error
}

// options returns o with the recorder's callbacks.
func (r *recorder) options(o SubscribeOptions) SubscribeOptions {
	o.OnEvent = func(ev Event) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.events = append(r.events, ev)
	}
	o.OnGap = func(channels []string) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.gaps = append(r.gaps, slices.Clone(channels))
	}
	o.OnConnect = func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.connects++
	}
	o.OnDisconnect = func(err error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.disconnects = append(r.disconnects, err)
	}
	return o
}

// positions describes the events received as "channel@epoch:offset".
func (r *recorder) positions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.events))
	for i, ev := range r.events {
		out[i] = fmt.Sprintf("%s@%s:%d", ev.Channel, ev.Epoch, ev.Offset)
	}
	return out
}

// waitPositions waits until the events received are exactly want.
func (r *recorder) waitPositions(t *testing.T, want ...string) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		if got := r.positions(); !slices.Equal(got, want) {
			return fmt.Errorf("events %v, want %v", got, want)
		}
		return nil
	})
}

// waitConnects waits until OnConnect was called n times.
func (r *recorder) waitConnects(t *testing.T, n int) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.connects != n {
			return fmt.Errorf("%d connects, want %d", r.connects, n)
		}
		return nil
	})
}

// scriptServer serves each new request with the next handler of script
// (the last one repeats) and records the requests.
type scriptServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request // guarded by mu
}

func newScriptServer(t *testing.T, script ...http.HandlerFunc) *scriptServer {
	t.Helper()
	s := &scriptServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		n := len(s.requests)
		s.requests = append(s.requests, r.Clone(r.Context()))
		s.mu.Unlock()
		script[min(n, len(script)-1)](w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

// request returns the n-th request received, waiting for it.
func (s *scriptServer) request(t *testing.T, n int) *http.Request {
	t.Helper()
	var r *http.Request
	testutil.Eventually(t, 5*time.Second, func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.requests) <= n {
			return fmt.Errorf("%d requests, want %d", len(s.requests), n+1)
		}
		r = s.requests[n]
		return nil
	})
	return r
}

func (s *scriptServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

// stream writes an event stream's head and then each chunk, flushed.
func stream(w http.ResponseWriter, chunks ...string) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	for _, c := range chunks {
		_, _ = w.Write([]byte(c))
		w.(http.Flusher).Flush()
	}
}

// envelopeJSONFor renders an envelope as the server does.
func envelopeFor(channel, epoch string, offset uint64, typ, data string) string {
	return fmt.Sprintf(`{"channel":%q,"epoch":%q,"offset":%d,"type":%q,"data":%s,"time":"2026-11-21T10:00:00.000Z"}`,
		channel, epoch, offset, typ, data)
}

// sseFrame renders a message as the server's SSE writer does.
func sseFrame(cursor, channel, epoch string, offset uint64, typ, data string) string {
	return "id: " + cursor + "\nevent: " + typ + "\ndata: " + envelopeFor(channel, epoch, offset, typ, data) + "\n\n"
}

// httpError writes Herald's JSON error.
func httpError(status int, code string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":{"code":%q,"message":"test %s"}}`, code, strings.ReplaceAll(code, "_", " "))
	}
}

// hang keeps a response open until the client leaves.
func hang(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }

// waitSet waits until as many events as want were received, then checks
// that they are want in some order that keeps each channel's messages in
// order: across channels, the server's replay order is its own choice.
func (r *recorder) waitSet(t *testing.T, want ...string) {
	t.Helper()
	var got []string
	testutil.Eventually(t, 5*time.Second, func() error {
		if got = r.positions(); len(got) < len(want) {
			return fmt.Errorf("events %v, want %v", got, want)
		}
		return nil
	})
	sorted, wantSorted := slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if !slices.Equal(sorted, wantSorted) {
		t.Fatalf("events %v, want %v in any cross-channel order", got, want)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	last := map[string]uint64{}
	for _, ev := range r.events {
		if ev.Offset <= last[ev.Channel+"@"+ev.Epoch] {
			t.Fatalf("events out of order in %s: %v", ev.Channel, got)
		}
		last[ev.Channel+"@"+ev.Epoch] = ev.Offset
	}
}
