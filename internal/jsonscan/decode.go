package jsonscan

import (
	"encoding/json"
	"unicode/utf8"
)

// Decode returns the value of the valid JSON src as a json.Decoder with
// UseNumber decodes it into an interface value: map[string]any, []any,
// string, json.Number, bool or nil. Strings and numbers without escapes
// are parts of src, so the caller converts its bytes to a string once
// rather than once per value; a string with an escape is unquoted by
// encoding/json. src must be valid (json.Valid): Decode does not check.
func Decode(src string) any {
	d := decoder{s: src}
	return d.value()
}

type decoder struct {
	s string
	i int
}

func (d *decoder) space() {
	for d.i < len(d.s) {
		switch d.s[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *decoder) value() any {
	d.space()
	switch d.s[d.i] {
	case '{':
		return d.object()
	case '[':
		return d.array()
	case '"':
		return d.str()
	case 't':
		d.i += len("true")
		return true
	case 'f':
		d.i += len("false")
		return false
	case 'n':
		d.i += len("null")
		return nil
	}
	start := d.i
	for d.i < len(d.s) {
		switch c := d.s[d.i]; {
		case '0' <= c && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
			d.i++
			continue
		}
		break
	}
	return json.Number(d.s[start:d.i])
}

func (d *decoder) object() map[string]any {
	m := make(map[string]any)
	d.i++ // {
	d.space()
	if d.s[d.i] == '}' {
		d.i++
		return m
	}
	for {
		d.space()
		k := d.str()
		d.space()
		d.i++ // :
		m[k] = d.value()
		d.space()
		c := d.s[d.i]
		d.i++ // , or }
		if c == '}' {
			return m
		}
	}
}

func (d *decoder) array() []any {
	a := []any{}
	d.i++ // [
	d.space()
	if d.s[d.i] == ']' {
		d.i++
		return a
	}
	for {
		a = append(a, d.value())
		d.space()
		c := d.s[d.i]
		d.i++ // , or ]
		if c == ']' {
			return a
		}
	}
}

// str reads the string whose opening quote is at d.i.
func (d *decoder) str() string {
	start := d.i
	escaped, ascii := false, true
	for d.i++; d.s[d.i] != '"'; d.i++ {
		switch c := d.s[d.i]; {
		case c == '\\':
			escaped = true
			d.i++
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	d.i++
	raw := d.s[start:d.i]
	if !escaped && (ascii || utf8.ValidString(raw)) {
		return raw[1 : len(raw)-1]
	}
	// Escapes, or bytes that are not UTF-8 (encoding/json replaces them).
	var out string
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		panic("jsonscan: Decode of invalid JSON: " + err.Error())
	}
	return out
}
