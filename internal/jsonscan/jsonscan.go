// Package jsonscan reads a few things out of JSON that is known to be
// valid (json.Valid) without encoding/json's reflection: whether it is
// compact, the members of an object and the elements of an array as bytes,
// and the whole value as map[string]any (Decode); and it writes such values
// back (Append). The ingest API checks every event it accepts, the queues
// read every event's order key, and the pipeline decodes and re-encodes
// every event's data; encoding/json's decoder and encoder cost more than
// the rest of those steps.
//
// These are shortcuts for callers that fall back to encoding/json when a
// function says it cannot tell; they are not a parser of their own, and
// they are fuzzed against encoding/json.
package jsonscan

// skipSpace returns the index of the first byte at or after i that is not
// JSON white space.
func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index just past the string whose opening quote
// is at b[i], and whether the string holds an escape or a byte outside
// ASCII (so that its decoded text may differ from its bytes).
func skipString(b []byte, i int) (end int, plain bool, ok bool) {
	plain = true
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, plain, true
		case c == '\\':
			plain = false
			i++
		case c >= 0x80:
			plain = false
		}
	}
	return 0, false, false
}

// skipValue returns the index just past the value that starts at b[i]
// (no white space before it). b must be valid JSON; ok is false if it
// turns out not to be.
func skipValue(b []byte, i int) (end int, ok bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		end, _, ok = skipString(b, i)
		return end, ok
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				if i, _, ok = skipString(b, i); !ok {
					return 0, false
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			}
			i++
		}
		return 0, false
	}
	// A number, true, false or null: up to the next delimiter.
	start := i
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i, i > start
		}
		i++
	}
	return i, i > start
}

// Members calls fn with every member of the JSON object obj (valid
// JSON, an object, no white space around it) in order: the key's bytes
// between its quotes, and the value's bytes. It reports false, having
// stopped, at a key with an escape or a byte outside ASCII (which might
// decode to any key) or when obj is not what it should be.
func Members(obj []byte, fn func(key, val []byte)) bool {
	if len(obj) < 2 || obj[0] != '{' {
		return false
	}
	i := skipSpace(obj, 1)
	if i < len(obj) && obj[i] == '}' {
		return true
	}
	for i < len(obj) && obj[i] == '"' {
		end, plain, ok := skipString(obj, i)
		if !ok || !plain {
			return false
		}
		k := obj[i+1 : end-1]
		i = skipSpace(obj, end)
		if i >= len(obj) || obj[i] != ':' {
			return false
		}
		i = skipSpace(obj, i+1)
		vend, ok := skipValue(obj, i)
		if !ok {
			return false
		}
		fn(k, obj[i:vend])
		var more bool
		if i, more, ok = afterValue(obj, vend, '}'); !ok || !more {
			return ok
		}
	}
	return false
}

// afterValue reads what follows a member or element that ends at b[i]:
// the container's closing byte (more false), or a comma and the start of
// the next one (more true). ok is false for anything else.
func afterValue(b []byte, i int, closing byte) (next int, more, ok bool) {
	i = skipSpace(b, i)
	switch {
	case i >= len(b):
		return 0, false, false
	case b[i] == closing:
		return i, false, true
	case b[i] == ',':
		return skipSpace(b, i+1), true, true
	}
	return 0, false, false
}

// Elements calls fn with the bytes of every element of the JSON array arr
// (valid JSON, an array, no white space around it) in order. It reports
// false, having stopped, when arr is not what it should be.
func Elements(arr []byte, fn func(val []byte)) bool {
	if len(arr) < 2 || arr[0] != '[' {
		return false
	}
	i := skipSpace(arr, 1)
	if i < len(arr) && arr[i] == ']' {
		return true
	}
	for i < len(arr) {
		end, ok := skipValue(arr, i)
		if !ok {
			return false
		}
		fn(arr[i:end])
		var more bool
		if i, more, ok = afterValue(arr, end, ']'); !ok || !more {
			return ok
		}
	}
	return false
}

// Member returns the value of key in the JSON object obj as encoding/json
// would decode it into a map: the last member of that name. found reports
// whether there is one; sure is false when Members cannot tell.
func Member(obj []byte, key string) (val []byte, found, sure bool) {
	sure = Members(obj, func(k, v []byte) {
		if string(k) == key {
			val, found = v, true
		}
	})
	return val, found && sure, sure
}

// TrimSpace returns b without JSON white space around it.
func TrimSpace(b []byte) []byte {
	b = b[skipSpace(b, 0):]
	for len(b) > 0 {
		switch b[len(b)-1] {
		case ' ', '\t', '\n', '\r':
			b = b[:len(b)-1]
		default:
			return b
		}
	}
	return b
}

// IsCompact reports whether the valid JSON b holds no white space outside
// its strings, so that json.Compact would return it unchanged.
func IsCompact(b []byte) bool {
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			return false
		case '"':
			end, _, ok := skipString(b, i)
			if !ok {
				return false
			}
			i = end - 1
		}
	}
	return true
}
