package pipeline_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/heraldhq/herald/pipeline"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		typ     string
		data    string
		enforce bool
		wantErr string // "" means success
	}{
		{name: "created", typ: "post.created", data: exampleData},
		{name: "updated", typ: "post.updated", data: exampleData},
		{name: "deleted", typ: "post.deleted", data: `{"id":"p981","thread":"t42","forum":"tech"}`},
		{name: "unknown type passes", typ: "user.banned", data: `{"x":1}`},
		{name: "no type passes", data: `{}`},
		{name: "white space around", typ: "user.banned", data: " \n{\"x\":1}\t"},
		{name: "missing thread", typ: "post.created", data: strings.Replace(exampleData, `"thread":"t42",`, "", 1),
			wantErr: "data.thread: required string is missing"},
		{name: "null thread", typ: "post.created", data: strings.Replace(exampleData, `"t42"`, "null", 1),
			wantErr: "data.thread: must be a string, not null"},
		{name: "numeric id", typ: "post.updated", data: strings.Replace(exampleData, `"p981"`, "981", 1),
			wantErr: "data.id: must be a string, not a number"},
		{name: "author not object", typ: "post.created", data: strings.Replace(exampleData, `{"id":"u7","name":"Ann","email":"ann@example.com","ip":"203.0.113.9"}`, `"u7"`, 1),
			wantErr: "data.author: must be an object, not a string; data.author.id: required string is missing"},
		{name: "message array", typ: "post.created", data: strings.Replace(exampleData, `"<p>Hello</p>"`, `["x"]`, 1),
			wantErr: "data.message: must be a string, not an array"},
		{name: "deleted needs no message", typ: "post.deleted", data: `{"id":"p","thread":"t","forum":"f","message":1}`},
		{name: "deleted missing all", typ: "post.deleted", data: `{}`,
			wantErr: "data.id: required string is missing; data.thread: required string is missing; data.forum: required string is missing"},
		{name: "empty data", typ: "post.created", data: ``, wantErr: "data: required object is missing"},
		{name: "blank data", typ: "x", data: " \n", wantErr: "data: required object is missing"},
		{name: "array data", typ: "x", data: `[1]`, wantErr: "data: must be an object, not an array"},
		{name: "null data", typ: "x", data: `null`, wantErr: "data: must be an object, not null"},
		{name: "string data", typ: "x", data: `"s"`, wantErr: "data: must be an object, not a string"},
		{name: "number data", typ: "x", data: `1`, wantErr: "data: must be an object, not a number"},
		{name: "truncated", typ: "x", data: `{"a":`, wantErr: "data: malformed JSON: it ends in the middle of a value"},
		{name: "bad syntax", typ: "x", data: `{"a" 1}`, wantErr: "data: malformed JSON at byte 6"},
		{name: "two objects", typ: "x", data: `{}{}`, wantErr: "data: unexpected data after the JSON object"},
		{name: "trailing garbage", typ: "x", data: `{} x`, wantErr: "data: unexpected data after the JSON object"},
		{name: "invalid type", typ: "post created", data: `{}`, wantErr: `type: "post created" is not a valid event type`},
		{name: "enforced unknown type", typ: "user.banned", data: `{}`, enforce: true, wantErr: `type: no schema for event type "user.banned"`},
		{name: "enforced empty type", data: `{}`, enforce: true, wantErr: "type: required string is missing"},
		{name: "enforced known type", typ: "post.deleted", data: `{"id":"p","thread":"t","forum":"f"}`, enforce: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := pipeline.NewParse(pipeline.ParseOptions{EnforceTypes: tt.enforce})
			if err != nil {
				t.Fatal(err)
			}
			ev := pipeline.Event{ID: "evt-17", Type: tt.typ, Data: json.RawMessage(tt.data)}
			m := &pipeline.Message{Event: ev}
			err = p.Process(context.Background(), m)
			wantErr(t, err, tt.wantErr, true)
			verr := pipeline.ValidateEvent(nil, tt.enforce, ev)
			if (err == nil) != (verr == nil) || err != nil && err.Error() != verr.Error() {
				t.Fatalf("ValidateEvent = %v, Process = %v; want the same", verr, err)
			}
			if err != nil {
				if m.Fields != nil || m.Type != "" {
					t.Fatalf("a failed parse changed the message: %+v", m)
				}
				return
			}
			if m.Type != tt.typ {
				t.Errorf("Type = %q, want %q", m.Type, tt.typ)
			}
			var want map[string]any
			dec := json.NewDecoder(strings.NewReader(tt.data))
			dec.UseNumber()
			if err := dec.Decode(&want); err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(m.Fields)
			wantJSON, _ := json.Marshal(want)
			if string(got) != string(wantJSON) {
				t.Errorf("Fields = %s, want %s", got, wantJSON)
			}
		})
	}
}

