package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/api"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
)

// startAPI serves the real API over a fresh hub and returns its URL and a
// reader of the hub's history.
func startAPI(t *testing.T, keys ...string) (string, func(t *testing.T, ch string) []published) {
	t.Helper()
	h, read := suiteHub(t)
	ts := httptest.NewServer(api.New(h, api.Config{APIKeys: keys}))
	t.Cleanup(ts.Close)
	return ts.URL, read
}

func newHTTPPublisher(t *testing.T, opts pipeline.HTTPPublisherOptions) *pipeline.HTTPPublisher {
	t.Helper()
	p, err := pipeline.NewHTTPPublisher(opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHTTPPublisher(t *testing.T) {
	t.Run("with key", func(t *testing.T) {
		runPublisherSuite(t, func(t *testing.T) harness {
			url, read := startAPI(t, "k1", "k2")
			p := newHTTPPublisher(t, pipeline.HTTPPublisherOptions{URL: url, APIKey: "k2"})
			return harness{pub: p, read: read, dedupes: true, limitsSize: true}
		})
	})
	t.Run("loopback without key", func(t *testing.T) {
		runPublisherSuite(t, func(t *testing.T) harness {
			url, read := startAPI(t)
			p := newHTTPPublisher(t, pipeline.HTTPPublisherOptions{URL: url + "/"})
			return harness{pub: p, read: read, dedupes: true, limitsSize: true}
		})
	})
}

func TestHTTPPublisherWrongKeyIsPermanent(t *testing.T) {
	url, read := startAPI(t, "right")
	for _, key := range []string{"wrong", ""} {
		p := newHTTPPublisher(t, pipeline.HTTPPublisherOptions{URL: url, APIKey: key})
		err := p.Publish(context.Background(), hub.Publication{Channels: []string{"a"}, Data: json.RawMessage(`1`)})
		wantErr(t, err, "HTTP 401 unauthorized", true)
		var herr *pipeline.HTTPError
		if !errors.As(err, &herr) || herr.StatusCode != 401 || herr.Code != "unauthorized" {
			t.Errorf("key %q: error %#v, want an *HTTPError 401 unauthorized", key, err)
		}
	}
	if got := read(t, "a"); len(got) != 0 {
		t.Errorf("refused publishes reached the hub: %+v", got)
	}
}

// request is what a fake remote Herald received.
type request struct {
	method, path, auth, contentType string
	body                            map[string]any
}

func TestHTTPPublisherStatuses(t *testing.T) {
	tests := []struct {
		status    int
		body      string
		wantErr   string // "" means success
		permanent bool
	}{
		{status: 200, body: `{"results":[]}`},
		{status: 204},
		{status: 400, body: `{"error":{"code":"invalid_channel","message":"bad name"}}`, wantErr: "HTTP 400 invalid_channel: bad name", permanent: true},
		{status: 404, body: `not json`, wantErr: "HTTP 404: Not Found", permanent: true},
		{status: 413, body: `{"error":{"code":"message_too_large","message":"big"}}`, wantErr: "HTTP 413 message_too_large", permanent: true},
		{status: 408, wantErr: "HTTP 408", permanent: false},
		{status: 429, body: `{"error":{"code":"too_many_channels","message":"x"}}`, wantErr: "HTTP 429 too_many_channels", permanent: false},
		{status: 500, body: `{"error":{"code":"internal","message":"internal error"}}`, wantErr: "HTTP 500 internal", permanent: false},
		{status: 502, body: `<html>bad gateway</html>`, wantErr: "HTTP 502: Bad Gateway", permanent: false},
		{status: 503, body: `{"error":{"code":"shutting_down","message":"bye"}}`, wantErr: "HTTP 503 shutting_down: bye", permanent: false},
		{status: 302, wantErr: "HTTP 302", permanent: false}, // no Location: not followed
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			var (
				mu  sync.Mutex
				got []request
			)
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				req := request{method: r.Method, path: r.URL.Path, auth: r.Header.Get("Authorization"), contentType: r.Header.Get("Content-Type")}
				if err := json.Unmarshal(b, &req.body); err != nil {
					t.Errorf("request body is not JSON: %s", b)
				}
				mu.Lock()
				got = append(got, req)
				mu.Unlock()
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			}))
			defer ts.Close()
			p := newHTTPPublisher(t, pipeline.HTTPPublisherOptions{URL: ts.URL + "/herald", APIKey: "sekrit"})
			err := p.Publish(context.Background(), hub.Publication{
				Channels: []string{"a", "b"}, Type: "post.created", Data: json.RawMessage(`{"x":1}`), IdempotencyKey: "k1",
			})
			wantErr(t, err, tt.wantErr, tt.permanent)
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 1 {
				t.Fatalf("server got %d requests, want 1", len(got))
			}
			r := got[0]
			if r.method != "POST" || r.path != "/herald/v1/publish" || r.auth != "Bearer sekrit" || r.contentType != "application/json" {
				t.Errorf("request %s %s, Authorization %q, Content-Type %q", r.method, r.path, r.auth, r.contentType)
			}
			wantBody := `{"channels":["a","b"],"data":{"x":1},"idempotency_key":"k1","type":"post.created"}`
			if b, _ := json.Marshal(r.body); string(b) != wantBody {
				t.Errorf("body %s, want %s", b, wantBody)
			}
		})
	}
}

func TestHTTPPublisherNetworkErrorsAreRetryable(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		ts := httptest.NewServer(http.NotFoundHandler())
		url := ts.URL
		ts.Close()
		p := newHTTPPublisher(t, pipeline.HTTPPublisherOptions{URL: url})
		err := p.Publish(context.Background(), hub.Publication{Channels: []string{"a"}})
		wantErr(t, err, "pipeline: remote publish:", false)
	})
	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}))
		defer ts.Close()
		defer close(release)
		p := newHTTPPublisher(t, pipeline.HTTPPublisherOptions{URL: ts.URL, Timeout: 50 * time.Millisecond})
		start := time.Now()
		err := p.Publish(context.Background(), hub.Publication{Channels: []string{"a"}})
		wantErr(t, err, "deadline exceeded", false)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("publish took %v with a 50ms timeout", d)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		url, read := startAPI(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		p := newHTTPPublisher(t, pipeline.HTTPPublisherOptions{URL: url})
		err := p.Publish(ctx, hub.Publication{Channels: []string{"a"}})
		wantErr(t, err, "context canceled", false)
		if got := read(t, "a"); len(got) != 0 {
			t.Errorf("a canceled publish reached the hub: %+v", got)
		}
	})
}

func TestNewHTTPPublisherRejects(t *testing.T) {
	for _, url := range []string{"", "herald.example.com", "/v1", "ftp://herald.example.com", "http://", "http://h/?x=1", "http://h/#f", "http://[::1"} {
		if _, err := pipeline.NewHTTPPublisher(pipeline.HTTPPublisherOptions{URL: url}); err == nil {
			t.Errorf("NewHTTPPublisher(%q) succeeded", url)
		} else if !strings.HasPrefix(err.Error(), "pipeline: http publisher: URL") {
			t.Errorf("NewHTTPPublisher(%q) error %q does not name URL", url, err)
		}
	}
}
