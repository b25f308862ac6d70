// Package config holds Herald's configuration: one Config struct, its
// defaults, its validation (every problem reported at once) and the way it
// is loaded (defaults < YAML file < HERALD_* environment < flags).
//
// Zero values: every field's zero value means its documented default, so
// Config{} is a working single-node configuration once Defaults is applied.
// Where "no limit" or "none" is a meaningful choice, it is spelled as a
// negative number (or, where the default already is "none", as zero).
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
)

// Config is the whole configuration of `herald serve`. The yaml tag of each
// field is its key in the configuration file; its environment variable is
// HERALD_ followed by the key path in upper case joined by '_' (for example
// sse.heartbeat is HERALD_SSE_HEARTBEAT). Durations use Go syntax ("25s",
// "1m30s").
type Config struct {
	// Listen is the TCP address to serve HTTP on. Zero means
	// "127.0.0.1:8080"; port 0 picks a free port.
	Listen string `yaml:"listen"`
	// DebugListen, when set, serves Go's profiler (/debug/pprof/) on this
	// separate address — keep it on loopback. Zero means no debug server.
	DebugListen string `yaml:"debug_listen"`
	// DataDir is where persistent state will live. Zero means "./data".
	// Nothing uses it yet; it is created only when first needed
	// (EnsureDataDir).
	DataDir string `yaml:"data_dir"`
	// APIKeys are the keys accepted as "Authorization: Bearer KEY" for
	// publishing, /v1/status and /metrics. Empty means no key: those
	// endpoints then answer loopback clients only. The environment form is
	// comma-separated.
	APIKeys []string `yaml:"api_keys"`
	// LogLevel is debug, info, warn or error. Zero means info.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json. Zero means text.
	LogFormat string `yaml:"log_format"`
	// ShutdownTimeout bounds a graceful shutdown. Zero means 10s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// WriteTimeout bounds one write to a subscriber connection. Zero means
	// 10s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// WriteDelay lets messages for one subscriber gather for this long so
	// that they leave in one write: fewer system calls per delivery on
	// both ends, for up to this much more latency. Zero (the default)
	// writes at once. Applies to SSE and forever-iframe connections served
	// without the engine (HTTP/2).
	WriteDelay time.Duration `yaml:"write_delay"`
	// Engine is how SSE, WebSocket and forever-iframe connections run
	// after their handshake: "epoll" (the default) holds them with no
	// goroutine per connection (one poller, a few writers, one timer
	// wheel); "goroutines" gives each connection a reader and a writer
	// goroutine. epoll falls back to goroutines where it is unavailable.
	Engine string `yaml:"engine"`
	// Broker carries published messages between Herald nodes: "memory"
	// (the default: one node), a NATS URL ("nats://host:4222", several
	// servers comma-separated) or a Redis URL ("redis://host:6379"; add
	// "?sharded=true" for sharded pub/sub, "?cluster=true&addr=host2:6379…"
	// for a Redis Cluster; see broker/redis). Every node of a cluster names the same engine. The
	// flag is --broker.
	Broker string `yaml:"broker"`
	// History is where channel history lives: "memory" (lost when the
	// process ends, which clients see as a gap; each node has its own),
	// "jetstream" (the event queue's NATS JetStream, embedded or
	// queue.url: survives restarts, so a client resumes without loss
	// after a crash), "nats" (JetStream on the broker's NATS) or "redis"
	// (Redis Streams on the broker's Redis). Zero follows the broker:
	// memory, nats or redis. A cluster needs nats or redis, so that a
	// cursor from one node works on every node: with a networked broker,
	// memory (and jetstream on the embedded queue) are refused. The flag
	// is --history.
	History string `yaml:"history"`
	// NodeID names this node in the cluster view of /v1/status. Zero
	// means the host name and a random suffix. The flag is --node-id.
	NodeID string `yaml:"node_id"`
	// IdempotencyWindow is how long a publish idempotency key is
	// remembered. Zero means 5m.
	IdempotencyWindow time.Duration `yaml:"idempotency_window"`

	SSE    SSEConfig    `yaml:"sse"`
	WS     WSConfig     `yaml:"ws"`
	Iframe IframeConfig `yaml:"iframe"`
	Poll   PollConfig   `yaml:"poll"`
	Limits LimitsConfig `yaml:"limits"`

	// Queue is the durable event queue behind POST /v1/events and the
	// pipelines.
	Queue QueueConfig `yaml:"queue"`
	// Events configures POST /v1/events.
	Events EventsConfig `yaml:"events"`
	// Sources are queues an application writes events into itself, besides
	// the built-in one (named "events", see Queue) that POST /v1/events
	// fills. Several may run at once; a pipeline names its source.
	// Sources have no environment form.
	Sources []SourceConfig `yaml:"sources"`
	// RunPipelines names the pipelines this process runs. Empty means all
	// of them. Several processes sharing the queues (sources on an
	// external NATS or Redis) each run some of the pipelines: see the
	// enqueue stage. The flag is --pipelines.
	RunPipelines []string `yaml:"run_pipelines"`
	// Pipelines turn queued events into published messages. Empty means
	// one pipeline, "public": parse, sanitize, anonymize, route, publish
	// (see PipelineConfig). Pipelines have no environment form.
	Pipelines []PipelineConfig `yaml:"pipelines"`

	// DefaultNamespace applies to channels whose namespace has no entry
	// in Namespaces. Zero fields mean history_size 100, history_ttl 10m,
	// max_subscribers 0 (no limit).
	DefaultNamespace NamespaceConfig `yaml:"default_namespace"`
	// Namespaces overrides settings per namespace (the part of a channel
	// name before its first ':'). Zero fields inherit from
	// DefaultNamespace. Only settable in the file (no environment form).
	Namespaces map[string]NamespaceConfig `yaml:"namespaces"`
}

