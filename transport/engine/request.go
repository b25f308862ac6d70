package engine

import (
	"bytes"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// parseHead parses the head of a plain HTTP/1.1 GET request (request line,
// header lines, the blank line) into the *http.Request that
// http.ReadRequest would make of it, with a handful of allocations: one
// string holds the whole head and every header key and value is a part
// of it, and the header values share one backing array.
//
// It takes only the common shape of a subscribe request and reports
// false for anything else — another method or version, a body, folded or
// unusual header lines, bytes outside printable ASCII — which the caller
// then gives to http.ReadRequest. FuzzParseHead checks that whatever it
// accepts, http.ReadRequest reads the same way.
func parseHead(head []byte) (*http.Request, bool) {
	if !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		return nil, false
	}
	s := string(head[:len(head)-2]) // every line, each ending in CRLF
	line, rest, _ := strings.Cut(s, "\r\n")
	target, ok := strings.CutPrefix(line, "GET ")
	if !ok {
		return nil, false
	}
	target, ok = strings.CutSuffix(target, " HTTP/1.1")
	if !ok || strings.IndexByte(target, ' ') >= 0 || !strings.HasPrefix(target, "/") {
		return nil, false
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return nil, false
	}

	lines := strings.Count(rest, "\r\n")
	values := make([]string, lines)
	h := make(http.Header, lines)
	for i := 0; rest != ""; i++ {
		line, rest, _ = strings.Cut(rest, "\r\n")
		k, v, ok := strings.Cut(line, ":")
		if !ok || !simpleKey(k) || !simpleValue(v) {
			return nil, false
		}
		k = textproto.CanonicalMIMEHeaderKey(k) // no allocation for a name already canonical
		v = strings.Trim(v, " \t")
		if vv := h[k]; vv != nil {
			h[k] = append(vv, v) // a repeated header: a copy, as textproto makes
			continue
		}
		values[i] = v
		h[k] = values[i : i+1 : i+1]
	}
	if h["Content-Length"] != nil || h["Transfer-Encoding"] != nil || len(h["Host"]) > 1 {
		return nil, false // a body, or an error: http.ReadRequest's cases
	}
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" && h["Cache-Control"] == nil {
		h["Cache-Control"] = []string{"no-cache"} // HTTP/1.0's spelling, as net/http reads it
	}
	r := &http.Request{
		Method:     http.MethodGet,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Body:       http.NoBody,
		Host:       u.Host,
		RequestURI: target,
		Close:      hasToken(h["Connection"], "close"),
	}
	if r.Host == "" {
		if hv := h["Host"]; len(hv) > 0 {
			r.Host = hv[0]
		}
	}
	delete(h, "Host") // as http.ReadRequest does: the Host field holds it
	return r, true
}

// simpleKey reports whether k is a non-empty header name of letters,
// digits and hyphens, the names textproto canonicalises.
func simpleKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// simpleValue reports whether v holds only printable ASCII, spaces and
// tabs.
func simpleValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c > '~' {
			return false
		}
	}
	return true
}

// hasToken reports whether a comma-separated header (such as Connection)
// lists token, in any case.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.Trim(t, " \t"), token) {
				return true
			}
		}
	}
	return false
}
