// Package jshistory is a hub.History on NATS JetStream: channel history
// that survives a restart of Herald, and that several Herald nodes share
// (a cursor from one node works on another).
//
// One stream holds every channel's messages, one subject per channel
// ("<prefix>.history.<channel in base64url>"), each message carrying its
// epoch and offset in headers. A key-value bucket holds each channel's
// epoch, created by the first node that needs it, so that nodes agree.
// Appends are optimistic: each expects the channel's last stream sequence
// it knows, and on a conflict (another node appended) it reads the head
// again and retries, so offsets have no holes and no duplicates across
// nodes.
//
// Loss: when the stream or the bucket is gone (a JetStream that came back
// without its store, an operator who deleted them), the next call creates
// both again and channels start new epochs, which readers holding old
// cursors see as a gap.
//
// Retention: the namespace's size and TTL apply when reading, as with the
// memory store; the stream physically keeps at most MaxPerChannel
// messages per channel for at most MaxAge. A channel whose messages have
// all aged out of the stream starts a new epoch, which readers see as a
// gap, unless the hub keeps it (Keep: it has subscribers), which appends a
// marker of its head before its last message ages out.
package jshistory

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/hub"
)

// Config configures a History. The zero value works.
type Config struct {
	// Prefix names the stream, the bucket and the subjects. Zero means
	// "herald".
	Prefix string
	// MaxPerChannel is the most messages the stream keeps per channel
	// (besides up to two of Keep's markers); keep it at least the largest
	// namespace history_size. Zero means 1000.
	MaxPerChannel int64
	// MaxAge is how long the stream keeps a message; keep it longer than
	// the largest history_ttl. Zero means 24h.
	MaxAge time.Duration
	// Duplicates is the window within which a message with an idempotency
	// key (hub.Message.Key) is stored once. JetStream keeps the keys of
	// the window in memory. Zero means 2 minutes.
	Duplicates time.Duration
	// Replicas on a cluster. Zero means 1.
	Replicas int
}

// Headers of a stored message.
const (
	hdrEpoch   = "Herald-Epoch"
	hdrOffset  = "Herald-Offset"
	hdrType    = "Herald-Type"
	hdrTime    = "Herald-Time"
	hdrChannel = "Herald-Channel"
	// hdrKeep marks a message Keep appended to carry a quiet channel's
	// head (its epoch and offset) on: readers skip it.
	hdrKeep = "Herald-Keep"
)

// History is a hub.History on JetStream. It is safe for concurrent use.
type History struct {
	cfg Config
	js  jetstream.JetStream
	st  atomic.Pointer[stores] // replaced when the engine lost them

	recreating sync.Mutex // one re-creation at a time

	mu    sync.Mutex
	heads map[string]head // this node's view of channels' heads; a hint, checked by every append
}

// stores are the stream and the bucket the history lives in.
type stores struct {
	stream jetstream.Stream
	epochs jetstream.KeyValue
}

// head is what a node knows of a channel's end.
type head struct {
	epoch  string
	offset uint64
	seq    uint64 // stream sequence of the message at offset; 0 when none
}

// maxHeads bounds the head cache; past it, the cache starts again.
const maxHeads = 1 << 16

var _ hub.History = (*History)(nil)

// New creates (or updates) the stream and bucket on nc's JetStream.
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*History, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "herald"
	}
	if cfg.MaxPerChannel <= 0 {
		cfg.MaxPerChannel = 1000
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = 24 * time.Hour
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Duplicates <= 0 {
		cfg.Duplicates = 2 * time.Minute
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jshistory: %w", err)
	}
	h := &History{cfg: cfg, js: js, heads: make(map[string]head)}
	if err := h.create(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

// create creates (or updates) the stream and the bucket.
func (h *History) create(ctx context.Context) error {
	cfg, js := h.cfg, h.js
	var st stores
	var err error
	st.stream, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              cfg.Prefix + "_history",
		Description:       "Herald: channel history",
		Subjects:          []string{cfg.Prefix + ".history.>"},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxMsgsPerSubject: cfg.MaxPerChannel + maxMarkers,
		MaxAge:            cfg.MaxAge,
		Duplicates:        cfg.Duplicates,
		AllowDirect:       true,
		Replicas:          cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("jshistory: stream: %w", err)
	}
	st.epochs, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.Prefix + "_epochs",
		Description: "Herald: each channel's history epoch",
		TTL:         cfg.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return fmt.Errorf("jshistory: epochs bucket: %w", err)
	}
	h.st.Store(&st)
	return nil
}

