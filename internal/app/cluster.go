package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/api"
	"github.com/heraldhq/herald/broker"
	natsbroker "github.com/heraldhq/herald/broker/nats"
	redisbroker "github.com/heraldhq/herald/broker/redis"
	"github.com/heraldhq/herald/history/jshistory"
	"github.com/heraldhq/herald/history/redishistory"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/config"
)

// engineTimeout bounds the calls made to the broker's engine at start.
const engineTimeout = 10 * time.Second

// subscribeWorkers is how many subscribe handshakes may wait on history or
// the broker at once, on goroutines of their own (engine.ListenConfig.Workers);
// at a millisecond each, that is tens of thousands of handshakes per second.
const subscribeWorkers = 64

// clusterParts are the broker and history of a node that shares them with
// other nodes through NATS or Redis, and what closes the history's
// connection once the hub is down (the hub shuts the broker down itself).
type clusterParts struct {
	broker  broker.Broker
	history hub.History // nil: the hub's default or the queue's JetStream
	close   func() error

	natsURL      string // set with a NATS broker: serve's publish subject
	redisURL     string // set with a Redis broker: serve's publish stream
	ingest       *nats.Conn
	ingestClosed chan struct{}      // closed when ingest is
	stop         context.CancelFunc // stops the publish stream's reader
	stopped      chan struct{}      // closed when the reader has returned
	log          *slog.Logger
}

// PublishSubject is the NATS subject on which other services publish
// without HTTP: a request whose body is a POST /v1/publish body, answered
// (to the reply subject, if any) with the JSON the API would give. One
// node of the queue group "herald" handles each request.
const PublishSubject = "herald.publish"

// PublishStream is the Redis stream from which other services publish
// without HTTP: each entry's field "publish" holds a POST /v1/publish
// body. The nodes read it as the consumer group "herald"; an entry is
// acknowledged once published, or once refused as invalid (logged).
const PublishStream = "herald:publish"

// Reading the publish stream.
const (
	publishGroup     = "herald"
	publishBatch     = 100
	publishBlock     = time.Second
	publishClaimIdle = 30 * time.Second // an entry a node took and never acknowledged goes to another after this
	// A consumer of the group that has nothing pending and has not read for
	// publishConsumerGone is a node that left (each node reads as its node
	// id, and ids change with restarts): publishSweep removes it, so that
	// the group does not collect a consumer per node start. A live node
	// reads every publishBlock.
	publishConsumerGone = time.Hour
	publishSweep        = 10 * time.Minute
)

// serve starts taking publishes from the engine, once the hub runs.
func (p *clusterParts) serve(h *hub.Hub) error {
	if p.redisURL != "" {
		return p.serveRedis(h)
	}
	if p.natsURL == "" {
		return nil
	}
	closed := make(chan struct{})
	nc, err := nats.Connect(p.natsURL, nats.Name("herald-publish-"+h.NodeID()), nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true), nats.ReconnectWait(time.Second), nats.ReconnectJitter(time.Second, time.Second),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		return fmt.Errorf("publish subject: %w", err)
	}
	// The callback runs on the subscription's goroutine, one request at a
	// time. The queue group spreads requests over the nodes: a publisher
	// that needs order waits for each answer.
	_, err = nc.QueueSubscribe(PublishSubject, "herald", func(m *nats.Msg) {
		ctx, cancel := context.WithTimeout(context.Background(), engineTimeout)
		defer cancel()
		status, answer := api.PublishBody(ctx, h, m.Data)
		if status != http.StatusOK {
			p.log.Warn("publish from "+PublishSubject+" refused", "status", status, "answer", string(answer))
		}
		if m.Reply != "" {
			reply := nats.NewMsg(m.Reply)
			reply.Header.Set("Status", strconv.Itoa(status))
			reply.Data = answer
			_ = m.RespondMsg(reply)
		}
	})
	if err != nil {
		nc.Close()
		return fmt.Errorf("publish subject: %w", err)
	}
	p.ingest, p.ingestClosed = nc, closed
	return nil
}

