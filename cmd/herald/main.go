// Command herald is Herald's single binary: `herald serve` runs the server,
// `herald bench` the load tool, `herald dlq` manages a running server's
// dead letters, `herald version` prints the version.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/heraldhq/herald/internal/app"
	"github.com/heraldhq/herald/internal/bench"
	"github.com/heraldhq/herald/internal/config"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
// When empty, the module version from the build info is used, else "dev".
var version string

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		return serve(ctx, rest, stderr)
	case "dlq":
		return dlq(ctx, rest, stdout, stderr)
	case "bench":
		// The load tool lives in internal/bench; it owns its flags.
		return bench.Main(ctx, rest, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "herald %s\n", buildVersion())
		return 0
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 && rest[0] == "serve" {
			serveUsage(stdout, nil)
			return 0
		}
		if len(rest) > 0 && rest[0] == "dlq" {
			dlqUsage(stdout)
			return 0
		}
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "herald: unknown command %q\n\n", cmd)
		usage(stderr)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Herald — realtime event distribution server.

Usage:
  herald serve [--listen ADDR] [--config FILE] [--data-dir DIR] [--pipelines A,B]
                           [--broker URL] [--history STORE] [--node-id ID]
                           --pipelines: run only these pipelines (stages in separate processes)
  herald bench [flags]     load test a running server (herald bench -h)
  herald dlq list|replay|drop PIPELINE ...
                           a running server's dead letters (herald help dlq)
  herald version
  herald help [serve|dlq]
`)
}

// serveUsage prints the serve flags (from fs, when given) and every
// setting's environment variable.
func serveUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "Usage: herald serve [--listen ADDR] [--config FILE] [--data-dir DIR] [--pipelines A,B] [--broker URL] [--history STORE] [--node-id ID]")
	fmt.Fprintln(w, "\nPrecedence: defaults < YAML file < environment < flags.")
	if fs == nil {
		fs = flag.NewFlagSet("serve", flag.ContinueOnError)
		config.RegisterFlags(fs)
	}
	fmt.Fprintln(w, "\nFlags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprintln(w, "\nEnvironment (file key in parentheses):")
	fmt.Fprintf(w, "  %s (the --config file)\n", config.EnvConfigFile)
	for _, v := range config.EnvVars() {
		fmt.Fprintf(w, "  %s (%s)\n", v.Name, v.Key)
	}
}

// serve runs the server until SIGINT or SIGTERM, then shuts down within
// shutdown_timeout. A second signal during shutdown kills the process.
func serve(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := config.RegisterFlags(fs)
	fs.Usage = func() { serveUsage(stderr, fs) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "herald serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := config.Load(flags.ConfigFile, os.Environ(), flags.Apply)
	if err != nil {
		fmt.Fprintf(stderr, "herald: %v\n", err)
		return 2
	}
	log := cfg.NewLogger(stderr)

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // restore default handling: a second signal kills

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Error("cannot listen", "addr", cfg.Listen, "err", err)
		return 1
	}
	a, err := app.New(cfg, log, app.WithVersion(buildVersion()))
	if err != nil {
		ln.Close()
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := a.Run(ctx, ln); err != nil {
		log.Error("shutdown was not clean", "err", err)
		return 1
	}
	return 0
}

// buildVersion returns version, else the main module's version from the
// build info (with the VCS revision for development builds), else "dev".
func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "dev+" + s.Value[:12]
		}
	}
	return "dev"
}
