// Package jetstream is Herald's event queue on NATS JetStream: a stream
// holds the events, each pipeline is a durable pull consumer of it, and a
// second stream holds the dead letters. By default the NATS server runs
// inside the Herald process (Embedded) and stores under the data
// directory; the same code talks to an external NATS cluster.
//
// Subjects: events are appended to "<prefix>.events.all"; an event replayed
// from a pipeline's dead letters goes to "<prefix>.events.replay.<pipeline>",
// which only that pipeline's consumer reads; dead letters are
// "<prefix>.dlq.<pipeline>". Event IDs are JetStream message IDs, so an
// event enqueued twice within the duplicate window is stored once.
package jetstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald/pipeline"
)

// Config configures a Queue. The zero value works.
type Config struct {
	// Prefix starts every subject and names the streams. Zero means
	// "herald".
	Prefix string
	// MaxAge is how long an event is kept in the stream, consumed or not.
	// Zero means 24h.
	MaxAge time.Duration
	// MaxBytes bounds the stream: when full, Enqueue fails (the API answers
	// 503) rather than dropping queued events. Zero means 1 GiB.
	MaxBytes int64
	// DeadLetterMaxAge is how long dead letters are kept. Zero means 7 days.
	DeadLetterMaxAge time.Duration
	// Duplicates is the window within which an event ID is stored once.
	// Zero means 2 minutes.
	Duplicates time.Duration
	// DoneMaxAge is how long the DoneStore remembers a finished event.
	// A mark is needed while the event can come back: after a crash, until
	// the restarted pipeline has had it redelivered (AckWait after the
	// restart), or when an application resends its id after the
	// Duplicates window. Every finished event holds a key in JetStream's
	// memory for this long (on the order of 150 bytes), so 1000 events/s
	// for an hour hold about 0.5 GB: keep it short at high rates. Zero
	// means 1h (capped at MaxAge).
	DoneMaxAge time.Duration
	// Replicas is the streams' replica count on a cluster. Zero means 1.
	Replicas int
}

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "herald"
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 24 * time.Hour
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 1 << 30
	}
	if c.DeadLetterMaxAge <= 0 {
		c.DeadLetterMaxAge = 7 * 24 * time.Hour
	}
	if c.Duplicates <= 0 {
		c.Duplicates = 2 * time.Minute
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.DoneMaxAge <= 0 {
		c.DoneMaxAge = min(time.Hour, c.MaxAge)
	}
	return c
}

// Headers of queued events and dead letters.
const (
	hdrEventID  = "Herald-Event-Id"
	hdrType     = "Herald-Type"
	hdrOrderKey = "Herald-Order-Key"
	hdrError    = "Herald-Error"
	hdrAttempts = "Herald-Attempts"
	hdrGroup    = "Herald-Pipeline"
)

// Embedded starts a NATS server with JetStream inside the process,
// storing under dir, reachable only in-process (it opens no port). Stop it
// with Shutdown then WaitForShutdown, after closing the queue.
func Embedded(dir string) (*server.Server, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "herald-embedded",
		JetStream:  true,
		StoreDir:   filepath.Clean(dir),
		DontListen: true,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream: embedded NATS server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("jetstream: embedded NATS server did not start in 10s")
	}
	return ns, nil
}

// ConnectEmbedded returns a client connection to an embedded server.
func ConnectEmbedded(ns *server.Server) (*nats.Conn, error) {
	return nats.Connect("", nats.InProcessServer(ns), nats.Name("herald"), nats.MaxReconnects(-1))
}

// Queue is a pipeline.Queue on JetStream. It is safe for concurrent use.
type Queue struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	events jetstream.Stream
	dlq    jetstream.Stream
	done   jetstream.KeyValue

	// marks publishes the done marks: a context of its own, so that a
	// flood of enqueued events cannot fill the marks' in-flight limit.
	marks jetstream.JetStream
	// replies routes the answers to DoneMany's requests.
	replies *replyMux
}

var _ pipeline.Queue = (*Queue)(nil)

