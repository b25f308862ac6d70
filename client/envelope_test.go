package client

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

const sampleEnvelope = `{"channel":"thread:42","epoch":"k3j4h5g6","offset":17,"type":"post.created","data":{"id":"p981","html":"\u003cb\u003e"},"time":"2026-11-21T10:00:00.123Z"}`

func TestDecodeEnvelope(t *testing.T) {
	var e envelope
	if err := decodeEnvelope([]byte(sampleEnvelope), &e); err != nil {
		t.Fatal(err)
	}
	if !e.hasChannel || e.isControl || string(e.channel) != "thread:42" || string(e.epoch) != "k3j4h5g6" ||
		e.offset != 17 || string(e.typ) != "post.created" || string(e.data) != `{"id":"p981","html":"\u003cb\u003e"}` {
		t.Fatalf("decoded %+v", e)
	}
	if got, want := parseTime(e.time), time.Date(2026, 11, 21, 10, 0, 0, 123e6, time.UTC); !got.Equal(want) {
		t.Fatalf("time = %v, want %v", got, want)
	}

	// Escapes, other key orders and case take the slow path, same result.
	for _, in := range []string{
		`{"data":null,"Channel":"a","epoch":"e","offset":1}`,
		`{"channel":"\u0061","epoch":"e","offset":1,"data":null}`,
		` { "epoch" : "e" , "offset" : 1 , "channel" : "a" , "data" : null } `,
	} {
		if err := decodeEnvelope([]byte(in), &e); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if !e.hasChannel || string(e.channel) != "a" || string(e.epoch) != "e" || e.offset != 1 || string(e.data) != "null" {
			t.Errorf("%s: decoded %+v", in, e)
		}
	}

	if err := decodeEnvelope([]byte(`{"control":"gap","channels":["a"]}`), &e); err != nil || !e.isControl || e.hasChannel {
		t.Errorf("control: %+v, %v", e, err)
	}
	for _, bad := range []string{``, `{`, `{"channel":"a",}`, `{"offset":-1}`, `[]`, `{"data":tru}`, `{} x`} {
		if err := decodeEnvelope([]byte(bad), &e); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestDecodeEnvelopeAllocs(t *testing.T) {
	var e envelope
	b := []byte(sampleEnvelope)
	allocs := testing.AllocsPerRun(100, func() {
		if err := decodeEnvelope(b, &e); err != nil {
			t.Fatal(err)
		}
		_ = parseTime(e.time)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per envelope, want 0", allocs)
	}
}

func TestParseTime(t *testing.T) {
	for in, want := range map[string]time.Time{
		"2026-11-21T10:00:00.000Z":       time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC),
		"2024-02-29T23:59:59.999Z":       time.Date(2024, 2, 29, 23, 59, 59, 999e6, time.UTC),
		"2026-11-21T10:00:00Z":           time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC),
		"2026-11-21T11:00:00.5+01:00":    time.Date(2026, 11, 21, 10, 0, 0, 5e8, time.UTC),
		"2023-02-29T00:00:00.000Z":       {},
		"not a time":                     {},
		"":                               {},
		"2026-13-21T10:00:00.000Z":       {},
		"2026-11-21T10:00:00.123456789Z": time.Date(2026, 11, 21, 10, 0, 0, 123456789, time.UTC),
	} {
		if got := parseTime([]byte(in)); !got.Equal(want) {
			t.Errorf("parseTime(%q) = %v, want %v", in, got, want)
		}
	}
}

// FuzzEnvelope checks the fast scanner against encoding/json: whatever it
// accepts, encoding/json accepts with the same fields.
func FuzzEnvelope(f *testing.F) {
	for _, s := range []string{
		sampleEnvelope,
		`{"control":"subscribed","channels":["a","b"],"cursor":"a@e:1,b@e:2"}`,
		`{"channel":"a","data":[1,2.5e-3,{"x":[true,false,null]},"\u00e9"],"offset":0}`,
		`{"channel":"a","CHANNEL":"b"}`,
		`{"offset":01}`,
		`{"data":"\ud800"}`,
		`{"channel":"\xff"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast envelope
		if !scanEnvelope(b, &fast) {
			var e envelope
			_ = decodeEnvelope(b, &e) // must not panic
			return
		}
		var j envelopeJSON
		if err := json.Unmarshal(b, &j); err != nil {
			t.Fatalf("fast path accepted what encoding/json rejects (%v): %q", err, b)
		}
		if fast.hasChannel != (j.Channel != nil) || fast.isControl != (j.Control != nil) ||
			j.Channel != nil && string(fast.channel) != *j.Channel ||
			string(fast.epoch) != j.Epoch || fast.offset != j.Offset || string(fast.typ) != j.Type ||
			string(fast.time) != j.Time || !bytes.Equal(fast.data, j.Data) {
			t.Fatalf("fast %+v, encoding/json %+v", fast, j)
		}
	})
}
