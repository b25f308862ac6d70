package hub

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/broker"
)

// envelopeFields is what a subscriber reads from an envelope.
type envelopeFields struct {
	Channel string          `json:"channel"`
	Epoch   string          `json:"epoch"`
	Offset  uint64          `json:"offset"`
	Type    string          `json:"type"`
	Data    json.RawMessage `json:"data"`
	Time    string          `json:"time"`
}

func readEnvelope(t *testing.T, env []byte) envelopeFields {
	t.Helper()
	var f envelopeFields
	if err := json.Unmarshal(env, &f); err != nil {
		t.Fatalf("envelope %s: %v", env, err)
	}
	return f
}

// TestSealAllocatesOnce checks that Seal sizes the envelope right: one
// allocation, whatever the lengths of the fields, the offset and the time's
// milliseconds.
func TestSealAllocatesOnce(t *testing.T) {
	at := time.Date(2026, 11, 22, 23, 59, 59, 999_999_999, time.FixedZone("x", -7*3600))
	for _, m := range []broker.Message{
		{Channel: "a", Epoch: "e", Offset: 1, Type: "t", Time: at},
		{Channel: "thread:" + strings.Repeat("9", 120), Epoch: "p9ei4e3b", Offset: math.MaxUint64,
			Type: "post.created." + strings.Repeat("x", 60), Data: json.RawMessage(`{"id":"p1"}`), Time: at},
		{Channel: "firehose", Epoch: "p9ei4e3b", Offset: 123456, Type: "post.deleted", Data: json.RawMessage(`[1,2,3]`)},
	} {
		msg := &Message{Message: m}
		if n := testing.AllocsPerRun(100, msg.Seal); n != 1 {
			t.Errorf("Seal of %s: %v allocations, want 1", m.Channel, n)
		}
		f := readEnvelope(t, msg.Envelope)
		if f.Channel != m.Channel || f.Epoch != m.Epoch || f.Offset != m.Offset || f.Type != m.Type {
			t.Errorf("envelope %s does not hold %+v", msg.Envelope, m)
		}
		if want := m.Time.UTC().Format(TimeLayout); f.Time != want {
			t.Errorf("time %q, want %q", f.Time, want)
		}
	}
}

// TestPublishFormatsTimeOnce checks that a publish to several channels
// shares one formatted time, and that a history store that gives a message
// another time (the original's, for a duplicate) gets that one.
func TestPublishFormatsTimeOnce(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 123_456_789, time.UTC)
	st := newStamp(at)
	m1 := &Message{Message: broker.Message{Channel: "thread:1", Epoch: "e", Offset: 7, Type: "post.created", Time: at}, stamp: st}
	m2 := &Message{Message: broker.Message{Channel: "forum:1", Epoch: "e", Offset: 8, Type: "post.created", Time: at}, stamp: st}
	plain := &Message{Message: m1.Message}
	m1.Seal()
	m2.Seal()
	plain.Seal()
	if string(m1.Envelope) != string(plain.Envelope) {
		t.Errorf("with the shared time:\n%s\nwithout:\n%s", m1.Envelope, plain.Envelope)
	}
	if got := readEnvelope(t, m2.Envelope).Time; got != "2026-11-22T10:00:00.123Z" {
		t.Errorf("second channel's time %q", got)
	}
	if m1.stamp != nil {
		t.Error("Seal kept the shared time")
	}

	orig := at.Add(-time.Hour)
	dup := &Message{Message: broker.Message{Channel: "post:1", Epoch: "e", Offset: 1, Type: "post.created", Time: at}, stamp: st}
	dup.Time = orig // as jshistory does for a duplicate
	dup.Seal()
	if got, want := readEnvelope(t, dup.Envelope).Time, orig.Format(TimeLayout); got != want {
		t.Errorf("a message whose time changed before Seal: time %q, want %q", got, want)
	}
}