// serveRedis starts the reader of PublishStream.
func (p *clusterParts) serveRedis(h *hub.Hub) error {
	rdb, err := redisClient(p.redisURL)
	if err != nil {
		return fmt.Errorf("publish stream: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop, p.stopped = cancel, make(chan struct{})
	go func() {
		defer close(p.stopped)
		defer rdb.Close()
		p.readPublishStream(ctx, rdb, h)
	}()
	return nil
}

// readPublishStream publishes the entries of PublishStream until ctx ends:
// first those another node took and never acknowledged, then new ones.
func (p *clusterParts) readPublishStream(ctx context.Context, rdb goredis.UniversalClient, h *hub.Hub) {
	consumer := h.NodeID()
	wait := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	ready := false
	nextSweep := time.Now().Add(publishSweep)
	defer func() {
		// A node that stops with nothing pending leaves the group.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), engineTimeout)
		defer cancel()
		if _, err := removeIdleConsumers(sctx, rdb, 0, func(name string) bool { return name == consumer }); err != nil {
			p.log.Debug("publish stream: leaving the consumer group failed", "err", err)
		}
	}()
	for ctx.Err() == nil {
		if ready && time.Now().After(nextSweep) {
			nextSweep = time.Now().Add(publishSweep)
			if gone, err := removeIdleConsumers(ctx, rdb, publishConsumerGone, func(name string) bool { return name != consumer }); err != nil {
				p.log.Warn("publish stream: removing the consumers of nodes that left failed", "err", err)
			} else if len(gone) > 0 {
				p.log.Info("publish stream: removed the consumers of nodes that left", "consumers", gone)
			}
		}
		if !ready {
			err := rdb.XGroupCreateMkStream(ctx, PublishStream, publishGroup, "0").Err()
			if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
				if ctx.Err() == nil {
					p.log.Warn("publish stream: cannot create the consumer group; retrying", "err", err)
				}
				wait(time.Second)
				continue
			}
			ready = true
		}
		claimed, _, err := rdb.XAutoClaim(ctx, &goredis.XAutoClaimArgs{Stream: PublishStream, Group: publishGroup,
			Consumer: consumer, MinIdle: publishClaimIdle, Start: "0-0", Count: publishBatch}).Result()
		if err == nil {
			p.publishEntries(ctx, rdb, h, claimed)
		}
		streams, err := rdb.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: publishGroup, Consumer: consumer,
			Streams: []string{PublishStream, ">"}, Count: publishBatch, Block: publishBlock}).Result()
		switch {
		case errors.Is(err, goredis.Nil):
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			if strings.HasPrefix(err.Error(), "NOGROUP") {
				ready = false // the stream was deleted
			}
			wait(time.Second)
		default:
			for _, st := range streams {
				p.publishEntries(ctx, rdb, h, st.Messages)
			}
		}
	}
}

// removeIdleConsumers deletes from the publish group the consumers that
// which selects, have nothing pending and have not read for idle or
// longer. Deleting a consumer drops its pending entries, so one with any
// is kept: another node claims them after publishClaimIdle, and the
// consumer goes at a later sweep. It returns the names deleted.
//
// Deleting can race only with a consumer reading at that instant, which a
// consumer idle for idle does not (see the comment in the loop).
func removeIdleConsumers(ctx context.Context, rdb goredis.UniversalClient, idle time.Duration, which func(name string) bool) ([]string, error) {
	consumers, err := rdb.XInfoConsumers(ctx, PublishStream, publishGroup).Result()
	if err != nil {
		return nil, err
	}
	var gone []string
	for _, c := range consumers {
		switch {
		case !which(c.Name), c.Pending > 0, c.Idle < idle:
			continue
		}
		// XGROUP DELCONSUMER drops what the consumer holds from the
		// pending list, so an entry taken between XINFO and here would be
		// lost: hence only consumers idle far longer than a live node ever
		// is (it reads every publishBlock), or this node's own once its
		// reader has stopped.
		if err := rdb.XGroupDelConsumer(ctx, PublishStream, publishGroup, c.Name).Err(); err != nil {
			return gone, err
		}
		gone = append(gone, c.Name)
	}
	return gone, nil
}

// publishEntries publishes entries in order, acknowledging each one that
// was published or refused for good; one that failed for a while (503)
// stays pending and is taken again after publishClaimIdle.
//
// An entry taken is finished even when stopping begins, so that it is not
// published again by another node; the rest of the batch stays pending.
func (p *clusterParts) publishEntries(ctx context.Context, rdb goredis.UniversalClient, h *hub.Hub, entries []goredis.XMessage) {
	for _, e := range entries {
		if ctx.Err() != nil {
			return
		}
		body, _ := e.Values["publish"].(string)
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), engineTimeout)
		status, answer := api.PublishBody(pctx, h, []byte(body))
		if status >= 500 {
			cancel()
			// Later entries wait too, so that this node keeps their order.
			p.log.Warn("publish stream: entry not published; it will be retried", "id", e.ID, "status", status, "answer", string(answer))
			return
		}
		if status != http.StatusOK {
			p.log.Warn("publish stream: entry refused", "id", e.ID, "status", status, "answer", string(answer))
		}
		if err := rdb.XAck(pctx, PublishStream, publishGroup, e.ID).Err(); err != nil {
			p.log.Warn("publish stream: acknowledging failed", "id", e.ID, "err", err)
		}
		cancel()
	}
}

