package hub

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/internal/jsonscan"
)

// TimeLayout is the layout of the envelope's "time" field: RFC 3339, UTC,
// milliseconds.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// ErrInvalidData is returned when published data is not a JSON value.
var ErrInvalidData = errors.New("hub: data is not valid JSON")

// Message is a published message as the hub fans it out. It is immutable
// and shared by every subscriber: its wire encodings are built once, the
// JSON envelope before fan-out and the SSE frame by the first SSE writer
// that needs it.
type Message struct {
	broker.Message

	// Key is the publish's idempotency key, when it has one. A history
	// store that remembers keys (a durable one) stores a message whose key
	// and channel it already holds only once: Append then sets Epoch and
	// Offset to the stored message's (Offset 0 when it is no longer
	// retained) and returns ErrDuplicate. The hub hands the stored message
	// to the broker again, in case the first publish failed after storing
	// it; sessions skip offsets they already have.
	Key string

	// stamp, until Seal, is the publish's time formatted once for all its
	// channels, or nil.
	stamp *stamp

	sseOnce sync.Once
	sse     []byte
}

// newMessage wraps a broker message, building its envelope if the publisher
// did not.
func newMessage(bm *broker.Message) *Message {
	m := &Message{Message: *bm}
	if m.Envelope == nil {
		m.Envelope = appendEnvelope(make([]byte, 0, envelopeSize(&m.Message)), &m.Message, nil)
	}
	return m
}

// Seal builds the message's envelope from its fields. History stores call
// it after assigning Epoch and Offset and before the message becomes visible
// to readers; after Seal the message must not change.
func (m *Message) Seal() {
	m.Envelope = appendEnvelope(make([]byte, 0, envelopeSize(&m.Message)), &m.Message, m.stamp.text(m.Time))
	m.stamp = nil
}

// Size is the number of bytes the message counts for in subscriber queues.
func (m *Message) Size() int { return len(m.Envelope) + 64 }

// SSE returns the message's SSE frame without its per-connection "id:" line:
// "event: TYPE\ndata: ENVELOPE\n\n". The bytes are shared; do not modify them.
func (m *Message) SSE() []byte {
	m.sseOnce.Do(func() {
		b := make([]byte, 0, len(m.Envelope)+len(m.Type)+17)
		b = append(b, "event: "...)
		b = append(b, m.Type...)
		b = append(b, "\ndata: "...)
		b = append(b, m.Envelope...)
		b = append(b, "\n\n"...)
		m.sse = b
	})
	return m.sse
}

// envelopeOverhead is the length of the envelope's fixed parts: its keys
// and punctuation, the longest offset and the time.
const envelopeOverhead = len(`{"channel":"","epoch":"","offset":,"type":"","data":,"time":""}`) +
	len("18446744073709551615") + len(TimeLayout)

// envelopeSize is the capacity that holds m's envelope without growing.
func envelopeSize(m *broker.Message) int {
	return envelopeOverhead + len(m.Channel) + len(m.Epoch) + len(m.Type) + max(len(m.Data), len("null"))
}

// appendStamp appends t formatted for the envelope's "time" field.
func appendStamp(b []byte, t time.Time) []byte {
	return t.UTC().AppendFormat(b, TimeLayout)
}

// stamp is a time formatted by appendStamp, shared by the messages of one
// publish.
type stamp struct {
	t   time.Time
	n   int
	buf [len(TimeLayout)]byte
}

func newStamp(t time.Time) *stamp {
	s := &stamp{t: t}
	s.n = len(appendStamp(s.buf[:0], t))
	return s
}

// text returns the formatted time if it is t's (a history store may have
// given the message another time), else nil.
func (s *stamp) text(t time.Time) []byte {
	if s == nil || !s.t.Equal(t) {
		return nil
	}
	return s.buf[:s.n]
}

// appendEnvelope appends the JSON envelope of m to b. Channel, epoch and
// type are validated to need no escaping; Data is already compact JSON.
// stamp, when not nil, is m.Time formatted by appendStamp.
func appendEnvelope(b []byte, m *broker.Message, stamp []byte) []byte {
	b = append(b, `{"channel":"`...)
	b = append(b, m.Channel...)
	b = append(b, `","epoch":"`...)
	b = append(b, m.Epoch...)
	b = append(b, `","offset":`...)
	b = strconv.AppendUint(b, m.Offset, 10)
	b = append(b, `,"type":"`...)
	b = append(b, m.Type...)
	b = append(b, `","data":`...)
	if len(m.Data) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, m.Data...)
	}
	b = append(b, `,"time":"`...)
	if stamp != nil {
		b = append(b, stamp...)
	} else {
		b = appendStamp(b, m.Time)
	}
	b = append(b, `"}`...)
	return b
}

// NormalizeData validates that raw is one JSON value and returns it compact,
// with <, >, &, U+2028 and U+2029 escaped so that it is safe inside HTML
// <script> and JavaScript. Empty input becomes null.
func NormalizeData(raw []byte) (json.RawMessage, error) {
	raw = bytes.Trim(raw, jsonSpace)
	if len(raw) == 0 {
		return json.RawMessage("null"), nil
	}
	if !json.Valid(raw) {
		return nil, ErrInvalidData
	}
	compact, copied := raw, false
	if !jsonscan.IsCompact(raw) {
		var buf bytes.Buffer
		buf.Grow(len(raw))
		if err := json.Compact(&buf, raw); err != nil {
			return nil, ErrInvalidData
		}
		compact, copied = buf.Bytes(), true
	}
	if !needsHTMLEscape(compact) {
		if !copied {
			compact = bytes.Clone(raw) // kept by the hub; the caller's may change
		}
		return compact, nil
	}
	var out bytes.Buffer
	out.Grow(len(compact) + 16)
	json.HTMLEscape(&out, compact)
	return out.Bytes(), nil
}

// jsonSpace is JSON's whitespace (RFC 8259), narrower than Unicode's.
const jsonSpace = " \t\r\n"

func needsHTMLEscape(b []byte) bool {
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '<', '>', '&':
			return true
		case 0xE2: // first byte of U+2028 / U+2029
			if i+2 < len(b) && b[i+1] == 0x80 && (b[i+2] == 0xA8 || b[i+2] == 0xA9) {
				return true
			}
		}
	}
	return false
}

// TextData returns s as a JSON string value, HTML-escaped like NormalizeData.
func TextData(s string) json.RawMessage {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(true)
	_ = enc.Encode(s) // a string always encodes
	return bytes.TrimRight(buf.Bytes(), "\n")
}
