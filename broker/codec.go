package broker

import (
	"encoding/binary"
	"errors"
	"time"
)

// The wire form of a Message between nodes, used by the networked brokers:
//
//	'H' 1                      magic and version
//	uvarint offset
//	varint  time (Unix nanoseconds)
//	then five length-prefixed (uvarint) byte strings:
//	channel, epoch, type, data, envelope
//
// It is a few bytes longer than the message's own fields and costs no
// allocation beyond the buffer.
const (
	wireMagic   = 'H'
	wireVersion = 1
)

// ErrBadWire is returned by Decode for bytes that are not an encoded Message.
var ErrBadWire = errors.New("broker: malformed message on the wire")

// MaxWireSize bounds what Decode accepts: far above any message the hub
// lets through (64 KiB of data, twice over with the envelope).
const MaxWireSize = 16 << 20

// AppendEncode appends the wire form of m to dst.
func AppendEncode(dst []byte, m *Message) []byte {
	dst = append(dst, wireMagic, wireVersion)
	dst = binary.AppendUvarint(dst, m.Offset)
	var nanos int64
	if !m.Time.IsZero() {
		nanos = m.Time.UnixNano()
	}
	dst = binary.AppendVarint(dst, nanos)
	for _, s := range [...][]byte{[]byte(m.Channel), []byte(m.Epoch), []byte(m.Type), m.Data, m.Envelope} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	return dst
}

// Encode returns the wire form of m.
func Encode(m *Message) []byte {
	n := 2 + 2*binary.MaxVarintLen64 + 5*binary.MaxVarintLen32 +
		len(m.Channel) + len(m.Epoch) + len(m.Type) + len(m.Data) + len(m.Envelope)
	return AppendEncode(make([]byte, 0, n), m)
}

// Decode parses the wire form made by Encode. The returned message's Data
// and Envelope share b's memory: the caller must not reuse b. Any other
// input gives ErrBadWire.
func Decode(b []byte) (*Message, error) {
	if len(b) < 2 || len(b) > MaxWireSize || b[0] != wireMagic || b[1] != wireVersion {
		return nil, ErrBadWire
	}
	b = b[2:]
	off, n := binary.Uvarint(b)
	if n <= 0 {
		return nil, ErrBadWire
	}
	b = b[n:]
	nanos, n := binary.Varint(b)
	if n <= 0 {
		return nil, ErrBadWire
	}
	b = b[n:]
	var fields [5][]byte
	for i := range fields {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return nil, ErrBadWire
		}
		b = b[n:]
		fields[i] = b[:l:l]
		b = b[l:]
	}
	if len(b) != 0 {
		return nil, ErrBadWire
	}
	m := &Message{
		Channel:  string(fields[0]),
		Epoch:    string(fields[1]),
		Offset:   off,
		Type:     string(fields[2]),
		Data:     fields[3],
		Envelope: fields[4],
	}
	if nanos != 0 {
		m.Time = time.Unix(0, nanos).UTC()
	}
	if len(m.Data) == 0 {
		m.Data = nil
	}
	if len(m.Envelope) == 0 {
		m.Envelope = nil
	}
	return m, nil
}