// SSEConfig configures the EventSource transport.
type SSEConfig struct {
	// Heartbeat is the interval of ":" comment lines. Zero means 25s.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// Retry is the reconnect delay sent as "retry:". Zero means 2s.
	Retry time.Duration `yaml:"retry"`
}

// WSConfig configures the WebSocket transport.
type WSConfig struct {
	// Heartbeat is the ping interval. Zero means 25s.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// MaxMessageBytes caps a frame sent by a client. Zero means 16384.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// AllowedOrigins lists the Origin values accepted on the handshake
	// ("*" accepts any, "https://*.example.com" a subdomain pattern).
	// Empty means any origin (Herald usually serves pages of other sites).
	// The environment form is comma-separated.
	AllowedOrigins []string `yaml:"allowed_origins"`
}

// IframeConfig configures the forever-iframe transport.
type IframeConfig struct {
	// Heartbeat is the interval of keep-alive comments. Zero means 25s.
	Heartbeat time.Duration `yaml:"heartbeat"`
}

// PollConfig configures the long-poll transport.
type PollConfig struct {
	// Timeout is the longest a poll waits for a message (and the default
	// of the timeout= parameter). Zero means 30s.
	Timeout time.Duration `yaml:"timeout"`
}

// QueueConfig configures the event queue: NATS JetStream, embedded in
// the process (storing under data_dir/jetstream) unless URL names a NATS
// server.
type QueueConfig struct {
	// URL is an external NATS server with JetStream ("nats://host:4222").
	// Zero means the embedded server.
	URL string `yaml:"url"`
	// MaxAge is how long queued events are kept. Zero means 24h.
	MaxAge time.Duration `yaml:"max_age"`
	// MaxBytes bounds the queue; when it is full POST /v1/events answers
	// 503. Zero means 1 GiB.
	MaxBytes int `yaml:"max_bytes"`
	// AckWait is how long a claimed event may go unacknowledged before it
	// is delivered again. Zero means 30s.
	AckWait time.Duration `yaml:"ack_wait"`
	// DoneMaxAge is how long a pipeline remembers a finished event, so
	// that one delivered again (after a crash, or resent by the
	// application after the 2-minute duplicate window) is not published
	// twice. Each remembered event costs JetStream ~150 bytes of memory.
	// Zero means 1h.
	DoneMaxAge time.Duration `yaml:"done_max_age"`
}

// EventsConfig configures POST /v1/events.
type EventsConfig struct {
	// EnforceTypes refuses events whose type has no schema (the built-in
	// ones are post.created, post.updated and post.deleted).
	EnforceTypes bool `yaml:"enforce_types"`
	// MaxEventBytes bounds one event's data. Zero means 64 KiB.
	MaxEventBytes int `yaml:"max_event_bytes"`
	// MaxBatch bounds the events of one request. Zero means 1000.
	MaxBatch int `yaml:"max_batch"`
}

