package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/heraldhq/herald/hub"
)

// ErrSinkClosed is returned by FileSink.Publish after Close.
var ErrSinkClosed = errors.New("pipeline: file sink closed")

// FileSinkOptions configures a FileSink.
type FileSinkOptions struct {
	// Path is the file publications are appended to; it is created if
	// missing. Required.
	Path string
	// Sync makes every Publish wait for the line to reach the disk
	// (fsync). False leaves it to the operating system.
	Sync bool
	// Perm is the mode of a created file. Zero means 0600: publications
	// may hold what subscribers of private channels see.
	Perm fs.FileMode
}

// FileSink is a Publisher that appends each publication to a file as one
// line of JSON: {"time", "channels", "type", "data", "idempotency_key"}.
// It checks a publication as a hub would (channels, type, data), so that
// it can stand in for one, but neither limits sizes nor remembers
// idempotency keys: a retried publication is written again, with its key.
// It is safe for concurrent use; lines never interleave.
type FileSink struct {
	sync bool
	now  func() time.Time

	mu sync.Mutex
	f  *os.File // guarded by mu; nil once closed
}

var _ Publisher = (*FileSink)(nil)

// NewFileSink opens (or creates) the file. Call Close when done.
func NewFileSink(opts FileSinkOptions) (*FileSink, error) {
	if opts.Path == "" {
		return nil, errors.New("pipeline: file sink: Path is required")
	}
	perm := opts.Perm
	if perm == 0 {
		perm = 0o600
	}
	f, err := os.OpenFile(opts.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, perm)
	if err != nil {
		return nil, fmt.Errorf("pipeline: file sink: %w", err)
	}
	return &FileSink{sync: opts.Sync, now: time.Now, f: f}, nil
}

// fileLine is one line of a FileSink's file.
type fileLine struct {
	Time           string          `json:"time"`
	Channels       []string        `json:"channels"`
	Type           string          `json:"type"`
	Data           json.RawMessage `json:"data"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
}

// Publish appends p. Invalid publications are permanent errors; write
// failures and ErrSinkClosed are not.
func (s *FileSink) Publish(ctx context.Context, p hub.Publication) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	line, err := s.encode(p)
	if err != nil {
		return Permanent(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return ErrSinkClosed
	}
	if _, err := s.f.Write(line); err != nil {
		return fmt.Errorf("pipeline: file sink: %w", err)
	}
	if s.sync {
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("pipeline: file sink: %w", err)
		}
	}
	return nil
}

// encode checks p as hub.Hub.Publish does and returns its line.
func (s *FileSink) encode(p hub.Publication) ([]byte, error) {
	if len(p.Channels) == 0 {
		return nil, hub.ErrNoChannels
	}
	for _, ch := range p.Channels {
		if !hub.ValidChannel(ch) {
			return nil, &hub.ChannelError{Channel: ch, Err: hub.ErrInvalidChannel}
		}
	}
	typ := p.Type
	if typ == "" {
		typ = hub.DefaultType
	}
	if !hub.ValidType(typ) {
		return nil, hub.ErrInvalidType
	}
	data, err := hub.NormalizeData(p.Data)
	if err != nil {
		return nil, err
	}
	line, err := json.Marshal(fileLine{
		Time:           s.now().UTC().Format(hub.TimeLayout),
		Channels:       p.Channels,
		Type:           typ,
		Data:           data,
		IdempotencyKey: p.IdempotencyKey,
	})
	if err != nil {
		return nil, err
	}
	return append(line, '\n'), nil
}

// Close closes the file. It is safe to call more than once; later calls
// return nil.
func (s *FileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
