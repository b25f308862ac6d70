package ws

import (
	"encoding/json"
	"net/http"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/transport"
)

// Client ops.
const (
	opSubscribe   = "subscribe"
	opUnsubscribe = "unsubscribe"
)

// clientOp is a validated client op: Op is opSubscribe or opUnsubscribe,
// Channel a valid channel name, Cursor the parsed cursor (empty when the
// op has none).
type clientOp struct {
	Op      string
	Channel string
	Cursor  hub.Cursor
}

// parseOp parses and validates one client frame. On failure it returns the
// error control to send back instead.
func parseOp(data []byte) (clientOp, []byte) {
	if !json.Valid(data) {
		return clientOp{}, errorControl(httpx.CodeInvalidJSON, "op is not valid JSON")
	}
	var raw struct {
		Op      string  `json:"op"`
		Channel string  `json:"channel"`
		Cursor  *string `json:"cursor"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return clientOp{}, errorControl(httpx.CodeInvalidRequest, `an op is an object with string fields "op", "channel" and "cursor"`)
	}
	if raw.Op != opSubscribe && raw.Op != opUnsubscribe {
		return clientOp{}, errorControl(httpx.CodeInvalidRequest, "unknown op "+quote(raw.Op)+`: expected "subscribe" or "unsubscribe"`)
	}
	if !hub.ValidChannel(raw.Channel) {
		return clientOp{}, errorControl(httpx.CodeInvalidChannel, "invalid channel name: "+quote(raw.Channel))
	}
	op := clientOp{Op: raw.Op, Channel: raw.Channel}
	if raw.Cursor != nil && raw.Op == opSubscribe {
		cur, err := hub.ParseCursor(*raw.Cursor)
		if err != nil {
			return clientOp{}, errorControl(httpx.CodeInvalidCursor, "cursor does not parse: expected channel@epoch:offset entries joined by ','")
		}
		op.Cursor = cur
	}
	return op, nil
}

// quote shortens and quotes a client-supplied string for an error message.
func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return `"` + s + `"`
}

// errorControl returns {"control":"error","code":code,"message":msg}.
func errorControl(code, msg string) []byte {
	b, err := json.Marshal(struct {
		Control string `json:"control"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}{"error", code, msg})
	if err != nil { // strings always marshal
		panic(err)
	}
	return b
}

// hubErrorControl returns the error control for an error from the hub.
func hubErrorControl(err error) []byte {
	status, code := httpx.HubStatus(err)
	msg := err.Error()
	if status == http.StatusInternalServerError {
		msg = "internal error"
	}
	return errorControl(code, msg)
}

// Channel names are validated to need no JSON escaping, and cursors are
// made of channel names and URL-safe characters, so controls are appended
// directly.

// appendSubscribed appends
// {"control":"subscribed","channels":[...],"cursor":"..."}.
func appendSubscribed(b []byte, channels []string, cur *hub.Cursor) []byte {
	b = append(b, `{"control":"subscribed","channels":`...)
	b = transport.AppendChannels(b, channels)
	b = append(b, `,"cursor":"`...)
	b = cur.AppendTo(b)
	return append(b, `"}`...)
}

var (
	unsubscribedPrefix = []byte(`{"control":"unsubscribed","channel":"`)
	unsubscribedSuffix = []byte(`"}`)
)

// appendUnsubscribed appends {"control":"unsubscribed","channel":"..."}.
func appendUnsubscribed(b []byte, ch string) []byte {
	b = append(b, unsubscribedPrefix...)
	b = append(b, ch...)
	return append(b, unsubscribedSuffix...)
}
