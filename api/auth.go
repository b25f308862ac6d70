package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/heraldhq/herald/internal/httpx"
)

// authorizer checks API keys. Keys are kept as SHA-256 digests so that the
// constant-time comparison sees inputs of one length whatever the key, and
// every key is compared on every request, so timing reveals neither a key's
// length nor which key matched.
type authorizer struct {
	keys [][sha256.Size]byte
}

func newAuthorizer(keys []string) *authorizer {
	a := &authorizer{}
	for _, k := range keys {
		if k != "" {
			a.keys = append(a.keys, sha256.Sum256([]byte(k)))
		}
	}
	return a
}

// check applies the access rule (package comment). On refusal it has
// written the error and returns false.
func (a *authorizer) check(w http.ResponseWriter, r *http.Request) bool {
	if len(a.keys) == 0 {
		if httpx.IsLoopback(r) {
			return true
		}
		httpx.Error(w, http.StatusForbidden, httpx.CodeForbidden,
			"no API key is configured, so this endpoint answers loopback clients only")
		return false
	}
	key, ok := bearer(r)
	if !ok {
		a.refuse(w, "an Authorization: Bearer API key is required")
		return false
	}
	sum := sha256.Sum256([]byte(key))
	match := 0
	for i := range a.keys {
		match |= subtle.ConstantTimeCompare(sum[:], a.keys[i][:])
	}
	if match != 1 {
		a.refuse(w, "the API key is not valid")
		return false
	}
	return true
}

func (a *authorizer) refuse(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
	httpx.Error(w, http.StatusUnauthorized, httpx.CodeUnauthorized, msg)
}

// bearer returns the token of an "Authorization: Bearer TOKEN" header (the
// scheme is case-insensitive).
func bearer(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
