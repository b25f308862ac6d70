package pipeline

import (
	"context"
	"fmt"

	"github.com/microcosm-cc/bluemonday"
)

// defaultSanitizePaths are the fields the sanitize stage cleans when
// SanitizeOptions.Paths is empty.
var defaultSanitizePaths = []string{"data.message"}

// SanitizeOptions configures the sanitize stage. The zero value cleans
// data.message with bluemonday's UGC policy.
type SanitizeOptions struct {
	// Paths are the fields to clean, each a field path under data (see
	// Path). Empty means ["data.message"].
	Paths []string
	// Policy decides what HTML survives. Nil means bluemonday.UGCPolicy():
	// formatting, links and images stay; scripts, styles, event handler
	// attributes and URLs with schemes other than http, https and mailto
	// go. The policy must not be changed after NewSanitize.
	Policy *bluemonday.Policy
}

// Sanitize is the "sanitize" stage: it runs the string fields at its paths
// through an HTML sanitizer policy, so that what subscribers render as HTML
// holds no script. A missing or null field is skipped; any other non-string
// value is a permanent error.
type Sanitize struct {
	paths  []Path
	policy *bluemonday.Policy // safe for concurrent use once built
}

var _ Stage = (*Sanitize)(nil)

// NewSanitize returns a sanitize stage. It fails if a path is malformed or
// read-only.
func NewSanitize(opts SanitizeOptions) (*Sanitize, error) {
	raw := opts.Paths
	if len(raw) == 0 {
		raw = defaultSanitizePaths
	}
	paths, err := parsePaths("Paths", raw, true)
	if err != nil {
		return nil, fmt.Errorf("pipeline: sanitize: %w", err)
	}
	policy := opts.Policy
	if policy == nil {
		policy = bluemonday.UGCPolicy()
	}
	return &Sanitize{paths: paths, policy: policy}, nil
}

// Name returns "sanitize".
func (*Sanitize) Name() string { return "sanitize" }

// Process replaces each string field at the stage's paths by its sanitized
// form.
func (s *Sanitize) Process(_ context.Context, m *Message) error {
	for _, p := range s.paths {
		v, ok := p.Get(m)
		if !ok || v == nil {
			continue
		}
		str, ok := v.(string)
		if !ok {
			return Permanentf("%s: must be a string to sanitize, not %s", p, describe(v))
		}
		if clean := s.clean(str); clean != str {
			if err := p.Set(m, clean); err != nil {
				return Permanent(err)
			}
		}
	}
	return nil
}

// clean returns str sanitized by the stage's policy. Text that holds none
// of the bytes a sanitizer treats specially outside a tag comes out as it
// went in, whatever the policy, so it skips the HTML tokenizer (and the
// 4 KiB buffer each one allocates); FuzzSanitizeClean checks the shortcut
// against the policy.
func (s *Sanitize) clean(str string) string {
	if plainText(str) {
		return str
	}
	return s.policy.Sanitize(str)
}

// plainText reports whether str has none of the bytes that start a tag,
// an entity or a comment, or that the sanitizer escapes or rewrites in
// text: < > & ' " and carriage return.
func plainText(str string) bool {
	for i := 0; i < len(str); i++ {
		switch str[i] {
		case '<', '>', '&', '\'', '"', '\r':
			return false
		}
	}
	return true
}
