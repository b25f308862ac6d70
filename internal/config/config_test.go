package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "herald.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := Load("", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen: "127.0.0.1:8080", DataDir: "./data", LogLevel: "info", LogFormat: "text", Engine: "epoll", History: "memory", Broker: "memory",
		ShutdownTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, IdempotencyWindow: 5 * time.Minute,
		SSE:    SSEConfig{Heartbeat: 25 * time.Second, Retry: 2 * time.Second},
		WS:     WSConfig{Heartbeat: 25 * time.Second, MaxMessageBytes: 16384},
		Iframe: IframeConfig{Heartbeat: 25 * time.Second},
		Poll:   PollConfig{Timeout: 30 * time.Second},
		Limits: LimitsConfig{
			MaxConnections: 100000, MaxChannelsPerConnection: 32, MaxMessageBytes: 65536,
			MaxQueueBytes: 1 << 20, MaxChannelsPerPublish: 64, MaxHistoryBytes: 512 << 20,
		},
		DefaultNamespace: NamespaceConfig{HistorySize: 100, HistoryTTL: 10 * time.Minute},
		Pipelines:        []PipelineConfig{{Name: "public", Source: "events", Stages: DefaultStages()}},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", c, want)
	}
	hc := c.HubConfig(nil)
	if hc.MaxConnections != 100000 || hc.MaxChannelsPerSession != 32 || hc.Default.HistorySize != 100 || hc.HistoryMaxBytes != 512<<20 {
		t.Fatalf("hub config: %+v", hc)
	}
}

// TestPrecedence checks defaults < file < environment < flags, one setting
// at a time.
func TestPrecedence(t *testing.T) {
	file := writeFile(t, `
listen: 127.0.0.1:9001
data_dir: /file
sse:
  heartbeat: 5s
limits:
  max_connections: 7
api_keys: [file-key]
`)
	tests := []struct {
		name  string
		file  string
		env   []string
		flags []string
		check func(Config) string
	}{
		{"default", "", nil, nil, func(c Config) string { return c.Listen + " " + c.DataDir }},
		{"file", file, nil, nil, func(c Config) string { return c.Listen + " " + c.DataDir }},
		{"env over file", file, []string{"HERALD_LISTEN=127.0.0.1:9002"}, nil, func(c Config) string { return c.Listen + " " + c.DataDir }},
		{"flags over env", file, []string{"HERALD_LISTEN=127.0.0.1:9002", "HERALD_DATA_DIR=/env"}, []string{"--listen", "127.0.0.1:9003"}, func(c Config) string { return c.Listen + " " + c.DataDir }},
		{"flag data dir", "", []string{"HERALD_DATA_DIR=/env"}, []string{"--data-dir=/flag"}, func(c Config) string { return c.Listen + " " + c.DataDir }},
		{"nested file", file, nil, nil, func(c Config) string { return c.SSE.Heartbeat.String() }},
		{"nested env", file, []string{"HERALD_SSE_HEARTBEAT=1m30s"}, nil, func(c Config) string { return c.SSE.Heartbeat.String() }},
		{"int env", file, []string{"HERALD_LIMITS_MAX_CONNECTIONS=9"}, nil, func(c Config) string { return strconv.Itoa(c.Limits.MaxConnections) }},
		{"list file", file, nil, nil, func(c Config) string { return strings.Join(c.APIKeys, "|") }},
		{"list env", file, []string{"HERALD_API_KEYS= a , b,,c "}, nil, func(c Config) string { return strings.Join(c.APIKeys, "|") }},
		{"empty env is unset", file, []string{"HERALD_LISTEN="}, nil, func(c Config) string { return c.Listen }},
		{"config file from env", "", []string{"HERALD_CONFIG=" + file}, nil, func(c Config) string { return c.Listen }},
		{"flag config beats env config", file, []string{"HERALD_CONFIG=/nonexistent.yaml"}, nil, func(c Config) string { return c.Listen }},
		{"last env value wins", "", []string{"HERALD_LISTEN=127.0.0.1:1", "HERALD_LISTEN=127.0.0.1:2"}, nil, func(c Config) string { return c.Listen }},
		{"unknown env ignored", "", []string{"HERALD_NOPE=1", "OTHER=2"}, nil, func(c Config) string { return c.Listen }},
	}
	want := map[string]string{
		"default":                      "127.0.0.1:8080 ./data",
		"file":                         "127.0.0.1:9001 /file",
		"env over file":                "127.0.0.1:9002 /file",
		"flags over env":               "127.0.0.1:9003 /env",
		"flag data dir":                "127.0.0.1:8080 /flag",
		"nested file":                  "5s",
		"nested env":                   "1m30s",
		"int env":                      "9",
		"list file":                    "file-key",
		"list env":                     "a|b|c",
		"empty env is unset":           "127.0.0.1:9001",
		"config file from env":         "127.0.0.1:9001",
		"flag config beats env config": "127.0.0.1:9001",
		"last env value wins":          "127.0.0.1:2",
		"unknown env ignored":          "127.0.0.1:8080",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			f := RegisterFlags(fs)
			if err := fs.Parse(tt.flags); err != nil {
				t.Fatal(err)
			}
			path := tt.file
			if f.ConfigFile != "" {
				path = f.ConfigFile
			}
			c, err := Load(path, tt.env, f.Apply)
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.check(c); got != want[tt.name] {
				t.Fatalf("got %q, want %q", got, want[tt.name])
			}
		})
	}
}

