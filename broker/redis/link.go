package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/broker"
)

// A link is one pub/sub connection and the two goroutines that own it: the
// receive loop, the only reader of the connection, which hands messages to
// the handler, and the pinger. go-redis's PubSub reconnects by itself on the
// next Receive after an error and subscribes again to every channel it
// holds, in one SUBSCRIBE (or SSUBSCRIBE) written before anything else on
// the new connection; the link adds what go-redis leaves out:
//
//   - confirmation: Subscribe writes SUBSCRIBE then PING <token> on the
//     same connection and returns once the receive loop reads the PONG
//     <token>. Redis answers commands in order, so the channel is
//     subscribed by then — whichever connection the PING went out on,
//     since a new connection subscribes again to every channel before the
//     PING. (The *goredis.Subscription confirmations cannot be matched to
//     one call: a confirmation left over from an earlier call, or from a
//     resubscription, looks the same.)
//   - state: the link is up from the PONG of the PING the receive loop
//     writes after each (re)connection — every subscription is restored by
//     then — until a read fails. Health reads it without touching the
//     network.
//   - dead-server detection: the pinger PINGs every PingInterval, and a
//     read that gets nothing, not even a PONG, for about
//     PingInterval+PingTimeout fails, which go-redis treats as a broken
//     connection: it closes it and the next Receive dials again.
//   - backoff between reconnection attempts, and a reconnection count.
type link struct {
	b       *Broker
	ps      *goredis.PubSub
	sharded bool   // SSUBSCRIBE instead of SUBSCRIBE
	addr    string // the server (the node, with sharded pub/sub on a cluster), for logs

	up  atomic.Bool   // see "state" above; written under mu
	seq atomic.Uint64 // PING tokens

	mu         sync.Mutex
	changed    chan struct{}         // closed and replaced by setUp and setDown; guarded by mu
	waiters    map[string]chan error // PING token → Subscribe waiting for its PONG; guarded by mu
	everUp     bool                  // guarded by mu
	reconnects uint64                // guarded by mu
	lastErr    error                 // the last connection error while down; guarded by mu
}

// Ping payloads. Tokens end with a number unique to the link.
const (
	tokenSync = "herald:sync:" // a Subscribe's confirmation
	tokenUp   = "herald:up:"   // the receive loop's, after (re)connecting
	tokenBeat = "herald:ping"  // the pinger's
)

// Reconnection backoff: doubles from minBackoff to maxBackoff, with jitter.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

// errConnLost wakes the Subscribe calls waiting on a connection that broke.
var errConnLost = errors.New("connection lost before the server confirmed")

// newLink starts a link on ps. b.mu must be held and b not closed, so that
// the goroutines are tracked before Shutdown waits for them.
func (b *Broker) newLink(ps *goredis.PubSub, sharded bool, addr string) *link {
	l := &link{
		b:       b,
		ps:      ps,
		sharded: sharded,
		addr:    addr,
		changed: make(chan struct{}),
		waiters: make(map[string]chan error),
	}
	b.goFunc(l.receiveLoop)
	b.goFunc(l.pinger)
	return l
}

func (l *link) token(prefix string) string {
	return prefix + strconv.FormatUint(l.seq.Add(1), 10)
}

