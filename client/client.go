// Package client is the Go client of Herald: it publishes events and
// subscribes to channels over SSE or WebSocket, resuming after a dropped
// connection from where it left off (see docs/protocol.md).
//
//	c := client.New("http://127.0.0.1:8080", client.WithAPIKey(key))
//	_, err := c.Publish(ctx, client.Publication{Channels: []string{"thread:42"}, Type: "post.created", Data: post})
//
//	sub, err := c.Subscribe(ctx, client.SubscribeOptions{
//		Channels: []string{"thread:42"},
//		OnEvent:  func(ev client.Event) { … },
//		OnGap:    func(channels []string) { /* reload state */ },
//	})
//	defer sub.Close()
//
// The package depends only on the standard library and gorilla/websocket.
package client

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// dialTimeout bounds connecting a TCP socket.
	dialTimeout = 10 * time.Second
	// handshakeTimeout bounds the wait for a subscribe response's headers
	// or the WebSocket upgrade; the stream itself has no time limit.
	handshakeTimeout = 30 * time.Second
	// publishTimeout is the default client's limit for one publish.
	publishTimeout = 30 * time.Second
)

// Client talks to one Herald server. It is safe for concurrent use; share
// one Client between goroutines so that connections are reused.
type Client struct {
	base   string // base URL without a trailing '/'
	apiKey string
	hc     *http.Client // for publishing and, without a local address, as the base of streams

	mu      sync.Mutex
	streams map[string]*streamer // by local address; guarded by mu
}

// streamer opens subscription connections from one local address. It is
// created once per address and shared by every subscription using it.
type streamer struct {
	http *http.Client // no overall timeout: an SSE response lasts as long as the subscription
	ws   *websocket.Dialer
}

// Option configures a Client.
type Option func(*Client)

// New returns a client of the Herald server at baseURL, for example
// "http://127.0.0.1:8080".
func New(baseURL string, opts ...Option) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/")}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Publishers are often concurrent; the default of 2 idle
		// connections per host would close and re-dial most of them.
		t.MaxIdleConnsPerHost = 128
		c.hc = &http.Client{Transport: t, Timeout: publishTimeout}
	}
	return c
}

// WithAPIKey sends key as "Authorization: Bearer KEY" with every request.
func WithAPIKey(key string) Option {
	return func(c *Client) { c.apiKey = key }
}

// WithHTTPClient makes the client publish with hc. Subscriptions use hc's
// transport (an *http.Transport is cloned when a local address is set) but
// not its Timeout, which would cut long-lived streams. Nil keeps the
// default.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.hc = hc }
}

// streamer returns the connection factory for subscriptions from local, an
// IP address or "" for the system's choice.
func (c *Client) streamer(local string) (*streamer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.streams[local]; st != nil {
		return st, nil
	}
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	if local != "" {
		ip := net.ParseIP(local)
		if ip == nil {
			return nil, fmt.Errorf("client: invalid local address %q", local)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}

	base, ok := c.hc.Transport.(*http.Transport)
	if !ok {
		base = http.DefaultTransport.(*http.Transport)
	}
	var rt http.RoundTripper
	switch {
	case local == "" && c.hc.Transport != nil:
		rt = c.hc.Transport // the caller's transport, as given
	default:
		t := base.Clone()
		t.DialContext = d.DialContext
		t.ResponseHeaderTimeout = handshakeTimeout
		rt = t
	}
	st := &streamer{
		http: &http.Client{Transport: rt, Jar: c.hc.Jar, CheckRedirect: c.hc.CheckRedirect},
		ws: &websocket.Dialer{
			NetDialContext:   d.DialContext,
			Proxy:            base.Proxy,
			TLSClientConfig:  base.TLSClientConfig.Clone(),
			HandshakeTimeout: handshakeTimeout,
			Jar:              c.hc.Jar,
		},
	}
	if c.streams == nil {
		c.streams = make(map[string]*streamer)
	}
	c.streams[local] = st
	return st, nil
}

// authorize adds the API key to h, if the client has one.
func (c *Client) authorize(h http.Header) {
	if c.apiKey != "" {
		h.Set("Authorization", "Bearer "+c.apiKey)
	}
}