// TestEveryScalarHasAnEnvVar sets each setting through its environment
// variable and checks that it took effect: every scalar setting has one.
func TestEveryScalarHasAnEnvVar(t *testing.T) {
	vars := EnvVars()
	if len(vars) < 20 {
		t.Fatalf("only %d env vars: %v", len(vars), vars)
	}
	seen := map[string]bool{}
	for _, v := range vars {
		if seen[v.Name] {
			t.Fatalf("duplicate env var %s", v.Name)
		}
		seen[v.Name] = true
		var c Config
		var sample string
		walk(reflect.ValueOf(&c).Elem(), "", func(key string, f reflect.Value) {
			if key != v.Key {
				return
			}
			switch {
			case f.Type() == durationType:
				sample = "3s"
			case f.Kind() == reflect.Int:
				sample = "3"
			case f.Kind() == reflect.String:
				sample = "x"
			case f.Kind() == reflect.Slice:
				sample = "x,y"
			case f.Kind() == reflect.Bool:
				sample = "true"
			default:
				t.Fatalf("%s: unsupported kind %s", v.Key, f.Kind())
			}
		})
		if err := ApplyEnv(&c, []string{v.Name + "=" + sample}); err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if reflect.DeepEqual(c, Config{}) {
			t.Fatalf("%s=%s changed nothing", v.Name, sample)
		}
	}
	for _, name := range []string{"HERALD_LISTEN", "HERALD_DATA_DIR", "HERALD_API_KEYS", "HERALD_SSE_HEARTBEAT",
		"HERALD_LIMITS_MAX_CONNECTIONS", "HERALD_DEFAULT_NAMESPACE_HISTORY_TTL", "HERALD_WS_MAX_MESSAGE_BYTES"} {
		if !seen[name] {
			t.Errorf("missing env var %s", name)
		}
	}
}

