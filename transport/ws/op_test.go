package ws

import (
	"encoding/json"
	"testing"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/transport"
)

var opSeeds = []string{
	`{"op":"subscribe","channel":"thread:42"}`,
	`{"op":"subscribe","channel":"thread:42","cursor":"thread:42@k3j4h5g6:17,forum:tech@x9q2m4a1:5"}`,
	`{"op":"subscribe","channel":"a","cursor":""}`,
	`{"op":"unsubscribe","channel":"forum:tech"}`,
	`{"op":"unsubscribe","channel":"a","cursor":"garbage"}`,
	`{"op":"subscribe","channel":"a","cursor":"a@e:01"}`,
	`{"op":"subscribe","channel":"a","cursor":"a@e:1,"}`,
	`{"op":"subscribe","channel":"a","cursor":null}`,
	`{"op":"subscribe","channel":"a","cursor":7}`,
	`{"op":"subscribe","channel":"no spaces"}`,
	`{"op":"subscribe","channel":""}`,
	`{"op":"dance"}`,
	`{"OP":"subscribe","Channel":"a"}`,
	`{"op":"subscribe","channel":"a","extra":[1,{"x":null}]}`,
	`{"op":"subscribe","channel":"\u0000"}`,
	`{"op":1}`,
	`null`,
	`[]`,
	`"subscribe"`,
	`{"op":"subscribe"`,
	``,
	"\xff\xfe",
	`{"op":"sub` + "\xff" + `scribe","channel":"a"}`,
}

func TestParseOp(t *testing.T) {
	for _, tc := range []struct {
		in, code, op, channel, cursor string
	}{
		{in: `{"op":"subscribe","channel":"a"}`, op: opSubscribe, channel: "a"},
		{in: `{"op":"subscribe","channel":"a","cursor":"a@e:3,b@f:1"}`, op: opSubscribe, channel: "a", cursor: "a@e:3,b@f:1"},
		{in: `{"op":"unsubscribe","channel":"a","cursor":"ignored"}`, op: opUnsubscribe, channel: "a"},
		{in: `{"op":"subscribe","channel":"a","cursor":"a@e"}`, code: httpx.CodeInvalidCursor},
		{in: `{"op":"subscribe","channel":"a b"}`, code: httpx.CodeInvalidChannel},
		{in: `{"op":"publish","channel":"a"}`, code: httpx.CodeInvalidRequest},
		{in: `{"op":1}`, code: httpx.CodeInvalidRequest},
		{in: `{"op":`, code: httpx.CodeInvalidJSON},
	} {
		op, errFrame := parseOp([]byte(tc.in))
		if tc.code != "" {
			if code := errorCode(t, errFrame); code != tc.code {
				t.Errorf("%s: code %q, want %q", tc.in, code, tc.code)
			}
			continue
		}
		if errFrame != nil {
			t.Errorf("%s: error %s", tc.in, errFrame)
			continue
		}
		if op.Op != tc.op || op.Channel != tc.channel || op.Cursor.String() != tc.cursor {
			t.Errorf("%s: got %+v", tc.in, op)
		}
	}
}

func TestControls(t *testing.T) {
	cur, err := hub.ParseCursor("a@e:3,b@f:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ got, want string }{
		{string(transport.AppendGapControl(nil, []string{"a", "b"})), `{"control":"gap","channels":["a","b"]}`},
		{string(appendSubscribed(nil, nil, &hub.Cursor{})), `{"control":"subscribed","channels":[],"cursor":""}`},
		{string(appendSubscribed(nil, []string{"b"}, &cur)), `{"control":"subscribed","channels":["b"],"cursor":"a@e:3,b@f:0"}`},
		{string(appendUnsubscribed(nil, "thread:42")), `{"control":"unsubscribed","channel":"thread:42"}`},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
		if !json.Valid([]byte(tc.got)) {
			t.Errorf("%s is not valid JSON", tc.got)
		}
	}
	if ch, ok := unsubscribedChannel(appendUnsubscribed(nil, "x:1")); !ok || ch != "x:1" {
		t.Errorf("unsubscribedChannel = %q, %v", ch, ok)
	}
	if _, ok := unsubscribedChannel(errorControl("c", "m")); ok {
		t.Error("an error control read as unsubscribed")
	}
}

// errorCode checks that frame is an error control and returns its code.
func errorCode(t *testing.T, frame []byte) string {
	t.Helper()
	var c struct{ Control, Code, Message string }
	if err := json.Unmarshal(frame, &c); err != nil {
		t.Fatalf("error control %q: %v", frame, err)
	}
	if c.Control != "error" || c.Code == "" || c.Message == "" {
		t.Fatalf("not an error control: %s", frame)
	}
	return c.Code
}

// FuzzClientOp checks that any client frame either parses into a valid op
// or yields a well-formed error control, and never panics.
func FuzzClientOp(f *testing.F) {
	for _, s := range opSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		op, errFrame := parseOp(data)
		if errFrame != nil {
			errorCode(t, errFrame)
			return
		}
		if op.Op != opSubscribe && op.Op != opUnsubscribe {
			t.Fatalf("op %q accepted", op.Op)
		}
		if !hub.ValidChannel(op.Channel) {
			t.Fatalf("channel %q accepted", op.Channel)
		}
		// The cursor round-trips, and every control built from the op
		// is valid JSON.
		s := op.Cursor.String()
		back, err := hub.ParseCursor(s)
		if err != nil || back.String() != s {
			t.Fatalf("cursor %q does not round-trip: %v", s, err)
		}
		for _, b := range [][]byte{
			appendUnsubscribed(nil, op.Channel),
			transport.AppendGapControl(nil, []string{op.Channel}),
			appendSubscribed(nil, []string{op.Channel}, &op.Cursor),
		} {
			if !json.Valid(b) {
				t.Fatalf("control %q is not valid JSON", b)
			}
		}
	})
}