// PipelineConfig is one pipeline: a name (its consumer group on the
// queue), its stages in order, and how it retries.
type PipelineConfig struct {
	Name string `yaml:"name"`
	// Source names the queue the pipeline reads: "events" (the default:
	// the queue behind POST /v1/events) or one of Sources.
	Source string `yaml:"source"`
	// Lanes is how many events are processed at once; events of one
	// thread stay in order. Zero means 8.
	Lanes int `yaml:"lanes"`
	// Attempts before an event goes to the dead-letter queue. Zero means 5.
	Attempts int `yaml:"attempts"`
	// Backoff before the first retry, doubling after. Zero means 100ms.
	Backoff time.Duration `yaml:"backoff"`
	// Stages run in order. Zero means parse, sanitize, anonymize, route,
	// publish with their defaults.
	Stages []StageConfig `yaml:"stages"`
}

// StageConfig is one stage of a pipeline: Type names it, the other
// fields are its options (each stage reads its own; zero means the
// stage's default).
type StageConfig struct {
	// Type is parse, sanitize, anonymize, render, route or publish.
	Type string `yaml:"type"`
	// Fields (sanitize): the HTML fields. Default [data.message].
	Fields []string `yaml:"fields"`
	// Drop and Hash (anonymize): fields removed, and fields replaced by a
	// keyed hash (Salt). Default: drop data.author.email, data.author.ip.
	Drop []string `yaml:"drop"`
	Hash []string `yaml:"hash"`
	Salt string   `yaml:"salt"`
	// HTML (render): an html/template whose output is stored at HTMLField
	// (default data.html); JSON: a text/template producing the published
	// JSON.
	HTML      string `yaml:"html"`
	HTMLField string `yaml:"html_field"`
	JSON      string `yaml:"json"`
	// Routes (route): channel patterns such as "thread:{data.thread}",
	// optionally for some event types only. Default: thread:, forum:,
	// post:, user: and firehose.
	Routes []RouteConfig `yaml:"routes"`
	// Source (enqueue): the source the processed event is written to,
	// for the pipeline reading it to go on (in this process or another).
	Source string `yaml:"source"`
	// To (publish): "hub" (default), "http" (URL, APIKey: a remote
	// Herald) or "file" (Path: JSON lines).
	To     string `yaml:"to"`
	URL    string `yaml:"url"`
	APIKey string `yaml:"api_key"`
	Path   string `yaml:"path"`
}

// SourceConfig is a queue an application writes events into: a NATS
// JetStream stream or a Redis stream, in the layout of Herald's own queue
// (see docs/protocol.md, "Event sources"). Each pipeline reading it is a
// consumer group of its own.
type SourceConfig struct {
	// Name is how pipelines refer to the source.
	Name string `yaml:"name"`
	// Type is jetstream, redis or rabbitmq.
	Type string `yaml:"type"`
	// URL is the server: nats://… (empty: the embedded NATS server),
	// redis://… or amqp://…
	URL string `yaml:"url"`
	// Prefix names the stream and subjects (jetstream, default "app"), the
	// stream key (redis, default "app:events") or the exchange and queues
	// (rabbitmq, default "app").
	Prefix string `yaml:"prefix"`
}

// DefaultSource is the built-in source's name.
const DefaultSource = "events"

// RouteConfig is one routing rule.
type RouteConfig struct {
	Channel string   `yaml:"channel"`
	Types   []string `yaml:"types"`
}

type LimitsConfig struct {
	// MaxConnections caps subscriber connections on this node. Zero means
	// 100000; negative means no limit.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP caps subscriber connections per client address.
	// Zero means no limit.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// MaxChannelsPerConnection caps the channels of one connection. Zero
	// means 32.
	MaxChannelsPerConnection int `yaml:"max_channels_per_connection"`
	// MaxMessageBytes caps a published message's data. Zero means 65536.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// MaxQueueBytes caps a connection's outbound queue; a subscriber past
	// it is disconnected as a slow consumer. Zero means 1048576 (1 MiB).
	MaxQueueBytes int `yaml:"max_queue_bytes"`
	// MaxChannelsPerPublish caps the channels of one publish. Zero means 64.
	MaxChannelsPerPublish int `yaml:"max_channels_per_publish"`
	// MaxHistoryBytes caps the memory of the in-memory history (history:
	// memory), all channels together: past it the oldest messages go
	// first, whatever their channel, as if their TTL had passed. Zero means
	// 536870912 (512 MiB), or more if limits.max_message_bytes needs it
	// (hub.MinHistoryBytes); negative means no cap beyond each channel's
	// history size and TTL.
	MaxHistoryBytes int `yaml:"max_history_bytes"`
}

