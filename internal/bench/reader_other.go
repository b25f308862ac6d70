//go:build !linux

package bench

import "errors"

// The epoll reader is Linux only; elsewhere the workers hold a goroutine
// per connection.
const defaultReader = "goroutine"

func newEpollReader(*worker) (poller, error) {
	return nil, errors.New("only on Linux")
}
