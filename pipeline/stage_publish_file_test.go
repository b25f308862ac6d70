package pipeline_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
)

// sinkLine is one line of a FileSink's file.
type sinkLine struct {
	Time           string          `json:"time"`
	Channels       []string        `json:"channels"`
	Type           string          `json:"type"`
	Data           json.RawMessage `json:"data"`
	IdempotencyKey string          `json:"idempotency_key"`
}

// readSink returns the lines of the file at path, failing on any line that
// is not a JSON object.
func readSink(t *testing.T, path string) []sinkLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []sinkLine
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l sinkLine
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func newSink(t *testing.T, opts pipeline.FileSinkOptions) *pipeline.FileSink {
	t.Helper()
	s, err := pipeline.NewFileSink(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestFileSink(t *testing.T) {
	for _, sync := range []bool{false, true} {
		name := "nosync"
		if sync {
			name = "sync"
		}
		t.Run(name, func(t *testing.T) {
			runPublisherSuite(t, func(t *testing.T) harness {
				path := filepath.Join(t.TempDir(), "pubs.jsonl")
				s := newSink(t, pipeline.FileSinkOptions{Path: path, Sync: sync})
				read := func(t *testing.T, ch string) []published {
					t.Helper()
					var out []published
					for _, l := range readSink(t, path) {
						if slices.Contains(l.Channels, ch) {
							out = append(out, published{Type: l.Type, Data: string(l.Data)})
						}
					}
					return out
				}
				return harness{pub: s, read: read}
			})
		})
	}
}

func TestFileSinkLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pubs.jsonl")
	before := time.Now().UTC().Add(-time.Second)
	s := newSink(t, pipeline.FileSinkOptions{Path: path})
	ctx := context.Background()
	if err := s.Publish(ctx, hub.Publication{Channels: []string{"a", "b"}, Type: "t", Data: json.RawMessage(`{"x":"\u2028"}`), IdempotencyKey: "k"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A second sink on the same file appends.
	s2 := newSink(t, pipeline.FileSinkOptions{Path: path})
	if err := s2.Publish(ctx, hub.Publication{Channels: []string{"c"}}); err != nil {
		t.Fatal(err)
	}
	lines := readSink(t, path)
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2", len(lines))
	}
	l := lines[0]
	if !slices.Equal(l.Channels, []string{"a", "b"}) || l.Type != "t" || string(l.Data) != `{"x":"\u2028"}` || l.IdempotencyKey != "k" {
		t.Errorf("line 1 = %+v (data %s)", l, l.Data)
	}
	ts, err := time.Parse(hub.TimeLayout, l.Time)
	if err != nil || ts.Before(before) || ts.After(time.Now().Add(time.Second)) {
		t.Errorf("line 1 time %q (%v) is not now", l.Time, err)
	}
	if l := lines[1]; !slices.Equal(l.Channels, []string{"c"}) || l.Type != hub.DefaultType || string(l.Data) != "null" || l.IdempotencyKey != "" {
		t.Errorf("line 2 = %+v (data %s)", l, l.Data)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("file mode %v, want no access for group and others", perm)
	}
}

func TestFileSinkClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pubs.jsonl")
	s := newSink(t, pipeline.FileSinkOptions{Path: path})
	for range 2 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	err := s.Publish(context.Background(), hub.Publication{Channels: []string{"a"}})
	if !errors.Is(err, pipeline.ErrSinkClosed) || pipeline.IsPermanent(err) {
		t.Errorf("Publish after Close = %v, want retryable ErrSinkClosed", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s2 := newSink(t, pipeline.FileSinkOptions{Path: path})
	if err := s2.Publish(ctx, hub.Publication{Channels: []string{"a"}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a canceled context = %v", err)
	}
	if lines := readSink(t, path); len(lines) != 0 {
		t.Errorf("%d lines written, want none", len(lines))
	}
}

func TestNewFileSinkRejects(t *testing.T) {
	for _, path := range []string{"", filepath.Join(t.TempDir(), "no", "such", "dir", "f")} {
		if s, err := pipeline.NewFileSink(pipeline.FileSinkOptions{Path: path}); err == nil {
			s.Close()
			t.Errorf("NewFileSink(%q) succeeded", path)
		}
	}
}