// NamespaceConfig holds the settings of one channel namespace.
type NamespaceConfig struct {
	// HistorySize is the number of messages kept per channel; negative
	// keeps none.
	HistorySize int `yaml:"history_size"`
	// HistoryTTL is how long a message is kept; negative keeps messages
	// until trimmed by size.
	HistoryTTL time.Duration `yaml:"history_ttl"`
	// MaxSubscribers caps the subscribers of one channel on this node.
	// Zero means no limit (or, in Namespaces, the default namespace's).
	MaxSubscribers int `yaml:"max_subscribers"`
}

// Defaults of the settings whose zero value is not "none".
const (
	DefaultListen                   = "127.0.0.1:8080"
	DefaultDataDir                  = "./data"
	DefaultLogLevel                 = "info"
	DefaultLogFormat                = "text"
	DefaultEngine                   = "epoll"
	DefaultHistory                  = "memory"
	DefaultBroker                   = "memory"
	DefaultShutdownTimeout          = 10 * time.Second
	DefaultWriteTimeout             = 10 * time.Second
	DefaultIdempotencyWindow        = 5 * time.Minute
	DefaultHeartbeat                = 25 * time.Second
	DefaultSSERetry                 = 2 * time.Second
	DefaultWSMaxMessageBytes        = 16 << 10
	DefaultPollTimeout              = 30 * time.Second
	DefaultMaxConnections           = 100_000
	DefaultMaxChannelsPerConnection = 32
	DefaultMaxMessageBytes          = 64 << 10
	DefaultMaxQueueBytes            = 1 << 20
	DefaultMaxChannelsPerPublish    = 64
	DefaultMaxHistoryBytes          = 512 << 20
	DefaultHistorySize              = 100
	DefaultHistoryTTL               = 10 * time.Minute
)

// Defaults returns c with every zero field set to its documented default.
// Namespaces keep their zero fields: they inherit from DefaultNamespace in
// the hub.
func (c Config) Defaults() Config {
	setDefault(&c.Listen, DefaultListen)
	setDefault(&c.DataDir, DefaultDataDir)
	setDefault(&c.LogLevel, DefaultLogLevel)
	setDefault(&c.LogFormat, DefaultLogFormat)
	setDefault(&c.Engine, DefaultEngine)
	setDefault(&c.Broker, DefaultBroker)
	if c.History == "" {
		// History follows the broker.
		switch c.BrokerKind() {
		case "nats", "redis":
			c.History = c.BrokerKind()
		default:
			c.History = DefaultHistory
		}
	}
	setDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setDefault(&c.WriteTimeout, DefaultWriteTimeout)
	setDefault(&c.IdempotencyWindow, DefaultIdempotencyWindow)
	setDefault(&c.SSE.Heartbeat, DefaultHeartbeat)
	setDefault(&c.SSE.Retry, DefaultSSERetry)
	setDefault(&c.WS.Heartbeat, DefaultHeartbeat)
	setDefault(&c.WS.MaxMessageBytes, DefaultWSMaxMessageBytes)
	setDefault(&c.Iframe.Heartbeat, DefaultHeartbeat)
	setDefault(&c.Poll.Timeout, DefaultPollTimeout)
	setDefault(&c.Limits.MaxConnections, DefaultMaxConnections)
	setDefault(&c.Limits.MaxChannelsPerConnection, DefaultMaxChannelsPerConnection)
	setDefault(&c.Limits.MaxMessageBytes, DefaultMaxMessageBytes)
	setDefault(&c.Limits.MaxQueueBytes, DefaultMaxQueueBytes)
	setDefault(&c.Limits.MaxChannelsPerPublish, DefaultMaxChannelsPerPublish)
	// Larger when the largest message needs it (see hub.MinHistoryBytes).
	setDefault(&c.Limits.MaxHistoryBytes, max(DefaultMaxHistoryBytes, int(hub.MinHistoryBytes(c.Limits.MaxMessageBytes))))
	setDefault(&c.DefaultNamespace.HistorySize, DefaultHistorySize)
	setDefault(&c.DefaultNamespace.HistoryTTL, DefaultHistoryTTL)
	if len(c.Pipelines) == 0 {
		c.Pipelines = []PipelineConfig{{Name: DefaultPipeline}}
	} else {
		c.Pipelines = slices.Clone(c.Pipelines)
	}
	for i := range c.Pipelines {
		if len(c.Pipelines[i].Stages) == 0 {
			c.Pipelines[i].Stages = DefaultStages()
		}
		setDefault(&c.Pipelines[i].Source, DefaultSource)
	}
	return c
}

