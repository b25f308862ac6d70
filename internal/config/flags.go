package config

import (
	"flag"
	"strings"
)

// Flags are the command-line settings of `herald serve`. Given flags take
// precedence over the file and the environment; flags not given change
// nothing.
type Flags struct {
	// ConfigFile is the --config value: the YAML file to load, or empty.
	ConfigFile string

	listen    string
	dataDir   string
	pipelines string
	broker    string
	history   string
	nodeID    string
	fs        *flag.FlagSet
}

// RegisterFlags defines --config, --listen, --data-dir, --pipelines,
// --broker, --history and --node-id on fs.
func RegisterFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	fs.StringVar(&f.ConfigFile, "config", "", "YAML configuration `file` (default $"+EnvConfigFile+")")
	fs.StringVar(&f.listen, "listen", "", "listen `address` (default "+DefaultListen+")")
	fs.StringVar(&f.dataDir, "data-dir", "", "data `directory` (default "+DefaultDataDir+")")
	fs.StringVar(&f.pipelines, "pipelines", "", "run only these pipelines (comma-separated `names`; default all)")
	fs.StringVar(&f.broker, "broker", "", "broker between nodes: memory, nats://… or redis://… (`URL`, default memory)")
	fs.StringVar(&f.history, "history", "", "channel history: memory, jetstream, nats or redis (`store`, default follows the broker)")
	fs.StringVar(&f.nodeID, "node-id", "", "this node's `id` in the cluster view (default host name and a random suffix)")
	return f
}

// Apply sets the settings whose flags were given on the command line. Pass
// it to Load as the override.
func (f *Flags) Apply(c *Config) {
	f.fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "listen":
			c.Listen = f.listen
		case "data-dir":
			c.DataDir = f.dataDir
		case "broker":
			c.Broker = f.broker
		case "history":
			c.History = f.history
		case "node-id":
			c.NodeID = f.nodeID
		case "pipelines":
			c.RunPipelines = nil
			for _, n := range strings.Split(f.pipelines, ",") {
				if n = strings.TrimSpace(n); n != "" {
					c.RunPipelines = append(c.RunPipelines, n)
				}
			}
		}
	})
}
