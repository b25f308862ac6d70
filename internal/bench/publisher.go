package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const publishTimeout = 10 * time.Second

// publisher sends the run's messages: a pacer hands message slots, round
// robin over the channels, to Publishers goroutines; goroutine i owns the
// channels c with c mod Publishers == i, so each channel's messages are
// sent one after the other, in sequence order, over one keep-alive
// connection. A slot the owning goroutine is too busy to take (its queue
// holds about a second of messages), or has not sent by the end of the
// run, is counted as behind and not sent: no sequence number is used up,
// and the run ends on time. With several URLs, goroutine i sends to node
// publisherNode(i).
type publisher struct {
	cfg    *Config
	client *http.Client
	names  []string
	pad    string
	urls   []string // POST target by node; contains {channel} in raw mode
	lanes  int      // publish goroutines: min(Publishers, Channels)
	raw    bool     // body is the payload; else JSON with channel and type

	chans []chanPub // chans[c] is owned by goroutine c mod Publishers

	sent, ok, failed, behind atomic.Uint64

	errMu sync.Mutex
	errs  []string // guarded by errMu
}

// chanPub is what was published to one channel.
type chanPub struct {
	seq    uint64   // last sequence number sent
	failed []uint64 // sequence numbers without a successful answer, ascending
}

func newPublisher(cfg *Config) *publisher {
	p := &publisher{
		cfg:   cfg,
		names: make([]string, cfg.Channels),
		pad:   makePad(cfg.PayloadBytes),
		lanes: min(cfg.Publishers, cfg.Channels),
		raw:   strings.Contains(cfg.PublishPath, "{channel}"),
		chans: make([]chanPub, cfg.Channels),
	}
	for _, u := range cfg.URLs {
		p.urls = append(p.urls, u+cfg.PublishPath)
	}
	for i := range p.names {
		p.names[i] = cfg.channelName(i)
	}
	p.client = &http.Client{
		Timeout: publishTimeout,
		Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConns:        cfg.Publishers,
			MaxIdleConnsPerHost: cfg.Publishers,
			MaxConnsPerHost:     cfg.Publishers,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		},
	}
	return p
}