// stopServing stops taking publishes from the engine, before the hub stops.
func (p *clusterParts) stopServing() {
	if p.ingest != nil {
		// Requests in hand finish; then the connection closes.
		if err := p.ingest.Drain(); err != nil {
			p.ingest.Close()
		}
		select {
		case <-p.ingestClosed:
		case <-time.After(engineTimeout):
			p.ingest.Close()
		}
	}
	if p.stop != nil {
		p.stop()
		<-p.stopped
	}
}

// openCluster connects the broker and, when history follows it, the
// history store that cfg names. With the in-process broker it returns
// empty parts.
func openCluster(cfg config.Config, log *slog.Logger) (*clusterParts, error) {
	p := &clusterParts{close: func() error { return nil }, log: log}
	ctx, cancel := context.WithTimeout(context.Background(), engineTimeout)
	defer cancel()
	switch cfg.BrokerKind() {
	case "nats":
		b, err := natsbroker.New(cfg.Broker, natsbroker.Config{NodeID: cfg.NodeID, Logger: log})
		if err != nil {
			return nil, err
		}
		p.broker, p.natsURL = b, cfg.Broker
		if cfg.History == "nats" {
			nc, err := nats.Connect(cfg.Broker, nats.Name("herald-history"), nats.MaxReconnects(-1),
				nats.ReconnectWait(time.Second), nats.ReconnectJitter(time.Second, time.Second))
			if err != nil {
				return nil, errors.Join(fmt.Errorf("history: connecting to NATS: %w", err), shutdownBroker(b))
			}
			h, err := jshistory.New(ctx, nc, historyLimits(cfg))
			if err != nil {
				nc.Close()
				return nil, errors.Join(fmt.Errorf("history: %w", err), shutdownBroker(b))
			}
			p.history = h
			p.close = func() error { nc.Close(); return nil }
		}
	case "redis":
		b, err := redisbroker.New(redisbroker.Config{URL: cfg.Broker, Logger: log})
		if err != nil {
			return nil, err
		}
		p.broker, p.redisURL = b, cfg.Broker
		if cfg.History == "redis" {
			rdb, err := redisClient(cfg.Broker)
			if err != nil {
				return nil, errors.Join(fmt.Errorf("history: %w", err), shutdownBroker(b))
			}
			js := historyLimits(cfg)
			h, err := redishistory.New(ctx, rdb, redishistory.Config{MaxPerChannel: js.MaxPerChannel, MaxAge: js.MaxAge})
			if err != nil {
				_ = rdb.Close()
				return nil, errors.Join(fmt.Errorf("history: %w", err), shutdownBroker(b))
			}
			p.history = h
			p.close = rdb.Close
		}
	}
	return p, nil
}

// historyLimits is what a shared history store keeps physically: at least
// what the largest namespace reads, for longer than its longest TTL.
func historyLimits(cfg config.Config) jshistory.Config {
	maxSize, maxTTL := cfg.DefaultNamespace.HistorySize, cfg.DefaultNamespace.HistoryTTL
	for _, n := range cfg.Namespaces {
		maxSize, maxTTL = max(maxSize, n.HistorySize), max(maxTTL, n.HistoryTTL)
	}
	return jshistory.Config{
		MaxPerChannel: int64(max(maxSize, 1)),
		MaxAge:        max(maxTTL, time.Hour) + time.Hour, // past the longest TTL, so heads survive it
	}
}

// redisClient returns a client of the Redis the broker URL names, without
// the broker's own parameters (sharded, cluster).
func redisClient(raw string) (goredis.UniversalClient, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("invalid Redis URL")
	}
	q := u.Query()
	cluster := q.Get("cluster") == "true" || q.Get("cluster") == "1"
	q.Del("cluster")
	q.Del("sharded")
	u.RawQuery = q.Encode()
	if cluster {
		opts, err := goredis.ParseClusterURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("Redis cluster URL: %w", err)
		}
		return goredis.NewClusterClient(opts), nil
	}
	opts, err := goredis.ParseURL(u.String())
	if err != nil {
		return nil, fmt.Errorf("Redis URL: %w", err)
	}
	return goredis.NewClient(opts), nil
}

func shutdownBroker(b broker.Broker) error {
	if sd, ok := b.(broker.Shutdowner); ok {
		ctx, cancel := context.WithTimeout(context.Background(), engineTimeout)
		defer cancel()
		return sd.Shutdown(ctx)
	}
	return nil
}