// receiveLoop reads the connection until the broker shuts down.
func (l *link) receiveLoop() {
	cfg := &l.b.cfg
	// Every read runs under a deadline at least PingInterval+PingTimeout/2
	// away; renewing it costs a context, so it is renewed only once it is
	// nearer than that, at most every PingTimeout/2.
	rd := readDeadline{window: cfg.PingInterval + cfg.PingTimeout, renewBelow: cfg.PingInterval + cfg.PingTimeout/2}
	defer rd.stop()
	var (
		backoff time.Duration
		upToken string // the PING whose PONG makes the link up; "" when up
	)
	for {
		if l.b.stopping() {
			return
		}
		if !l.up.Load() && upToken == "" {
			// (Re)connect: the PING makes go-redis dial, if it has no
			// connection, and subscribe again to every channel first.
			upToken = l.token(tokenUp)
			ctx, cancelPing := context.WithTimeout(context.Background(), cfg.PingTimeout)
			err := l.ps.Ping(ctx, upToken)
			cancelPing()
			if err != nil {
				upToken = ""
				l.setDown(err)
				if !l.sleep(&backoff) {
					return
				}
				continue
			}
		}
		msg, err := l.ps.Receive(rd.ctx())
		if err != nil {
			if l.b.stopping() {
				return
			}
			var rerr goredis.Error
			if errors.As(err, &rerr) && l.up.Load() {
				// An error reply on a working connection, e.g. to a
				// SSUBSCRIBE of a slot the node no longer serves.
				l.b.log.Warn("redis broker: error from the server", "node", l.addr, "err", err)
				continue
			}
			upToken = ""
			l.setDown(err)
			if !l.sleep(&backoff) {
				return
			}
			continue
		}
		switch msg := msg.(type) {
		case *goredis.Message:
			l.b.deliver(msg)
		case *goredis.Pong:
			switch {
			case upToken != "" && msg.Payload == upToken:
				upToken, backoff = "", 0
				l.setUp()
			case strings.HasPrefix(msg.Payload, tokenSync):
				l.wake(msg.Payload, nil)
			}
		case *goredis.Subscription:
			if msg.Kind == "sunsubscribe" && l.b.subscribedAt(msg.Channel) == l {
				// Unasked: the slot moved to another node (resharding).
				// Following it is left to a later version; see the
				// package comment.
				l.b.log.Warn("redis broker: the server dropped a sharded subscription (slot moved?)",
					"node", l.addr, "channel", msg.Channel)
			}
		}
	}
}

// readDeadline is the context of the receive loop's reads: its deadline is
// always at least renewBelow away, at most window.
type readDeadline struct {
	window, renewBelow time.Duration

	c      context.Context
	cancel context.CancelFunc
	at     time.Time
}

func (r *readDeadline) ctx() context.Context {
	if now := time.Now(); r.at.Sub(now) < r.renewBelow {
		r.stop()
		r.at = now.Add(r.window)
		r.c, r.cancel = context.WithDeadline(context.Background(), r.at)
	}
	return r.c
}

func (r *readDeadline) stop() {
	if r.cancel != nil {
		r.cancel()
	}
}

// setUp marks the link up and wakes the Subscribe calls waiting for it.
func (l *link) setUp() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.everUp {
		l.reconnects++
		l.b.log.Info("redis broker: reconnected", "node", l.addr, "reconnects", l.reconnects)
	}
	l.everUp = true
	l.lastErr = nil
	l.up.Store(true)
	close(l.changed)
	l.changed = make(chan struct{})
}

// setDown marks the link down after err and fails the Subscribe calls
// waiting for a PONG: it may never come.
func (l *link) setDown(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.everUp && l.lastErr == nil {
		l.b.log.Warn("redis broker: cannot connect; retrying", "node", l.addr, "err", err)
	}
	if l.up.Load() {
		l.b.log.Warn("redis broker: connection lost; reconnecting", "node", l.addr, "err", err)
		l.up.Store(false)
	}
	l.lastErr = err
	// Wake the Subscribe calls waiting for a first connection: it failed.
	close(l.changed)
	l.changed = make(chan struct{})
	for token, w := range l.waiters {
		w <- errConnLost
		delete(l.waiters, token)
	}
}

// wake hands err to the Subscribe waiting for token's PONG, if any.
func (l *link) wake(token string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w, ok := l.waiters[token]; ok {
		w <- err
		delete(l.waiters, token)
	}
}

