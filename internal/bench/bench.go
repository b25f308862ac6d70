// Package bench is the load tool behind `herald bench`.
//
// It opens many subscribers (SSE or WebSocket) over a set of channels of a
// server on this machine, publishes messages at a fixed rate, and reports
// deliveries/s, end-to-end latency, loss, duplicates, the connection rate
// and — given the server's pid — its memory per connection and deliveries
// per CPU-second.
//
// Process model: the parent re-executes its own binary as worker
// processes ("herald bench --worker", see launcher.go) and gives each a
// contiguous block of subscribers; subscriber i listens to channel
// i mod channels and connects from source address i mod len(source-ips),
// so every worker spreads over every channel and address. With several
// --url base URLs (the nodes of one cluster), subscriber i connects to
// node (i mod channels + i div channels) mod nodes, so that every channel
// has subscribers on every node, and publisher j sends to node j mod nodes
// (config.go, subscriberNode and publisherNode). Parent and
// workers talk JSON lines over the workers' stdin and stdout
// (protocol.go). Workers measure latency (the payload carries its send
// time; one machine, one clock) into mergeable histograms and track every
// subscriber's sequence numbers; after the drain the parent tells them
// what was published to each channel and merges their verdicts.
//
// A worker holds its connections with one of two readers (--reader): on
// Linux by default a few epoll event loops over raw non-blocking sockets,
// with hand-written HTTP/1.1 and WebSocket handshakes and incremental SSE
// (chunked) and WebSocket frame decoders (reader_epoll_linux.go,
// handshake.go, stream_sse.go, stream_ws.go), so that the load tool costs
// little CPU next to the server it measures; or a goroutine per
// connection over net/http and gorilla/websocket (subscriber_sse.go,
// subscriber_ws.go), everywhere. Workers report their own CPU time, which
// the report shows as the client CPU.
package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
)

// Main runs `herald bench` with args (the arguments after "bench") and
// returns the exit code: 0 when the run was clean, 1 when it failed or
// found loss, duplicates or errors, 2 for bad flags.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == workerFlag {
		return runWorker(ctx, os.Stdin, stdout, stderr)
	}
	// Progress lines, worker processes' stderr (copied by os/exec) and
	// in-process workers all write to stderr concurrently.
	stderr = &syncWriter{w: stderr}
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintf(stderr, "herald bench: %s\n", line)
		}
		return 2
	}
	rep, err := run(ctx, &cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "herald bench: %v\n", err)
		return 1
	}
	text := stdout
	if cfg.JSONPath == "-" {
		text = stderr
	}
	if err := rep.WriteText(text); err != nil {
		fmt.Fprintf(stderr, "herald bench: %v\n", err)
		return 1
	}
	if err := writeJSON(rep, cfg.JSONPath, stdout); err != nil {
		fmt.Fprintf(stderr, "herald bench: %v\n", err)
		return 1
	}
	if !rep.OK {
		return 1
	}
	return 0
}

// writeJSON writes rep to path ("-" = stdout; "" = nowhere).
func writeJSON(rep *Report, path string, stdout io.Writer) error {
	switch path {
	case "":
		return nil
	case "-":
		return rep.WriteJSON(stdout)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := rep.WriteJSON(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncWriter serialises writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer // guarded by mu
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