// DefaultPipeline is the name of the pipeline herald runs when the
// configuration names none.
const DefaultPipeline = "public"

// DefaultStages are a pipeline's stages when its configuration lists
// none: the public pipeline of comment events — validated, HTML
// sanitised, author e-mail and IP removed, routed to thread:, forum:,
// post:, user: and firehose, published to the local hub.
func DefaultStages() []StageConfig {
	return []StageConfig{{Type: "parse"}, {Type: "sanitize"}, {Type: "anonymize"}, {Type: "route"}, {Type: "publish"}}
}

func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// Validate reports every problem of c at once (errors.Join), or nil. Call
// it on a config with Defaults applied; Load does both.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}

	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port", c.Listen)
	} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		bad("listen", "port %q is not a number from 0 to 65535", port)
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	}
	for i, k := range c.APIKeys {
		switch {
		case k == "":
			bad("api_keys", "key %d is empty", i+1)
		case strings.ContainsAny(k, " \t\r\n,"):
			bad("api_keys", "key %d contains a space or comma", i+1)
		}
	}
	if _, err := ParseLevel(c.LogLevel); err != nil {
		bad("log_level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	if !slices.Contains([]string{"text", "json"}, c.LogFormat) {
		bad("log_format", "%q is not text or json", c.LogFormat)
	}
	switch kind := c.BrokerKind(); {
	case kind == "":
		bad("broker", "%q is not memory, a nats:// URL or a redis:// URL", c.Broker)
	case c.History == "nats" && kind != "nats":
		bad("history", "nats needs a NATS broker (--broker nats://…)")
	case c.History == "redis" && kind != "redis":
		bad("history", "redis needs a Redis broker (--broker redis://…)")
	case kind != "memory" && (c.History == "memory" || c.History == "jetstream" && c.Queue.URL == ""):
		// Each node would number the channels' messages apart.
		bad("history", "%s keeps each node's history apart, so the nodes' offsets would disagree: with a %s broker use %s (the default) or jetstream with queue.url on a shared NATS",
			c.History, kind, kind)
	}
	if !slices.Contains([]string{"memory", "jetstream", "nats", "redis"}, c.History) {
		bad("history", "%q is not memory, jetstream, nats or redis", c.History)
	}
	if !slices.Contains([]string{"epoll", "goroutines"}, c.Engine) {
		bad("engine", "%q is not epoll or goroutines", c.Engine)
	}

	if c.Queue.URL != "" && !strings.HasPrefix(c.Queue.URL, "nats://") && !strings.HasPrefix(c.Queue.URL, "tls://") {
		bad("queue.url", "%q is not a nats:// or tls:// URL", c.Queue.URL)
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"queue.max_bytes", c.Queue.MaxBytes}, {"events.max_event_bytes", c.Events.MaxEventBytes}, {"events.max_batch", c.Events.MaxBatch}} {
		if n.v < 0 {
			bad(n.key, "must not be negative, got %d", n.v)
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"queue.max_age", c.Queue.MaxAge}, {"queue.ack_wait", c.Queue.AckWait}, {"queue.done_max_age", c.Queue.DoneMaxAge}} {
		if d.v < 0 {
			bad(d.key, "must not be negative, got %v", d.v)
		}
	}
	sources := map[string]bool{DefaultSource: true}
	for i, src := range c.Sources {
		key := fmt.Sprintf("sources[%d]", i)
		switch {
		case pipeline.CheckName(src.Name) != nil:
			bad(key+".name", "%v", pipeline.CheckName(src.Name))
		case sources[src.Name]:
			bad(key+".name", "%q is used twice (or is the built-in %q)", src.Name, DefaultSource)
		}
		sources[src.Name] = true
		switch src.Type {
		case "jetstream":
			if src.URL != "" && !strings.HasPrefix(src.URL, "nats://") && !strings.HasPrefix(src.URL, "tls://") {
				bad(key+".url", "%q is not a nats:// or tls:// URL", src.URL)
			}
		case "redis":
			if !strings.HasPrefix(src.URL, "redis://") && !strings.HasPrefix(src.URL, "rediss://") {
				bad(key+".url", "%q is not a redis:// or rediss:// URL", src.URL)
			}
		case "rabbitmq":
			if !strings.HasPrefix(src.URL, "amqp://") && !strings.HasPrefix(src.URL, "amqps://") {
				bad(key+".url", "%q is not an amqp:// or amqps:// URL", src.URL)
			}
		default:
			bad(key+".type", "%q is not jetstream, redis or rabbitmq", src.Type)
		}
	}
	names := map[string]bool{}
	for i, p := range c.Pipelines {
		if p.Source != "" && !sources[p.Source] {
			bad(fmt.Sprintf("pipelines[%d].source", i), "%q is not %q or one of sources", p.Source, DefaultSource)
		}
		key := fmt.Sprintf("pipelines[%d]", i)
		switch {
		case pipeline.CheckName(p.Name) != nil:
			bad(key+".name", "%v", pipeline.CheckName(p.Name))
		case names[p.Name]:
			bad(key+".name", "%q is used twice", p.Name)
		}
		names[p.Name] = true
		if p.Lanes < 0 || p.Attempts < 0 || p.Backoff < 0 {
			bad(key, "lanes, attempts and backoff must not be negative")
		}
		for j, st := range p.Stages {
			skey := fmt.Sprintf("%s.stages[%d]", key, j)
			switch st.Type {
			case "parse", "sanitize", "route", "render":
			case "enqueue":
				if st.Source == DefaultSource || !sources[st.Source] {
					bad(skey+".source", "%q is not one of sources (the built-in %q is fed by POST /v1/events only)", st.Source, DefaultSource)
				}
			case "anonymize":
				if len(st.Hash) > 0 && st.Salt == "" {
					bad(skey+".salt", "required with hash")
				}
			case "publish":
				switch st.To {
				case "", "hub":
				case "http":
					if !strings.HasPrefix(st.URL, "http://") && !strings.HasPrefix(st.URL, "https://") {
						bad(skey+".url", "%q is not an http(s) URL", st.URL)
					}
				case "file":
					if st.Path == "" {
						bad(skey+".path", "required with to: file")
					}
				default:
					bad(skey+".to", "%q is not hub, http or file", st.To)
				}
			default:
				bad(skey+".type", "%q is not parse, sanitize, anonymize, render, route, publish or enqueue", st.Type)
			}
		}
	}

	for _, name := range c.RunPipelines {
		if !names[name] {
			bad("run_pipelines", "%q is not a configured pipeline", name)
		}
	}

	positive := func(key string, d time.Duration) {
		if d <= 0 {
			bad(key, "must be positive, got %v", d)
		}
	}
	positive("shutdown_timeout", c.ShutdownTimeout)
	positive("write_timeout", c.WriteTimeout)
	positive("idempotency_window", c.IdempotencyWindow)
	positive("sse.heartbeat", c.SSE.Heartbeat)
	positive("sse.retry", c.SSE.Retry)
	positive("ws.heartbeat", c.WS.Heartbeat)
	positive("iframe.heartbeat", c.Iframe.Heartbeat)
	positive("poll.timeout", c.Poll.Timeout)
	if c.WriteDelay < 0 || c.WriteDelay > time.Second {
		bad("write_delay", "must be between 0 and 1s, got %v", c.WriteDelay)
	}

	atLeast := func(key string, v, min int) {
		if v < min {
			bad(key, "must be at least %d, got %d", min, v)
		}
	}
	atLeast("ws.max_message_bytes", c.WS.MaxMessageBytes, 256)
	for i, o := range c.WS.AllowedOrigins {
		if o == "" || strings.ContainsAny(o, " \t\r\n,") {
			bad("ws.allowed_origins", "origin %d (%q) is empty or contains a space or comma", i+1, o)
		}
	}
	atLeast("limits.max_connections_per_ip", c.Limits.MaxConnectionsPerIP, 0)
	atLeast("limits.max_channels_per_connection", c.Limits.MaxChannelsPerConnection, 1)
	atLeast("limits.max_message_bytes", c.Limits.MaxMessageBytes, 1)
	atLeast("limits.max_channels_per_publish", c.Limits.MaxChannelsPerPublish, 1)
	// A queue must hold at least one message of the largest size with its
	// envelope (channel, type, epoch, time and bookkeeping), or every
	// subscriber of a large message would be cut off as a slow consumer.
	if c.Limits.MaxMessageBytes > 0 {
		atLeast("limits.max_queue_bytes", c.Limits.MaxQueueBytes, c.Limits.MaxMessageBytes+queueOverhead)
		// The in-memory history holds at least one message of the
		// largest size.
		if minimum := hub.MinHistoryBytes(c.Limits.MaxMessageBytes); c.History == "memory" &&
			c.Limits.MaxHistoryBytes > 0 && int64(c.Limits.MaxHistoryBytes) < minimum {
			bad("limits.max_history_bytes", "must be at least %d with limits.max_message_bytes %d, got %d",
				minimum, c.Limits.MaxMessageBytes, c.Limits.MaxHistoryBytes)
		}
	}

	checkNS := func(key string, n NamespaceConfig) {
		atLeast(key+".max_subscribers", n.MaxSubscribers, 0)
	}
	checkNS("default_namespace", c.DefaultNamespace)
	for _, name := range slices.Sorted(maps.Keys(c.Namespaces)) {
		key := "namespaces." + name
		if name == "" || strings.Contains(name, ":") || !hub.ValidChannel(name) {
			bad(key, "namespace name must be 1-255 bytes of A-Z a-z 0-9 _ - . / ~")
		}
		checkNS(key, c.Namespaces[name])
	}
	return errors.Join(errs...)
}

