package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/pipeline"
)

// recorder is a Publisher that keeps what it is given and answers err.
type recorder struct {
	mu   sync.Mutex
	pubs []hub.Publication // guarded by mu
	err  error
}

func (r *recorder) Publish(_ context.Context, p hub.Publication) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pubs = append(r.pubs, p)
	return r.err
}

func (r *recorder) published() []hub.Publication {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pubs)
}

func TestPublishStage(t *testing.T) {
	retryable := errors.New("backend down")
	tests := []struct {
		name     string
		m        pipeline.Message
		pubErr   error
		wantData string // "" means nothing is published
		wantErr  string
		perm     bool
		drop     bool
	}{
		{
			name:     "fields",
			m:        pipeline.Message{Type: "post.created", Channels: []string{"a", "b"}, Key: "p:e1", Fields: map[string]any{"n": json.Number("1.50"), "s": "<b>"}},
			wantData: `{"n":1.50,"s":"\u003cb\u003e"}`,
		},
		{
			name:     "payload wins",
			m:        pipeline.Message{Type: "t", Channels: []string{"a"}, Key: "k", Fields: map[string]any{"n": 1}, Payload: json.RawMessage(`{"p":true}`)},
			wantData: `{"p":true}`,
		},
		{
			name:     "nil fields",
			m:        pipeline.Message{Type: "t", Channels: []string{"a"}},
			wantData: `null`,
		},
		{name: "no channels", m: pipeline.Message{Type: "t", Fields: map[string]any{}}, drop: true},
		{
			name:    "fields do not encode",
			m:       pipeline.Message{Type: "t", Channels: []string{"a"}, Fields: map[string]any{"f": math.Inf(1)}},
			wantErr: "publish: encoding the fields", perm: true,
		},
		{
			name:     "retryable publisher error",
			m:        pipeline.Message{Type: "t", Channels: []string{"a"}, Fields: map[string]any{}},
			pubErr:   retryable,
			wantData: `{}`, wantErr: "backend down",
		},
		{
			name:     "permanent publisher error",
			m:        pipeline.Message{Type: "t", Channels: []string{"a"}, Fields: map[string]any{}},
			pubErr:   pipeline.Permanent(hub.ErrInvalidType),
			wantData: `{}`, wantErr: "invalid message type", perm: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{err: tt.pubErr}
			s, err := pipeline.NewPublish(pipeline.PublishOptions{Publisher: rec})
			if err != nil {
				t.Fatal(err)
			}
			err = s.Process(context.Background(), &tt.m)
			if tt.drop {
				if !isDrop(err) {
					t.Fatalf("err = %v, want ErrDrop", err)
				}
			} else {
				wantErr(t, err, tt.wantErr, tt.perm)
			}
			pubs := rec.published()
			if tt.wantData == "" {
				if len(pubs) != 0 {
					t.Fatalf("published %d times, want none", len(pubs))
				}
				return
			}
			if len(pubs) != 1 {
				t.Fatalf("published %d times, want once", len(pubs))
			}
			want := hub.Publication{Channels: tt.m.Channels, Type: tt.m.Type, Data: json.RawMessage(tt.wantData), IdempotencyKey: tt.m.Key}
			got := pubs[0]
			if !slices.Equal(got.Channels, want.Channels) || got.Type != want.Type || string(got.Data) != tt.wantData || got.IdempotencyKey != want.IdempotencyKey {
				t.Errorf("published %+v (data %s), want %+v (data %s)", got, got.Data, want, want.Data)
			}
		})
	}
	if _, err := pipeline.NewPublish(pipeline.PublishOptions{}); err == nil {
		t.Error("NewPublish without a Publisher succeeded")
	}
}

// published is one publication as a backend holds it.
type published struct {
	Type string
	Data string // compact JSON
}

// harness is one Publisher under the conformance suite and a way to read
// back what reached its backend.
type harness struct {
	pub pipeline.Publisher
	// read returns the publications channel ch received, in order.
	read func(t *testing.T, ch string) []published
	// dedupes: the backend honours idempotency keys.
	dedupes bool
	// limitsSize: the backend refuses data over harnessMaxBytes.
	limitsSize bool
}

// harnessMaxBytes is MaxMessageBytes of the suite's hubs.
const harnessMaxBytes = 1024

// suiteHub starts a hub whose history the suite reads back.
func suiteHub(t *testing.T) (*hub.Hub, func(t *testing.T, ch string) []published) {
	t.Helper()
	mh := hub.NewMemoryHistory()
	h := testutil.NewHub(t, hub.Config{
		History:         mh,
		Default:         hub.NamespaceConfig{HistorySize: 1000},
		MaxMessageBytes: harnessMaxBytes,
	})
	read := func(t *testing.T, ch string) []published {
		t.Helper()
		msgs, _, _, err := mh.Since(context.Background(), ch, hub.Position{}, hub.HistoryOptions{Size: 1000})
		if err != nil {
			t.Fatal(err)
		}
		var out []published
		for _, m := range msgs {
			out = append(out, published{Type: m.Type, Data: string(m.Data)})
		}
		return out
	}
	return h, read
}

