package bench

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Limits that keep a run bounded.
const (
	// maxSocketsPerWorker keeps a worker process under the 20 000 open
	// files limit with room for pipes, the binary and the runtime.
	maxSocketsPerWorker = 19_000
	// maxPortsPerSource is what one source address can hold towards one
	// server address with the default ephemeral port range (32768–60999).
	maxPortsPerSource = 28_000
	maxWorkers        = 256
	maxSubscribers    = 10_000_000
	maxChannels       = 1_000_000
	maxSourceIPs      = 1024
	maxPublishers     = 1024
	maxPayloadBytes   = 60 << 10
	maxURLs           = 64
)

// Config is one bench run, as given on the command line.
type Config struct {
	URLs          []string      // server base URLs, loopback only, without a trailing slash; see subscriberNode and publisherNode
	Transport     string        // "sse" or "ws"
	Subscribers   int           // subscriber connections in total
	Channels      int           // channels; subscriber i listens to channel i mod Channels
	Rate          float64       // messages/s in total, round-robin over channels; 0 = idle mode
	Duration      time.Duration // measured publishing time (idle mode: holding time)
	Warmup        time.Duration // publishing before the measured window
	Drain         time.Duration // waiting after the last publish before counting
	Workers       int           // subscriber worker processes
	SourceIPs     []netip.Addr  // local addresses connections are spread over
	PayloadBytes  int           // approximate payload size
	ConnectRate   float64       // new connections/s in total; 0 = as fast as possible
	ConnectWithin time.Duration // bound on the connect phase
	APIKey        string        // Authorization: Bearer for publishing
	ServerPIDs    []int         // processes whose RSS and CPU are reported (summed)
	Publishers    int           // concurrent publish goroutines
	PublishPath   string        // "/v1/publish" (JSON body) or a path with {channel} (raw body)
	Ingest        bool          // post comment events to /v1/events; subscribers listen on their thread: channels
	Batch         int           // ingest mode: events per request
	SubscribePath string        // path with {channel}; empty = Herald's for the transport
	ChannelPrefix string        // channel names are prefix + index
	JSONPath      string        // write the report as JSON here; "-" = stdout
	InProcess     bool          // run workers as goroutines of this process
	Reader        string        // subscriber side: "epoll" (event loops, Linux) or "goroutine" (one per connection)
	Progress      bool          // print a progress line every second
}

