package bench

import (
	"bytes"
	"strconv"
	"strings"
)

// The payload of every published message is
//
//	{"seq":N,"ts":UNIX_NANOS,"pad":"xxxx"}
//
// where seq counts the messages of one channel from 1 and ts is the wall
// clock just before the publish request was sent. Publisher and
// subscribers run on one machine, so they share that clock.

// payloadOverhead is the payload length without seq and ts digits and pad.
const payloadOverhead = len(`{"seq":,"ts":,"pad":""}`)

// makePad returns the padding that brings a payload to about size bytes
// (seq and ts taken as 6 and 19 digits).
func makePad(size int) string {
	return strings.Repeat("x", max(size-payloadOverhead-6-19, 0))
}

// appendPayload appends the payload for (seq, ts) to b.
func appendPayload(b []byte, seq uint64, ts int64, pad string) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `,"pad":"`...)
	b = append(b, pad...)
	return append(b, `"}`...)
}

var (
	keySeq     = []byte(`"seq":`)
	keyTS      = []byte(`"ts":`)
	envChannel = []byte(`{"channel":"`)
	ctlPrefix  = []byte(`{"control":`)
	ctlGap     = []byte(`"gap"`)
)

// parsePayload finds seq and ts in b, a Herald envelope (the payload is
// its data) or the bare payload (servers that deliver the body as is). It
// is a scan, not a JSON parse: at hundreds of thousands of messages a
// second encoding/json would cost more than the rest of the worker.
func parsePayload(b []byte) (seq uint64, ts int64, ok bool) {
	i := bytes.Index(b, keySeq)
	if i < 0 {
		return 0, 0, false
	}
	b = b[i+len(keySeq):]
	seq, n := parseUint(b)
	if n == 0 {
		return 0, 0, false
	}
	b = b[n:]
	i = bytes.Index(b, keyTS)
	if i < 0 {
		return 0, 0, false
	}
	u, n := parseUint(b[i+len(keyTS):])
	if n == 0 || u > 1<<63-1 {
		return 0, 0, false
	}
	return seq, int64(u), true
}

// parseUint reads the decimal digits at the start of b (after optional
// spaces); n is 0 when there are none or they overflow.
func parseUint(b []byte) (v uint64, n int) {
	i := 0
	for i < len(b) && b[i] == ' ' {
		i++
	}
	start := i
	for ; i < len(b) && i-start < 20; i++ {
		c := b[i]
		if c < '0' || c > '9' {
			break
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, 0
		}
		v = v*10 + d
	}
	if i == start {
		return 0, 0
	}
	return v, i
}

// envelopeChannel returns the channel of a Herald envelope, which starts
// with its "channel" field, and whether b is such an envelope.
func envelopeChannel(b []byte) ([]byte, bool) {
	if !bytes.HasPrefix(b, envChannel) {
		return nil, false
	}
	b = b[len(envChannel):]
	end := bytes.IndexByte(b, '"')
	if end < 0 {
		return nil, false
	}
	return b[:end], true
}

// isControl reports whether b is a WebSocket control object, and whether
// it is a gap signal.
func isControl(b []byte) (control, gap bool) {
	if !bytes.HasPrefix(b, ctlPrefix) {
		return false, false
	}
	rest := b[len(ctlPrefix):]
	return true, bytes.HasPrefix(bytes.TrimLeft(rest, " "), ctlGap)
}
