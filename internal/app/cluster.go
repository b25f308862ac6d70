package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
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

// clusterParts are the broker and history of a node that shares them with
// other nodes through NATS or Redis, and what closes the history's
// connection once the hub is down (the hub shuts the broker down itself).
type clusterParts struct {
	broker  broker.Broker
	history hub.History // nil: the hub's default or the queue's JetStream
	close   func() error

	natsURL string // set with a NATS broker: serve's publish subject
	ingest  *nats.Conn
	log     *slog.Logger
}

// PublishSubject is the NATS subject on which other services publish
// without HTTP: a request whose body is a POST /v1/publish body, answered
// (to the reply subject, if any) with the JSON the API would give. One
// node of the queue group "herald" handles each request.
const PublishSubject = "herald.publish"

// serve starts taking publishes from the engine, once the hub runs.
func (p *clusterParts) serve(h *hub.Hub) error {
	if p.natsURL == "" {
		return nil
	}
	nc, err := nats.Connect(p.natsURL, nats.Name("herald-publish-"+h.NodeID()), nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true), nats.ReconnectWait(time.Second), nats.ReconnectJitter(time.Second, time.Second))
	if err != nil {
		return fmt.Errorf("publish subject: %w", err)
	}
	// The callback runs on the subscription's goroutine, one request at a
	// time, so one publisher's requests keep their order.
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
	p.ingest = nc
	return nil
}

// stopServing stops taking publishes from the engine, before the hub stops.
func (p *clusterParts) stopServing() {
	if p.ingest != nil {
		_ = p.ingest.Drain()
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
		p.broker = b
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
