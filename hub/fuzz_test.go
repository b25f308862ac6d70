package hub_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/heraldhq/herald/hub"
)

func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{
		"", "thread:42@k3j4h5g6:17", "a@b:0,c@d:18446744073709551615", "a@b:01", "a@@b:1",
		"a@b:1,", ",a@b:1", "a@b", "@b:1", "a@:1", "a b@c:1", "a@b:-1", "a@b:1,a@c:2",
		strings.Repeat("x", 256) + "@e:1", "a@b:18446744073709551616",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := hub.ParseCursor(s)
		if err != nil {
			return
		}
		// What parses must print back to a cursor that parses to the same
		// positions, and every channel in it must be valid.
		text := c.String()
		c2, err := hub.ParseCursor(text)
		if err != nil {
			t.Fatalf("%q parsed, but its form %q does not: %v", s, text, err)
		}
		if c2.String() != text {
			t.Fatalf("round trip %q → %q → %q", s, text, c2.String())
		}
		for _, e := range c.Entries() {
			if !hub.ValidChannel(e.Channel) {
				t.Fatalf("cursor %q holds invalid channel %q", s, e.Channel)
			}
			if got, ok := c2.Get(e.Channel); !ok || got != e.Position {
				t.Fatalf("channel %q: %+v after round trip, want %+v", e.Channel, got, e.Position)
			}
		}
	})
}

func FuzzValidChannel(f *testing.F) {
	for _, s := range []string{"thread:42", "firehose", "", "a b", "x\n", "é", strings.Repeat("a", 255), strings.Repeat("a", 256), "a,b", "a@b", "user:7/feed~x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ok := hub.ValidChannel(s)
		want := len(s) >= 1 && len(s) <= hub.MaxChannelLen && strings.Trim(s,
			"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/~") == ""
		if ok != want {
			t.Fatalf("ValidChannel(%q) = %v, want %v", s, ok, want)
		}
		if ok {
			// A valid name is safe everywhere it is echoed.
			if strings.ContainsAny(s, "\r\n\"'<>&,@ ") {
				t.Fatalf("valid name %q holds an unsafe byte", s)
			}
			if ns := hub.Namespace(s); strings.Contains(ns, ":") || !strings.HasPrefix(s, ns) {
				t.Fatalf("Namespace(%q) = %q", s, ns)
			}
		}
	})
}

func FuzzNormalizeData(f *testing.F) {
	for _, s := range []string{`{"a":1}`, ` [1, 2] `, `"<script>"`, `"\u2028"`, "\"\u2028\"", `nul`, `{"a":}`, ``, `1 2`, `{"a":"&amp;"}`, `{"a":"b c"}`, `{"a": "b"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := hub.NormalizeData(b)
		if err != nil {
			if json.Valid(bytes.Trim(b, " \t\r\n")) && len(bytes.Trim(b, " \t\r\n")) > 0 {
				t.Fatalf("valid JSON %q rejected: %v", b, err)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("output %q of %q is not valid JSON", out, b)
		}
		if bytes.ContainsAny(out, "<>&\n") || bytes.Contains(out, []byte("\u2028")) || bytes.Contains(out, []byte("\u2029")) {
			t.Fatalf("output %q of %q is not script-safe", out, b)
		}
		var a, c any
		if len(bytes.Trim(b, " \t\r\n")) > 0 {
			if decode(b, &a) != nil || decode(out, &c) != nil {
				t.Fatalf("unmarshal failed for %q / %q", b, out)
			}
			ja, _ := json.Marshal(a)
			jc, _ := json.Marshal(c)
			if !bytes.Equal(ja, jc) {
				t.Fatalf("value changed: %s → %s", ja, jc)
			}
		}
		var compact bytes.Buffer
		if json.Compact(&compact, out) != nil || !bytes.Equal(compact.Bytes(), out) {
			t.Fatalf("output %q of %q is not compact", out, b)
		}
		// The hub keeps the output: it must not share the caller's bytes.
		kept := bytes.Clone(out)
		for i := range b {
			b[i] = ' '
		}
		if !bytes.Equal(out, kept) {
			t.Fatalf("output %q changed with its input", kept)
		}
	})
}

// FuzzPublish feeds arbitrary publications to a hub: it must answer with a
// result per channel or an error, never panic, and never deliver a message
// whose envelope is not valid JSON.
func FuzzPublish(f *testing.F) {
	f.Add("thread:42", "post.created", []byte(`{"x":1}`), "k")
	f.Add("", "", []byte(``), "")
	f.Add("a b", "t\n", []byte(`{`), "")
	f.Add("c", "x", []byte(`"</script>"`), "dup")
	h := newHub(f, hub.Config{MaxMessageBytes: 1024})
	s, _ := h.NewSession(hub.SessionOptions{})
	_ = s.Subscribe(f.Context(), []string{"thread:42", "c"}, nil)
	f.Fuzz(func(t *testing.T, ch, typ string, data []byte, key string) {
		res, err := h.Publish(t.Context(), hub.Publication{Channels: []string{ch, "c"}, Type: typ, Data: data, IdempotencyKey: key})
		if err == nil && len(res) == 0 {
			t.Fatal("no error and no results")
		}
		for _, it := range s.Drain(nil) {
			if it.Kind == hub.ItemMessage && !json.Valid(it.Msg.Envelope) {
				t.Fatalf("envelope %q is not JSON", it.Msg.Envelope)
			}
		}
	})
}

// decode unmarshals keeping numbers as written, so values such as 1E1000
// compare without overflowing float64.
func decode(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}
