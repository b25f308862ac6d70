package redis

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	goredis "github.com/redis/go-redis/v9"
)

// The broker's own URL query parameters; every other parameter is go-redis's
// (see goredis.ParseURL and goredis.ParseClusterURL).
const (
	paramSharded = "sharded"
	paramCluster = "cluster"
)

// dialAttempts replaces go-redis's default of 5 dial attempts 100ms apart
// per connection: with it, and go-redis's 3 retries of a command, a Publish
// while Redis is down takes about 2s before it fails, holding the hub's
// lock on the channel; with 1, about 100ms. The pub/sub connections retry
// with a backoff of their own.
const dialAttempts = 1

// endpoint is a parsed Config.URL.
type endpoint struct {
	sharded bool
	cluster bool
	opts    *goredis.Options        // a single server; nil in cluster mode
	copts   *goredis.ClusterOptions // cluster mode; nil otherwise
	engine  string                  // Health.Engine: addresses, never credentials
}

// parseURL parses a broker URL (see the package comment). Its errors never
// repeat the URL: it may hold a password.
func parseURL(raw string) (*endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL
		}
		return nil, fmt.Errorf("URL: %w", err)
	}
	if u.Opaque != "" {
		return nil, errors.New(`URL: want redis://host:port, rediss:// or unix://`)
	}
	q := u.Query()
	ep := &endpoint{}
	var errs []error
	for _, p := range [...]struct {
		name string
		dst  *bool
	}{{paramSharded, &ep.sharded}, {paramCluster, &ep.cluster}} {
		vs, ok := q[p.name]
		if !ok {
			continue
		}
		v, err := strconv.ParseBool(vs[len(vs)-1])
		if err != nil {
			errs = append(errs, fmt.Errorf("URL: %s=%q: want true or false", p.name, vs[len(vs)-1]))
		}
		*p.dst = v
		q.Del(p.name)
	}
	u.RawQuery = q.Encode()

	if ep.cluster {
		if u.Scheme == "unix" {
			errs = append(errs, errors.New("URL: cluster=true needs redis:// or rediss://, not unix://"))
		}
		if strings.Trim(u.Path, "/") != "" {
			errs = append(errs, errors.New("URL: a Redis Cluster has no databases: remove the /db path"))
		}
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		copts, err := goredis.ParseClusterURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("URL: %w", err)
		}
		copts.ContextTimeoutEnabled = true // Publish honours its ctx
		if copts.DialerRetries == 0 {
			copts.DialerRetries = dialAttempts
		}
		ep.copts = copts
		ep.engine = "redis cluster " + strings.Join(copts.Addrs, ",")
	} else {
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		opts, err := goredis.ParseURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("URL: %w", err)
		}
		opts.ContextTimeoutEnabled = true
		opts.DialerRetries = dialAttempts // not a URL option for one server
		ep.opts = opts
		ep.engine = "redis " + opts.Addr
	}
	if ep.sharded {
		ep.engine += " sharded"
	}
	return ep, nil
}