// lost reports whether err says that the stream or the bucket is gone:
// the engine restarted without its data, or someone deleted them.
func lost(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// recover re-creates the stream and the bucket after err said they are
// gone, and forgets every cached head: the channels start new epochs,
// which subscribers see as a gap. It reports whether the caller should
// try again.
func (h *History) recover(ctx context.Context, err error) bool {
	if !lost(err) {
		return false
	}
	h.recreating.Lock()
	defer h.recreating.Unlock()
	if cerr := h.create(ctx); cerr != nil {
		return false
	}
	h.mu.Lock()
	clear(h.heads)
	h.mu.Unlock()
	return true
}

func (h *History) subject(ch string) string {
	return h.cfg.Prefix + ".history." + base64.RawURLEncoding.EncodeToString([]byte(ch))
}

func epochKey(ch string) string { return base64.RawURLEncoding.EncodeToString([]byte(ch)) }

func newEpoch() string {
	// 40 random bits as 8 base-32 digits, as the memory store's.
	return strconv.FormatUint(rand.Uint64()>>24|1<<39, 32)
}

// readHead reads a channel's head from the stream, and its epoch from the
// bucket, starting one when the channel has none. A channel whose
// messages all aged out gets a new epoch: its offsets cannot continue.
func (h *History) readHead(ctx context.Context, ch string) (head, error) {
	var hd head
	last, err := h.st.Load().stream.GetLastMsgForSubject(ctx, h.subject(ch))
	switch {
	case err == nil:
		hd.seq = last.Sequence
		hd.epoch = last.Header.Get(hdrEpoch)
		hd.offset, _ = strconv.ParseUint(last.Header.Get(hdrOffset), 10, 64)
		return hd, nil
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return hd, err
	}
	// No message: the channel is new, or its history is gone.
	e, err := h.st.Load().epochs.Get(ctx, epochKey(ch))
	switch {
	case err == nil && string(e.Value()) != "":
		epoch, used := splitEpoch(string(e.Value()))
		if !used {
			return head{epoch: epoch}, nil
		}
		// Messages were appended in this epoch and are gone: start another.
		next := newEpoch()
		if _, err := h.st.Load().epochs.Update(ctx, epochKey(ch), []byte(next), e.Revision()); err != nil {
			return h.readHead(ctx, ch) // another node did it first
		}
		return head{epoch: next}, nil
	case err == nil || errors.Is(err, jetstream.ErrKeyNotFound):
		next := newEpoch()
		if _, err := h.st.Load().epochs.Create(ctx, epochKey(ch), []byte(next)); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				return h.readHead(ctx, ch)
			}
			return hd, err
		}
		return head{epoch: next}, nil
	}
	return hd, err
}

// splitEpoch reads a bucket value: the epoch, and "+" once a message was
// appended in it.
func splitEpoch(v string) (epoch string, used bool) {
	if n := len(v); n > 0 && v[n-1] == '+' {
		return v[:n-1], true
	}
	return v, false
}

var _ hub.HistoryKeeper = (*History)(nil)

// maxMarkers is how many of Keep's markers a channel's subject can hold at
// once: each is appended at least MaxAge/2 after the message before it and
// lives MaxAge. The stream keeps that many more messages per subject than
// MaxPerChannel, so that markers never push out a message.
const maxMarkers = 2

// Keep implements hub.HistoryKeeper. A channel's head lives in its last
// message, which the stream drops MaxAge after it was appended. Once that
// message is half MaxAge old, Keep appends a marker (header Herald-Keep,
// no data) with the same epoch and offset, expecting the channel's last
// sequence to be that message's, so that it never races an append; readers
// skip markers, and the head read from the marker is the same. A channel
// with an epoch but no message yet (its bucket entry says so) gets a marker
// at offset 0. The head so kept lives and dies with the stream: purged or
// lost, the channel starts a new epoch as before. A channel whose last
// message is young costs one read.
func (h *History) Keep(ctx context.Context, ch string, _ hub.HistoryOptions) error {
	err := h.keep(ctx, ch)
	if err != nil && h.recover(ctx, err) {
		err = h.keep(ctx, ch)
	}
	if err != nil {
		return fmt.Errorf("jshistory: %s: keep: %w", ch, err)
	}
	return nil
}

