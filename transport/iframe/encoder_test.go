package iframe

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/transport"
)

// TestEncoderWireFormat pins the bytes of every frame against protocol.md.
func TestEncoderWireFormat(t *testing.T) {
	cur, err := hub.ParseCursor("b@f:3")
	if err != nil {
		t.Fatal(err)
	}
	e := newEncoder(transport.Request{Channels: []string{"a", "b"}, Cursor: cur}, "parent.herald")
	m := &hub.Message{Message: broker.Message{Channel: "a", Epoch: "e", Offset: 7, Type: "t",
		Data: json.RawMessage(`"\u003c/script\u003e"`), Time: time.Unix(0, 0)}}
	m.Seal()

	open := string(e.AppendOpen(nil))
	if !strings.HasPrefix(open, "<!DOCTYPE html>") || !strings.Contains(open, "<body>") || len(open) < 1024 || strings.Contains(open, "<script") {
		t.Errorf("prelude of %d bytes: %.80q…", len(open), open)
	}
	steps := []struct {
		name string
		got  []byte
		want string
	}{
		{"gap", appendItem(e, &hub.Item{Kind: hub.ItemGap, Channels: []string{"a", "b"}}),
			`<script>parent.herald({"control":"gap","channels":["a","b"]},"b@f:3");</script>` + "\n"},
		{"message", appendItem(e, &hub.Item{Kind: hub.ItemMessage, Msg: m}),
			`<script>parent.herald(` + string(m.Envelope) + `,"b@f:3,a@e:7");</script>` + "\n"},
		{"subscribed", appendItem(e, &hub.Item{Kind: hub.ItemSubscribed, Channels: []string{"b"}, Positions: []hub.CursorEntry{
			{Channel: "b", Position: hub.Position{Epoch: "f", Offset: 4}}}}),
			`<script>parent.herald({"control":"subscribed","channels":["b"]},"b@f:4,a@e:7");</script>` + "\n"},
		{"heartbeat", e.AppendHeartbeat(nil), "<!-- -->\n"},
		{"close", e.AppendClose(nil, hub.DisconnectShutdown), ""},
	}
	for _, s := range steps {
		if string(s.got) != s.want {
			t.Errorf("%s:\n got %q\nwant %q", s.name, s.got, s.want)
		}
	}
	if strings.Contains(string(m.Envelope), "</script") {
		t.Fatalf("envelope %s can end the script", m.Envelope)
	}
	// The subscribed positions reach the next message's cursor.
	m2 := &hub.Message{Message: broker.Message{Channel: "a", Epoch: "e", Offset: 8, Type: "t", Time: time.Unix(0, 0)}}
	m2.Seal()
	if got := string(appendItem(e, &hub.Item{Kind: hub.ItemMessage, Msg: m2})); !strings.HasSuffix(got, `,"b@f:4,a@e:8");</script>`+"\n") {
		t.Errorf("message after subscribed: %q", got)
	}
}

// appendItem returns the flattened wire form of it.
func appendItem(e *encoder, it *hub.Item) []byte {
	var b transport.Batch
	e.AppendItem(&b, it)
	return b.AppendTo(nil)
}