// parseFlags parses args into a Config. It returns every problem at once.
func parseFlags(args []string, stderr io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("herald bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: herald bench [flags]\n\n"+
			"Opens subscribers over channels of a Herald server on this machine, publishes\n"+
			"messages at a fixed rate and reports deliveries/s, end-to-end latency, loss,\n"+
			"duplicates, connection rate and (with --server-pid) server memory and CPU.\n\n")
		fs.PrintDefaults()
	}
	var urls, sourceIPs, pids string
	fs.StringVar(&urls, "url", "http://127.0.0.1:8080", "server base `URL`s, comma-separated (loopback addresses only): several nodes of one cluster share the subscribers of every channel and the publishers round robin")
	fs.StringVar(&c.Transport, "transport", "sse", "subscriber transport: sse or ws")
	fs.IntVar(&c.Subscribers, "subscribers", 10000, "subscriber connections in total")
	fs.IntVar(&c.Channels, "channels", 100, "channels; subscriber i listens to channel i mod channels")
	fs.Float64Var(&c.Rate, "rate", 2000, "messages/s in total, round-robin over channels; 0 = idle mode (connect and hold)")
	fs.DurationVar(&c.Duration, "duration", 20*time.Second, "measured publishing time (idle mode: how long connections are held)")
	fs.DurationVar(&c.Warmup, "warmup", 0, "publishing before the measured window (checked for loss, not timed)")
	fs.DurationVar(&c.Drain, "drain", 3*time.Second, "wait after the last publish before counting loss")
	fs.IntVar(&c.Workers, "workers", 4, "subscriber worker processes (each holds at most 19000 connections)")
	fs.StringVar(&sourceIPs, "source-ips", "127.0.0.2-127.0.0.9", "local `addresses` connections are spread over: A, A-B, comma-separated")
	fs.IntVar(&c.PayloadBytes, "payload-bytes", 100, "approximate payload size in bytes")
	fs.Float64Var(&c.ConnectRate, "connect-rate", 0, "new connections/s in total; 0 = as fast as possible")
	fs.DurationVar(&c.ConnectWithin, "connect-timeout", 2*time.Minute, "give up when not every subscriber has connected (or failed) by then")
	fs.StringVar(&c.APIKey, "api-key", "", "API key for publishing (Authorization: Bearer)")
	fs.StringVar(&pids, "server-pid", "", "server `PID`s (comma-separated, summed) to report RSS and CPU of")
	fs.IntVar(&c.Publishers, "publishers", 16, "concurrent publish requests (each owns a share of the channels)")
	fs.StringVar(&c.PublishPath, "publish-path", "/v1/publish", "publish path: /v1/publish sends JSON with the channel; a path with {channel} sends the payload as the body")
	fs.BoolVar(&c.Ingest, "ingest", false, "ingest mode: post post.created events to /v1/events (the default pipeline routes each to thread:CHANNEL and four more channels) instead of publishing; channels are thread: channels")
	fs.IntVar(&c.Batch, "batch", 1, "ingest mode: events per request ({\"events\":[…]}), all for one channel; --rate stays events/s")
	fs.StringVar(&c.SubscribePath, "subscribe-path", "", "subscribe path with {channel}; empty = /v1/sse?channel={channel} or /v1/ws?channel={channel}")
	fs.StringVar(&c.ChannelPrefix, "channel-prefix", "", "channel name prefix; empty = bench:RUNID- (fresh channels each run)")
	fs.StringVar(&c.JSONPath, "json", "", "also write the report as JSON to `FILE` (- = stdout; the summary then goes to stderr)")
	fs.StringVar(&c.Reader, "reader", defaultReader, "subscriber side of the workers: epoll (a few event loops, Linux only) or goroutine (one goroutine per connection, net/http and gorilla/websocket)")
	fs.BoolVar(&c.InProcess, "in-process", false, "run the workers as goroutines of this process (debugging, tests)")
	fs.BoolVar(&c.Progress, "progress", true, "print a progress line on stderr every second")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	c.URLs = splitURLs(urls)
	var err error
	if c.SourceIPs, err = parseSourceIPs(sourceIPs); err != nil {
		errs = append(errs, err)
	}
	if c.ServerPIDs, err = parsePIDs(pids); err != nil {
		errs = append(errs, err)
	}
	if c.ChannelPrefix == "" {
		c.ChannelPrefix = "bench:" + runID() + "-"
	}
	if c.Ingest {
		// Each event's thread is the channel name without "thread:", and
		// the pipeline publishes it to thread:THREAD.
		if !strings.HasPrefix(c.ChannelPrefix, "thread:") {
			c.ChannelPrefix = "thread:" + c.ChannelPrefix
		}
		c.PublishPath = "/v1/events"
	}
	if c.SubscribePath == "" {
		c.SubscribePath = "/v1/" + c.Transport + "?channel={channel}"
	}
	if err := c.validate(); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// validate reports every problem of c at once.
