package client

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

var (
	// ErrClosed is the cause of a subscription's context after Close.
	// A subscription stopped by Close reports a nil Err.
	ErrClosed = errors.New("client: subscription closed")
	// ErrProtocol is wrapped by errors about a server answer that does not
	// follow the wire protocol. Such a subscription is not reconnected.
	ErrProtocol = errors.New("client: protocol error")
)

// Error is an HTTP error answered by the server: its status and the code
// and message of its JSON body ({"error":{"code":…,"message":…}}). Code is
// empty when the body was not Herald's JSON (a proxy's error page, say).
type Error struct {
	Status  int
	Code    string
	Message string

	retryAfter time.Duration // from the Retry-After header, if any
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("client: ")
	b.WriteString(strconv.Itoa(e.Status))
	if e.Code != "" {
		b.WriteString(" ")
		b.WriteString(e.Code)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// temporary reports whether repeating the request later may succeed.
func (e *Error) temporary() bool {
	return e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// readError builds an *Error from a non-success response. It reads the
// body but does not close it.
func readError(resp *http.Response) *Error {
	e := &Error{Status: resp.StatusCode}
	var body []byte
	if resp.Body != nil {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	}
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &eb) == nil && eb.Error.Code != "" {
		e.Code, e.Message = eb.Error.Code, eb.Error.Message
	} else if msg := strings.TrimSpace(string(body)); msg != "" && len(msg) <= 200 {
		e.Message = msg
	} else {
		e.Message = http.StatusText(resp.StatusCode)
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		e.retryAfter = time.Duration(min(s, 3600)) * time.Second
	}
	return e
}
