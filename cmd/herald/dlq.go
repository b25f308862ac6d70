package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/heraldhq/herald/api"
	"github.com/heraldhq/herald/internal/httpx"
)

// Environment variables of `herald dlq`.
const (
	envURL    = "HERALD_URL"
	envAPIKey = "HERALD_API_KEY"
)

const defaultURL = "http://127.0.0.1:8080"

// Time limits of one admin request. A replay of every dead letter can be
// long; the server finishes it even if we stop waiting.
const (
	dlqTimeout    = time.Minute
	replayTimeout = 6 * time.Minute
)

func dlqUsage(w io.Writer) {
	fmt.Fprintf(w, `Usage:
  herald dlq list PIPELINE [--limit N] [--json]   the oldest dead letters first
  herald dlq replay PIPELINE [SEQ...]             put them back in the pipeline (all without SEQ)
  herald dlq drop PIPELINE SEQ                    delete one for good

Every command talks to a running server's admin API:
  --url URL        the server (env %s, default %s)
  --api-key KEY    its API key (env %s); without keys the server answers loopback only
`, envURL, defaultURL, envAPIKey)
}

// dlq runs `herald dlq list|replay|drop` and returns the exit code: 0 done,
// 1 the server refused or could not be reached, 2 bad usage.
func dlq(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		dlqUsage(stderr)
		return 2
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "list":
		return dlqList(ctx, rest, stdout, stderr)
	case "replay":
		return dlqReplay(ctx, rest, stdout, stderr)
	case "drop":
		return dlqDrop(ctx, rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		dlqUsage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "herald dlq: unknown command %q\n\n", cmd)
		dlqUsage(stderr)
		return 2
	}
}

// dlqFlags are the flags of every dlq command.
type dlqFlags struct {
	fs     *flag.FlagSet
	url    string
	apiKey string
}

func newDLQFlags(cmd string, stderr io.Writer) *dlqFlags {
	f := &dlqFlags{fs: flag.NewFlagSet("dlq "+cmd, flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.fs.StringVar(&f.url, "url", envOr(envURL, defaultURL), "the server's URL (env "+envURL+")")
	// Not defaulted from the environment: -h would print the key.
	f.fs.StringVar(&f.apiKey, "api-key", "", "the server's API key (env "+envAPIKey+")")
	f.fs.Usage = func() {
		dlqUsage(stderr)
		fmt.Fprintf(stderr, "\nFlags of %s:\n", cmd)
		f.fs.PrintDefaults()
	}
	return f
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// parse parses args, flags and arguments in any order, and checks that
// the arguments number from least to most (most < 0: no limit). On
// failure it has printed why and returns the exit code, else -1.
func (f *dlqFlags) parse(args []string, least, most int) ([]string, *adminClient, int) {
	var pos []string
	for {
		if err := f.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil, 0
			}
			return nil, nil, 2
		}
		rest := f.fs.Args()
		if len(rest) == 0 {
			break
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
	name := "herald " + f.fs.Name()
	switch {
	case len(pos) < least:
		fmt.Fprintf(f.fs.Output(), "%s: missing arguments\n\n", name)
		f.fs.Usage()
		return nil, nil, 2
	case most >= 0 && len(pos) > most:
		fmt.Fprintf(f.fs.Output(), "%s: unexpected argument %q\n", name, pos[most])
		return nil, nil, 2
	}
	if f.apiKey == "" {
		f.apiKey = os.Getenv(envAPIKey)
	}
	c, err := newAdminClient(f.url, f.apiKey)
	if err != nil {
		fmt.Fprintf(f.fs.Output(), "%s: %v\n", name, err)
		return nil, nil, 2
	}
	return pos, c, -1
}

// parseSeq parses a dead letter's sequence number.
func parseSeq(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a dead letter's sequence number (a positive integer)", s)
	}
	return n, nil
}

func dlqList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newDLQFlags("list", stderr)
	limit := f.fs.Int("limit", api.DefaultDeadLetterLimit, fmt.Sprintf("how many to show, at most %d", api.MaxDeadLetterLimit))
	asJSON := f.fs.Bool("json", false, "print the dead letters as JSON, whole")
	pos, c, code := f.parse(args, 1, 1)
	if code >= 0 {
		return code
	}
	if *limit < 1 || *limit > api.MaxDeadLetterLimit {
		fmt.Fprintf(stderr, "herald dlq list: --limit must be from 1 to %d\n", api.MaxDeadLetterLimit)
		return 2
	}
	var list api.DeadLetterList
	path := c.deadLetters(pos[0]) + "?limit=" + strconv.Itoa(*limit)
	if err := c.do(ctx, dlqTimeout, http.MethodGet, path, nil, &list); err != nil {
		fmt.Fprintf(stderr, "herald dlq list: %v\n", err)
		return 1
	}
	if len(list.DeadLetters) == *limit {
		fmt.Fprintf(stderr, "(the oldest %d; there may be more: --limit)\n", *limit)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(list); err != nil {
			fmt.Fprintf(stderr, "herald dlq list: %v\n", err)
			return 1
		}
		return 0
	}
	if len(list.DeadLetters) == 0 {
		fmt.Fprintf(stdout, "pipeline %s has no dead letters\n", pos[0])
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tEVENT ID\tTYPE\tATTEMPTS\tAGE\tERROR")
	now := time.Now()
	for _, dl := range list.DeadLetters {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\n", dl.Seq, cell(dl.Event.ID, 40), cell(dl.Event.Type, 30),
			dl.Attempts, age(now.Sub(dl.At)), cell(dl.Error, 100))
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "herald dlq list: %v\n", err)
		return 1
	}
	return 0
}

func dlqReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newDLQFlags("replay", stderr)
	pos, c, code := f.parse(args, 1, -1)
	if code >= 0 {
		return code
	}
	var req api.ReplayRequest
	for _, s := range pos[1:] {
		seq, err := parseSeq(s)
		if err != nil {
			fmt.Fprintf(stderr, "herald dlq replay: %v\n", err)
			return 2
		}
		req.Seqs = append(req.Seqs, seq)
	}
	var body any // none: replay all
	if len(req.Seqs) > 0 {
		body = req
	}
	var res api.ReplayResult
	err := c.do(ctx, replayTimeout, http.MethodPost, c.deadLetters(pos[0])+"/replay", body, &res)
	var ae *adminError
	if errors.As(err, &ae) {
		// A replay that stopped part way says how far it got.
		_ = json.Unmarshal(ae.body, &res)
	}
	if err == nil || res.Replayed > 0 {
		fmt.Fprintf(stdout, "replayed %d dead letter%s of pipeline %s\n", res.Replayed, plural(res.Replayed), pos[0])
	}
	if err != nil {
		fmt.Fprintf(stderr, "herald dlq replay: %v\n", err)
		return 1
	}
	return 0
}

func dlqDrop(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newDLQFlags("drop", stderr)
	pos, c, code := f.parse(args, 2, 2)
	if code >= 0 {
		return code
	}
	seq, err := parseSeq(pos[1])
	if err != nil {
		fmt.Fprintf(stderr, "herald dlq drop: %v\n", err)
		return 2
	}
	path := c.deadLetters(pos[0]) + "/" + strconv.FormatUint(seq, 10)
	if err := c.do(ctx, dlqTimeout, http.MethodDelete, path, nil, nil); err != nil {
		fmt.Fprintf(stderr, "herald dlq drop: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "dropped dead letter %d of pipeline %s\n", seq, pos[0])
	return 0
}

// adminClient calls a server's admin API.
type adminClient struct {
	base   *url.URL
	apiKey string
	http   *http.Client
}

func newAdminClient(raw, apiKey string) (*adminClient, error) {
	u, err := url.Parse(strings.TrimRight(raw, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--url %q: want http://HOST:PORT or https://HOST", raw)
	}
	return &adminClient{base: u, apiKey: apiKey, http: &http.Client{}}, nil
}

// deadLetters is the path of pipeline's dead letters.
func (c *adminClient) deadLetters(pipeline string) string {
	return "/v1/admin/pipelines/" + url.PathEscape(pipeline) + "/dead-letters"
}

// adminError is an error answer of the server.
type adminError struct {
	status int
	code   string
	msg    string
	body   []byte
}

func (e *adminError) Error() string {
	if e.code == "" {
		return fmt.Sprintf("the server answered %d %s", e.status, http.StatusText(e.status))
	}
	return fmt.Sprintf("%s (%d %s)", e.msg, e.status, e.code)
}

// do sends a request with in (nil: no body) as JSON and decodes a 2xx
// answer into out (nil: ignored). Other answers are *adminError.
func (c *adminClient) do(ctx context.Context, timeout time.Duration, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // without the method and URL
		}
		return fmt.Errorf("cannot reach the server at %s: %w", c.base.Redacted(), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		ae := &adminError{status: resp.StatusCode, body: b}
		var eb httpx.ErrorBody
		if json.Unmarshal(b, &eb) == nil {
			ae.code, ae.msg = eb.Error.Code, eb.Error.Message
		}
		return ae
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the server's answer is not what herald expects: %w", err)
	}
	return nil
}

// cell makes s fit a table cell: control characters become spaces, and
// past width runes it is cut with "…".
func cell(s string, width int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > width {
		return string(r[:width-1]) + "…"
	}
	return s
}

// age formats d with its two largest units: 42s, 5m3s, 2h10m, 3d4h.
func age(d time.Duration) string {
	d = max(d, 0).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", d/time.Minute, d%time.Minute/time.Second)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	}
	return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
