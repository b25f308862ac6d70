package api

import (
	"context"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
)

// Transports always reported by herald_connections, even at zero, so that
// dashboards see every series from the first scrape.
var knownTransports = []string{"sse", "ws", "poll", "iframe"}

// hubCollector exports the hub's figures. Collect takes one hub.Stats
// snapshot per scrape, so every series of a scrape comes from the same
// instant and the hub's locks are taken once.
type hubCollector struct {
	stats func() hub.Stats

	published, delivered, dropped, slow *prometheus.Desc
	connections, channels, subscribers  *prometheus.Desc
	idempotencyKeys, uptime             *prometheus.Desc
	sequenced, fills                    *prometheus.Desc
	historyMessages, historyBytes       *prometheus.Desc
	historyTrimmed                      *prometheus.Desc
}

var _ prometheus.Collector = (*hubCollector)(nil)

func newHubCollector(stats func() hub.Stats) *hubCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &hubCollector{
		stats:           stats,
		published:       d("herald_published_total", "Messages published (one per channel)."),
		delivered:       d("herald_delivered_total", "Messages written to subscriber connections."),
		dropped:         d("herald_dropped_total", "Queued messages dropped because their connection was closed or overflowed."),
		slow:            d("herald_slow_consumers_total", "Connections closed because their outbound queue overflowed."),
		connections:     d("herald_connections", "Open subscriber connections.", "transport"),
		channels:        d("herald_channels", "Channels with at least one subscriber on this node."),
		subscribers:     d("herald_subscribers", "Channel subscriptions, summed over channels."),
		idempotencyKeys: d("herald_idempotency_keys", "Remembered publish idempotency keys."),
		uptime:          d("herald_uptime_seconds", "Seconds since the hub started."),
		sequenced: d("herald_sequencer_messages_total",
			"With a networked broker: messages held back behind a missing one (held), read from history to fill a hole (filled), given up as gone from history (skipped).", "event"),
		fills:           d("herald_sequencer_fills_total", "With a networked broker: history reads to fill holes in a channel's messages."),
		historyMessages: d("herald_history_messages", "With the in-memory history: messages retained."),
		historyBytes:    d("herald_history_bytes", "With the in-memory history: what the retained messages count for against limits.max_history_bytes."),
		historyTrimmed:  d("herald_history_trimmed_total", "With the in-memory history: messages dropped for limits.max_history_bytes before their size or TTL would have dropped them."),
	}
}

// Describe implements prometheus.Collector.
func (c *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.published, c.delivered, c.dropped, c.slow,
		c.connections, c.channels, c.subscribers, c.idempotencyKeys, c.uptime, c.sequenced, c.fills,
		c.historyMessages, c.historyBytes, c.historyTrimmed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *hubCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(c.published, st.Published)
	counter(c.delivered, st.Delivered)
	counter(c.dropped, st.Dropped)
	counter(c.slow, st.SlowConsumers)
	transports := slices.Sorted(maps.Keys(st.ByTransport))
	for _, t := range knownTransports {
		if !slices.Contains(transports, t) {
			transports = append(transports, t)
		}
	}
	for _, t := range transports {
		gauge(c.connections, float64(st.ByTransport[t]), t)
	}
	gauge(c.channels, float64(st.Channels))
	gauge(c.subscribers, float64(st.Subscribers))
	gauge(c.idempotencyKeys, float64(st.IdempotencyKeys))
	gauge(c.uptime, st.Uptime.Seconds())
	for _, e := range []struct {
		event string
		n     uint64
	}{{"held", st.Sequencer.Held}, {"filled", st.Sequencer.Filled}, {"skipped", st.Sequencer.Skipped}} {
		ch <- prometheus.MustNewConstMetric(c.sequenced, prometheus.CounterValue, float64(e.n), e.event)
	}
	counter(c.fills, st.Sequencer.Fills)
	if hs := st.History; hs != nil {
		gauge(c.historyMessages, float64(hs.Messages))
		gauge(c.historyBytes, float64(hs.Bytes))
		counter(c.historyTrimmed, hs.Trimmed)
	}
}

