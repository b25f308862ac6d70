package wsframe

import "unicode/utf8"

// validUTF8Prefix checks p, the newly received bytes of a text message
// after the part already checked. When final is false, p may end in the
// first bytes of a rune whose rest is in the next fragment (RFC 6455 §5.6:
// a rune may be split across frames): that tail is left unchecked, and n
// says how many bytes were checked so the next call starts at the tail.
// Any byte sequence that cannot begin a valid rune fails at once.
func validUTF8Prefix(p []byte, final bool) (n int, ok bool) {
	if !final {
		// Find the start of the last rune; if it is incomplete, hold it back.
		for i := len(p) - 1; i >= 0 && i >= len(p)-(utf8.UTFMax-1); i-- {
			if utf8.RuneStart(p[i]) {
				// FullRune is false only for a valid but incomplete prefix;
				// an invalid sequence counts as a full (error) rune.
				if !utf8.FullRune(p[i:]) {
					p = p[:i]
				}
				break
			}
		}
	}
	return len(p), utf8.Valid(p)
}
