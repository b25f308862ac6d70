package api

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
)

// FuzzEventsBody feeds arbitrary bodies to POST /v1/events' parsing: it
// never panics, and every event it accepts has a valid id and type and a
// JSON object as data that passes the comment schemas.
func FuzzEventsBody(f *testing.F) {
	for _, seed := range []string{
		`{"id":"evt-1","type":"post.created","data":{"id":"p","thread":"t","forum":"f","author":{"id":"u"},"message":"m"}}`,
		`{"events":[{"type":"x","data":{}},{"type":"post.deleted","data":{"id":"p"}}]}`,
		`{"events":[]}`, `{"events":null}`, `{"type":"x","data":[]}`, `{"id":"a\nb","type":"x","data":{}}`,
		`{"type":"x","data":{},"extra":1}`, `[]`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	h, err := hub.New(hub.Config{})
	if err != nil {
		f.Fatal(err)
	}
	schemas := pipeline.CommentSchemas()
	a := New(h, Config{Events: EventsConfig{
		Validate: func(ev pipeline.Event) error { return pipeline.ValidateEvent(schemas, false, ev) },
	}})
	f.Fuzz(func(t *testing.T, body []byte) {
		raws, err := splitEvents(body, a.cfg.Events.MaxBatch)
		if err != nil {
			return
		}
		for _, raw := range raws {
			ev, err := a.checkEvent(raw)
			if err != nil {
				continue
			}
			if !validEventID.MatchString(ev.ID) || !validEventType.MatchString(ev.Type) {
				t.Fatalf("accepted id %q type %q", ev.ID, ev.Type)
			}
			var obj map[string]any
			if json.Unmarshal(ev.Data, &obj) != nil || obj == nil || !bytes.HasPrefix(ev.Data, []byte("{")) {
				t.Fatalf("accepted data %q", ev.Data)
			}
			if err := pipeline.ValidateEvent(schemas, false, ev); err != nil {
				t.Fatalf("accepted an event its schema refuses: %v", err)
			}
		}
	})
}