func (c *Config) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if c.Batch < 1 || c.Batch > 1000 || (c.Batch > 1 && !c.Ingest) {
		bad("--batch %d: want 1-1000, and more than 1 only with --ingest", c.Batch)
	}
	var targets []netip.Addr
	switch {
	case len(c.URLs) == 0:
		bad("--url: at least one URL")
	case len(c.URLs) > maxURLs:
		bad("--url: %d URLs, at most %d", len(c.URLs), maxURLs)
	}
	seen := make(map[string]bool, len(c.URLs))
	for _, u := range c.URLs {
		if seen[u] {
			bad("--url %q: given twice", u)
			continue
		}
		seen[u] = true
		target, err := targetAddr(u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		targets = append(targets, target)
	}
	if c.Transport != "sse" && c.Transport != "ws" {
		bad("--transport %q: want sse or ws", c.Transport)
	}
	switch c.Reader {
	case "goroutine":
	case "epoll":
		if defaultReader != "epoll" {
			bad("--reader epoll: only on Linux; use --reader goroutine")
		}
	default:
		bad("--reader %q: want epoll or goroutine", c.Reader)
	}
	if c.Subscribers < 1 || c.Subscribers > maxSubscribers {
		bad("--subscribers %d: want 1 to %d", c.Subscribers, maxSubscribers)
	}
	if c.Channels < 1 || c.Channels > maxChannels {
		bad("--channels %d: want 1 to %d", c.Channels, maxChannels)
	}
	if c.Rate < 0 || c.Rate > 10_000_000 {
		bad("--rate %v: want 0 (idle) to 10000000", c.Rate)
	}
	if c.Duration <= 0 || c.Duration > 24*time.Hour {
		bad("--duration %v: want more than 0 and at most 24h", c.Duration)
	}
	if c.Warmup < 0 || c.Warmup > time.Hour {
		bad("--warmup %v: want 0 to 1h", c.Warmup)
	}
	if c.Drain < 0 || c.Drain > time.Hour {
		bad("--drain %v: want 0 to 1h", c.Drain)
	}
	if c.ConnectWithin <= 0 || c.ConnectWithin > 24*time.Hour {
		bad("--connect-timeout %v: want more than 0 and at most 24h", c.ConnectWithin)
	}
	if c.Workers < 1 || c.Workers > maxWorkers {
		bad("--workers %d: want 1 to %d", c.Workers, maxWorkers)
	} else if per := ceilDiv(c.Subscribers, c.Workers); per > maxSocketsPerWorker {
		bad("--subscribers %d over --workers %d is %d connections per worker: the limit is %d (20 000 open files per process); use --workers %d or more",
			c.Subscribers, c.Workers, per, maxSocketsPerWorker, ceilDiv(c.Subscribers, maxSocketsPerWorker))
	} else if c.InProcess && c.Subscribers > maxSocketsPerWorker {
		bad("--in-process runs every connection in one process: at most %d subscribers", maxSocketsPerWorker)
	}
	if len(c.SourceIPs) == 0 {
		bad("--source-ips: at least one address")
	} else if per := ceilDiv(c.Subscribers, len(c.SourceIPs)); per > maxPortsPerSource {
		bad("--source-ips: %d connections per source address exceed its ~%d ephemeral ports; give %d addresses or more",
			per, maxPortsPerSource, ceilDiv(c.Subscribers, maxPortsPerSource))
	}
	for _, ip := range c.SourceIPs {
		if !ip.IsLoopback() {
			bad("--source-ips: %v is not a loopback address", ip)
			continue
		}
		for _, target := range targets {
			if ip.Is4() != target.Is4() {
				bad("--source-ips: %v is not of the same address family as the server (%v)", ip, target)
				break
			}
		}
	}
	if c.PayloadBytes < 0 || c.PayloadBytes > maxPayloadBytes {
		bad("--payload-bytes %d: want 0 to %d", c.PayloadBytes, maxPayloadBytes)
	}
	if c.ConnectRate < 0 {
		bad("--connect-rate %v: want 0 (unlimited) or more", c.ConnectRate)
	}
	if c.Publishers < 1 || c.Publishers > maxPublishers {
		bad("--publishers %d: want 1 to %d", c.Publishers, maxPublishers)
	}
	if !strings.HasPrefix(c.PublishPath, "/") {
		bad("--publish-path %q: want a path starting with /", c.PublishPath)
	}
	if !strings.HasPrefix(c.SubscribePath, "/") || !strings.Contains(c.SubscribePath, "{channel}") {
		bad("--subscribe-path %q: want a path starting with / containing {channel}", c.SubscribePath)
	}
	if !validPrefix(c.ChannelPrefix) {
		bad("--channel-prefix %q: want at most 200 bytes of A–Z a–z 0–9 _ - . : ~", c.ChannelPrefix)
	}
	if strings.ContainsAny(c.APIKey, "\r\n") {
		bad("--api-key: must be one line")
	}
	return errors.Join(errs...)
}