// Open creates (or updates) the streams on nc's JetStream and returns the
// queue. The queue does not own nc.
func Open(ctx context.Context, nc *nats.Conn, cfg Config) (*Queue, error) {
	cfg = cfg.withDefaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	marks, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	q := &Queue{cfg: cfg, nc: nc, js: js, marks: marks}
	q.events, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        cfg.Prefix + "_events",
		Description: "Herald: events waiting for the pipelines",
		Subjects:    []string{cfg.Prefix + ".events.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		Duplicates:  cfg.Duplicates,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream: events stream: %w", err)
	}
	q.dlq, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        cfg.Prefix + "_dlq",
		Description: "Herald: events the pipelines gave up on",
		Subjects:    []string{cfg.Prefix + ".dlq.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      cfg.DeadLetterMaxAge,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream: dead-letter stream: %w", err)
	}
	q.done, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.Prefix + "_done",
		Description: "Herald: events the pipelines finished (DoneStore)",
		TTL:         cfg.DoneMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream: done bucket: %w", err)
	}
	if q.replies, err = newReplyMux(nc); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return q, nil
}

var (
	_ pipeline.BatchDoneStore = (*Queue)(nil)
	// doneKey turns an idempotency key into a KV key (letters, digits, - and _).
	doneKey = base64.RawURLEncoding.EncodeToString
)

// Done reports whether key was marked done.
func (q *Queue) Done(ctx context.Context, key string) (bool, error) {
	_, err := q.done.Get(ctx, doneKey([]byte(key)))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	}
	return false, err
}

// MarkDone marks key done, confirmed by JetStream.
func (q *Queue) MarkDone(ctx context.Context, key string) error {
	_, err := q.done.Put(ctx, doneKey([]byte(key)), nil)
	return err
}

// doneMaxBatch bounds the keys of one DoneMany request: the server
// answers one with at most 1024 messages.
const doneMaxBatch = 1000

// DoneMany reports for each key whether it was marked done, asking
// JetStream once per doneMaxBatch keys (a direct get of the last message
// of many subjects). A server without direct gets answers with an error,
// and the Runner then asks about each key.
func (q *Queue) DoneMany(ctx context.Context, keys []string) ([]bool, error) {
	done := make([]bool, len(keys))
	for start := 0; start < len(keys); start += doneMaxBatch {
		end := min(start+doneMaxBatch, len(keys))
		if err := q.doneBatch(ctx, keys[start:end], done[start:end]); err != nil {
			return nil, fmt.Errorf("jetstream: done: %w", err)
		}
	}
	return done, nil
}

// doneBatch sets done[i] for each keys[i] that was marked.
func (q *Queue) doneBatch(ctx context.Context, keys []string, done []bool) error {
	prefix := q.doneSubjectPrefix()
	at := make(map[string][]int, len(keys)) // subject → indexes in keys
	subjects := make([]string, 0, len(keys))
	for i, k := range keys {
		subj := prefix + doneKey([]byte(k))
		if _, seen := at[subj]; !seen {
			subjects = append(subjects, subj)
		}
		at[subj] = append(at[subj], i)
	}
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
		Batch     int      `json:"batch"`
	}{subjects, len(subjects)})
	if err != nil {
		return err
	}
	// At most one message per subject, and the end of the answer.
	reply, replies, finish := q.replies.call(len(subjects) + 1)
	defer finish()
	if err := q.nc.PublishRequest("$JS.API.DIRECT.GET.KV_"+q.done.Bucket(), reply, req); err != nil {
		return err
	}
	for {
		var m *nats.Msg
		select {
		case m = <-replies:
		case <-ctx.Done():
			return ctx.Err()
		}
		switch status, descr := m.Header.Get(statusHdr), m.Header.Get(descriptionHdr); {
		case status == "": // a marked key
		case status == "204" && (m.Header.Get(numPendingHdr) == "0" || m.Header.Get(numPendingHdr) == ""):
			return nil // the end of the answer
		case status == "404" && descr == "No Results": // none of the keys
			return nil
		default: // an error, or an answer cut short
			return fmt.Errorf("direct get: %s %s (pending %q)", status, descr, m.Header.Get(numPendingHdr))
		}
		if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" || m.Header.Get("Nats-Marker-Reason") != "" {
			continue // deleted, purged or expired
		}
		for _, i := range at[m.Header.Get(jetstream.SubjectHeader)] {
			done[i] = true
		}
	}
}

