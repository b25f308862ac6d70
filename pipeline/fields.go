package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxPathLen is the longest field path accepted, in bytes.
const MaxPathLen = 512

// maxPathDepth caps the segments of a path, "data" included.
const maxPathDepth = 32

// pathRoot says what a Path's first segment names.
type pathRoot uint8

const (
	rootNone pathRoot = iota // the zero Path
	rootID
	rootType
	rootData
)

// Path is a parsed, valid field path: it names a value of a Message by a
// dotted path.
//
//   - "id" is the event's ID and "type" the event's type (Message.Event);
//     both are read-only.
//   - "data.x.y" is Message.Fields["x"]["y"]: each segment after "data"
//     is a key of a JSON object (map[string]any).
//
// A segment is any non-empty UTF-8 text without '.', '{', '}', white space
// or control characters, so keys holding those cannot be named. Get a Path
// from ParsePath. The zero Path names nothing: Get reports false and Set
// fails. A Path is immutable and safe for concurrent use.
type Path struct {
	raw  string
	root pathRoot
	keys []string // the segments after "data"; nil for "id" and "type"
}

// ParsePath parses s as a field path. The error says what is wrong with s.
func ParsePath(s string) (Path, error) {
	switch {
	case s == "":
		return Path{}, errors.New("field path is empty")
	case len(s) > MaxPathLen:
		return Path{}, fmt.Errorf("field path %.32q… is longer than %d bytes", s, MaxPathLen)
	case !utf8.ValidString(s):
		return Path{}, fmt.Errorf("field path %q is not valid UTF-8", s)
	}
	segs := strings.Split(s, ".")
	if len(segs) > maxPathDepth {
		return Path{}, fmt.Errorf("field path %q has more than %d segments", s, maxPathDepth)
	}
	p := Path{raw: s}
	switch segs[0] {
	case "id", "type":
		if len(segs) > 1 {
			return Path{}, fmt.Errorf("field path %q: %q is a string and has no fields", s, segs[0])
		}
		p.root = rootID
		if segs[0] == "type" {
			p.root = rootType
		}
		return p, nil
	case "data":
		if len(segs) == 1 {
			return Path{}, fmt.Errorf("field path %q: name a field under data, as in \"data.message\"", s)
		}
	default:
		return Path{}, fmt.Errorf("field path %q must be \"id\", \"type\" or start with \"data.\"", s)
	}
	for _, seg := range segs[1:] {
		if seg == "" {
			return Path{}, fmt.Errorf("field path %q has an empty segment", s)
		}
		if i := strings.IndexFunc(seg, badPathRune); i >= 0 {
			r, _ := utf8.DecodeRuneInString(seg[i:])
			return Path{}, fmt.Errorf("field path %q: segment %q holds %q, which field paths do not allow", s, seg, r)
		}
	}
	p.root = rootData
	p.keys = segs[1:]
	return p, nil
}

// MustParsePath is ParsePath for paths known to be valid, such as
// literals; it panics on error.
func MustParsePath(s string) Path {
	p, err := ParsePath(s)
	if err != nil {
		panic("pipeline: " + err.Error())
	}
	return p
}

// badPathRune reports whether r may not appear in a path segment.
func badPathRune(r rune) bool {
	return r == '{' || r == '}' || unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError
}

// String returns the path as it was parsed ("" for the zero Path).
func (p Path) String() string { return p.raw }

// IsZero reports whether p is the zero Path.
func (p Path) IsZero() bool { return p.root == rootNone }

// ReadOnly reports whether p names the event's id or type, which Set and
// Delete do not change.
func (p Path) ReadOnly() bool { return p.root == rootID || p.root == rootType }

// Get returns the value at p and whether it is present. A JSON null is
// present: Get returns (nil, true). The event's id and type are present
// when they are not empty.
func (p Path) Get(m *Message) (any, bool) {
	switch p.root {
	case rootID:
		return m.Event.ID, m.Event.ID != ""
	case rootType:
		return m.Event.Type, m.Event.Type != ""
	case rootData:
		obj, ok := p.parent(m.Fields)
		if !ok {
			return nil, false
		}
		v, ok := obj[p.keys[len(p.keys)-1]]
		return v, ok
	}
	return nil, false
}

