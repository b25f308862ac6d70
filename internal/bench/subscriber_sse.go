package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

var (
	sseData  = []byte("data:")
	sseEvent = []byte("event:")
	sseGap   = []byte("gap")
	space    = []byte(" ")
)

// connectSSE opens s's event stream. On success it returns the reader
// loop, which runs until ctx ends (the transport then closes the
// connection) or the stream ends.
func (w *worker) connectSSE(ctx context.Context, s *subscriber) (func() error, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.run.subscribeURL(s.node, s.name), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	resp, err := w.sseClients[s.src].Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		resp.Body.Close()
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return func() error {
		defer resp.Body.Close()
		return w.readSSE(s, resp.Body)
	}, nil
}

// readSSE reads an event stream line by line. It looks at three kinds of
// line: data (each data line is one envelope — Herald and the servers it
// is compared with send single-line JSON), event (to recognise the gap
// signal) and the blank line ending an event; comments, id and retry lines
// are skipped.
func (w *worker) readSSE(s *subscriber, body io.Reader) error {
	br := bufio.NewReaderSize(body, 1024)
	var long []byte
	gapEvent := false
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(long) <= maxFrameBytes {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				return fmt.Errorf("line longer than %d bytes", maxFrameBytes)
			}
			line = long
		}
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			gapEvent = false
		case bytes.HasPrefix(line, sseData):
			v := bytes.TrimPrefix(line[len(sseData):], space)
			if gapEvent {
				w.gaps.Add(1)
				continue
			}
			w.onData(s, v, time.Now().UnixNano())
		case bytes.HasPrefix(line, sseEvent):
			gapEvent = bytes.Equal(bytes.TrimSpace(line[len(sseEvent):]), sseGap)
		}
	}
}