// replyMux routes the answers to many requests, each possibly several
// messages, from one subscription: a subscription per request would cost
// the server a subscribe and an unsubscribe every time.
type replyMux struct {
	prefix string // of the reply subjects: an inbox and "."
	sub    *nats.Subscription

	mu    sync.Mutex
	next  uint64
	calls map[string]chan *nats.Msg // by reply token; guarded by mu
}

func newReplyMux(nc *nats.Conn) (*replyMux, error) {
	m := &replyMux{prefix: nc.NewInbox() + ".", calls: map[string]chan *nats.Msg{}}
	var err error
	if m.sub, err = nc.Subscribe(m.prefix+"*", m.route); err != nil {
		return nil, fmt.Errorf("reply subscription: %w", err)
	}
	return m, nil
}

// route hands msg to the call it answers. A call's channel holds every
// message it can be sent; one for a call that gave up is dropped.
func (m *replyMux) route(msg *nats.Msg) {
	m.mu.Lock()
	ch := m.calls[strings.TrimPrefix(msg.Subject, m.prefix)]
	m.mu.Unlock()
	if ch != nil {
		select {
		case ch <- msg:
		default:
		}
	}
}

// call returns a reply subject for a request answered by at most n
// messages, the channel they arrive on, and finish, to call once the
// answer is complete or no longer awaited.
func (m *replyMux) call(n int) (reply string, replies <-chan *nats.Msg, finish func()) {
	ch := make(chan *nats.Msg, n)
	m.mu.Lock()
	m.next++
	token := strconv.FormatUint(m.next, 36)
	m.calls[token] = ch
	m.mu.Unlock()
	return m.prefix + token, ch, func() {
		m.mu.Lock()
		delete(m.calls, token)
		m.mu.Unlock()
	}
}

// close ends the subscription.
func (m *replyMux) close() { _ = m.sub.Unsubscribe() }

// The headers nats.go puts a status line in, and the one in which a
// direct get's end of answer counts what it left out.
const (
	statusHdr      = "Status"
	descriptionHdr = "Description"
	numPendingHdr  = "Nats-Num-Pending"
)

// MarkDoneMany marks every key done, each mark confirmed by JetStream.
func (q *Queue) MarkDoneMany(ctx context.Context, keys []string) error {
	prefix := q.doneSubjectPrefix()
	futures := make([]jetstream.PubAckFuture, 0, len(keys))
	for _, k := range keys {
		f, err := q.marks.PublishAsync(prefix+doneKey([]byte(k)), nil)
		if err != nil {
			return fmt.Errorf("jetstream: mark done: %w", err)
		}
		futures = append(futures, f)
	}
	if err := waitAcks(ctx, futures, markTimeout); err != nil {
		return fmt.Errorf("jetstream: mark done: %w", err)
	}
	return nil
}

// doneSubjectPrefix is what the done bucket's keys follow in their
// subjects.
func (q *Queue) doneSubjectPrefix() string { return "$KV." + q.done.Bucket() + "." }

func (q *Queue) subjectAll() string                { return q.cfg.Prefix + ".events.all" }
func (q *Queue) subjectReplay(group string) string { return q.cfg.Prefix + ".events.replay." + group }
func (q *Queue) subjectDLQ(group string) string    { return q.cfg.Prefix + ".dlq." + group }

