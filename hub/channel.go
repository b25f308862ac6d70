package hub

import "strings"

// MaxChannelLen is the longest channel name accepted, in bytes.
const MaxChannelLen = 255

// MaxTypeLen is the longest message type accepted, in bytes.
const MaxTypeLen = 128

// DefaultType is the type of a message published without one. Browsers'
// EventSource.onmessage receives exactly this type.
const DefaultType = "message"

// channelChars marks the bytes allowed in a channel name:
// A–Z a–z 0–9 _ - . : / ~. They are all URL-safe, none is special in SSE,
// HTML or JavaScript strings, and '@' and ',' stay free for cursors.
var channelChars = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "_-.:/~" {
		t[c] = true
	}
	return t
}()

// ValidChannel reports whether name is a valid channel name: 1 to 255 bytes
// of A–Z a–z 0–9 _ - . : / ~.
func ValidChannel(name string) bool {
	if len(name) == 0 || len(name) > MaxChannelLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !channelChars[name[i]] {
			return false
		}
	}
	return true
}

// ValidType reports whether t is a valid message type: 1 to 128 bytes of the
// channel-name characters. Types become SSE "event:" fields, so they must
// never hold a line break.
func ValidType(t string) bool {
	if len(t) == 0 || len(t) > MaxTypeLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		if !channelChars[t[i]] {
			return false
		}
	}
	return true
}

// Namespace returns the part of a channel name before its first ':', or ""
// (the default namespace) when there is none.
func Namespace(channel string) string {
	if i := strings.IndexByte(channel, ':'); i >= 0 {
		return channel[:i]
	}
	return ""
}