func TestEnvErrorsReportedTogether(t *testing.T) {
	_, err := Load("", []string{"HERALD_SSE_HEARTBEAT=soon", "HERALD_LIMITS_MAX_CONNECTIONS=many"}, nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"HERALD_SSE_HEARTBEAT", "HERALD_LIMITS_MAX_CONNECTIONS", "duration", "integer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestFileErrors(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"unknown key", "listen: 127.0.0.1:1\nlisten_addr: x\n", "listen_addr"},
		{"unknown nested key", "sse:\n  heartbeats: 5s\n", "heartbeats"},
		{"unknown namespace key", "namespaces:\n  thread:\n    size: 5\n", "size"},
		{"duration without unit", "sse:\n  heartbeat: 25\n", "time.Duration"},
		{"bad duration", "shutdown_timeout: soon\n", "soon"},
		{"wrong type", "limits:\n  max_connections: lots\n", "lots"},
		{"not a mapping", "- a\n- b\n", "cannot unmarshal"},
		{"two documents", "listen: 127.0.0.1:1\n---\nlisten: 127.0.0.1:2\n", "single document"},
		{"syntax", "listen: [\n", "yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(writeFile(t, tt.body), nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), nil, nil); err == nil {
		t.Fatal("missing file: no error")
	}
	if c, err := Load(writeFile(t, ""), nil, nil); err != nil || c.Listen != DefaultListen {
		t.Fatalf("empty file: %v %q", err, c.Listen)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   []string // substrings of the error; empty means valid
	}{
		{"defaults", func(*Config) {}, nil},
		{"port zero", func(c *Config) { c.Listen = "127.0.0.1:0" }, nil},
		{"no limit", func(c *Config) { c.Limits.MaxConnections = -1 }, nil},
		{"no history", func(c *Config) { c.DefaultNamespace.HistorySize = -1; c.DefaultNamespace.HistoryTTL = -1 }, nil},
		{"namespace", func(c *Config) {
			c.Namespaces = map[string]NamespaceConfig{"thread": {HistorySize: 5}, "user.feed": {}}
		}, nil},
		{"listen", func(c *Config) { c.Listen = "localhost" }, []string{"listen"}},
		{"listen port", func(c *Config) { c.Listen = "127.0.0.1:99999" }, []string{"listen", "port"}},
		{"log", func(c *Config) { c.LogLevel = "loud"; c.LogFormat = "xml" }, []string{"log_level", "log_format"}},
		{"keys", func(c *Config) { c.APIKeys = []string{"ok", "", "a b"} }, []string{"key 2 is empty", "key 3"}},
		{"durations", func(c *Config) {
			c.ShutdownTimeout, c.SSE.Retry, c.Poll.Timeout = -1, -time.Second, -time.Second
		}, []string{"shutdown_timeout", "sse.retry", "poll.timeout"}},
		{"limits", func(c *Config) {
			c.Limits.MaxConnectionsPerIP = -1
			c.Limits.MaxChannelsPerConnection = -3
			c.Limits.MaxChannelsPerPublish = -1
			c.WS.MaxMessageBytes = 10
		}, []string{"max_connections_per_ip", "max_channels_per_connection", "max_channels_per_publish", "ws.max_message_bytes"}},
		{"queue smaller than message", func(c *Config) { c.Limits.MaxQueueBytes = c.Limits.MaxMessageBytes }, []string{"max_queue_bytes"}},
		{"history smaller than a message", func(c *Config) { c.Limits.MaxHistoryBytes = c.Limits.MaxMessageBytes }, []string{"max_history_bytes"}},
		{"no history cap", func(c *Config) { c.Limits.MaxHistoryBytes = -1 }, nil},
		{"history cap of an unused memory history", func(c *Config) {
			c.Limits.MaxMessageBytes, c.Limits.MaxQueueBytes, c.Limits.MaxHistoryBytes = 4<<20, 8<<20, 1<<20
			c.Broker, c.History = "redis://127.0.0.1:6379", "redis"
		}, nil},
		{"queue durations", func(c *Config) { c.Queue.MaxAge, c.Queue.AckWait, c.Queue.DoneMaxAge = -1, -time.Second, -time.Hour },
			[]string{"queue.max_age", "queue.ack_wait", "queue.done_max_age"}},
		{"namespaces", func(c *Config) {
			c.Namespaces = map[string]NamespaceConfig{"a:b": {}, "bad name": {}, "ok": {MaxSubscribers: -1}}
		}, []string{`namespaces.a:b`, `namespaces.bad name`, "namespaces.ok.max_subscribers"}},
		{"origins", func(c *Config) { c.WS.AllowedOrigins = []string{""} }, []string{"ws.allowed_origins"}},
		{"nats broker", func(c *Config) { c.Broker = "nats://127.0.0.1:4222"; c.History = "nats" }, nil},
		{"redis broker, memory history", func(c *Config) { c.Broker = "redis://127.0.0.1:6379"; c.History = "memory" }, []string{"history", "apart"}},
		{"nats broker, embedded jetstream history", func(c *Config) { c.Broker = "nats://127.0.0.1:4222"; c.History = "jetstream" }, []string{"history", "queue.url"}},
		{"nats broker, shared jetstream history", func(c *Config) {
			c.Broker, c.History, c.Queue.URL = "nats://127.0.0.1:4222", "jetstream", "nats://127.0.0.1:4222"
		}, nil},
		{"unknown broker", func(c *Config) { c.Broker = "kafka://x" }, []string{"broker", "kafka://x"}},
		{"history on another engine", func(c *Config) { c.Broker = "redis://127.0.0.1:6379"; c.History = "nats" }, []string{"history", "NATS broker"}},
		{"unknown history", func(c *Config) { c.History = "disk" }, []string{"history", "disk"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{}.Defaults()
			tt.mutate(&c)
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestHistoryCapFollowsMessageSize: with very large messages allowed and
// no history cap set, the default cap grows so that the configuration
// stays valid and the history can hold the largest message.
func TestHistoryCapFollowsMessageSize(t *testing.T) {
	c := Config{Limits: LimitsConfig{MaxMessageBytes: 200 << 20, MaxQueueBytes: 256 << 20}}.Defaults()
	if want := hub.MinHistoryBytes(200 << 20); int64(c.Limits.MaxHistoryBytes) != want || want <= DefaultMaxHistoryBytes {
		t.Fatalf("max_history_bytes %d, want %d (above the default %d)", c.Limits.MaxHistoryBytes, want, DefaultMaxHistoryBytes)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Limits.MaxHistoryBytes = DefaultMaxHistoryBytes
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "max_history_bytes") {
		t.Fatalf("a cap below one largest message: %v", err)
	}
}

func TestHubConfigNamespaces(t *testing.T) {
	c, err := Load(writeFile(t, `
default_namespace: {history_size: 10, history_ttl: 1m, max_subscribers: 3}
namespaces:
  thread: {history_size: 50}
limits: {max_connections: -1, max_connections_per_ip: 4}
idempotency_window: 1m
`), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := c.HubConfig(nil)
	if hc.Default.HistorySize != 10 || hc.Default.HistoryTTL != time.Minute || hc.Default.MaxSubscribers != 3 {
		t.Fatalf("default namespace: %+v", hc.Default)
	}
	if ns := hc.Namespaces["thread"]; ns.HistorySize != 50 {
		t.Fatalf("thread namespace: %+v", ns)
	}
	if hc.MaxConnections != 0 || hc.MaxConnectionsPerIP != 4 || hc.IdempotencyWindow != time.Minute {
		t.Fatalf("limits: %+v", hc)
	}
}

func TestEnsureDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	got, err := Config{DataDir: dir}.EnsureDataDir()
	if err != nil || got != dir {
		t.Fatalf("%q %v", got, err)
	}
	file := writeFile(t, "x")
	if _, err := (Config{DataDir: file}).EnsureDataDir(); err == nil {
		t.Fatal("a file as data_dir: no error")
	}
}

// TestPipelinesConfig: pipelines from the file keep their stages, get the
// default ones when they list none, and every mistake is reported.
func TestPipelinesConfig(t *testing.T) {
	c, err := Load(writeFile(t, `
pipelines:
  - name: public
  - name: moderation
    stages:
      - type: parse
      - type: route
        routes:
          - channel: "mod:forum:{data.forum}"
            types: [post.created]
      - type: publish
`), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Pipelines) != 2 || !reflect.DeepEqual(c.Pipelines[0].Stages, DefaultStages()) ||
		len(c.Pipelines[1].Stages) != 3 || c.Pipelines[1].Stages[1].Routes[0].Types[0] != "post.created" {
		t.Fatalf("pipelines %+v", c.Pipelines)
	}
	_, err = Load(writeFile(t, `
queue: {url: "http://x"}
run_pipelines: [nope]
sources:
  - {name: events, type: redis, url: "redis://x"}
  - {name: legacy, type: kafka}
pipelines:
  - name: "a b"
    stages: [{type: nope}, {type: anonymize, hash: [data.author.id]}, {type: publish, to: http, url: ftp://x}, {type: enqueue, source: events}]
  - name: dup
  - name: dup
`), nil, nil)
	if err == nil {
		t.Fatal("bad pipelines accepted")
	}
	for _, want := range []string{"queue.url", "pipelines[0].name", "pipelines[0].stages[0].type",
		"pipelines[0].stages[1].salt", "pipelines[0].stages[2].url", "pipelines[2].name",
		"sources[0].name", "sources[1].type", "pipelines[0].stages[3].source", "run_pipelines"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}

// TestHistoryFollowsBroker: with no history setting, history lives in the
// broker's engine, so a cluster resumes on any node out of the box.
func TestHistoryFollowsBroker(t *testing.T) {
	for broker, want := range map[string]string{
		"":                                "memory",
		"memory":                          "memory",
		"nats://127.0.0.1:4222":           "nats",
		"redis://127.0.0.1:6379/0":        "redis",
		"redis://10.0.0.1:1?cluster=true": "redis",
	} {
		c := Config{Broker: broker}.Defaults()
		if c.History != want {
			t.Errorf("broker %q: history %q, want %q", broker, c.History, want)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("broker %q: %v", broker, err)
		}
	}
	if c := (Config{Broker: "nats://x:1", History: "jetstream"}).Defaults(); c.History != "jetstream" {
		t.Errorf("an explicit history was overridden: %q", c.History)
	}
}