// targetAddr checks that raw is an http URL whose host is a loopback
// address (or "localhost") and returns that address (127.0.0.1 for
// "localhost").
func targetAddr(raw string) (netip.Addr, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("--url %q: %v", raw, err)
	}
	if u.Scheme != "http" {
		return netip.Addr{}, fmt.Errorf("--url %q: want an http:// URL (ws:// is derived from it)", raw)
	}
	host := u.Hostname()
	if host == "localhost" {
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() {
		return netip.Addr{}, fmt.Errorf("--url %q: the host must be a loopback address (127.0.0.0/8, ::1 or localhost): the bench only loads servers on this machine", raw)
	}
	return ip.Unmap(), nil
}

// splitURLs splits the --url flag at commas, trims spaces and a trailing
// slash, and drops empty items; validate checks each URL.
func splitURLs(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSuffix(strings.TrimSpace(item), "/")
		if item != "" {
			out = append(out, item)
		}
	}
	return out
}

// parseSourceIPs parses "A", "A-B" (IPv4, inclusive) and comma-separated
// lists of them.
func parseSourceIPs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(item, "-")
		a, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("--source-ips: %q is not an address", lo)
		}
		a = a.Unmap()
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(strings.TrimSpace(hi))
		if err != nil || !a.Is4() || !b.Unmap().Is4() {
			return nil, fmt.Errorf("--source-ips: %q: a range is two IPv4 addresses A-B", item)
		}
		b = b.Unmap()
		if b.Less(a) {
			return nil, fmt.Errorf("--source-ips: %q: the range ends before it starts", item)
		}
		for ip := a; ; ip = ip.Next() {
			if len(out) >= maxSourceIPs {
				return nil, fmt.Errorf("--source-ips: more than %d addresses", maxSourceIPs)
			}
			out = append(out, ip)
			if ip == b {
				break
			}
		}
	}
	if len(out) > maxSourceIPs {
		return nil, fmt.Errorf("--source-ips: more than %d addresses", maxSourceIPs)
	}
	return out, nil
}

// parsePIDs parses a comma-separated list of process ids.
func parsePIDs(s string) ([]int, error) {
	var out []int
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		pid, err := strconv.Atoi(item)
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("--server-pid: %q is not a process id", item)
		}
		out = append(out, pid)
	}
	return out, nil
}

// runID returns 8 random base-36 characters naming this run's channels.
func runID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return strconv.FormatUint(binary.LittleEndian.Uint64(b[:])%(1<<40), 36)
}

// validPrefix reports whether p is a usable channel-name prefix: the
// channel-name characters of the protocol except '/', which some servers
// take for a path separator.
func validPrefix(p string) bool {
	if len(p) > 200 {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '-' || c == '.' || c == ':' || c == '~'
		if !ok {
			return false
		}
	}
	return true
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// channelName returns the name of channel i.
func (c *Config) channelName(i int) string { return c.ChannelPrefix + strconv.Itoa(i) }

// subscriberNode returns the index into URLs of the node subscriber i
// connects to. Subscriber i listens to channel i mod Channels and is that
// channel's subscriber number i div Channels (its rank); it connects to
// node (channel + rank) mod len(URLs). So each channel's subscribers go
// round robin over every node, and the nodes get equal shares (±1 per
// channel) — plain i mod len(URLs) would put all of a channel's
// subscribers on one node whenever the node count divides the channel
// count (30 channels over 3 nodes). With one URL it is always 0.
func (c *Config) subscriberNode(i int) int {
	return (i%c.Channels + i/c.Channels) % len(c.URLs)
}

// publisherNode returns the index into URLs of the node publisher j
// (the publish goroutine owning the channels c with c mod Publishers == j)
// sends to: j mod len(URLs). Since every channel has subscribers on every
// node, most deliveries cross nodes whatever the publisher's node.
func (c *Config) publisherNode(j int) int { return j % len(c.URLs) }

// subscribeURL returns the subscribe URL for channel name ch on node
// (an index into URLs).
func (c *Config) subscribeURL(node int, ch string) string {
	base := c.URLs[node]
	if c.Transport == "ws" {
		base = "ws" + strings.TrimPrefix(base, "http")
	}
	return base + strings.ReplaceAll(c.SubscribePath, "{channel}", url.QueryEscape(ch))
}
