package api

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
)

// BenchmarkCheckEvents is what POST /v1/events does to a batch of 20
// comment events before queueing them: split the body, check every event
// against the comment schemas, read its order key. Per event.
func BenchmarkCheckEvents(b *testing.B) {
	h, err := hub.New(hub.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Shutdown(context.Background())
	schemas := pipeline.CommentSchemas()
	a := New(h, Config{Events: EventsConfig{
		Validate: func(ev pipeline.Event) error { return pipeline.ValidateEvent(schemas, false, ev) },
	}})
	events := make([]string, 20)
	for i := range events {
		events[i] = fmt.Sprintf(`{"id":"evt-%d","type":"post.created","data":{"id":"p%d","thread":"t42","forum":"tech",`+
			`"parent":null,"author":{"id":"u7","name":"Ann","email":"ann@example.com","ip":"203.0.113.9"},`+
			`"message":"<p>Hello, this is comment number %d, with <b>some</b> HTML in it.</p>",`+
			`"created_at":"2026-11-21T10:00:00Z"}}`, i, i, i)
	}
	body := []byte(`{"events":[` + strings.Join(events, ",") + `]}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		raws, err := splitEvents(body, 1000)
		if err != nil {
			b.Fatal(err)
		}
		for _, raw := range raws {
			ev, err := a.checkEvent(raw)
			if err != nil {
				b.Fatal(err)
			}
			if pipeline.OrderKey(ev) == "" {
				b.Fatal("no order key")
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(events)), "ns/event")
}