// eventMsg is the NATS message of an event: the data as the body, the
// rest in headers.
func eventMsg(subject string, ev pipeline.Event) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = ev.Data
	m.Header.Set(hdrEventID, ev.ID)
	m.Header.Set(hdrType, ev.Type)
	if k := pipeline.OrderKey(ev); k != "" {
		m.Header.Set(hdrOrderKey, k)
	}
	return m
}

// enqueueTimeout bounds waiting for JetStream to confirm appends.
const enqueueTimeout = 30 * time.Second

// Enqueue appends events, each confirmed stored by JetStream, in order.
// On error some of the events may have been stored: a retry with the same
// ids stores each once (the duplicate window).
func (q *Queue) Enqueue(ctx context.Context, events []pipeline.Event) error {
	futures := make([]jetstream.PubAckFuture, 0, len(events))
	for _, ev := range events {
		if ev.ID == "" {
			return errors.New("jetstream: event without an ID")
		}
		m := eventMsg(q.subjectAll(), ev)
		m.Header.Set(nats.MsgIdHdr, ev.ID) // stored once within the duplicate window
		f, err := q.js.PublishMsgAsync(m)
		if err != nil {
			return fmt.Errorf("jetstream: enqueue: %w", err)
		}
		futures = append(futures, f)
	}
	if err := waitAcks(ctx, futures, enqueueTimeout); err != nil {
		return fmt.Errorf("jetstream: enqueue: %w", err)
	}
	return nil
}

// markTimeout bounds waiting for JetStream to confirm marks, as a
// key-value Put is bounded, well within the claim time of the events.
const markTimeout = 5 * time.Second

// waitAcks waits up to limit for JetStream to confirm every publish of
// futures.
func waitAcks(ctx context.Context, futures []jetstream.PubAckFuture, limit time.Duration) error {
	// The futures of a closed connection never complete: bound the wait.
	timeout := time.NewTimer(limit)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout.C:
			return fmt.Errorf("no acknowledgement in %v", limit)
		}
	}
	return nil
}

// Source returns the durable consumer named group.
func (q *Queue) Source(ctx context.Context, group string, cfg pipeline.SourceConfig) (pipeline.Source, error) {
	if err := pipeline.CheckName(group); err != nil {
		return nil, fmt.Errorf("jetstream: pipeline name %w", err)
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	c, err := q.events.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:        group,
		Description:    "Herald pipeline " + group,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        cfg.AckWait,
		MaxAckPending:  cfg.MaxInFlight,
		FilterSubjects: []string{q.subjectAll(), q.subjectReplay(group)},
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream: consumer %s: %w", group, err)
	}
	return &source{q: q, group: group, c: c}, nil
}

// Stats reads the consumer's and the dead-letter stream's figures.
func (q *Queue) Stats(ctx context.Context, group string) (pipeline.QueueStats, error) {
	c, err := q.events.Consumer(ctx, group)
	if err != nil {
		return pipeline.QueueStats{}, err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return pipeline.QueueStats{}, err
	}
	st := pipeline.QueueStats{
		Pending:     ci.NumPending,
		InFlight:    uint64(ci.NumAckPending),
		Redelivered: uint64(ci.NumRedelivered),
	}
	si, err := q.dlq.Info(ctx, jetstream.WithSubjectFilter(q.subjectDLQ(group)))
	if err != nil {
		return st, err
	}
	st.Dead = si.State.Subjects[q.subjectDLQ(group)]
	return st, nil
}

// Close ends the queue's reply subscription; the connection is its
// owner's to close.
func (q *Queue) Close() error {
	q.replies.close()
	return nil
}

// source is one pipeline's consumer. Claimed messages flow continuously
// (JetStream's pull consumer keeps up to a batch requested ahead) into a
// bounded channel, from which Fetch returns what is there as soon as
// there is something: a message waits for no batch to fill.
type source struct {
	q     *Queue
	group string
	c     jetstream.Consumer

	once  sync.Once
	msgs  chan jetstream.Msg
	cc    jetstream.ConsumeContext
	err   error // starting Consume failed
	close sync.Once
}

// prefetch is how many messages a source claims ahead of Fetch.
const prefetch = 256

