package api

import (
	"bytes"
	"encoding/json"
	"regexp"
	"testing"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
)

// The event id and type rules as patterns, against which validEventID and
// validEventType are checked.
var (
	eventIDPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$`)
	eventTypePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
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
		`{"ID":"a","type":"x","data":{}}`, `{"id":"a","id":"b","type":"x","type":"y","data":{"a":1},"data":{ }}`,
		`{"id":"\u0041","type":"x","data":{}}`, `{"id":null,"type":"x","data":{}}`, `{"id":"a","type":"x","data":null}`,
		`evt-1`, `post.created`,
		`{"Events":[{"type":"x","data":{}}],"eVeNtS":null}`, `{"events":[1],"events":[ {"a":1} , 2 ]}`,
		`{"events":"x","events":[]}`, `{"events":{}}`, `{"\u0065vents":[{}]}`, ` {"events":[{"type":"x","data":{}}]} `,
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
		if validEventID(string(body)) != eventIDPattern.Match(body) || validEventType(string(body)) != eventTypePattern.Match(body) {
			t.Fatalf("validEventID / validEventType disagree with the patterns on %q", body)
		}
		checkQuickSplit(t, body)
		raws, err := splitEvents(body, a.cfg.Events.MaxBatch)
		if err != nil {
			return
		}
		for _, raw := range raws {
			if q, ok := quickEvent(raw); ok {
				var d pipeline.Event
				dec := json.NewDecoder(bytes.NewReader(raw))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&d); err != nil || d.ID != q.ID || d.Type != q.Type || !bytes.Equal(d.Data, q.Data) {
					t.Fatalf("quickEvent(%s) = %+v; the decoder gives %+v, %v", raw, q, d, err)
				}
			}
			ev, err := a.checkEvent(raw)
			if err != nil {
				continue
			}
			if !eventIDPattern.MatchString(ev.ID) || !eventTypePattern.MatchString(ev.Type) {
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

// checkQuickSplit checks splitEvents' shortcut against the decoder: when
// it can tell, it reads what encoding/json reads.
func checkQuickSplit(t *testing.T, body []byte) {
	t.Helper()
	body = bytes.TrimSpace(body)
	events, batch, ok := quickSplit(body)
	if !ok {
		return
	}
	var want struct {
		Events *[]json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(body, &want); err != nil {
		t.Fatalf("quickSplit read %q, which the decoder refuses: %v", body, err)
	}
	if batch != (want.Events != nil) {
		t.Fatalf("quickSplit(%q): batch %v; the decoder reads events %v", body, batch, want.Events)
	}
	if !batch {
		return
	}
	if len(events) != len(*want.Events) {
		t.Fatalf("quickSplit(%q) read %q; the decoder reads %q", body, events, *want.Events)
	}
	for i := range events {
		if !bytes.Equal(events[i], (*want.Events)[i]) {
			t.Fatalf("quickSplit(%q): event %d is %q; the decoder reads %q", body, i, events[i], (*want.Events)[i])
		}
	}
}

// TestQuickSplitTakesOrdinaryBodies checks that the shortcut is used for
// the bodies clients send, and leaves odd ones to the decoder.
func TestQuickSplitTakesOrdinaryBodies(t *testing.T) {
	for body, want := range map[string]int{
		`{"events":[{"type":"x","data":{}},{"type":"y","data":{"a":[1]}}]}`: 2,
		` {"events" : [ {"type":"x","data":{}} ] } `:                        1,
		`{"id":"evt-1","type":"post.created","data":{"id":"p"}}`:            0,
		`{"events":null,"type":"x","data":{}}`:                              0,
	} {
		events, batch, ok := quickSplit(bytes.TrimSpace([]byte(body)))
		if !ok || batch != (want > 0) || len(events) != want {
			t.Errorf("quickSplit(%s) = %d events, batch %v, ok %v; want %d, the shortcut taken", body, len(events), batch, ok, want)
		}
	}
	for _, body := range []string{`{"events":{}}`, `{"\u0065vents":[]}`, `{"events":[}`} {
		if _, _, ok := quickSplit([]byte(body)); ok {
			t.Errorf("quickSplit(%s) took the shortcut; the decoder should judge it", body)
		}
	}
}
