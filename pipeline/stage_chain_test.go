package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
)

// defaultStages builds every built-in stage with its zero options (render
// with a snippet template), publishing to pub.
func defaultStages(t testing.TB, pub pipeline.Publisher) []pipeline.Stage {
	t.Helper()
	var stages []pipeline.Stage
	add := func(s pipeline.Stage, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		stages = append(stages, s)
	}
	add(pipeline.NewParse(pipeline.ParseOptions{}))
	add(pipeline.NewSanitize(pipeline.SanitizeOptions{}))
	add(pipeline.NewAnonymize(pipeline.AnonymizeOptions{}))
	add(pipeline.NewRender(pipeline.RenderOptions{HTML: `<li>{{.data.author.name}}: {{safeHTML .data.message}}</li>`}))
	add(pipeline.NewRoute(pipeline.RouteOptions{}))
	add(pipeline.NewPublish(pipeline.PublishOptions{Publisher: pub}))
	names := []string{"parse", "sanitize", "anonymize", "render", "route", "publish"}
	for i, s := range stages {
		if s.Name() != names[i] {
			t.Fatalf("stage %d is named %q, want %q", i, s.Name(), names[i])
		}
	}
	return stages
}

// run passes ev through stages as a pipeline named "comments" would.
func run(stages []pipeline.Stage, ev pipeline.Event) error {
	m := &pipeline.Message{Event: ev, Key: "comments:" + ev.ID}
	for _, s := range stages {
		if err := s.Process(context.Background(), m); err != nil {
			return fmt.Errorf("%s: %w", s.Name(), err)
		}
	}
	return nil
}

const hostileMessage = `<p>Hello</p><script>alert(1)</script><img src=x onerror=alert(1)><a href="JaVaScRiPt:alert(1)">x</a>`

func commentEvent(id, thread string) pipeline.Event {
	data := strings.Replace(exampleData, `"<p>Hello</p>"`, mustJSON(hostileMessage), 1)
	data = strings.Replace(data, `"t42"`, mustJSON(thread), 1)
	return pipeline.Event{ID: id, Type: "post.created", Data: json.RawMessage(data)}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestDefaultStagesEndToEnd(t *testing.T) {
	h, read := suiteHub(t)
	stages := defaultStages(t, pipeline.NewHubPublisher(h))
	ev := commentEvent("evt-17", "t42")
	// A redelivery runs the pipeline again with the same key: shown once.
	for range 2 {
		if err := run(stages, ev); err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range []string{"thread:t42", "forum:tech", "post:p981", "user:u7", "firehose"} {
		got := read(t, ch)
		if len(got) != 1 {
			t.Fatalf("%s got %d messages, want 1", ch, len(got))
		}
		if got[0].Type != "post.created" {
			t.Errorf("%s type %q", ch, got[0].Type)
		}
		var data struct {
			Message, HTML string
			Author        map[string]any
		}
		if err := json.Unmarshal([]byte(got[0].Data), &data); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{data.Message, data.HTML} {
			if bad := unsafeHTML(s); bad != "" {
				t.Errorf("%s: %s in %q", ch, bad, s)
			}
		}
		if !strings.HasPrefix(data.Message, "<p>Hello</p>") || data.HTML != "<li>Ann: "+data.Message+"</li>" {
			t.Errorf("%s: message %q, html %q", ch, data.Message, data.HTML)
		}
		if _, ok := data.Author["email"]; ok || data.Author["ip"] != nil || data.Author["id"] != "u7" {
			t.Errorf("%s: author %v", ch, data.Author)
		}
	}

	// An event failing validation is permanent and publishes nothing.
	bad := pipeline.Event{ID: "evt-18", Type: "post.created", Data: json.RawMessage(`{"id":"p2","forum":"tech"}`)}
	err := run(stages, bad)
	wantErr(t, err, "parse: data.thread: required string is missing", true)
	if got := read(t, "post:p2"); len(got) != 0 {
		t.Errorf("a bad event was published: %+v", got)
	}
}

// TestRenderOncePerEvent: one event to five channels is one publication,
// rendered once, whatever the number of channels and subscribers.
func TestRenderOncePerEvent(t *testing.T) {
	rec := &recorder{}
	if err := run(defaultStages(t, rec), commentEvent("evt-1", "t1")); err != nil {
		t.Fatal(err)
	}
	pubs := rec.published()
	if len(pubs) != 1 || len(pubs[0].Channels) != 5 {
		t.Fatalf("got %d publications (%+v), want one to five channels", len(pubs), pubs)
	}
}

// TestStagesConcurrent runs shared stage instances from several workers,
// as a pipeline does; run it with -race.
func TestStagesConcurrent(t *testing.T) {
	h, read := suiteHub(t)
	stages := defaultStages(t, pipeline.NewHubPublisher(h))
	const workers, each = 4, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				errs <- run(stages, commentEvent(fmt.Sprintf("e%d-%d", w, i), fmt.Sprintf("t%d", w)))
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
	if got := read(t, "firehose"); len(got) != workers*each {
		t.Errorf("firehose got %d messages, want %d", len(got), workers*each)
	}
	for w := range workers {
		got := read(t, fmt.Sprintf("thread:t%d", w))
		if len(got) != each || slices.ContainsFunc(got, func(p published) bool { return strings.Contains(p.Data, "onerror") }) {
			t.Errorf("thread:t%d got %d messages, want %d clean ones", w, len(got), each)
		}
	}
}

// discard is a Publisher that accepts everything.
type discard struct{}

func (discard) Publish(context.Context, hub.Publication) error { return nil }

// BenchmarkDefaultStages runs a comment event through every built-in
// stage: with HTML to sanitize or plain text, published nowhere or to an
// in-process hub (history and fan-out to no subscriber) on its five
// channels. Each event has its own id, as each would in production.
func BenchmarkDefaultStages(b *testing.B) {
	for _, msg := range []struct{ name, text string }{
		{"html", hostileMessage},
		{"text", "A plain comment: thanks for writing this up, it helped."},
	} {
		for _, to := range []string{"discard", "hub"} {
			b.Run("message="+msg.name+"/to="+to, func(b *testing.B) {
				var pub pipeline.Publisher = discard{}
				if to == "hub" {
					h, err := hub.New(hub.Config{})
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { _ = h.Shutdown(context.Background()) })
					pub = pipeline.NewHubPublisher(h)
				}
				stages := defaultStages(b, pub)
				ev := commentEvent("evt-1", "t1")
				ev.Data = json.RawMessage(strings.Replace(string(ev.Data), mustJSON(hostileMessage), mustJSON(msg.text), 1))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					i++
					ev.ID = "evt-" + strconv.Itoa(i)
					if err := run(stages, ev); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}
