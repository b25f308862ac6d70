package hub

import (
	"errors"
	"strconv"
	"strings"
)

// ErrInvalidCursor is returned for a cursor that does not parse.
var ErrInvalidCursor = errors.New("hub: invalid cursor")

// maxEpochLen bounds the epoch part of a cursor entry.
const maxEpochLen = 64

// MaxCursorEntries bounds the channels of one cursor, so that parsing a
// hostile cursor stays cheap.
const MaxCursorEntries = 1024

// Position is a place in one channel's history: the message at Offset in
// Epoch, or — with Offset 0 — the start of Epoch.
type Position struct {
	Epoch  string
	Offset uint64
}

// CursorEntry is one channel's position inside a Cursor.
type CursorEntry struct {
	Channel string
	Position
}

// Cursor holds a position per channel. It is what a client sends back to
// resume: "channel@epoch:offset" entries joined by ','. A Cursor is not safe
// for concurrent use; each connection's writer owns its own.
type Cursor struct {
	entries []CursorEntry
}

// ParseCursor parses the textual form of a cursor. An empty string is an
// empty cursor. Entries for the same channel: the last one wins.
func ParseCursor(s string) (Cursor, error) {
	var c Cursor
	if s == "" {
		return c, nil
	}
	for len(s) > 0 {
		var part string
		if i := strings.IndexByte(s, ','); i >= 0 {
			part, s = s[:i], s[i+1:]
			if s == "" {
				return Cursor{}, ErrInvalidCursor // trailing comma
			}
		} else {
			part, s = s, ""
		}
		at := strings.LastIndexByte(part, '@')
		if at <= 0 {
			return Cursor{}, ErrInvalidCursor
		}
		ch, rest := part[:at], part[at+1:]
		colon := strings.IndexByte(rest, ':')
		if colon <= 0 || colon > maxEpochLen || !ValidChannel(ch) {
			return Cursor{}, ErrInvalidCursor
		}
		epoch, off := rest[:colon], rest[colon+1:]
		if !validEpoch(epoch) || off == "" || (len(off) > 1 && off[0] == '0') {
			return Cursor{}, ErrInvalidCursor
		}
		n, err := strconv.ParseUint(off, 10, 64)
		if err != nil {
			return Cursor{}, ErrInvalidCursor
		}
		c.Set(ch, Position{Epoch: epoch, Offset: n})
		if len(c.entries) > MaxCursorEntries {
			return Cursor{}, ErrInvalidCursor
		}
	}
	return c, nil
}

func validEpoch(e string) bool {
	if e == "" || len(e) > maxEpochLen {
		return false
	}
	for i := 0; i < len(e); i++ {
		b := e[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-') {
			return false
		}
	}
	return true
}

// Get returns the position recorded for channel.
func (c *Cursor) Get(channel string) (Position, bool) {
	for _, e := range c.entries {
		if e.Channel == channel {
			return e.Position, true
		}
	}
	return Position{}, false
}

// Set records the position of channel, adding the channel if it is new.
func (c *Cursor) Set(channel string, p Position) {
	for i := range c.entries {
		if c.entries[i].Channel == channel {
			c.entries[i].Position = p
			return
		}
	}
	c.entries = append(c.entries, CursorEntry{Channel: channel, Position: p})
}

// Delete removes channel from the cursor.
func (c *Cursor) Delete(channel string) {
	for i := range c.entries {
		if c.entries[i].Channel == channel {
			c.entries = append(c.entries[:i], c.entries[i+1:]...)
			return
		}
	}
}

// Len returns the number of channels in the cursor.
func (c *Cursor) Len() int { return len(c.entries) }

// Entries returns the cursor's entries in insertion order. The slice is
// shared; do not modify it.
func (c *Cursor) Entries() []CursorEntry { return c.entries }

// AppendTo appends the textual form of c to b.
func (c *Cursor) AppendTo(b []byte) []byte {
	for i, e := range c.entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e.Channel...)
		b = append(b, '@')
		b = append(b, e.Epoch...)
		b = append(b, ':')
		b = strconv.AppendUint(b, e.Offset, 10)
	}
	return b
}

// String returns the textual form of c.
func (c *Cursor) String() string { return string(c.AppendTo(nil)) }