func (s *source) start() {
	s.msgs = make(chan jetstream.Msg, prefetch)
	s.cc, s.err = s.c.Consume(func(m jetstream.Msg) { s.msgs <- m }, jetstream.PullMaxMessages(prefetch))
}

func (s *source) Fetch(ctx context.Context, n int, wait time.Duration) ([]pipeline.Job, error) {
	s.once.Do(s.start)
	if s.err != nil {
		return nil, s.err
	}
	t := time.NewTimer(max(wait, time.Millisecond))
	defer t.Stop()
	var jobs []pipeline.Job
	select {
	case m := <-s.msgs:
		jobs = append(jobs, newJob(s, m))
	case <-t.C:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for len(jobs) < n {
		select {
		case m := <-s.msgs:
			jobs = append(jobs, newJob(s, m))
		default:
			return jobs, nil
		}
	}
	return jobs, nil
}

// Close stops claiming and gives back what was claimed but not fetched.
func (s *source) Close() error {
	var cc jetstream.ConsumeContext
	s.close.Do(func() {
		s.once.Do(func() {}) // never start after Close
		cc = s.cc
	})
	if cc == nil {
		return nil
	}
	cc.Stop()
	// Consume's callback may be blocked on the full channel: keep taking
	// until it has returned, giving every message back.
	for {
		select {
		case m := <-s.msgs:
			_ = m.Nak()
		case <-cc.Closed():
			for {
				select {
				case m := <-s.msgs:
					_ = m.Nak()
				default:
					return nil
				}
			}
		}
	}
}

// job is one claimed event.
type job struct {
	s       *source
	m       jetstream.Msg
	ev      pipeline.Event
	attempt int
	key     string
}

func newJob(s *source, m jetstream.Msg) *job {
	h := m.Headers()
	j := &job{s: s, m: m, attempt: 1, key: h.Get(hdrOrderKey)}
	j.ev = pipeline.Event{ID: h.Get(hdrEventID), Type: h.Get(hdrType), Data: m.Data()}
	md, mdErr := m.Metadata()
	if mdErr == nil {
		j.attempt = int(md.NumDelivered)
	}
	if j.ev.Type == "" && h.Get(hdrEventID) == "" {
		// Published by an application: the body is the whole event as
		// JSON. One that does not decode goes through as data, so that the
		// pipeline's parse stage dead-letters it with the reason.
		var ev pipeline.Event
		if json.Unmarshal(m.Data(), &ev) != nil {
			ev = pipeline.Event{Data: m.Data()}
		}
		if ev.ID == "" {
			ev.ID = h.Get(nats.MsgIdHdr)
		}
		if ev.ID == "" && mdErr == nil {
			ev.ID = "js-" + strconv.FormatUint(md.Sequence.Stream, 10) // the same on every delivery
		}
		j.ev, j.key = ev, pipeline.OrderKey(ev)
	}
	return j
}

func (j *job) Event() pipeline.Event           { return j.ev }
func (j *job) Attempt() int                    { return j.attempt }
func (j *job) OrderKey() string                { return j.key }
func (j *job) Ack(ctx context.Context) error   { return j.m.Ack() }
func (j *job) Retry(delay time.Duration) error { return j.m.NakWithDelay(delay) }
func (j *job) Extend() error                   { return j.m.InProgress() }

// DeadLetter stores the event in the dead-letter stream, confirmed, then
// acknowledges it.
func (j *job) DeadLetter(ctx context.Context, reason error, attempts int) error {
	q := j.s.q
	m := eventMsg(q.subjectDLQ(j.s.group), j.ev)
	m.Header.Set(hdrError, reason.Error())
	m.Header.Set(hdrAttempts, strconv.Itoa(attempts))
	m.Header.Set(hdrGroup, j.s.group)
	if _, err := q.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("jetstream: dead letter: %w", err)
	}
	return j.m.DoubleAck(ctx)
}

// DeadLetters returns group's dead-letter queue.
func (q *Queue) DeadLetters(group string) pipeline.DeadLetters {
	return &deadLetters{q: q, group: group}
}

