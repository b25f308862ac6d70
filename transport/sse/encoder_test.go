package sse

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/transport"
)

func sealed(ch, epoch string, off uint64, typ, data string) *hub.Message {
	m := &hub.Message{Message: broker.Message{
		Channel: ch, Epoch: epoch, Offset: off, Type: typ,
		Data: json.RawMessage(data), Time: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC),
	}}
	m.Seal()
	return m
}

func request(t testing.TB, cursor string, channels ...string) transport.Request {
	c, err := hub.ParseCursor(cursor)
	if err != nil {
		t.Fatal(err)
	}
	return transport.Request{Channels: channels, Cursor: c}
}

// TestEncoderWireFormat pins the bytes of every frame against protocol.md.
func TestEncoderWireFormat(t *testing.T) {
	// The request cursor names a channel the connection does not ask for:
	// it must not leak into ids.
	e := newEncoder(request(t, "forum:tech@x9q2m4a1:5,gone@e:1", "thread:42", "forum:tech"), 2*time.Second)
	m := sealed("thread:42", "k3j4h5g6", 17, "post.created", `{"id":"p981"}`)
	steps := []struct {
		name string
		enc  func([]byte) []byte
		want string
	}{
		{"open", e.AppendOpen, "retry: 2000\n\n"},
		{"gap", func(b []byte) []byte {
			return appendItem(e, b, &hub.Item{Kind: hub.ItemGap, Channels: []string{"thread:42", "forum:tech"}})
		}, "event: gap\ndata: {\"channels\":[\"thread:42\",\"forum:tech\"]}\n\n"},
		{"message", func(b []byte) []byte { return appendItem(e, b, &hub.Item{Kind: hub.ItemMessage, Msg: m}) },
			"id: forum:tech@x9q2m4a1:5,thread:42@k3j4h5g6:17\nevent: post.created\ndata: " + string(m.Envelope) + "\n\n"},
		{"subscribed", func(b []byte) []byte {
			return appendItem(e, b, &hub.Item{Kind: hub.ItemSubscribed, Channels: []string{"thread:42", "forum:tech"},
				Positions: []hub.CursorEntry{
					{Channel: "thread:42", Position: hub.Position{Epoch: "k3j4h5g6", Offset: 17}},
					{Channel: "forum:tech", Position: hub.Position{Epoch: "x9q2m4a1", Offset: 6}},
				}})
		}, "id: forum:tech@x9q2m4a1:6,thread:42@k3j4h5g6:17\n\n"},
		{"control", func(b []byte) []byte {
			return appendItem(e, b, &hub.Item{Kind: hub.ItemControl, Raw: []byte("event: x\ndata: {}\n\n")})
		}, "event: x\ndata: {}\n\n"},
		{"heartbeat", e.AppendHeartbeat, ":\n\n"},
		{"slow consumer close", func(b []byte) []byte { return e.AppendClose(b, hub.DisconnectSlowConsumer) }, ""},
	}
	for _, s := range steps {
		if got := string(s.enc([]byte("x"))); got != "x"+s.want {
			t.Errorf("%s:\n got %q\nwant %q", s.name, got[1:], s.want)
		}
	}

	got := string(e.AppendClose(nil, hub.DisconnectShutdown))
	ms, ok := strings.CutPrefix(got, "retry: ")
	ms, ok2 := strings.CutSuffix(ms, "\n\n")
	if n, err := strconv.Atoi(ms); !ok || !ok2 || err != nil || n < 2000 || n > 3000 {
		t.Errorf("shutdown close = %q, want retry: 2000–3000", got)
	}
}

// TestEncoderSharesMessageBytes checks that encoding a message for one more
// subscriber costs no allocation: the frame is the message's shared SSE
// bytes plus the connection's id line.
func TestEncoderSharesMessageBytes(t *testing.T) {
	e := newEncoder(request(t, "", "a", "b"), time.Second)
	appendItem(e, nil, &hub.Item{Kind: hub.ItemSubscribed, Positions: []hub.CursorEntry{
		{Channel: "a", Position: hub.Position{Epoch: "e", Offset: 1}},
		{Channel: "b", Position: hub.Position{Epoch: "f", Offset: 1}},
	}})
	it := hub.Item{Kind: hub.ItemMessage, Msg: sealed("a", "e", 2, "t", `{"k":"v"}`)}
	var b transport.Batch
	b.Buf = make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() { b.Reset(); e.AppendItem(&b, &it) }); n != 0 {
		t.Fatalf("%v allocations per encoded message, want 0", n)
	}
}

func BenchmarkSSEEncode(b *testing.B) {
	e := newEncoder(request(b, "thread:42@k3j4h5g6:1,forum:tech@x9q2m4a1:5", "thread:42", "forum:tech"), time.Second)
	it := hub.Item{Kind: hub.ItemMessage, Msg: sealed("thread:42", "k3j4h5g6", 2, "post.created", `"`+strings.Repeat("x", 1000)+`"`)}
	var batch transport.Batch
	b.SetBytes(int64(len(appendItem(e, nil, &it))))
	b.ReportAllocs()
	for b.Loop() {
		batch.Reset()
		e.AppendItem(&batch, &it)
	}
}

// appendItem appends the flattened wire form of it to dst.
func appendItem(e *encoder, dst []byte, it *hub.Item) []byte {
	var b transport.Batch
	e.AppendItem(&b, it)
	return b.AppendTo(dst)
}
