package jsonscan

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

func TestMember(t *testing.T) {
	for _, tc := range []struct {
		obj, key, val string
		found, sure   bool
	}{
		{`{"a":1,"b":"x"}`, "b", `"x"`, true, true},
		{`{ "a" : [1,{"b":2}] , "b" : {"c":"}"} }`, "b", `{"c":"}"}`, true, true},
		{`{"a":"q\"uote","b":null}`, "b", `null`, true, true},
		{`{"a":1,"a":2}`, "a", `2`, true, true}, // the last one, as a map decode
		{`{"a":1}`, "b", ``, false, true},
		{`{}`, "a", ``, false, true},
		{`{"\u0061":1}`, "a", ``, false, false}, // an escaped key may be any key
		{`{"é":1,"a":2}`, "a", ``, false, false},
		{`[1]`, "a", ``, false, false},
		{`"a"`, "a", ``, false, false},
	} {
		val, found, sure := Member([]byte(tc.obj), tc.key)
		if string(val) != tc.val || found != tc.found || sure != tc.sure {
			t.Errorf("Member(%s, %q) = %q, %v, %v; want %q, %v, %v", tc.obj, tc.key, val, found, sure, tc.val, tc.found, tc.sure)
		}
	}
}

func TestIsCompact(t *testing.T) {
	for in, want := range map[string]bool{
		`{"a":"b c\n"}`:             true,
		`{"a":"\"", "b":1}`:         false,
		`{"a":"\\"}`:                true,
		`[1,2]`:                     true,
		` 1`:                        false,
		`{"a":{"b":[true]}}` + "\n": false,
	} {
		if got := IsCompact([]byte(in)); got != want {
			t.Errorf("IsCompact(%q) = %v", in, got)
		}
	}
}