func TestParseKeepsNumbers(t *testing.T) {
	m := parsed(t, "x", `{"big":12345678901234567890123,"f":0.1}`)
	if v, _ := get(t, m, "data.big"); v != json.Number("12345678901234567890123") {
		t.Errorf("data.big = %#v, want the json.Number as sent", v)
	}
	if v, _ := get(t, m, "data.f"); v != json.Number("0.1") {
		t.Errorf("data.f = %#v, want json.Number(0.1)", v)
	}
}

func TestParseCustomSchemas(t *testing.T) {
	schemas := map[string]pipeline.Schema{
		"order.paid": {Required: []pipeline.Field{
			{Path: pipeline.MustParsePath("data.order"), Kind: pipeline.KindObject},
			{Path: pipeline.MustParsePath("data.note"), Kind: pipeline.KindStringOrNull},
			{Path: pipeline.MustParsePath("id"), Kind: pipeline.KindString},
		}},
	}
	p, err := pipeline.NewParse(pipeline.ParseOptions{Schemas: schemas, EnforceTypes: true})
	if err != nil {
		t.Fatal(err)
	}
	// The stage keeps its own copy of the schemas.
	schemas["order.paid"].Required[0].Kind = pipeline.KindString
	delete(schemas, "order.paid")

	tests := []struct {
		id, typ, data, wantErr string
	}{
		{id: "e1", typ: "order.paid", data: `{"order":{},"note":null}`},
		{id: "e1", typ: "order.paid", data: `{"order":{},"note":"hi"}`},
		{id: "e1", typ: "order.paid", data: `{"order":{},"note":3}`, wantErr: "data.note: must be a string or null, not a number"},
		{id: "e1", typ: "order.paid", data: `{"order":{}}`, wantErr: "data.note: required string or null is missing"},
		{id: "e1", typ: "order.paid", data: `{"order":"x","note":null}`, wantErr: "data.order: must be an object, not a string"},
		{id: "", typ: "order.paid", data: `{"order":{},"note":null}`, wantErr: "id: required string is missing"},
		{id: "e1", typ: "post.created", data: exampleData, wantErr: `no schema for event type "post.created"`},
	}
	for _, tt := range tests {
		ev := pipeline.Event{ID: tt.id, Type: tt.typ, Data: json.RawMessage(tt.data)}
		err := p.Process(context.Background(), &pipeline.Message{Event: ev})
		wantErr(t, err, tt.wantErr, true)
	}

	// An empty, non-nil map means no schemas: only the object check.
	none, err := pipeline.NewParse(pipeline.ParseOptions{Schemas: map[string]pipeline.Schema{}})
	if err != nil {
		t.Fatal(err)
	}
	err = none.Process(context.Background(), &pipeline.Message{Event: pipeline.Event{Type: "post.created", Data: json.RawMessage(`{}`)}})
	wantErr(t, err, "", false)
}

