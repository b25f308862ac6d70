package pipeline

import (
	"bytes"
	"encoding/json"

	"github.com/heraldhq/herald/internal/jsonscan"
)

// quickValid reports whether data, valid JSON, certainly passes the
// checks decodeEvent makes of it against schema: an object with every
// required field of the data present and of its kind. False means "not
// sure": decode to find out.
func quickValid(schema Schema, data []byte) bool {
	obj := jsonscan.TrimSpace(data)
	req := schema.Required
	if len(obj) == 0 || obj[0] != '{' || len(req) > maxQuickFields {
		return false
	}
	// One pass over the object finds the top-level value of every field.
	var tops [maxQuickFields][]byte
	for _, f := range req {
		if f.Path.root != rootData {
			return false
		}
	}
	if !jsonscan.Members(obj, func(k, v []byte) {
		for i, f := range req {
			if string(k) == f.Path.keys[0] {
				tops[i] = v
			}
		}
	}) {
		return false
	}
	for i, f := range req {
		v := tops[i]
		if v == nil {
			return false
		}
		for _, k := range f.Path.keys[1:] {
			var found, sure bool
			v, found, sure = jsonscan.Member(v, k)
			if !found || !sure {
				return false
			}
		}
		switch f.Kind {
		case KindString:
			if v[0] != '"' {
				return false
			}
		case KindObject:
			if v[0] != '{' {
				return false
			}
		case KindStringOrNull:
			if v[0] != '"' && string(v) != "null" {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// maxQuickFields bounds the required fields quickValid checks; a schema
// with more is decoded.
const maxQuickFields = 16

// threadKey is the data field OrderKey reads.
var threadKey = []byte("thread")

// quickOrderKey returns OrderKey(ev) read from the bytes, or sure=false.
// OrderKey decodes into a struct, whose field name matches any case of
// "thread"; a key with an escape or a byte outside ASCII makes it unsure.
func quickOrderKey(data []byte) (key string, sure bool) {
	if !json.Valid(data) {
		return "", true // OrderKey's decode fails too
	}
	obj := jsonscan.TrimSpace(data)
	var val []byte
	sure = jsonscan.Members(obj, func(k, v []byte) {
		if bytes.EqualFold(k, threadKey) {
			val = v
		}
	})
	if !sure || len(val) == 0 || string(val) == "null" {
		return "", sure
	}
	return string(val), true
}
