package client

import (
	"bytes"
	"strconv"
)

// maxEpochLen bounds the epoch part of a cursor entry, as the server does.
const maxEpochLen = 64

// position is one channel's entry of a cursor: everything up to and
// including offset in epoch has been seen.
type position struct {
	channel string
	epoch   string
	offset  uint64
}

// cursorState is a subscription's cursor: one position per channel, in the
// order channels were first seen. Its textual form is
// "channel@epoch:offset" entries joined by ','.
//
// The subscription's goroutine is the only writer; it reads without a lock
// and writes under Subscription.mu, which Cursor() takes to read.
type cursorState struct {
	entries []position
	// raw is a cursor given by the application that does not parse. It is
	// sent as it is (the server answers invalid_cursor) until an entry is
	// known.
	raw string
}

// index returns the entry of channel ch, or -1.
func (c *cursorState) index(ch []byte) int {
	for i := range c.entries {
		if c.entries[i].channel == string(ch) {
			return i
		}
	}
	return -1
}

// appendTo appends the textual form of c to b.
func (c *cursorState) appendTo(b []byte) []byte {
	if len(c.entries) == 0 {
		return append(b, c.raw...)
	}
	for i, e := range c.entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e.channel...)
		b = append(b, '@')
		b = append(b, e.epoch...)
		b = append(b, ':')
		b = strconv.AppendUint(b, e.offset, 10)
	}
	return b
}

// set records the position of channel at index i (-1: a new channel named
// by the strings given). epoch is reused when unchanged.
func (c *cursorState) set(i int, channel string, epoch []byte, offset uint64) {
	if i < 0 {
		c.entries = append(c.entries, position{channel: channel, epoch: string(epoch), offset: offset})
		return
	}
	e := &c.entries[i]
	if e.epoch != string(epoch) {
		e.epoch = string(epoch)
	}
	e.offset = offset
}

// merge records every entry of the textual cursor text, keeping entries of
// channels text does not name. It changes nothing and returns false when
// text does not parse. intern turns a new channel name into a string.
func (c *cursorState) merge(text []byte, intern func([]byte) string) bool {
	if !validCursor(text) {
		return false
	}
	for len(text) > 0 {
		var part []byte
		part, text, _ = bytes.Cut(text, []byte{','})
		at := bytes.LastIndexByte(part, '@')
		ch, rest := part[:at], part[at+1:]
		colon := bytes.IndexByte(rest, ':')
		off, _ := parseUint(rest[colon+1:])
		i := c.index(ch)
		name := ""
		if i < 0 {
			name = intern(ch)
		}
		c.set(i, name, rest[:colon], off)
	}
	if len(c.entries) > 0 {
		c.raw = ""
	}
	return true
}

// validCursor reports whether text is a cursor as the protocol defines it.
// The empty cursor is valid.
func validCursor(text []byte) bool {
	for len(text) > 0 {
		part, rest, found := bytes.Cut(text, []byte{','})
		if found && len(rest) == 0 {
			return false // trailing comma
		}
		text = rest
		at := bytes.LastIndexByte(part, '@')
		if at <= 0 || !validChannel(part[:at]) {
			return false
		}
		epoch, off, ok := bytes.Cut(part[at+1:], []byte{':'})
		if !ok || !validEpoch(epoch) || !validOffset(off) {
			return false
		}
	}
	return true
}

// channelChars marks the bytes allowed in a channel name:
// A–Z a–z 0–9 _ - . : / ~.
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

// validChannel reports whether name is a valid channel name: 1 to 255
// bytes of A–Z a–z 0–9 _ - . : / ~.
func validChannel[T string | []byte](name T) bool {
	if len(name) == 0 || len(name) > 255 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !channelChars[name[i]] {
			return false
		}
	}
	return true
}

// validEpoch reports whether e is 1 to 64 bytes of A–Z a–z 0–9 _ -.
func validEpoch(e []byte) bool {
	if len(e) == 0 || len(e) > maxEpochLen {
		return false
	}
	for _, b := range e {
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-') {
			return false
		}
	}
	return true
}

// validOffset reports whether off is a decimal uint64 without leading zeros.
func validOffset(off []byte) bool {
	if len(off) == 0 || len(off) > 1 && off[0] == '0' {
		return false
	}
	_, ok := parseUint(off)
	return ok
}

// parseUint parses a decimal uint64 made only of digits.
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}
