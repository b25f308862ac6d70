// Package httpx holds the HTTP conventions every Herald endpoint shares:
// the JSON error shape with stable codes, hub-error mapping, and client
// address helpers.
package httpx

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"

	"github.com/heraldhq/herald/hub"
)

// Stable error codes. Clients may switch on them; never rename one.
const (
	CodeInvalidJSON          = "invalid_json"
	CodeInvalidRequest       = "invalid_request"
	CodeInvalidChannel       = "invalid_channel"
	CodeInvalidCursor        = "invalid_cursor"
	CodeInvalidCallback      = "invalid_callback"
	CodeUnauthorized         = "unauthorized"
	CodeForbidden            = "forbidden"
	CodeNotFound             = "not_found"
	CodeMethodNotAllowed     = "method_not_allowed"
	CodeMessageTooLarge      = "message_too_large"
	CodeUnsupportedMediaType = "unsupported_media_type"
	CodeTooManyConnsFromIP   = "too_many_connections_from_ip"
	CodeTooManyChannels      = "too_many_channels"
	CodeTooManyConnections   = "too_many_connections"
	CodeChannelFull          = "channel_full"
	CodeShuttingDown         = "shutting_down"
	CodeUnavailable          = "engine_unavailable"
	CodeInternal             = "internal"
)

// ErrorBody is the JSON shape of every HTTP error.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error writes {"error":{"code":code,"message":msg}} with status.
func Error(w http.ResponseWriter, status int, code, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ErrorBody{Error: ErrorDetail{Code: code, Message: msg}})
}

// HubStatus maps an error from the hub to an HTTP status and code.
func HubStatus(err error) (int, string) {
	switch {
	case errors.Is(err, hub.ErrInvalidChannel), errors.Is(err, hub.ErrNoChannels):
		return http.StatusBadRequest, CodeInvalidChannel
	case errors.Is(err, hub.ErrInvalidCursor):
		return http.StatusBadRequest, CodeInvalidCursor
	case errors.Is(err, hub.ErrInvalidType):
		return http.StatusBadRequest, CodeInvalidRequest
	case errors.Is(err, hub.ErrInvalidData):
		return http.StatusBadRequest, CodeInvalidJSON
	case errors.Is(err, hub.ErrMessageTooLarge):
		return http.StatusRequestEntityTooLarge, CodeMessageTooLarge
	case errors.Is(err, hub.ErrTooManyChannels):
		return http.StatusTooManyRequests, CodeTooManyChannels
	case errors.Is(err, hub.ErrTooManyConnectionsFromIP):
		return http.StatusTooManyRequests, CodeTooManyConnsFromIP
	case errors.Is(err, hub.ErrTooManyConnections):
		return http.StatusServiceUnavailable, CodeTooManyConnections
	case errors.Is(err, hub.ErrChannelFull):
		return http.StatusServiceUnavailable, CodeChannelFull
	case errors.Is(err, hub.ErrShuttingDown), errors.Is(err, hub.ErrSessionClosed):
		return http.StatusServiceUnavailable, CodeShuttingDown
	case errors.Is(err, hub.ErrUnavailable):
		return http.StatusServiceUnavailable, CodeUnavailable
	}
	return http.StatusInternalServerError, CodeInternal
}

// HubError writes err, an error from the hub, as an HTTP error.
func HubError(w http.ResponseWriter, err error) {
	status, code := HubStatus(err)
	msg := err.Error()
	if status == http.StatusInternalServerError {
		msg = "internal error"
	}
	if status == http.StatusServiceUnavailable || code == CodeTooManyConnsFromIP {
		w.Header().Set("Retry-After", "5")
	}
	Error(w, status, code, msg)
}

// ClientIP returns the address of the peer that sent r, without its port.
// Herald does not trust forwarding headers.
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// IsLoopback reports whether r came from a loopback address.
func IsLoopback(r *http.Request) bool {
	ip, err := netip.ParseAddr(ClientIP(r))
	return err == nil && ip.Unmap().IsLoopback()
}

// ValidCallback reports whether name is a plain JavaScript identifier path
// (identifiers of A–Z a–z 0–9 _ $, not starting with a digit, joined by
// dots), at most 128 bytes — safe to emit as a JSONP or iframe callback.
func ValidCallback(name string) bool {
	if len(name) == 0 || len(name) > 128 {
		return false
	}
	start := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if start {
				return false
			}
			start = true
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c == '$':
		case c >= '0' && c <= '9':
			if start {
				return false
			}
		default:
			return false
		}
		start = false
	}
	return !start
}