// run publishes at cfg.Rate from start until end, then waits for the
// requests in flight (each bounded by publishTimeout). ctx cancels early.
func (p *publisher) run(ctx context.Context, start, end time.Time) {
	defer p.client.CloseIdleConnections()
	n := p.lanes
	queues := make([]chan int, n)
	var wg sync.WaitGroup
	batch := uint64(max(p.cfg.Batch, 1))
	rate := p.cfg.Rate / float64(batch) // requests/s
	depth := max(64, int(rate)/n)       // about a second of backlog
	for i := range queues {
		queues[i] = make(chan int, depth)
		wg.Add(1)
		go func(q <-chan int) {
			defer wg.Done()
			var body []byte
			for c := range q {
				// Slots still queued at the end, or after a cancel, are
				// dropped: the run is over.
				if ctx.Err() != nil || !time.Now().Before(end) {
					p.behind.Add(batch)
					continue
				}
				body = p.publish(ctx, c, body)
			}
		}(queues[i])
	}
	defer func() {
		for _, q := range queues {
			close(q)
		}
		wg.Wait()
	}()

	interval := time.Duration(float64(time.Second) / rate)
	interval = min(max(interval, time.Millisecond), 20*time.Millisecond)
	if d := time.Until(start); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	total := uint64(rate * end.Sub(start).Seconds())
	var k uint64
	for k < total {
		now := time.Now()
		due := min(uint64(rate*now.Sub(start).Seconds())+1, total)
		for ; k < due; k++ {
			c := int(k % uint64(p.cfg.Channels))
			select {
			case queues[c%n] <- c:
			default:
				p.behind.Add(batch)
			}
		}
		if k >= total || !now.Before(end) {
			p.behind.Add((total - k) * batch)
			return
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// publish sends the next message of channel c (the next Batch events in
// ingest mode), reusing body's storage.
func (p *publisher) publish(ctx context.Context, c int, body []byte) []byte {
	if p.cfg.Ingest {
		return p.ingest(ctx, c, body)
	}
	st := &p.chans[c]
	st.seq++
	seq := st.seq
	target := p.target(c)
	body = body[:0]
	ts := time.Now().UnixNano()
	switch {
	case p.raw:
		target = strings.ReplaceAll(target, "{channel}", url.PathEscape(p.names[c]))
		body = appendPayload(body, seq, ts, p.pad)
	default:
		body = append(body, `{"channel":"`...)
		body = append(body, p.names[c]...)
		body = append(body, `","type":"bench","data":`...)
		body = appendPayload(body, seq, ts, p.pad)
		body = append(body, '}')
	}
	p.sent.Add(1)
	err := p.post(ctx, target, body)
	if err != nil {
		st.failed = append(st.failed, seq)
		p.failed.Add(1)
		p.errMu.Lock()
		if len(p.errs) < maxErrorSamples {
			p.errs = append(p.errs, fmt.Sprintf("publish %s #%d: %v", p.names[c], seq, err))
		}
		p.errMu.Unlock()
		return body
	}
	p.ok.Add(1)
	return body
}

// target returns the URL channel c is published to: its goroutine's node.
func (p *publisher) target(c int) string {
	return p.urls[p.cfg.publisherNode(c%p.lanes)]
}

func (p *publisher) post(ctx context.Context, target string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if p.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.cfg.APIKey)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return nil
}

// published returns the per-channel account for the workers. Call it
// after run returned.
func (p *publisher) published() []channelPublished {
	out := make([]channelPublished, len(p.chans))
	for i, c := range p.chans {
		out[i] = channelPublished{Max: c.seq, Failed: c.failed}
	}
	return out
}

func (p *publisher) errors() []string {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return append([]string(nil), p.errs...)
}

// ingest posts the next Batch events of channel c to /v1/events: comment
// events whose data carries the payload's fields, which the default
// pipeline keeps while it routes each to thread:THREAD (and forum:,
// post:, user:, firehose).
func (p *publisher) ingest(ctx context.Context, c int, body []byte) []byte {
	st := &p.chans[c]
	n := max(p.cfg.Batch, 1)
	thread := strings.TrimPrefix(p.names[c], "thread:")
	ts := time.Now().UnixNano()
	body = append(body[:0], `{"events":[`...)
	first := st.seq + 1
	for i := range n {
		st.seq++
		seq := st.seq
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"id":"`...)
		body = append(body, thread...)
		body = append(body, '-')
		body = strconv.AppendUint(body, seq, 10)
		body = append(body, `","type":"post.created","data":{"id":"`...)
		body = append(body, thread...)
		body = append(body, '-')
		body = strconv.AppendUint(body, seq, 10)
		body = append(body, `","thread":"`...)
		body = append(body, thread...)
		body = append(body, `","forum":"bench","author":{"id":"bench"},"message":"m","seq":`...)
		body = strconv.AppendUint(body, seq, 10)
		body = append(body, `,"ts":`...)
		body = strconv.AppendInt(body, ts, 10)
		body = append(body, `,"pad":"`...)
		body = append(body, p.pad...)
		body = append(body, `"}}`...)
	}
	body = append(body, `]}`...)
	p.sent.Add(uint64(n))
	if err := p.post(ctx, p.target(c), body); err != nil {
		for seq := first; seq <= st.seq; seq++ {
			st.failed = append(st.failed, seq)
		}
		p.failed.Add(uint64(n))
		p.errMu.Lock()
		if len(p.errs) < maxErrorSamples {
			p.errs = append(p.errs, fmt.Sprintf("events %s #%d-%d: %v", p.names[c], first, st.seq, err))
		}
		p.errMu.Unlock()
		return body
	}
	p.ok.Add(uint64(n))
	return body
}
