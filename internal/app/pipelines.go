package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/history/jshistory"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/pipeline"
	"github.com/heraldhq/herald/pipeline/amqpqueue"
	"github.com/heraldhq/herald/pipeline/jetstream"
	"github.com/heraldhq/herald/pipeline/redisstream"
)

// pipelines is the event side of the app: the queue (NATS JetStream,
// embedded unless configured), and one runner per configured pipeline.
type pipelines struct {
	log     *slog.Logger
	ns      *server.Server // the embedded NATS server; nil with an external one
	nc      *nats.Conn
	queue   *jetstream.Queue          // the built-in queue, behind POST /v1/events
	queues  map[string]pipeline.Queue // by source name, the built-in one included
	runners []*pipeline.Runner
	ranOn   map[string]pipeline.Queue // each pipeline's queue, by pipeline name
	closers []io.Closer               // file sinks

	mu     sync.Mutex
	cancel context.CancelFunc // set by start
	done   sync.WaitGroup
}

// connectNATS starts the embedded NATS server (storing under the data
// directory) or connects to queue.url. The returned pipelines hold the
// connection; close releases it.
func connectNATS(cfg config.Config, log *slog.Logger) (p *pipelines, err error) {
	p = &pipelines{log: log}
	if cfg.Queue.URL == "" {
		if p.ns, err = jetstream.Embedded(filepath.Join(cfg.DataDir, "jetstream")); err != nil {
			return nil, err
		}
		if p.nc, err = jetstream.ConnectEmbedded(p.ns); err != nil {
			p.close()
			return nil, fmt.Errorf("connecting to the embedded NATS server: %w", err)
		}
	} else if p.nc, err = nats.Connect(cfg.Queue.URL, nats.Name("herald"), nats.MaxReconnects(-1)); err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", cfg.Queue.URL, err)
	}
	return p, nil
}

// history returns the JetStream channel history on p's connection.
func (p *pipelines) history(ctx context.Context, cfg config.Config) (*jshistory.History, error) {
	return jshistory.New(ctx, p.nc, historyLimits(cfg))
}

// openQueue opens the queue on p's connection and builds every pipeline
// of cfg.
func (p *pipelines) openQueue(ctx context.Context, cfg config.Config, h *hub.Hub, log *slog.Logger) (err error) {
	p.queue, err = jetstream.Open(ctx, p.nc, jetstream.Config{
		MaxAge:     cfg.Queue.MaxAge,
		MaxBytes:   int64(cfg.Queue.MaxBytes),
		DoneMaxAge: cfg.Queue.DoneMaxAge,
	})
	if err != nil {
		return err
	}
	p.queues = map[string]pipeline.Queue{config.DefaultSource: p.queue}
	p.ranOn = map[string]pipeline.Queue{}
	for _, sc := range cfg.Sources {
		q, err := p.openSource(ctx, sc, log)
		if err != nil {
			return fmt.Errorf("source %s: %w", sc.Name, err)
		}
		p.queues[sc.Name] = q
	}
	for _, pc := range cfg.Pipelines {
		if len(cfg.RunPipelines) > 0 && !slices.Contains(cfg.RunPipelines, pc.Name) {
			continue // another process runs it
		}
		stages, err := p.buildStages(pc, cfg, h)
		if err != nil {
			return fmt.Errorf("pipeline %s: %w", pc.Name, err)
		}
		q := p.queues[pc.Source]
		src, err := q.Source(ctx, pc.Name, pipeline.SourceConfig{AckWait: cfg.Queue.AckWait})
		if err != nil {
			return fmt.Errorf("pipeline %s: %w", pc.Name, err)
		}
		// Done marks live in the built-in JetStream whatever the source.
		r, err := pipeline.NewRunner(pipeline.Config{
			Name: pc.Name, Stages: stages, Lanes: pc.Lanes, Attempts: pc.Attempts, Backoff: pc.Backoff,
			Done: p.queue, Logger: log,
		}, src)
		if err != nil {
			return err
		}
		p.runners = append(p.runners, r)
		p.ranOn[pc.Name] = q
	}
	return nil
}

