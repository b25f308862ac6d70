package pipeline

import (
	"encoding/json"
	"testing"
)

// commentData is a post.created event's data as applications send it.
const commentData = `{"id":"p981","thread":"t42","forum":"tech","parent":null,` +
	`"author":{"id":"u7","name":"Ann","email":"ann@example.com","ip":"203.0.113.9"},` +
	`"message":"<p>Hello, \"world\"</p>","created_at":"2026-11-21T10:00:00Z","votes":3}`

// TestShortcutsTaken checks that ordinary events need no decode: the
// shortcuts are sure of them (FuzzParse and FuzzOrderKey check that they
// are right).
func TestShortcutsTaken(t *testing.T) {
	for typ, schema := range commentSchemas {
		if !quickValid(schema, []byte(commentData)) {
			t.Errorf("quickValid(%s) is not sure of a valid comment", typ)
		}
	}
	if k, sure := quickOrderKey([]byte(commentData)); !sure || k != `"t42"` {
		t.Errorf("quickOrderKey = %q, %v", k, sure)
	}
	// Not sure, or sure it is wrong: the decode has the last word.
	for _, data := range []string{
		`{"id":"p","thread":"t","forum":"f","author":"u7","message":"m"}`,              // author not an object
		`{"id":"p","thread":"t","forum":"f","author":{"id":"u"},"message":null}`,       // message null
		`{"id":"p","thread":"t","forum":"f","author":{"id":"u"},"message":"m","id":1}`, // the last id is a number
		`{"id":"p","thread":"t","forum":"f","author":{"\u0069d":"u"},"message":"m"}`,   // escaped key
		`{"id":"p","thread":"t","forum":"f","author":{},"message":"m"}`,
		`[]`, ``,
	} {
		if quickValid(commentSchemas["post.created"], []byte(data)) {
			t.Errorf("quickValid(%s) = true", data)
		}
	}
}

// FuzzOrderKey checks quickOrderKey against the decode, on any data.
func FuzzOrderKey(f *testing.F) {
	for _, seed := range []string{
		commentData, `{"thread":null}`, `{"Thread":"a","THREAD":{"x":1}}`, `{"thread":"a","thread":null}`,
		`{"thr\u0065ad":"a"}`, `{"ſhread":1}`, `{ "thread" : [ 1 , 2 ] }`, `{"a":{"thread":1}}`, `[]`, `null`, `"x"`,
		``, `{`, `{"thread":1}x`, "{\"thread\":\"\xff\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want := decodeOrderKey(data)
		if got, sure := quickOrderKey(data); sure && got != want {
			t.Fatalf("quickOrderKey(%q) = %q; the decode gives %q", data, got, want)
		}
		if got := OrderKey(Event{Data: data}); got != want {
			t.Fatalf("OrderKey(%q) = %q; the decode gives %q", data, got, want)
		}
	})
}

// BenchmarkValidateEvent compares checking a comment with the shortcut to
// decoding it, and the same for its order key.
func BenchmarkValidateEvent(b *testing.B) {
	ev := Event{ID: "evt-1", Type: "post.created", Data: json.RawMessage(commentData)}
	b.Run("shortcut", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := ValidateEvent(nil, false, ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeEvent(commentSchemas, false, ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("orderkey-shortcut", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if OrderKey(ev) == "" {
				b.Fatal("no order key")
			}
		}
	})
	b.Run("orderkey-decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if decodeOrderKey(ev.Data) == "" {
				b.Fatal("no order key")
			}
		}
	})
}
