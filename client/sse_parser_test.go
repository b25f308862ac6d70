package client

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// parseAll reads every block of stream from r and describes each as
// "type|data|id" (id is "-" when the block had none).
func parseAll(r io.Reader) (blocks []string, retry time.Duration, err error) {
	var p sseParser
	p.reset(r)
	for {
		ev, err := p.next()
		if err != nil {
			return blocks, p.retry, err
		}
		id := "-"
		if ev.hasID {
			id = string(ev.id)
		}
		data := string(ev.data)
		if !ev.hasData {
			data = "-"
		}
		blocks = append(blocks, fmt.Sprintf("%s|%s|%s", ev.typ, data, id))
	}
}

// readers returns r's content behind readers that split it differently,
// so that lines and CRLF pairs straddle buffer refills.
func readers(stream string) map[string]io.Reader {
	return map[string]io.Reader{
		"whole":   strings.NewReader(stream),
		"onebyte": iotest.OneByteReader(strings.NewReader(stream)),
		"halves":  iotest.HalfReader(strings.NewReader(stream)),
	}
}

func TestSSEParser(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   []string
		retry  time.Duration
	}{
		{
			name:   "LF",
			stream: "retry: 2000\n\nid: a@e:1\nevent: t\ndata: {\"x\":1}\n\n",
			want:   []string{"t|{\"x\":1}|a@e:1"},
			retry:  2 * time.Second,
		},
		{
			name:   "CRLF",
			stream: "retry: 1500\r\n\r\nid: a@e:1\r\nevent: t\r\ndata: one\r\n\r\nid: a@e:1\r\n\r\n",
			want:   []string{"t|one|a@e:1", "|-|a@e:1"},
			retry:  1500 * time.Millisecond,
		},
		{
			name:   "CR only",
			stream: "data: one\rdata: two\r\rdata: three\r\r",
			want:   []string{"|one\ntwo|-", "|three|-"},
		},
		{
			name:   "multi-line data",
			stream: "event: t\ndata: {\"a\":\ndata: 1,\ndata:\"b\":2}\n\n",
			want:   []string{"t|{\"a\":\n1,\n\"b\":2}|-"},
		},
		{
			name:   "comments and heartbeats",
			stream: ":\n: hello\n\n:\n\ndata: x\n: between\ndata: y\n\n",
			want:   []string{"|x\ny|-"},
		},
		{
			name:   "field without colon, unknown field, one space only",
			stream: "data\nfoo: bar\ndata:  two spaces\n\n",
			want:   []string{"|\n two spaces|-"},
		},
		{
			name:   "event without data is not dispatched, type does not leak",
			stream: "event: lonely\n\ndata: d\n\n",
			want:   []string{"|d|-"},
		},
		{
			name:   "bad retry ignored, id with NUL ignored",
			stream: "retry: 12a\nid: a\x00b\ndata: d\n\nretry: 30\n\n",
			want:   []string{"|d|-"},
			retry:  30 * time.Millisecond,
		},
		{
			name:   "byte order mark",
			stream: "\xEF\xBB\xBFdata: d\n\n",
			want:   []string{"|d|-"},
		},
		{
			name:   "incomplete last block is dropped",
			stream: "data: a\n\ndata: b\n",
			want:   []string{"|a|-"},
		},
		{
			name:   "gap then replay then bare id",
			stream: "retry: 2000\n\nevent: gap\ndata: {\"channels\":[\"a\"]}\n\nid: a@e:5\nevent: t\ndata: m\n\nid: a@e:5\n\n:\n\n",
			want:   []string{"gap|{\"channels\":[\"a\"]}|-", "t|m|a@e:5", "|-|a@e:5"},
			retry:  2 * time.Second,
		},
	}
	for _, tt := range tests {
		for rname, r := range readers(tt.stream) {
			t.Run(tt.name+"/"+rname, func(t *testing.T) {
				got, retry, err := parseAll(r)
				if !errors.Is(err, io.EOF) {
					t.Fatalf("err = %v, want EOF", err)
				}
				if strings.Join(got, "\n~\n") != strings.Join(tt.want, "\n~\n") {
					t.Errorf("blocks:\n%q\nwant:\n%q", got, tt.want)
				}
				if retry != tt.retry {
					t.Errorf("retry = %v, want %v", retry, tt.retry)
				}
			})
		}
	}
}

func TestSSEParserLineTooLong(t *testing.T) {
	stream := "data: " + strings.Repeat("x", maxSSELine+1) + "\n\n"
	_, _, err := parseAll(strings.NewReader(stream))
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
}

func FuzzSSEParser(f *testing.F) {
	for _, s := range []string{
		"retry: 2000\n\nid: a@e:1\nevent: t\ndata: {\"x\":1}\n\n",
		"retry: 1500\r\n\r\nid: a@e:1\r\nevent: t\r\ndata: one\r\n\r\n",
		"data: one\rdata: two\r\r",
		":\n: hello\n\ndata: x\n: c\ndata: y\n\n",
		"\xEF\xBB\xBFdata: d\n\n",
		"event: gap\ndata: {\"channels\":[\"a\"]}\n\n",
		"id\nid:\nretry\nretry: 99999999999999999999999\n\n",
		"\r\n\r\r\n\n\r",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		whole, wholeRetry, err := parseAll(bytes.NewReader(stream))
		if !errors.Is(err, io.EOF) {
			t.Fatalf("err = %v", err)
		}
		// However the bytes arrive, the blocks are the same.
		split, splitRetry, _ := parseAll(iotest.OneByteReader(bytes.NewReader(stream)))
		if strings.Join(whole, "\x00") != strings.Join(split, "\x00") || wholeRetry != splitRetry {
			t.Fatalf("whole read %q (retry %v), byte by byte %q (retry %v)", whole, wholeRetry, split, splitRetry)
		}
	})
}
