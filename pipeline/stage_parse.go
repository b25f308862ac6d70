package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/jsonscan"
)

// Kind is the JSON shape a Schema requires of a field.
type Kind uint8

const (
	// KindString requires a JSON string.
	KindString Kind = iota + 1
	// KindObject requires a JSON object.
	KindObject
	// KindStringOrNull requires a JSON string or null; the field must
	// still be present.
	KindStringOrNull
)

// String returns the kind as error messages name it ("string or null").
func (k Kind) String() string {
	switch k {
	case KindString:
		return "string"
	case KindObject:
		return "object"
	case KindStringOrNull:
		return "string or null"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Field is one field a Schema requires: where it is and its kind.
type Field struct {
	Path Path
	Kind Kind
}

// Schema describes the data of one event type: the fields it must have.
// Fields it does not name are allowed and kept.
type Schema struct {
	// Required are checked in order; every failure is reported.
	Required []Field
}

// commentSchemas backs CommentSchemas and the nil schemas of ParseOptions
// and ValidateEvent. Never modified.
var commentSchemas = func() map[string]Schema {
	field := func(path string, k Kind) Field { return Field{Path: MustParsePath(path), Kind: k} }
	post := Schema{Required: []Field{
		field("data.id", KindString),
		field("data.thread", KindString),
		field("data.forum", KindString),
		field("data.author", KindObject),
		field("data.author.id", KindString),
		field("data.message", KindString),
	}}
	return map[string]Schema{
		"post.created": post,
		"post.updated": post,
		"post.deleted": {Required: []Field{
			field("data.id", KindString),
			field("data.thread", KindString),
			field("data.forum", KindString),
		}},
	}
}()

// CommentSchemas returns the built-in schemas of the comment events, a new
// map each call:
//
//   - post.created and post.updated require data.id, data.thread,
//     data.forum, data.author.id and data.message as strings (and so
//     data.author as an object);
//   - post.deleted requires data.id, data.thread and data.forum as strings.
//
// Such an event looks like {"id":"evt-17","type":"post.created","data":
// {"id":"p981","thread":"t42","forum":"tech","parent":null,"author":
// {"id":"u7","name":"Ann","email":"ann@example.com","ip":"203.0.113.9"},
// "message":"<p>Hello</p>","created_at":"2026-11-21T10:00:00Z"}}.
func CommentSchemas() map[string]Schema {
	return cloneSchemas(commentSchemas)
}

func cloneSchemas(s map[string]Schema) map[string]Schema {
	out := make(map[string]Schema, len(s))
	for typ, sc := range s {
		out[typ] = Schema{Required: slices.Clone(sc.Required)}
	}
	return out
}

// CheckSchemas reports every problem of schemas at once: a field with the
// zero Path or an unknown Kind, an event type that is not a valid message
// type. NewParse calls it.
func CheckSchemas(schemas map[string]Schema) error {
	var errs []error
	for _, typ := range slices.Sorted(maps.Keys(schemas)) {
		if !hub.ValidType(typ) {
			errs = append(errs, fmt.Errorf("schema %q: not a valid event type (1 to %d of A-Z a-z 0-9 _ - . : / ~)", typ, hub.MaxTypeLen))
		}
		for i, f := range schemas[typ].Required {
			if f.Path.IsZero() {
				errs = append(errs, fmt.Errorf("schema %q: Required[%d] has no path", typ, i))
			}
			if f.Kind < KindString || f.Kind > KindStringOrNull {
				errs = append(errs, fmt.Errorf("schema %q: Required[%d] (%s): unknown kind %d", typ, i, f.Path, f.Kind))
			}
		}
	}
	return errors.Join(errs...)
}

// ParseOptions configures the parse stage. The zero value checks the comment
// events against CommentSchemas and lets other types through.
type ParseOptions struct {
	// Schemas maps an event type to the schema of its data. Nil means
	// CommentSchemas(); an empty, non-nil map means no schemas.
	Schemas map[string]Schema
	// EnforceTypes makes an event whose type has no schema a permanent
	// error. When false such events pass with only the check that their
	// data is a JSON object.
	EnforceTypes bool
}

// Parse is the "parse" stage: it decodes the event's data, which must be a
// JSON object, into Message.Fields (numbers as json.Number), checks it
// against the schema of the event's type, and sets Message.Type to the
// event's type. Every failure is permanent and names the field, as in
// "data.thread: required string is missing".
type Parse struct {
	schemas map[string]Schema // never modified after NewParse
	enforce bool
}

var _ Stage = (*Parse)(nil)

// NewParse returns a parse stage. It fails if a schema is malformed (see
// CheckSchemas).
func NewParse(opts ParseOptions) (*Parse, error) {
	schemas := commentSchemas
	if opts.Schemas != nil {
		if err := CheckSchemas(opts.Schemas); err != nil {
			return nil, fmt.Errorf("pipeline: parse: %w", err)
		}
		schemas = cloneSchemas(opts.Schemas)
	}
	return &Parse{schemas: schemas, enforce: opts.EnforceTypes}, nil
}

// Name returns "parse".
func (*Parse) Name() string { return "parse" }

// Process decodes and checks m.Event; on success it sets m.Fields and
// m.Type. On failure m is unchanged and the error is permanent.
func (p *Parse) Process(_ context.Context, m *Message) error {
	fields, err := decodeEvent(p.schemas, p.enforce, m.Event)
	if err != nil {
		return err
	}
	m.Fields = fields
	m.Type = m.Event.Type
	return nil
}

// ValidateEvent checks ev as the parse stage with these schemas and
// EnforceTypes would, with the same messages, so that the ingest API can
// refuse a bad event up front and name the field at fault. schemas and
// enforce mean what ParseOptions' fields mean: nil schemas are
// CommentSchemas(). schemas should have passed CheckSchemas. The error,
// if any, is permanent.
func ValidateEvent(schemas map[string]Schema, enforce bool, ev Event) error {
	if schemas == nil {
		schemas = commentSchemas
	}
	// Most events are valid: one pass over the bytes says so. The decode
	// finds what is wrong with the others, in its words.
	if ev.Type != "" && hub.ValidType(ev.Type) {
		if schema, known := schemas[ev.Type]; (known || !enforce) && json.Valid(ev.Data) && quickValid(schema, ev.Data) {
			return nil
		}
	}
	_, err := decodeEvent(schemas, enforce, ev)
	return err
}

// decodeEvent decodes ev.Data and checks it against ev.Type's schema.
func decodeEvent(schemas map[string]Schema, enforce bool, ev Event) (map[string]any, error) {
	if ev.Type != "" && !hub.ValidType(ev.Type) {
		return nil, Permanentf("type: %q is not a valid event type (1 to %d of A-Z a-z 0-9 _ - . : / ~)", ev.Type, hub.MaxTypeLen)
	}
	schema, known := schemas[ev.Type]
	if !known && enforce {
		if ev.Type == "" {
			return nil, Permanentf("type: required string is missing")
		}
		return nil, Permanentf("type: no schema for event type %q", ev.Type)
	}
	fields, err := decodeObject(ev.Data)
	if err != nil {
		return nil, err
	}
	m := Message{Event: ev, Fields: fields}
	var problems []string
	for _, f := range schema.Required {
		if problem := checkField(&m, f); problem != "" {
			problems = append(problems, f.Path.String()+": "+problem)
		}
	}
	if len(problems) > 0 {
		return nil, Permanentf("%s", strings.Join(problems, "; "))
	}
	return fields, nil
}

// decodeObject decodes data, which must hold exactly one JSON object.
func decodeObject(data []byte) (map[string]any, error) {
	if len(bytes.Trim(data, jsonSpace)) == 0 {
		return nil, Permanentf("data: required object is missing")
	}
	var v any
	if json.Valid(data) {
		// One check and one pass, with the strings parts of one copy of
		// data; the decoder (for its error messages) scans twice and
		// allocates each string.
		v = jsonscan.Decode(string(data))
		if obj, ok := v.(map[string]any); ok {
			return obj, nil
		}
		return nil, Permanentf("data: must be an object, not %s", describe(v))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, Permanentf("data: %s", jsonProblem(err))
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, Permanentf("data: must be an object, not %s", describe(v))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, Permanentf("data: unexpected data after the JSON object")
	}
	return obj, nil
}

// jsonSpace is JSON's white space (RFC 8259).
const jsonSpace = " \t\r\n"

// jsonProblem describes a decoding error without Go's "json: " prefix.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: it ends in the middle of a value"
	}
	return "malformed JSON: " + strings.TrimPrefix(err.Error(), "json: ")
}

// checkField returns what is wrong with field f of m, or "".
func checkField(m *Message, f Field) string {
	v, ok := f.Path.Get(m)
	if !ok {
		return "required " + f.Kind.String() + " is missing"
	}
	switch f.Kind {
	case KindString:
		if _, ok := v.(string); ok {
			return ""
		}
	case KindObject:
		if _, ok := v.(map[string]any); ok {
			return ""
		}
	case KindStringOrNull:
		if _, ok := v.(string); ok || v == nil {
			return ""
		}
	default:
		return "schema has unknown kind " + f.Kind.String()
	}
	return "must be " + article(f.Kind) + ", not " + describe(v)
}

// article returns k with its indefinite article.
func article(k Kind) string {
	if k == KindObject {
		return "an object"
	}
	return "a " + k.String()
}