// sleep waits out the next backoff step; false if the broker is shutting
// down.
func (l *link) sleep(backoff *time.Duration) bool {
	*backoff = min(max(2**backoff, minBackoff), maxBackoff)
	d := *backoff/2 + rand.N(*backoff/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.b.done:
		return false
	}
}

// pinger PINGs the connection every PingInterval while the link is up,
// so that a dead server shows as a read that times out. Its PONG goes to
// the receive loop. While the link is down, the receive loop is busy
// reconnecting and the pinger keeps out of its way.
func (l *link) pinger() {
	t := time.NewTicker(l.b.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-l.b.done:
			return
		case <-t.C:
		}
		if !l.up.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.b.cfg.PingTimeout)
		// A failed write makes go-redis close the connection; the receive
		// loop sees it.
		_ = l.ps.Ping(ctx, tokenBeat)
		cancel()
	}
}

// state returns the link's health.
func (l *link) state() (up bool, reconnects uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.up.Load(), l.reconnects, l.lastErr
}

// subscribe subscribes to the Redis channel rch and returns once the
// server has confirmed it. While the link is connecting for the first time
// it waits for the outcome; while it is down after an error it fails at
// once, with an error wrapping ErrNotConnected: the hub reports that to
// the client instead of holding it until Redis is back.
func (l *link) subscribe(ctx context.Context, rch string) error {
	for {
		l.mu.Lock()
		up, everUp, lastErr, changed := l.up.Load(), l.everUp, l.lastErr, l.changed
		l.mu.Unlock()
		if up {
			break
		}
		if everUp || lastErr != nil {
			return notConnected(lastErr)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-l.b.done:
			return broker.ErrClosed
		}
	}
	var err error
	if l.sharded {
		err = l.ps.SSubscribe(ctx, rch)
	} else {
		err = l.ps.Subscribe(ctx, rch)
	}
	if err == nil {
		err = l.confirm(ctx)
	}
	if err != nil {
		// go-redis keeps the channel even when the command could not be
		// written, and would subscribe it again on the next connection:
		// take it back. The hub does not call Unsubscribe after a failed
		// Subscribe.
		l.unsubscribe(context.WithoutCancel(ctx), rch)
		if ctx.Err() == nil && !errors.Is(err, broker.ErrClosed) {
			err = notConnected(err) // the command or its PING was not written, or the connection broke
		}
		return err
	}
	return nil
}

// confirm writes PING <token> after the SUBSCRIBE and waits for its PONG.
func (l *link) confirm(ctx context.Context) error {
	token := l.token(tokenSync)
	w := make(chan error, 1)
	l.mu.Lock()
	if !l.up.Load() {
		l.mu.Unlock()
		return errConnLost
	}
	l.waiters[token] = w
	l.mu.Unlock()
	defer l.wake(token, nil) // unregister, if still there

	if err := l.ps.Ping(ctx, token); err != nil {
		return err
	}
	select {
	case err := <-w:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-l.b.done:
		return broker.ErrClosed
	}
}

// unsubscribe drops rch: go-redis forgets it at once, so a new connection
// does not subscribe it again, and writes UNSUBSCRIBE if it can. If the
// write fails the connection is replaced, without rch, so the outcome is
// the same and the error is only logged.
func (l *link) unsubscribe(ctx context.Context, rch string) {
	ctx, cancel := context.WithTimeout(ctx, l.b.cfg.PingTimeout)
	defer cancel()
	var err error
	if l.sharded {
		err = l.ps.SUnsubscribe(ctx, rch)
	} else {
		err = l.ps.Unsubscribe(ctx, rch)
	}
	if err != nil && !l.b.stopping() {
		l.b.log.Debug("redis broker: UNSUBSCRIBE not written; the connection is replaced without it",
			"node", l.addr, "channel", rch, "err", err)
	}
}

func notConnected(cause error) error {
	if cause == nil {
		return ErrNotConnected
	}
	return fmt.Errorf("%w: %w", ErrNotConnected, cause)
}