func TestNewParseRejectsBadSchemas(t *testing.T) {
	_, err := pipeline.NewParse(pipeline.ParseOptions{Schemas: map[string]pipeline.Schema{
		"bad type": {},
		"ok":       {Required: []pipeline.Field{{Kind: pipeline.KindString}, {Path: pipeline.MustParsePath("data.x")}}},
	}})
	if err == nil {
		t.Fatal("NewParse accepted bad schemas")
	}
	for _, want := range []string{`schema "bad type": not a valid event type`, `schema "ok": Required[0] has no path`, `schema "ok": Required[1] (data.x): unknown kind 0`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestCommentSchemas(t *testing.T) {
	s := pipeline.CommentSchemas()
	paths := func(typ string) string {
		var out []string
		for _, f := range s[typ].Required {
			out = append(out, f.Path.String()+":"+f.Kind.String())
		}
		return strings.Join(out, " ")
	}
	post := "data.id:string data.thread:string data.forum:string data.author:object data.author.id:string data.message:string"
	for typ, want := range map[string]string{
		"post.created": post,
		"post.updated": post,
		"post.deleted": "data.id:string data.thread:string data.forum:string",
	} {
		if got := paths(typ); got != want {
			t.Errorf("%s requires %q, want %q", typ, got, want)
		}
	}
	if len(s) != 3 {
		t.Errorf("CommentSchemas has %d types, want 3", len(s))
	}
	// Each call returns a copy: changing one changes nothing else.
	s["post.created"].Required[0].Kind = pipeline.KindObject
	if got := pipeline.CommentSchemas()["post.created"].Required[0].Kind; got != pipeline.KindString {
		t.Errorf("CommentSchemas shares its slices: kind is %v", got)
	}
	err := pipeline.ValidateEvent(nil, false, pipeline.Event{Type: "post.created", Data: json.RawMessage(exampleData)})
	wantErr(t, err, "", false)
}

// FuzzParse feeds arbitrary data and types to the parse stage: it never
// panics, every error is permanent, ValidateEvent agrees, and parsed
// fields encode back to JSON.
func FuzzParse(f *testing.F) {
	for _, seed := range []struct{ typ, data string }{
		{"post.created", exampleData},
		{"post.deleted", `{"id":"p","thread":"t","forum":"f"}`},
		{"post.updated", `{"author":"x"}`},
		{"x", `{"a":[1,2,{"b":null}],"n":1e999}`},
		{"", `{}`}, {"x", `[]`}, {"x", `null`}, {"x", ``}, {"x", `{`}, {"x", `{}{}`},
		{"bad type", `{}`}, {"x", "{\"\xff\":\"\xfe\"}"}, {"x", `{"a":"\u2028<script>"}`},
		{"x", strings.Repeat("[", 20000)},
		// ValidateEvent's shortcut must agree with the decode: duplicate
		// and escaped keys, wrong kinds deep down.
		{"post.created", `{"id":"p","thread":"t","forum":"f","author":{"id":"u"},"message":"m","message":1}`},
		{"post.created", `{"id":"p","thread":"t","forum":"f","author":{"\u0069d":"u"},"message":"m"}`},
		{"post.created", `{ "id" : "p" , "thread":"t","forum":"f","author":{"id":{}},"message":"m"}`},
		{"post.deleted", `{"id":"p","thread":"t","forum":"f","thread":null}`},
	} {
		f.Add(seed.typ, []byte(seed.data))
	}
	lenient, err := pipeline.NewParse(pipeline.ParseOptions{})
	if err != nil {
		f.Fatal(err)
	}
	strict, err := pipeline.NewParse(pipeline.ParseOptions{EnforceTypes: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, typ string, data []byte) {
		for _, tc := range []struct {
			p       *pipeline.Parse
			enforce bool
		}{{lenient, false}, {strict, true}} {
			ev := pipeline.Event{ID: "e", Type: typ, Data: data}
			m := &pipeline.Message{Event: ev}
			err := tc.p.Process(context.Background(), m)
			verr := pipeline.ValidateEvent(nil, tc.enforce, ev)
			if (err == nil) != (verr == nil) {
				t.Fatalf("Process = %v but ValidateEvent = %v", err, verr)
			}
			if err != nil {
				if !pipeline.IsPermanent(err) {
					t.Fatalf("error is not permanent: %v", err)
				}
				continue
			}
			if m.Fields == nil || m.Type != typ {
				t.Fatalf("success with Fields %v, Type %q", m.Fields, m.Type)
			}
			if _, err := json.Marshal(m.Fields); err != nil {
				t.Fatalf("parsed fields do not encode: %v", err)
			}
		}
	})
}