func (h *History) keep(ctx context.Context, ch string) error {
	st := h.st.Load()
	var epoch, offset string
	var seq uint64
	last, err := st.stream.GetLastMsgForSubject(ctx, h.subject(ch))
	switch {
	case err == nil:
		if time.Since(last.Time) < h.cfg.MaxAge/2 {
			return nil // the message holds the head for a while yet
		}
		epoch, offset, seq = last.Header.Get(hdrEpoch), last.Header.Get(hdrOffset), last.Sequence
	case errors.Is(err, jetstream.ErrMsgNotFound):
		e, err := st.epochs.Get(ctx, epochKey(ch))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil // an unknown channel: its first use starts an epoch
		}
		if err != nil {
			return err
		}
		var used bool
		if epoch, used = splitEpoch(string(e.Value())); used || epoch == "" {
			return nil // its messages are gone: its next use starts a new epoch
		}
		offset = "0"
	default:
		return err
	}
	msg := nats.NewMsg(h.subject(ch))
	msg.Header.Set(hdrEpoch, epoch)
	msg.Header.Set(hdrOffset, offset)
	msg.Header.Set(hdrKeep, "1")
	msg.Header.Set(hdrChannel, ch)
	_, err = h.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(seq))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return nil // a message was appended meanwhile: it holds the head
	}
	return err
}

// markUsed records in the bucket that the epoch has messages, so that
// losing them all later starts a new epoch.
//
// The entry may have expired meanwhile (a channel that Keep kept without
// messages for longer than MaxAge): it is then created again.
func (h *History) markUsed(ctx context.Context, ch, epoch string) error {
	epochs := h.st.Load().epochs
	for range 10 {
		e, err := epochs.Get(ctx, epochKey(ch))
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = epochs.Create(ctx, epochKey(ch), []byte(epoch+"+"))
		case err != nil:
			return err
		default:
			if got, used := splitEpoch(string(e.Value())); got != epoch || used {
				return nil
			}
			_, err = epochs.Update(ctx, epochKey(ch), []byte(epoch+"+"), e.Revision())
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return err
		}
		// Another node wrote the entry meanwhile: read it again.
	}
	return errors.New("marking the epoch used: the entry kept changing")
}

func (h *History) cached(ch string) (head, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hd, ok := h.heads[ch]
	return hd, ok
}

func (h *History) remember(ch string, hd head) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.heads) >= maxHeads {
		clear(h.heads)
	}
	h.heads[ch] = hd
}

// Append implements hub.History: the message gets the channel's next
// offset, is sealed, and is stored.
func (h *History) Append(ctx context.Context, m *hub.Message, opts hub.HistoryOptions) error {
	err := h.append(ctx, m)
	if err != nil && h.recover(ctx, err) {
		err = h.append(ctx, m)
	}
	return err
}

func (h *History) append(ctx context.Context, m *hub.Message) error {
	subj := h.subject(m.Channel)
	hd, ok := h.cached(m.Channel)
	for attempt := 0; ; attempt++ {
		if !ok {
			var err error
			if hd, err = h.readHead(ctx, m.Channel); err != nil {
				return fmt.Errorf("jshistory: %s: %w", m.Channel, err)
			}
		}
		m.Epoch, m.Offset = hd.epoch, hd.offset+1
		msg := nats.NewMsg(subj)
		msg.Data = m.Data
		msg.Header.Set(hdrEpoch, m.Epoch)
		msg.Header.Set(hdrOffset, strconv.FormatUint(m.Offset, 10))
		msg.Header.Set(hdrType, m.Type)
		msg.Header.Set(hdrTime, m.Time.UTC().Format(time.RFC3339Nano))
		msg.Header.Set(hdrChannel, m.Channel)
		if m.Key != "" {
			// JetStream stores a message ID once within the stream's
			// duplicate window: a publish repeated after a crash is not
			// appended twice.
			msg.Header.Set(nats.MsgIdHdr, m.Key+"|"+m.Channel)
		}
		ack, err := h.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(hd.seq))
		if err == nil && ack.Duplicate {
			return h.duplicate(ctx, m, ack.Sequence)
		}
		if err != nil {
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence && attempt < 100 {
				ok = false // another node appended: read the head again
				continue
			}
			return fmt.Errorf("jshistory: %s: %w", m.Channel, err)
		}
		if m.Offset == 1 {
			if err := h.markUsed(ctx, m.Channel, m.Epoch); err != nil {
				return fmt.Errorf("jshistory: %s: %w", m.Channel, err)
			}
		}
		h.remember(m.Channel, head{epoch: m.Epoch, offset: m.Offset, seq: ack.Sequence})
		m.Seal()
		return nil
	}
}