// GetString returns the value at p as a string: strings as they are,
// numbers (json.Number, or Go numbers a stage stored) in their decimal
// form. It reports false for objects, arrays, booleans, null and missing
// values.
func (p Path) GetString(m *Message) (string, bool) {
	v, ok := p.Get(m)
	if !ok {
		return "", false
	}
	return scalarString(v)
}

// scalarString is GetString's conversion of one value.
func scalarString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case json.Number:
		return v.String(), true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	case float32:
		return strconv.FormatFloat(float64(v), 'f', -1, 32), true
	case int:
		return strconv.Itoa(v), true
	case int64:
		return strconv.FormatInt(v, 10), true
	case int32:
		return strconv.FormatInt(int64(v), 10), true
	case uint:
		return strconv.FormatUint(uint64(v), 10), true
	case uint64:
		return strconv.FormatUint(v, 10), true
	case uint32:
		return strconv.FormatUint(uint64(v), 10), true
	}
	return "", false
}

// Set stores v at p, creating m.Fields and missing intermediate objects.
// It fails for read-only paths, for the zero Path, and when an
// intermediate value exists but is not an object; m is then unchanged.
func (p Path) Set(m *Message, v any) error {
	switch p.root {
	case rootNone:
		return errors.New("set: the zero field path names nothing")
	case rootID, rootType:
		return fmt.Errorf("set %s: the event's %s is read-only", p.raw, p.raw)
	}
	// Check the whole way first so that a failure changes nothing.
	obj := m.Fields
	for i, k := range p.keys[:len(p.keys)-1] {
		next, present := obj[k]
		if !present {
			break
		}
		child, ok := next.(map[string]any)
		if !ok {
			return fmt.Errorf("set %s: data.%s is %s, not an object", p.raw, strings.Join(p.keys[:i+1], "."), describe(next))
		}
		obj = child
	}
	if m.Fields == nil {
		m.Fields = make(map[string]any)
	}
	obj = m.Fields
	for _, k := range p.keys[:len(p.keys)-1] {
		child, ok := obj[k].(map[string]any)
		if !ok {
			child = make(map[string]any)
			obj[k] = child
		}
		obj = child
	}
	obj[p.keys[len(p.keys)-1]] = v
	return nil
}

// Delete removes the value at p and reports whether there was one.
// Read-only paths and the zero Path are never deleted: Delete reports
// false for them.
func (p Path) Delete(m *Message) bool {
	if p.root != rootData {
		return false
	}
	obj, ok := p.parent(m.Fields)
	if !ok {
		return false
	}
	k := p.keys[len(p.keys)-1]
	if _, ok := obj[k]; !ok {
		return false
	}
	delete(obj, k)
	return true
}

// parent returns the object holding p's last key, if every intermediate
// value is present and an object.
func (p Path) parent(fields map[string]any) (map[string]any, bool) {
	if fields == nil {
		return nil, false
	}
	obj := fields
	for _, k := range p.keys[:len(p.keys)-1] {
		child, ok := obj[k].(map[string]any)
		if !ok {
			return nil, false
		}
		obj = child
	}
	return obj, true
}

// parsePaths parses the paths of option name, reporting every bad one.
// With writable set, read-only paths are refused too.
func parsePaths(name string, raw []string, writable bool) ([]Path, error) {
	paths := make([]Path, 0, len(raw))
	var errs []error
	for i, s := range raw {
		p, err := ParsePath(s)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s[%d]: %w", name, i, err))
		case writable && p.ReadOnly():
			errs = append(errs, fmt.Errorf("%s[%d]: field path %q is read-only; use a path under data", name, i, s))
		default:
			paths = append(paths, p)
		}
	}
	return paths, errors.Join(errs...)
}

// describe names the JSON kind of a decoded value, with its article, for
// error messages: "a string", "an object", "null".
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case bool:
		return "a boolean"
	}
	if _, ok := scalarString(v); ok {
		return "a number"
	}
	return fmt.Sprintf("a %T", v)
}
