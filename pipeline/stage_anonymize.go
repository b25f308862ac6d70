package pipeline

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// defaultDropPaths are the fields the anonymize stage deletes when
// AnonymizeOptions.Drop is nil: the comment author's e-mail and IP
// addresses.
var defaultDropPaths = []string{"data.author.email", "data.author.ip"}

// AnonymizeOptions configures the anonymize stage. The zero value deletes
// the comment author's e-mail and IP addresses and hashes nothing.
type AnonymizeOptions struct {
	// Drop are the fields to delete, each a field path under data. Nil
	// means ["data.author.email", "data.author.ip"]; an empty, non-nil
	// slice deletes nothing.
	Drop []string
	// Hash are the fields to replace by the hex HMAC-SHA256 of their
	// value (strings, and numbers in their decimal form), so that
	// subscribers can tell values apart without learning them. Empty
	// means none. A path may not be in both Drop and Hash.
	Hash []string
	// Salt is the HMAC key. It is required when Hash is not empty; keep
	// it secret and stable, or the hashes of one value change.
	Salt string
}

// Anonymize is the "anonymize" stage: it deletes private fields and
// replaces others by a keyed hash. Missing and null fields are skipped; a
// hashed field that is an object, array or boolean is a permanent error.
type Anonymize struct {
	drop []Path
	hash []Path
	salt []byte
}

var _ Stage = (*Anonymize)(nil)

// NewAnonymize returns an anonymize stage. It fails if a path is
// malformed, read-only or in both lists, or if Hash is set without Salt.
func NewAnonymize(opts AnonymizeOptions) (*Anonymize, error) {
	rawDrop := opts.Drop
	if rawDrop == nil {
		rawDrop = defaultDropPaths
	}
	drop, dropErr := parsePaths("Drop", rawDrop, true)
	hash, hashErr := parsePaths("Hash", opts.Hash, true)
	errs := []error{dropErr, hashErr}
	if len(opts.Hash) > 0 && opts.Salt == "" {
		errs = append(errs, errors.New("Salt is required when Hash is set"))
	}
	for _, h := range hash {
		for _, d := range drop {
			if h.String() == d.String() {
				errs = append(errs, fmt.Errorf("field path %q is in both Drop and Hash", h))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("pipeline: anonymize: %w", err)
	}
	return &Anonymize{drop: drop, hash: hash, salt: []byte(opts.Salt)}, nil
}

// Name returns "anonymize".
func (*Anonymize) Name() string { return "anonymize" }

// Process hashes, then deletes, the stage's fields of m.
func (a *Anonymize) Process(_ context.Context, m *Message) error {
	for _, p := range a.hash {
		v, ok := p.Get(m)
		if !ok || v == nil {
			continue
		}
		s, ok := scalarString(v)
		if !ok {
			return Permanentf("%s: must be a string or number to hash, not %s", p, describe(v))
		}
		mac := hmac.New(sha256.New, a.salt)
		mac.Write([]byte(s))
		if err := p.Set(m, hex.EncodeToString(mac.Sum(nil))); err != nil {
			return Permanent(err)
		}
	}
	for _, p := range a.drop {
		p.Delete(m)
	}
	return nil
}