// newMetricsHandler builds the API's own registry (so that several servers
// in one process, as in tests, never collide): the hub collector, build
// info, and the Go runtime and process collectors.
func (a *API) newMetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newHubCollector(func() hub.Stats { return a.stats() }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "herald_build_info",
			Help:        "Always 1; the version label names the running build.",
			ConstLabels: prometheus.Labels{"version": a.cfg.Version},
		}, func() float64 { return 1 }),
	)
	if e := a.cfg.Engine; e != nil {
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "herald_engine_connections",
				Help: "Connections held by the connection engine (SSE, WebSocket, forever-iframe after the handshake).",
			}, func() float64 { return float64(e.Stats().Connections) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "herald_engine_blocked",
				Help: "Engine connections whose unsent bytes wait for the client to read.",
			}, func() float64 { return float64(e.Stats().Blocked) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "herald_engine_writes_total",
				Help: "Vectored writes by the engine (each carries every item a connection had queued).",
			}, func() float64 { return float64(e.Stats().Writes) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "herald_engine_heartbeats_total",
				Help: "Heartbeats written by the engine.",
			}, func() float64 { return float64(e.Stats().Heartbeats) }),
		)
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herald_broker_connected",
			Help: "1 while the broker reaches its engine (always 1 with the in-process broker).",
		}, func() float64 {
			if a.hub.BrokerHealth().Connected {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "herald_broker_reconnects_total",
			Help: "Connections to the broker's engine re-established since start.",
		}, func() float64 { return float64(a.hub.BrokerHealth().Reconnects) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herald_cluster_nodes",
			Help: "Nodes heard from through the broker recently, this one included.",
		}, func() float64 { return float64(len(a.hub.Nodes())) }),
	)
	if a.cfg.Pipelines != nil {
		reg.MustRegister(newPipelineCollector(a.cfg.Pipelines))
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry: reg,
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelError),
	})
}

// pipelineCollector exports the pipelines' figures.
type pipelineCollector struct {
	stats                       func(context.Context) []pipeline.Stats
	stage, stageSeconds, events *prometheus.Desc
	queue                       *prometheus.Desc
}

func newPipelineCollector(stats func(context.Context) []pipeline.Stats) *pipelineCollector {
	return &pipelineCollector{
		stats: stats,
		stage: prometheus.NewDesc("herald_pipeline_stage_messages_total",
			"Messages that entered a pipeline stage (result=in) and how they left it (out, failed, dropped). in minus the others is what the stage holds; anything else is a lost message.",
			[]string{"pipeline", "stage", "result"}, nil),
		stageSeconds: prometheus.NewDesc("herald_pipeline_stage_seconds_total",
			"Time spent in a pipeline stage.", []string{"pipeline", "stage"}, nil),
		events: prometheus.NewDesc("herald_pipeline_events_total",
			"Events a pipeline claimed from its queue, and how they ended: acked (published or dropped), retried (each retry), dead_lettered.",
			[]string{"pipeline", "result"}, nil),
		queue: prometheus.NewDesc("herald_pipeline_queue_events",
			"A pipeline's queue: pending (not yet claimed), in_flight (claimed, not acknowledged), redelivered (in flight, delivered more than once), dead_lettered.",
			[]string{"pipeline", "state"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *pipelineCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.stage
	ch <- c.stageSeconds
	ch <- c.events
	ch <- c.queue
}

// Collect implements prometheus.Collector.
func (c *pipelineCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, p := range c.stats(ctx) {
		for _, s := range p.Stages {
			for _, v := range []struct {
				result string
				n      uint64
			}{{"in", s.In}, {"out", s.Out}, {"failed", s.Failed}, {"dropped", s.Dropped}} {
				ch <- prometheus.MustNewConstMetric(c.stage, prometheus.CounterValue, float64(v.n), p.Pipeline, s.Stage, v.result)
			}
			ch <- prometheus.MustNewConstMetric(c.stageSeconds, prometheus.CounterValue, s.SecondsTotal, p.Pipeline, s.Stage)
		}
		for _, v := range []struct {
			result string
			n      uint64
		}{{"claimed", p.In}, {"acked", p.Acked}, {"retried", p.Retried}, {"dead_lettered", p.DeadLettered}} {
			ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(v.n), p.Pipeline, v.result)
		}
		if q := p.Queue; q != nil {
			for _, v := range []struct {
				state string
				n     uint64
			}{{"pending", q.Pending}, {"in_flight", q.InFlight}, {"redelivered", q.Redelivered}, {"dead_lettered", q.Dead}} {
				ch <- prometheus.MustNewConstMetric(c.queue, prometheus.GaugeValue, float64(v.n), p.Pipeline, v.state)
			}
		}
	}
}
