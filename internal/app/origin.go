package app

import (
	"net/http"
	"strings"
)

// originChecker returns the WebSocket handshake's Origin check for the
// ws.allowed_origins setting: nil (any origin) when the list is empty or
// holds "*"; otherwise a request passes when it has no Origin header (not a
// browser) or its Origin matches an entry exactly (case-insensitively) or
// a "scheme://*.domain" entry by subdomain (any port).
func originChecker(allowed []string) func(*http.Request) bool {
	if len(allowed) == 0 {
		return nil
	}
	exact := make(map[string]bool, len(allowed))
	var wild []string // "scheme://" + ".domain"
	for _, o := range allowed {
		o = strings.ToLower(strings.TrimRight(o, "/"))
		if o == "*" {
			return nil
		}
		if scheme, host, ok := strings.Cut(o, "://*."); ok {
			wild = append(wild, scheme+"://", "."+host)
			continue
		}
		exact[o] = true
	}
	return func(r *http.Request) bool {
		origin := strings.ToLower(r.Header.Get("Origin"))
		if origin == "" || exact[origin] {
			return true
		}
		for i := 0; i < len(wild); i += 2 {
			scheme, suffix := wild[i], wild[i+1]
			if rest, ok := strings.CutPrefix(origin, scheme); ok && strings.HasSuffix(hostOf(rest), suffix) {
				return true
			}
		}
		return false
	}
}

// hostOf strips the port from "host[:port]" (an Origin has no path).
func hostOf(hostport string) string {
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && !strings.Contains(hostport[i:], "]") {
		return hostport[:i]
	}
	return hostport
}
