package bench

import (
	"encoding/json"
	"testing"
)

func TestPayloadRoundTrip(t *testing.T) {
	pad := makePad(100)
	p := appendPayload(nil, 42, 1_763_000_000_123_456_789, pad)
	if len(p) < 95 || len(p) > 105 {
		t.Errorf("payload is %d bytes, want about 100: %s", len(p), p)
	}
	var v struct {
		Seq uint64 `json:"seq"`
		TS  int64  `json:"ts"`
		Pad string `json:"pad"`
	}
	if err := json.Unmarshal(p, &v); err != nil || v.Seq != 42 || v.TS != 1_763_000_000_123_456_789 {
		t.Fatalf("payload %s decodes to %+v, %v", p, v, err)
	}
	env := `{"channel":"bench:x-3","epoch":"k3j4h5g6","offset":17,"type":"bench","data":` + string(p) + `,"time":"2026-11-21T10:00:00.000Z"}`
	for _, in := range []string{string(p), env, `{"seq": 42, "ts": 1763000000123456789}`} {
		seq, ts, ok := parsePayload([]byte(in))
		if !ok || seq != 42 || ts != 1_763_000_000_123_456_789 {
			t.Errorf("parsePayload(%s) = %d, %d, %v", in, seq, ts, ok)
		}
	}
	ch, ok := envelopeChannel([]byte(env))
	if !ok || string(ch) != "bench:x-3" {
		t.Errorf("envelopeChannel = %q, %v", ch, ok)
	}
	if _, ok := envelopeChannel(p); ok {
		t.Error("bare payload taken for an envelope")
	}
}

func TestParsePayloadRejects(t *testing.T) {
	for _, in := range []string{
		``, `{}`, `{"seq":}`, `{"seq":1}`, `{"seq":"1","ts":2}`, `{"seq":1,"ts":-2}`,
		`{"seq":99999999999999999999999,"ts":1}`, `{"seq":1,"ts":9999999999999999999}`,
		`{"channels":["bench:x-1"]}`,
	} {
		if seq, ts, ok := parsePayload([]byte(in)); ok {
			t.Errorf("parsePayload(%s) = %d, %d, true", in, seq, ts)
		}
	}
}

func TestIsControl(t *testing.T) {
	for in, want := range map[string][2]bool{
		`{"control":"gap","channels":["a"]}`:             {true, true},
		`{"control":"subscribed","channels":["a"]}`:      {true, false},
		`{"channel":"a","data":{"seq":1,"ts":2}}`:        {false, false},
		`{"control": "gap"}`:                             {true, true},
		`{"control":"error","code":"gap","message":"x"}`: {true, false},
	} {
		c, g := isControl([]byte(in))
		if c != want[0] || g != want[1] {
			t.Errorf("isControl(%s) = %v, %v; want %v", in, c, g, want)
		}
	}
}

func FuzzParsePayload(f *testing.F) {
	f.Add([]byte(`{"seq":1,"ts":2,"pad":""}`))
	f.Add([]byte(`{"channel":"a","data":{"seq":18446744073709551615,"ts":9223372036854775807}}`))
	f.Add([]byte(`{"seq":   ,"ts":`))
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, ts, ok := parsePayload(b)
		if ok && ts < 0 {
			t.Fatalf("negative ts %d", ts)
		}
		_ = seq
		envelopeChannel(b)
		isControl(b)
	})
}

func BenchmarkParseEnvelope(b *testing.B) {
	env := []byte(`{"channel":"bench:x-3","epoch":"k3j4h5g6","offset":17,"type":"bench","data":` +
		string(appendPayload(nil, 123, 1_763_000_000_123_456_789, makePad(100))) + `,"time":"2026-11-21T10:00:00.000Z"}`)
	b.ReportAllocs()
	for b.Loop() {
		envelopeChannel(env)
		if _, _, ok := parsePayload(env); !ok {
			b.Fatal("no payload")
		}
	}
}
