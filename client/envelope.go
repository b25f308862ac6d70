package client

import (
	"bytes"
	"encoding/json"
	"time"
)

// envelope is a decoded server frame: a message envelope (hasChannel) or a
// control (isControl). Its byte slices alias the decoded input, or fresh
// memory when the slow path decoded it.
type envelope struct {
	channel, epoch, typ, time, data []byte
	offset                          uint64
	hasChannel, isControl           bool
}

// envelopeJSON is the envelope as encoding/json sees it: the reference the
// fast scanner must agree with, and the fallback for what it does not take.
type envelopeJSON struct {
	Channel *string         `json:"channel"`
	Epoch   string          `json:"epoch"`
	Offset  uint64          `json:"offset"`
	Type    string          `json:"type"`
	Data    json.RawMessage `json:"data"`
	Time    string          `json:"time"`
	Control *string         `json:"control"`
}

// decodeEnvelope decodes one JSON frame into e. The common case — a
// compact envelope of ASCII strings without escapes, as Herald writes it —
// is scanned in place without allocating; anything else goes through
// encoding/json with the same result.
func decodeEnvelope(b []byte, e *envelope) error {
	*e = envelope{}
	if scanEnvelope(b, e) {
		return nil
	}
	*e = envelope{}
	var j envelopeJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if j.Channel != nil {
		e.hasChannel, e.channel = true, []byte(*j.Channel)
	}
	e.isControl = j.Control != nil
	e.epoch, e.typ, e.time = []byte(j.Epoch), []byte(j.Type), []byte(j.Time)
	e.offset, e.data = j.Offset, j.Data
	return nil
}

// knownKeys are the envelope keys the fast scanner reads.
var knownKeys = [...]string{"channel", "epoch", "offset", "type", "data", "time", "control"}

// scanEnvelope is decodeEnvelope's fast path. It returns false — leaving
// the decision to encoding/json — for anything but a valid JSON object
// whose known keys are spelt exactly and hold plain ASCII strings (or a
// plain unsigned integer for "offset").
func scanEnvelope(b []byte, e *envelope) bool {
	s := jsonScanner{b: b}
	s.space()
	if !s.eat('{') {
		return false
	}
	s.space()
	if !s.eat('}') {
		for {
			s.space()
			key, plain, ok := s.str()
			if !ok || !plain {
				return false
			}
			s.space()
			if !s.eat(':') {
				return false
			}
			s.space()
			switch string(key) {
			case "channel", "epoch", "type", "time", "control":
				v, plain, ok := s.str()
				if !ok || !plain {
					return false
				}
				switch key[0] {
				case 'c':
					if key[1] == 'h' {
						e.channel, e.hasChannel = v, true
					} else {
						e.isControl = true
					}
				case 'e':
					e.epoch = v
				case 't':
					if key[1] == 'y' {
						e.typ = v
					} else {
						e.time = v
					}
				}
			case "offset":
				start := s.i
				if !s.number() {
					return false
				}
				n, ok := parseUint(b[start:s.i])
				if !ok {
					return false
				}
				e.offset = n
			case "data":
				start := s.i
				if !s.value(0) {
					return false
				}
				e.data = b[start:s.i]
			default:
				for _, k := range knownKeys {
					if bytes.EqualFold(key, []byte(k)) {
						return false // encoding/json matches keys case-insensitively
					}
				}
				if !s.value(0) {
					return false
				}
			}
			s.space()
			if s.eat(',') {
				continue
			}
			if s.eat('}') {
				break
			}
			return false
		}
	}
	s.space()
	return s.i == len(b)
}

// maxScanDepth is the nesting the fast scanner handles; deeper values go to
// encoding/json.
const maxScanDepth = 256

// jsonScanner validates and skips JSON text in b from i.
type jsonScanner struct {
	b []byte
	i int
}

func (s *jsonScanner) space() {
	for s.i < len(s.b) && s.b[s.i] <= ' ' && jsonSpace[s.b[s.i]] {
		s.i++
	}
}