// FuzzScan checks the shortcuts against encoding/json on valid JSON:
// Decode gives what a json.Decoder with UseNumber gives and Append encodes
// it as json.Marshal does, what Members reads of an object decodes to what a map decode gives, Elements
// reads an array's elements as a []json.RawMessage decode does, and
// IsCompact agrees with json.Compact.
func FuzzScan(f *testing.F) {
	for _, seed := range []string{
		`{"id":"p981","thread":"t42","author":{"id":"u7","name":"Ann"},"parent":null,"n":-1.5e3,"ok":true}`,
		`{"a":1,"a":[2,{"a":"]"}]}`, `{ "a" : "x" , "b" : { } }`, `{}`, `[]`, `"s"`, `0`,
		`{"a":"\u00e9\"\\"}`, `{"\u0061":1}`, "{\"\xff\":1}", `{"a":{"b":{"c":[[[]]]}}}`,
		`[ 1 , "x" , {"a":[2]} , [ ] , null ]`, ` {"a":1,"a":{"b":-0.5e+10},"c":[true,false,null,"é"]} `,
		"\"\xff\xfe\"", `"\ud800"`, `{"k\u00e9y":"v\n","":""}`, `12345678901234567890123`, `[{"type":"x","data":{}},{"type":"y","data":{"a":"]"}}]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			return
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, b); err != nil {
			t.Fatal(err)
		}
		if got, want := IsCompact(b), bytes.Equal(compact.Bytes(), b); got != want {
			t.Fatalf("IsCompact(%q) = %v, json.Compact gives %q", b, got, compact.Bytes())
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		if got := Decode(string(b)); !reflect.DeepEqual(got, v) {
			t.Fatalf("Decode(%q) = %#v; json.Decoder gives %#v", b, got, v)
		}
		enc, ok := Append(nil, v)
		if marshaled, err := json.Marshal(v); !ok || err != nil || !bytes.Equal(enc, marshaled) {
			t.Fatalf("Append(%#v) = %q, %v; json.Marshal gives %q, %v", v, enc, ok, marshaled, err)
		}
		obj := TrimSpace(b)
		var elems []json.RawMessage
		if json.Unmarshal(obj, &elems) != nil || elems == nil {
			if Elements(obj, func([]byte) {}) {
				t.Fatalf("Elements read %q, which is not an array", obj)
			}
		} else {
			var got [][]byte
			if !Elements(obj, func(v []byte) { got = append(got, v) }) || len(got) != len(elems) {
				t.Fatalf("Elements(%q) read %q; encoding/json reads %q", obj, got, elems)
			}
			for i := range got {
				if !bytes.Equal(got[i], elems[i]) {
					t.Fatalf("Elements(%q): element %d is %q; encoding/json reads %q", obj, i, got[i], elems[i])
				}
			}
		}
		var want map[string]any
		if json.Unmarshal(obj, &want) != nil || want == nil {
			if Members(obj, func(_, _ []byte) {}) {
				t.Fatalf("Members read %q, which is not an object", obj)
			}
			return
		}
		got := map[string]any{}
		sure := Members(obj, func(k, v []byte) {
			var val any
			if err := json.Unmarshal(v, &val); err != nil {
				t.Fatalf("member %q: value %q does not decode: %v", k, v, err)
			}
			got[string(k)] = val
		})
		if sure && !reflect.DeepEqual(got, want) {
			t.Fatalf("Members read %v; a map decode gives %v", got, want)
		}
		for k := range want {
			val, found, sure := Member(obj, k)
			if !sure {
				continue
			}
			var v any
			if !found || json.Unmarshal(val, &v) != nil || !reflect.DeepEqual(v, want[k]) {
				t.Fatalf("Member(%q) = %q, %v; a map decode gives %v", k, val, found, want[k])
			}
		}
	})
}

// FuzzAppend checks Append against json.Marshal for any string (escapes,
// HTML, U+2028, bytes that are not UTF-8) and any json.Number: the same
// bytes, and a refusal only where json.Marshal fails or writes "0" for an
// empty number.
func FuzzAppend(f *testing.F) {
	for _, s := range []string{"", "plain", "<a href=\"x\">&amp;</a>", "tab\tnl\ncr\r\b\f\x00\x1f\x7f",
		"\u2028\u2029 é \U0001F600", "bad \xff\xfe utf-8 \xed\xa0\x80", `back\slash "quote"`,
		"0", "-0.5e+10", "1E5", "01", "1.", ".5", "-", "1e", "NaN", "12345678901234567890123"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := Append(nil, s)
		want, err := json.Marshal(s)
		if !ok || err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Append(%q) = %q, %v; json.Marshal gives %q, %v", s, got, ok, want, err)
		}
		got, ok = Append(nil, map[string]any{s: []any{json.Number(s), s, nil, true}})
		want, err = json.Marshal(map[string]any{s: []any{json.Number(s), s, nil, true}})
		switch {
		case ok && (err != nil || !bytes.Equal(got, want)):
			t.Fatalf("Append of number %q = %q; json.Marshal gives %q, %v", s, got, want, err)
		case !ok && err == nil && s != "":
			t.Fatalf("Append refused number %q, which json.Marshal writes as %q", s, want)
		}
	})
}

// TestAppendLeavesOthersToMarshal checks what Append refuses: values of
// other types (which a stage may set) and a map that holds itself, which
// json.Marshal reports as a cycle; nil maps and slices it writes as null.
func TestAppendLeavesOthersToMarshal(t *testing.T) {
	for _, v := range []any{[]string{"a"}, map[string]string{"a": "b"}, 1.5, 3, json.RawMessage(`{}`),
		map[string]any{"a": []any{struct{}{}}}, json.Number(""), json.Number("01")} {
		if b, ok := Append(nil, v); ok {
			t.Errorf("Append(%#v) = %q, want it left to json.Marshal", v, b)
		}
	}
	self := map[string]any{}
	self["self"] = self
	if _, ok := Append(nil, self); ok {
		t.Error("Append wrote a map that holds itself")
	}
	if _, err := json.Marshal(self); err == nil {
		t.Error("json.Marshal wrote a map that holds itself")
	}
	v := map[string]any{"m": map[string]any(nil), "s": []any(nil), "e": map[string]any{}, "a": []any{}}
	got, ok := Append(nil, v)
	want, _ := json.Marshal(v)
	if !ok || !bytes.Equal(got, want) {
		t.Errorf("Append(%#v) = %q, %v; json.Marshal gives %q", v, got, ok, want)
	}
}
