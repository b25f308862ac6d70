package broker_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
)

func TestCodecRoundTrip(t *testing.T) {
	for _, m := range []*broker.Message{
		{Channel: "thread:42", Epoch: "ep", Offset: 7, Type: "post.created", Data: []byte(`{"a":1}`),
			Time: time.Date(2030, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600)), Envelope: []byte(`{"channel":"thread:42"}`)},
		{Channel: "$nodes", Type: "node"},
		{Channel: "c", Epoch: "e", Offset: 1 << 63, Data: bytes.Repeat([]byte("x"), 70<<10)},
	} {
		got, err := broker.Decode(broker.Encode(m))
		if err != nil {
			t.Fatalf("Decode(Encode(%s)): %v", m.Channel, err)
		}
		if got.Channel != m.Channel || got.Epoch != m.Epoch || got.Offset != m.Offset || got.Type != m.Type ||
			!bytes.Equal(got.Data, m.Data) || !bytes.Equal(got.Envelope, m.Envelope) || !got.Time.Equal(m.Time) {
			t.Errorf("round trip of %s: got %+v", m.Channel, got)
		}
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	good := broker.Encode(&broker.Message{Channel: "c", Epoch: "e", Offset: 3, Type: "t", Data: []byte("1")})
	for name, b := range map[string][]byte{
		"empty":       nil,
		"magic":       append([]byte{'X'}, good[1:]...),
		"version":     append([]byte{'H', 9}, good[2:]...),
		"truncated":   good[:len(good)-1],
		"trailing":    append(bytes.Clone(good), 0),
		"huge length": {'H', 1, 1, 2, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		if _, err := broker.Decode(b); !errors.Is(err, broker.ErrBadWire) {
			t.Errorf("%s: Decode = %v, want ErrBadWire", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(broker.Encode(&broker.Message{Channel: "thread:1", Epoch: "e", Offset: 3, Type: "t", Data: []byte(`{}`), Envelope: []byte(`{}`), Time: time.Unix(1, 2)}))
	f.Add([]byte{'H', 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := broker.Decode(b)
		if err != nil {
			if !errors.Is(err, broker.ErrBadWire) {
				t.Fatalf("Decode error %v is not ErrBadWire", err)
			}
			return
		}
		// Whatever decodes encodes back to a message that decodes the same.
		again, err := broker.Decode(broker.Encode(m))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if again.Channel != m.Channel || again.Epoch != m.Epoch || again.Offset != m.Offset || again.Type != m.Type ||
			!bytes.Equal(again.Data, m.Data) || !bytes.Equal(again.Envelope, m.Envelope) || !again.Time.Equal(m.Time) {
			t.Fatalf("re-decode differs: %+v vs %+v", again, m)
		}
	})
}
