package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/internal/jsonscan"
	"github.com/heraldhq/herald/pipeline"
)

// EventsConfig configures POST /v1/events. The ingest API exists only
// when Queue is set.
type EventsConfig struct {
	// Queue receives the accepted events durably.
	Queue pipeline.Queue
	// Validate checks an event's data up front (the pipelines' schemas);
	// its error names the field. Nil accepts any JSON object.
	Validate func(pipeline.Event) error
	// MaxEventBytes bounds one event's data. Zero means 64 KiB.
	MaxEventBytes int
	// MaxBatch bounds the events of one request. Zero means 1000.
	MaxBatch int
	// EnqueueTimeout bounds waiting for the queue. Zero means 10s.
	EnqueueTimeout time.Duration
}

// Error codes of the ingest API.
const (
	CodeInvalidEvent     = "invalid_event"
	CodeQueueUnavailable = "queue_unavailable"
)

// validEventID reports whether s is an event id: 1-128 of A-Z a-z 0-9
// and ._:@/+-, starting with a letter or digit.
func validEventID(s string) bool {
	return validToken(s, 128, func(c byte) bool {
		return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
	}, "._:@/+-")
}

// validEventType reports whether s is an event type: 1-64 of a-z 0-9 and
// ._-, starting with a letter or digit.
func validEventType(s string) bool {
	return validToken(s, 64, func(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }, "._-")
}

// validToken reports whether s is 1 to max bytes, each alnum or one of
// punct, the first alnum.
func validToken(s string, max int, alnum func(byte) bool, punct string) bool {
	if len(s) == 0 || len(s) > max || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !alnum(s[i]) && strings.IndexByte(punct, s[i]) < 0 {
			return false
		}
	}
	return true
}

// rejectedEvent says why one event of a request was refused.
type rejectedEvent struct {
	Index   int    `json:"index"`
	ID      string `json:"id,omitempty"`
	Message string `json:"message"`
}

// eventsResponse is the answer to POST /v1/events. Accepted lists the IDs
// of the events durably queued, in request order, also when others were
// rejected.
type eventsResponse struct {
	Accepted []string        `json:"accepted"`
	Error    *eventsError    `json:"error,omitempty"`
	Rejected []rejectedEvent `json:"rejected,omitempty"`
}

type eventsError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// events serves POST /v1/events: one event, or {"events":[...]}.
func (a *API) events(w http.ResponseWriter, r *http.Request) {
	cfg := a.cfg.Events
	if !a.acceptingPublishes(w) {
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSONType(ct) {
		httpx.Error(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMediaType,
			"the body must be JSON: send Content-Type: application/json")
		return
	}
	body, ok := a.readBody(w, r, int64(cfg.MaxBatch)*int64(cfg.MaxEventBytes+512)+4096)
	if !ok {
		return
	}
	raws, err := splitEvents(body, cfg.MaxBatch)
	if err != nil {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidJSON, err.Error())
		return
	}
	var good []pipeline.Event
	var resp eventsResponse
	for i, raw := range raws {
		ev, err := a.checkEvent(raw)
		if err != nil {
			resp.Rejected = append(resp.Rejected, rejectedEvent{Index: i, ID: ev.ID, Message: err.Error()})
			continue
		}
		good = append(good, ev)
	}
	if len(good) > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), cfg.EnqueueTimeout)
		err := cfg.Queue.Enqueue(ctx, good)
		cancel()
		if err != nil {
			a.log.Error("events: enqueue failed", "events", len(good), "err", err)
			ids := make([]string, len(good))
			for i, ev := range good {
				ids[i] = ev.ID
			}
			// Some of the events may be stored already: the ids (Herald's
			// own for events sent without one) make a retry store each once.
			writeJSON(w, http.StatusServiceUnavailable, struct {
				Error *eventsError `json:"error"`
				IDs   []string     `json:"ids"`
			}{&eventsError{Code: CodeQueueUnavailable, Message: "the event queue did not confirm every event; " +
				"some may be stored: retry them with these ids, which are stored once"}, ids})
			return
		}
	}
	resp.Accepted = make([]string, len(good))
	for i, ev := range good {
		resp.Accepted[i] = ev.ID
	}
	if len(resp.Rejected) > 0 {
		first := resp.Rejected[0]
		msg := fmt.Sprintf("event %d", first.Index)
		if first.ID != "" {
			msg += " (" + first.ID + ")"
		}
		resp.Error = &eventsError{Code: CodeInvalidEvent, Message: fmt.Sprintf("%s: %s; %d of %d events accepted",
			msg, first.Message, len(good), len(raws))}
		writeJSON(w, http.StatusBadRequest, resp)
		return
	}
	writeJSON(w, http.StatusAccepted, resp)
}

