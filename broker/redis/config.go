package redis

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config configures a Broker. The zero value works: a Redis on
// localhost:6379.
type Config struct {
	// URL says where Redis is and in which mode to use it (see the
	// package comment). Zero means "redis://localhost:6379".
	URL string

	// Prefix starts every Redis channel the broker uses (see the package
	// comment). Zero means "herald".
	Prefix string

	// PingInterval is how often each pub/sub connection is pinged. A
	// connection on which nothing arrives, not even the answer to a ping,
	// for about PingInterval+PingTimeout is taken as dead and replaced:
	// that bounds how long a silently lost server (no reset, e.g. a
	// network partition) goes unnoticed. PingTimeout also bounds each
	// reconnection attempt, and Unsubscribe. Zero means 5s and 5s.
	PingInterval time.Duration
	PingTimeout  time.Duration

	// Logger receives connection events (lost, reconnected) and malformed
	// messages. Nil means slog.Default().
	Logger *slog.Logger
}

// Defaults, named in the doc comments above.
const (
	defaultURL          = "redis://localhost:6379"
	defaultPrefix       = "herald"
	defaultPingInterval = 5 * time.Second
	defaultPingTimeout  = 5 * time.Second
)

func (c Config) withDefaults() Config {
	if c.URL == "" {
		c.URL = defaultURL
	}
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if c.PingInterval == 0 {
		c.PingInterval = defaultPingInterval
	}
	if c.PingTimeout == 0 {
		c.PingTimeout = defaultPingTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// validate reports every problem of c (defaults applied) and its parsed URL.
func (c Config) validate() (*endpoint, error) {
	var errs []error
	ep, err := parseURL(c.URL)
	if err != nil {
		errs = append(errs, err)
	}
	if c.PingInterval < 0 {
		errs = append(errs, fmt.Errorf("PingInterval %v: want > 0", c.PingInterval))
	}
	if c.PingTimeout < 0 {
		errs = append(errs, fmt.Errorf("PingTimeout %v: want > 0", c.PingTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("redis broker: %w", err)
	}
	return ep, nil
}
