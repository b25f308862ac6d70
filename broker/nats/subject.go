package nats

import (
	"encoding/base64"
	"strings"
)

// subjectInfix separates the prefix from the encoded channel name.
const subjectInfix = ".ch."

// Subject returns the NATS subject on which channel's messages travel
// under prefix: "<prefix>.ch.<channel in unpadded base64url>". Channel
// names may hold dots and characters that are not valid in a subject; the
// encoding gives every channel exactly one token of [A-Za-z0-9_-]. Other
// services subscribe to a channel with it, or to every channel with
// "<prefix>.ch.>".
func Subject(prefix, channel string) string {
	var arr [128]byte // most subjects fit: one allocation, for the string
	b := append(arr[:0], prefix...)
	b = append(b, subjectInfix...)
	b = base64.RawURLEncoding.AppendEncode(b, []byte(channel))
	return string(b)
}

// ChannelOf is Subject's inverse: the channel whose messages travel on
// subject under prefix, and whether subject is such a subject.
func ChannelOf(prefix, subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, prefix+subjectInfix)
	if !ok || rest == "" {
		return "", false
	}
	ch, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return "", false
	}
	return string(ch), true
}