// queueOverhead bounds what a queued message costs beyond its data: the
// envelope's fields (channel ≤ 255, type ≤ 128, epoch, offset, time) and
// the hub's per-item accounting.
const queueOverhead = 1024

// ParseLevel parses a log level name.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("config: unknown log level %q", s)
}

// NewLogger returns a logger writing to w in c's format at c's level. An
// invalid level or format falls back to info / text (Validate reports them).
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	level, _ := ParseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// HubConfig returns the hub configuration c describes.
func (c Config) HubConfig(log *slog.Logger) hub.Config {
	c = c.Defaults()
	ns := make(map[string]hub.NamespaceConfig, len(c.Namespaces))
	for name, n := range c.Namespaces {
		ns[name] = n.hub()
	}
	return hub.Config{
		Default:               c.DefaultNamespace.hub(),
		Namespaces:            ns,
		MaxConnections:        max(c.Limits.MaxConnections, 0),
		MaxConnectionsPerIP:   c.Limits.MaxConnectionsPerIP,
		MaxChannelsPerSession: c.Limits.MaxChannelsPerConnection,
		MaxQueueBytes:         c.Limits.MaxQueueBytes,
		MaxMessageBytes:       c.Limits.MaxMessageBytes,
		MaxChannelsPerPublish: c.Limits.MaxChannelsPerPublish,
		HistoryMaxBytes:       int64(c.Limits.MaxHistoryBytes),
		IdempotencyWindow:     c.IdempotencyWindow,
		NodeID:                c.NodeID,
		Logger:                log,
	}
}

// BrokerKind returns "memory", "nats" or "redis" according to Broker, or
// "" when Broker is none of them.
func (c Config) BrokerKind() string {
	b := c.Broker
	switch {
	case b == "" || b == "memory":
		return "memory"
	case strings.HasPrefix(b, "nats://"), strings.HasPrefix(b, "tls://"):
		return "nats"
	case strings.HasPrefix(b, "redis://"), strings.HasPrefix(b, "rediss://"):
		return "redis"
	}
	return ""
}

func (n NamespaceConfig) hub() hub.NamespaceConfig {
	return hub.NamespaceConfig{HistorySize: n.HistorySize, HistoryTTL: n.HistoryTTL, MaxSubscribers: n.MaxSubscribers}
}

// EnsureDataDir creates the data directory if needed and returns its path.
// Components that persist state call it when they start, so that a server
// that persists nothing never touches the disk.
func (c Config) EnsureDataDir() (string, error) {
	dir := c.Defaults().DataDir
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("config: data_dir: %w", err)
	}
	if fi, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("config: data_dir: %w", err)
	} else if !fi.IsDir() {
		return "", fmt.Errorf("config: data_dir: %s is not a directory", dir)
	}
	return dir, nil
}