type deadLetters struct {
	q     *Queue
	group string
}

func (d *deadLetters) List(ctx context.Context, limit int) ([]pipeline.DeadLetter, error) {
	if limit <= 0 {
		limit = 100
	}
	// An ordered consumer reads the group's dead letters from the start
	// without leaving state behind.
	c, err := d.q.dlq.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{d.q.subjectDLQ(d.group)},
	})
	if err != nil {
		return nil, err
	}
	info, err := d.q.dlq.Info(ctx, jetstream.WithSubjectFilter(d.q.subjectDLQ(d.group)))
	if err != nil {
		return nil, err
	}
	total := int(min(info.State.Subjects[d.q.subjectDLQ(d.group)], uint64(limit)))
	var out []pipeline.DeadLetter
	for len(out) < total {
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		batch, err := c.Fetch(total-len(out), jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			return out, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			out = append(out, deadLetterOf(d.group, m))
		}
		cancel()
		if n == 0 {
			break
		}
	}
	return out, nil
}

func deadLetterOf(group string, m jetstream.Msg) pipeline.DeadLetter {
	h := m.Headers()
	dl := pipeline.DeadLetter{
		Group: group,
		Event: pipeline.Event{ID: h.Get(hdrEventID), Type: h.Get(hdrType), Data: m.Data()},
		Error: h.Get(hdrError),
	}
	dl.Attempts, _ = strconv.Atoi(h.Get(hdrAttempts))
	if md, err := m.Metadata(); err == nil {
		dl.Seq = md.Sequence.Stream
		dl.At = md.Timestamp
	}
	return dl
}

func (d *deadLetters) Replay(ctx context.Context, seqs ...uint64) (int, error) {
	if len(seqs) == 0 {
		all, err := d.List(ctx, 1<<20)
		if err != nil {
			return 0, err
		}
		for _, dl := range all {
			seqs = append(seqs, dl.Seq)
		}
	}
	n := 0
	for _, seq := range seqs {
		raw, err := d.get(ctx, seq)
		if err != nil {
			return n, err
		}
		ev := pipeline.Event{ID: raw.Header.Get(hdrEventID), Type: raw.Header.Get(hdrType), Data: raw.Data}
		m := eventMsg(d.q.subjectReplay(d.group), ev)
		if _, err := d.q.js.PublishMsg(ctx, m); err != nil {
			return n, fmt.Errorf("dead letter %d: %w", seq, err)
		}
		if err := d.q.dlq.DeleteMsg(ctx, seq); err != nil {
			return n, fmt.Errorf("dead letter %d: %w", seq, err)
		}
		n++
	}
	return n, nil
}

func (d *deadLetters) Drop(ctx context.Context, seq uint64) error {
	if _, err := d.get(ctx, seq); err != nil {
		return err
	}
	if err := d.q.dlq.DeleteMsg(ctx, seq); err != nil {
		// Replayed or dropped since get: say so, not "deletion unsuccessful".
		if _, gerr := d.get(ctx, seq); errors.Is(gerr, pipeline.ErrNoDeadLetter) {
			return gerr
		}
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	return nil
}

// get reads the dead letter seq of d's group. A message that is missing
// or on another group's subject is pipeline.ErrNoDeadLetter.
func (d *deadLetters) get(ctx context.Context, seq uint64) (*jetstream.RawStreamMsg, error) {
	raw, err := d.q.dlq.GetMsg(ctx, seq)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil, fmt.Errorf("dead letter %d of pipeline %s: %w (%w)", seq, d.group, pipeline.ErrNoDeadLetter, err)
	case err != nil:
		return nil, fmt.Errorf("dead letter %d: %w", seq, err)
	case raw.Subject != d.q.subjectDLQ(d.group):
		return nil, fmt.Errorf("dead letter %d: not pipeline %s's: %w", seq, d.group, pipeline.ErrNoDeadLetter)
	}
	return raw, nil
}