// jsonSpace marks JSON whitespace; plainChar marks the string bytes that
// need no attention: printable ASCII but '"' and '\\'.
var jsonSpace, plainChar = func() (sp, pc [256]bool) {
	sp[' '], sp['\t'], sp['\n'], sp['\r'] = true, true, true, true
	for c := 0x20; c < 0x80; c++ {
		pc[c] = c != '"' && c != '\\'
	}
	return sp, pc
}()

func (s *jsonScanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str scans a string and returns its content between the quotes; plain
// means it holds neither escapes nor non-ASCII bytes, so the content is
// the decoded value.
func (s *jsonScanner) str() (content []byte, plain, ok bool) {
	if !s.eat('"') {
		return nil, false, false
	}
	start := s.i
	plain = true
	for s.i < len(s.b) {
		for s.i < len(s.b) && plainChar[s.b[s.i]] {
			s.i++
		}
		if s.i >= len(s.b) {
			break
		}
		c := s.b[s.i]
		switch {
		case c == '"':
			content = s.b[start:s.i]
			s.i++
			return content, plain, true
		case c < 0x20:
			return nil, false, false
		case c == '\\':
			plain = false
			s.i++
			if s.i >= len(s.b) {
				return nil, false, false
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				if s.i+5 > len(s.b) {
					return nil, false, false
				}
				for _, h := range s.b[s.i+1 : s.i+5] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return nil, false, false
					}
				}
				s.i += 5
			default:
				return nil, false, false
			}
		default:
			if c >= 0x80 {
				plain = false
			}
			s.i++
		}
	}
	return nil, false, false
}

// number scans -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?.
func (s *jsonScanner) number() bool {
	s.eat('-')
	switch {
	case s.eat('0'):
	case s.i < len(s.b) && s.b[s.i] >= '1' && s.b[s.i] <= '9':
		s.digits()
	default:
		return false
	}
	if s.eat('.') && !s.digits() {
		return false
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

// digits scans one or more digits.
func (s *jsonScanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

// value scans any JSON value.
func (s *jsonScanner) value(depth int) bool {
	if s.i >= len(s.b) || depth > maxScanDepth {
		return false
	}
	switch c := s.b[s.i]; c {
	case '"':
		_, _, ok := s.str()
		return ok
	case '{', '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.i++
		s.space()
		if s.eat(end) {
			return true
		}
		for {
			s.space()
			if c == '{' {
				if _, _, ok := s.str(); !ok {
					return false
				}
				s.space()
				if !s.eat(':') {
					return false
				}
				s.space()
			}
			if !s.value(depth + 1) {
				return false
			}
			s.space()
			if s.eat(',') {
				continue
			}
			return s.eat(end)
		}
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		return s.number()
	}
}

func (s *jsonScanner) literal(lit string) bool {
	if len(s.b)-s.i >= len(lit) && string(s.b[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return true
	}
	return false
}

// parseTime parses the envelope's time, "2006-01-02T15:04:05.000Z" in the
// common case, any RFC 3339 time otherwise. It returns the zero time for
// text that is neither.
func parseTime(b []byte) time.Time {
	if len(b) == 24 && b[4] == '-' && b[7] == '-' && b[10] == 'T' && b[13] == ':' && b[16] == ':' && b[19] == '.' && b[23] == 'Z' {
		year, ok1 := atoi(b[0:4])
		month, ok2 := atoi(b[5:7])
		day, ok3 := atoi(b[8:10])
		hour, ok4 := atoi(b[11:13])
		minute, ok5 := atoi(b[14:16])
		sec, ok6 := atoi(b[17:19])
		ms, ok7 := atoi(b[20:23])
		if ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 &&
			month >= 1 && month <= 12 && day >= 1 && day <= daysIn(month, year) && hour < 24 && minute < 60 && sec < 60 {
			return time.Date(year, time.Month(month), day, hour, minute, sec, ms*int(time.Millisecond), time.UTC)
		}
	}
	if len(b) == 0 {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, string(b))
	if err != nil {
		return time.Time{}
	}
	return t
}

// atoi parses a short run of digits.
func atoi(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