// runPublisherSuite is the behaviour every Publisher shares.
func runPublisherSuite(t *testing.T, newHarness func(t *testing.T) harness) {
	ctx := context.Background()
	t.Run("publishes to every channel", func(t *testing.T) {
		h := newHarness(t)
		err := h.pub.Publish(ctx, hub.Publication{
			Channels: []string{"thread:t42", "forum:tech"}, Type: "post.created",
			Data: json.RawMessage(` {"msg": "<b>hi</b>", "n": 1.50} `), IdempotencyKey: "p:e1",
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []published{{Type: "post.created", Data: `{"msg":"\u003cb\u003ehi\u003c/b\u003e","n":1.50}`}}
		for _, ch := range []string{"thread:t42", "forum:tech"} {
			if got := h.read(t, ch); !slices.Equal(got, want) {
				t.Errorf("%s got %+v, want %+v", ch, got, want)
			}
		}
		if got := h.read(t, "firehose"); len(got) != 0 {
			t.Errorf("an unnamed channel got %+v", got)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		h := newHarness(t)
		if err := h.pub.Publish(ctx, hub.Publication{Channels: []string{"a"}}); err != nil {
			t.Fatal(err)
		}
		if got, want := h.read(t, "a"), []published{{Type: hub.DefaultType, Data: "null"}}; !slices.Equal(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})
	invalid := []struct {
		name string
		pub  hub.Publication
		want string
	}{
		{"no channels", hub.Publication{Data: json.RawMessage(`{}`)}, "no channels"},
		{"invalid channel", hub.Publication{Channels: []string{"ok:1", "bad channel"}, Data: json.RawMessage(`{}`)}, "invalid channel"},
		{"invalid type", hub.Publication{Channels: []string{"ok:1"}, Type: "bad\ntype", Data: json.RawMessage(`{}`)}, "invalid message type"},
		{"invalid data", hub.Publication{Channels: []string{"ok:1"}, Data: json.RawMessage(`{"a":`)}, "not valid JSON"},
		{"too large", hub.Publication{Channels: []string{"ok:1"}, Data: json.RawMessage(`"` + strings.Repeat("x", harnessMaxBytes) + `"`)}, "too large"},
	}
	for _, tt := range invalid {
		t.Run("permanent: "+tt.name, func(t *testing.T) {
			h := newHarness(t)
			if tt.name == "too large" && !h.limitsSize {
				t.Skip("the file sink applies no size limit (it archives what it is given); this case runs for the hub and HTTP publishers, in every run")
			}
			err := h.pub.Publish(ctx, tt.pub)
			wantErr(t, err, tt.want, true)
			if got := h.read(t, "ok:1"); len(got) != 0 {
				t.Errorf("a refused publication reached ok:1: %+v", got)
			}
		})
	}
	t.Run("idempotency key", func(t *testing.T) {
		h := newHarness(t)
		p := hub.Publication{Channels: []string{"a", "b"}, Type: "t", Data: json.RawMessage(`1`), IdempotencyKey: "pipe:evt-1"}
		for range 3 {
			if err := h.pub.Publish(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		want := 3
		if h.dedupes {
			want = 1
		}
		for _, ch := range p.Channels {
			if got := h.read(t, ch); len(got) != want {
				t.Errorf("%s got %d publications, want %d", ch, len(got), want)
			}
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		h := newHarness(t)
		const workers, each = 4, 25
		var wg sync.WaitGroup
		errs := make(chan error, workers*each)
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					errs <- h.pub.Publish(ctx, hub.Publication{
						Channels: []string{"conc"}, Type: "t",
						Data: json.RawMessage(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)), IdempotencyKey: fmt.Sprintf("k%d-%d", w, i),
					})
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		got := h.read(t, "conc")
		seen := make(map[string]bool)
		for _, p := range got {
			seen[p.Data] = true
		}
		if len(got) != workers*each || len(seen) != workers*each {
			t.Errorf("got %d publications (%d distinct), want %d", len(got), len(seen), workers*each)
		}
	})
}

func TestHubPublisher(t *testing.T) {
	runPublisherSuite(t, func(t *testing.T) harness {
		h, read := suiteHub(t)
		return harness{pub: pipeline.NewHubPublisher(h), read: read, dedupes: true, limitsSize: true}
	})
}

func TestHubPublisherTooManyChannelsIsPermanent(t *testing.T) {
	h := testutil.NewHub(t, hub.Config{MaxChannelsPerPublish: 2})
	err := pipeline.NewHubPublisher(h).Publish(context.Background(), hub.Publication{Channels: []string{"a", "b", "c"}})
	wantErr(t, err, "too many channels", true)
}

func TestHubPublisherShutdownIsRetryable(t *testing.T) {
	h := testutil.NewHub(t, hub.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// The hub wraps ErrShuttingDown in a *hub.ChannelError: the channel
	// is fine, the hub is not, so the publish must be retried.
	err := pipeline.NewHubPublisher(h).Publish(ctx, hub.Publication{Channels: []string{"a"}})
	wantErr(t, err, "shutting down", false)
	var ce *hub.ChannelError
	if !errors.As(err, &ce) {
		t.Errorf("error %v is not a *hub.ChannelError; the test no longer covers that case", err)
	}
}