// duplicate gives m the position of the stored message it repeats.
func (h *History) duplicate(ctx context.Context, m *hub.Message, seq uint64) error {
	raw, err := h.st.Load().stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// Trimmed since: stored and delivered long ago.
		m.Offset = 0
		return hub.ErrDuplicate
	}
	if err != nil {
		return fmt.Errorf("jshistory: %s: reading the original of a duplicate: %w", m.Channel, err)
	}
	orig := decode(m.Channel, raw)
	m.Epoch, m.Offset, m.Time = orig.Epoch, orig.Offset, orig.Time
	m.Seal()
	return hub.ErrDuplicate
}

// Head implements hub.History.
func (h *History) Head(ctx context.Context, ch string, _ hub.HistoryOptions) (hub.Position, error) {
	hd, err := h.readHead(ctx, ch)
	if err != nil && h.recover(ctx, err) {
		hd, err = h.readHead(ctx, ch)
	}
	if err != nil {
		return hub.Position{}, fmt.Errorf("jshistory: %s: %w", ch, err)
	}
	return hub.Position{Epoch: hd.epoch, Offset: hd.offset}, nil
}

// Since implements hub.History. It reads the channel's retained messages
// from the oldest (at most MaxPerChannel of them), keeping those after pos
// within the namespace's size and TTL.
func (h *History) Since(ctx context.Context, ch string, pos hub.Position, opts hub.HistoryOptions) ([]*hub.Message, hub.Position, bool, error) {
	msgs, head, gap, err := h.since(ctx, ch, pos, opts)
	if err != nil && h.recover(ctx, err) {
		msgs, head, gap, err = h.since(ctx, ch, pos, opts)
	}
	return msgs, head, gap, err
}

func (h *History) since(ctx context.Context, ch string, pos hub.Position, opts hub.HistoryOptions) ([]*hub.Message, hub.Position, bool, error) {
	hd, err := h.readHead(ctx, ch)
	if err != nil {
		return nil, hub.Position{}, false, fmt.Errorf("jshistory: %s: %w", ch, err)
	}
	headPos := hub.Position{Epoch: hd.epoch, Offset: hd.offset}
	gap := pos.Epoch != hd.epoch || pos.Offset > hd.offset
	if !gap && pos.Offset == hd.offset {
		return nil, headPos, false, nil
	}
	if opts.Size <= 0 || hd.seq == 0 {
		return nil, headPos, gap || hd.offset > pos.Offset, nil
	}
	// The retained window: the last Size offsets, younger than TTL.
	oldest := uint64(1)
	if hd.offset > uint64(opts.Size) {
		oldest = hd.offset - uint64(opts.Size) + 1
	}
	var cutoff time.Time
	if opts.TTL > 0 {
		cutoff = time.Now().Add(-opts.TTL)
	}
	var out []*hub.Message
	subj := h.subject(ch)
	for seq := uint64(0); seq <= hd.seq; {
		raw, err := h.st.Load().stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, headPos, false, fmt.Errorf("jshistory: %s: %w", ch, err)
		}
		seq = raw.Sequence + 1
		if raw.Header.Get(hdrKeep) != "" {
			continue // Keep's marker of the head, not a message
		}
		m := decode(ch, raw)
		if m.Epoch != hd.epoch || m.Offset < oldest || (!cutoff.IsZero() && m.Time.Before(cutoff)) {
			continue
		}
		out = append(out, m)
	}
	if !gap {
		first := hd.offset + 1 // the oldest retained offset
		if len(out) > 0 {
			first = out[0].Offset
		}
		gap = pos.Offset+1 < first
		kept := out[:0]
		for _, m := range out {
			if m.Offset > pos.Offset {
				kept = append(kept, m)
			}
		}
		out = kept
	}
	return out, headPos, gap, nil
}

// decode rebuilds a sealed message from its stored form.
func decode(ch string, raw *jetstream.RawStreamMsg) *hub.Message {
	m := &hub.Message{Message: broker.Message{
		Channel: ch,
		Epoch:   raw.Header.Get(hdrEpoch),
		Type:    raw.Header.Get(hdrType),
		Data:    raw.Data,
	}}
	m.Offset, _ = strconv.ParseUint(raw.Header.Get(hdrOffset), 10, 64)
	m.Time, _ = time.Parse(time.RFC3339Nano, raw.Header.Get(hdrTime))
	m.Seal()
	return m
}