// splitEvents returns the events of a body: an object with an "events"
// array, or one event object.
func splitEvents(body []byte, maxBatch int) ([]json.RawMessage, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return nil, fmt.Errorf("the body must be an event object or {\"events\":[...]}")
	}
	events, batch, ok := quickSplit(body)
	if !ok {
		var b struct {
			Events *[]json.RawMessage `json:"events"`
		}
		if err := json.Unmarshal(body, &b); err != nil {
			return nil, fmt.Errorf("the body is not valid JSON: %s", err)
		}
		if b.Events != nil {
			events, batch = *b.Events, true
		}
	}
	switch {
	case !batch:
		return []json.RawMessage{body}, nil
	case len(events) == 0:
		return nil, fmt.Errorf("events: the batch is empty")
	case len(events) > maxBatch:
		return nil, fmt.Errorf("events: %d events in one request; at most %d", len(events), maxBatch)
	}
	return events, nil
}

// quickSplit reads the events of a valid JSON object body as
// encoding/json decodes its "events" member (the last one whose name
// matches in any case), slicing them from body. batch is false when body
// has no events array; ok is false when body is not valid JSON or the
// shortcut cannot tell (a key it cannot read, an "events" member that is
// neither an array nor null), and the decoder must judge it.
func quickSplit(body []byte) (events []json.RawMessage, batch, ok bool) {
	if !json.Valid(body) {
		return nil, false, false
	}
	var last []byte
	odd := false
	ok = jsonscan.Members(body, func(k, v []byte) {
		if len(k) == len("events") && strings.EqualFold(string(k), "events") {
			last, odd = v, odd || (v[0] != '[' && string(v) != "null")
		}
	})
	if !ok || odd {
		return nil, false, false
	}
	if last == nil || string(last) == "null" {
		return nil, false, true
	}
	events = []json.RawMessage{}
	if !jsonscan.Elements(last, func(v []byte) { events = append(events, v) }) {
		return nil, false, false
	}
	return events, true, true
}

// checkEvent decodes and validates one event, giving it an ID when it
// has none. On error the event holds what could be read of it.
func (a *API) checkEvent(raw json.RawMessage) (pipeline.Event, error) {
	cfg := a.cfg.Events
	ev, ok := quickEvent(raw)
	if !ok {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ev); err != nil {
			return ev, fmt.Errorf("not a valid event object: %s", err)
		}
	}
	switch {
	case ev.ID != "" && !validEventID(ev.ID):
		return ev, fmt.Errorf("id: want 1-128 letters, digits and ._:@/+- starting with a letter or digit")
	case ev.Type == "":
		return ev, fmt.Errorf("type: required")
	case !validEventType(ev.Type):
		return ev, fmt.Errorf("type %q: want 1-64 lowercase letters, digits and ._-", ev.Type)
	case len(bytes.TrimSpace(ev.Data)) == 0 || bytes.TrimSpace(ev.Data)[0] != '{':
		return ev, fmt.Errorf("data: required, a JSON object")
	case len(ev.Data) > cfg.MaxEventBytes:
		return ev, fmt.Errorf("data: %d bytes, over the limit of %d", len(ev.Data), cfg.MaxEventBytes)
	}
	if cfg.Validate != nil {
		if err := cfg.Validate(ev); err != nil {
			return ev, err
		}
	}
	if ev.ID == "" {
		ev.ID = newEventID()
	}
	if !jsonscan.IsCompact(ev.Data) {
		var compact bytes.Buffer
		if err := json.Compact(&compact, ev.Data); err == nil {
			ev.Data = compact.Bytes()
		}
	}
	return ev, nil
}

// quickEvent reads raw, valid JSON, as checkEvent's decoder would when
// that is plain to see: an object with only the keys id, type and data,
// id and type strings without escapes, data an object. ok is false
// otherwise: decode to find out.
func quickEvent(raw []byte) (ev pipeline.Event, ok bool) {
	plain := true
	ok = jsonscan.Members(jsonscan.TrimSpace(raw), func(k, v []byte) {
		switch string(k) {
		case "id", "type":
			if len(v) < 2 || v[0] != '"' || !printableASCII(v) {
				plain = false
			} else if string(k) == "id" {
				ev.ID = string(v[1 : len(v)-1])
			} else {
				ev.Type = string(v[1 : len(v)-1])
			}
		case "data":
			plain = plain && v[0] == '{'
			ev.Data = v
		default:
			plain = false
		}
	})
	return ev, ok && plain
}

// printableASCII reports whether b holds only printable ASCII and no
// backslash: a JSON string of it decodes to its bytes.
func printableASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			return false
		}
	}
	return true
}

// newEventID returns a random event ID.
func newEventID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "evt-" + hex.EncodeToString(b[:])
}