// openSource opens an application's queue.
func (p *pipelines) openSource(ctx context.Context, sc config.SourceConfig, log *slog.Logger) (pipeline.Queue, error) {
	switch sc.Type {
	case "jetstream":
		nc := p.nc // the embedded server
		if sc.URL != "" {
			var err error
			if nc, err = nats.Connect(sc.URL, nats.Name("herald"), nats.MaxReconnects(-1)); err != nil {
				return nil, fmt.Errorf("connecting to NATS at %s: %w", sc.URL, err)
			}
			p.closers = append(p.closers, closerFunc(func() error { nc.Close(); return nil }))
		}
		prefix := sc.Prefix
		if prefix == "" {
			prefix = "app"
		}
		return jetstream.Open(ctx, nc, jetstream.Config{Prefix: prefix})
	case "redis":
		opts, err := redis.ParseURL(sc.URL)
		if err != nil {
			return nil, err
		}
		rdb := redis.NewClient(opts)
		p.closers = append(p.closers, rdb)
		prefix := sc.Prefix
		if prefix == "" {
			prefix = "app:events"
		}
		return redisstream.Open(ctx, rdb, redisstream.Config{Prefix: prefix, Logger: log})
	case "rabbitmq":
		prefix := sc.Prefix
		if prefix == "" {
			prefix = "app"
		}
		return amqpqueue.Open(ctx, amqpqueue.Config{URL: sc.URL, Prefix: prefix, Logger: log})
	}
	return nil, fmt.Errorf("unknown source type %q", sc.Type)
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// buildStages turns a pipeline's configuration into its stages.
func (p *pipelines) buildStages(pc config.PipelineConfig, cfg config.Config, h *hub.Hub) ([]pipeline.Stage, error) {
	var stages []pipeline.Stage
	for i, sc := range pc.Stages {
		var st pipeline.Stage
		var err error
		switch sc.Type {
		case "parse":
			st, err = pipeline.NewParse(pipeline.ParseOptions{EnforceTypes: cfg.Events.EnforceTypes})
		case "sanitize":
			st, err = pipeline.NewSanitize(pipeline.SanitizeOptions{Paths: sc.Fields})
		case "anonymize":
			st, err = pipeline.NewAnonymize(pipeline.AnonymizeOptions{Drop: sc.Drop, Hash: sc.Hash, Salt: sc.Salt})
		case "render":
			st, err = pipeline.NewRender(pipeline.RenderOptions{HTML: sc.HTML, HTMLField: sc.HTMLField, Payload: sc.JSON})
		case "route":
			var rules []pipeline.Rule
			for _, r := range sc.Routes {
				rules = append(rules, pipeline.Rule{Channel: r.Channel, Types: r.Types})
			}
			st, err = pipeline.NewRoute(pipeline.RouteOptions{Rules: rules})
		case "enqueue":
			st, err = pipeline.NewEnqueue(pipeline.EnqueueOptions{Queue: p.queues[sc.Source]})
		case "publish":
			var pub pipeline.Publisher
			switch sc.To {
			case "", "hub":
				pub = pipeline.NewHubPublisher(h)
			case "http":
				pub, err = pipeline.NewHTTPPublisher(pipeline.HTTPPublisherOptions{URL: sc.URL, APIKey: sc.APIKey})
			case "file":
				var fs *pipeline.FileSink
				if fs, err = pipeline.NewFileSink(pipeline.FileSinkOptions{Path: sc.Path}); err == nil {
					p.closers = append(p.closers, fs)
					pub = fs
				}
			}
			if err == nil {
				st, err = pipeline.NewPublish(pipeline.PublishOptions{Publisher: pub})
			}
		default:
			err = fmt.Errorf("unknown stage type %q", sc.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("stage %d (%s): %w", i+1, sc.Type, err)
		}
		stages = append(stages, st)
	}
	return stages, nil
}

// validate is POST /v1/events' up-front check: the comment events'
// schemas.
func validateEvent(enforce bool) func(pipeline.Event) error {
	schemas := pipeline.CommentSchemas()
	return func(ev pipeline.Event) error { return pipeline.ValidateEvent(schemas, enforce, ev) }
}

// start runs every pipeline until stop.
func (p *pipelines) start() {
	ctx, cancel := context.WithCancel(context.Background())
	// Every Add happens before stop can see cancel and Wait.
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cancel = cancel
	for _, r := range p.runners {
		p.done.Add(1)
		go func() {
			defer p.done.Done()
			if err := r.Run(ctx); err != nil {
				p.log.Error("pipeline stopped", "pipeline", r.Name(), "err", err)
			}
		}()
	}
}

// stop stops claiming events and waits until every event in hand is
// acknowledged (or given back), or ctx ends.
func (p *pipelines) stop(ctx context.Context) error {
	p.mu.Lock()
	cancel := p.cancel
	p.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	done := make(chan struct{})
	go func() { p.done.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stats returns every pipeline's figures with its queue's.
func (p *pipelines) stats(ctx context.Context) []pipeline.Stats {
	out := make([]pipeline.Stats, 0, len(p.runners))
	for _, r := range p.runners {
		st := r.Stats()
		if qs, err := p.ranOn[r.Name()].Stats(ctx, r.Name()); err == nil {
			st.Queue = &qs
		}
		out = append(out, st)
	}
	return out
}

// deadLetters returns the dead-letter queue of the configured pipeline
// name; false when no pipeline has that name.
func (p *pipelines) deadLetters(name string) (pipeline.DeadLetters, bool) {
	if q, ok := p.ranOn[name]; ok {
		return q.DeadLetters(name), true
	}
	return nil, false
}

// close releases the queue, the connection and the embedded server.
func (p *pipelines) close() error {
	var errs []error
	for _, q := range p.queues {
		errs = append(errs, q.Close())
	}
	for _, c := range p.closers {
		errs = append(errs, c.Close())
	}
	if p.nc != nil {
		// Drain would wait for subscriptions; the runners have stopped.
		p.nc.Close()
	}
	if p.ns != nil {
		p.ns.Shutdown()
		done := make(chan struct{})
		go func() { p.ns.WaitForShutdown(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			errs = append(errs, errors.New("the embedded NATS server did not stop in 10s"))
		}
	}
	return errors.Join(errs...)
}
