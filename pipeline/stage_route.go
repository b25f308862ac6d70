package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/heraldhq/herald/hub"
)

// Rule makes one channel of an event. Channel is a pattern: literal
// channel-name characters and {path} placeholders, each replaced by the
// string or number at that field path, as in "thread:{data.thread}". A
// rule whose placeholder names a field that is missing, empty, or not a
// string or number is skipped, silently: an event without a parent post
// is simply not published to "post:{data.parent}".
type Rule struct {
	Channel string
	// Types limits the rule to events of these types. Empty means every
	// type.
	Types []string
}

// DefaultRules returns the rules the route stage uses when
// RouteOptions.Rules is empty, a new slice each call: "thread:{data.thread}",
// "forum:{data.forum}", "post:{data.id}", "user:{data.author.id}" and
// "firehose", for every type.
func DefaultRules() []Rule {
	return []Rule{
		{Channel: "thread:{data.thread}"},
		{Channel: "forum:{data.forum}"},
		{Channel: "post:{data.id}"},
		{Channel: "user:{data.author.id}"},
		{Channel: "firehose"},
	}
}

// RouteOptions configures the route stage. The zero value uses
// DefaultRules.
type RouteOptions struct {
	// Rules are applied in order. Empty means DefaultRules().
	Rules []Rule
}

// Route is the "route" stage: it sets Message.Channels to the channels its
// rules make, in rule order without duplicates. An event for which no rule
// makes a channel is dropped (ErrDrop). A rule that makes an invalid
// channel name (see hub.ValidChannel), say from a field holding a space,
// is a permanent error naming the channel.
type Route struct {
	rules []rule
}

var _ Stage = (*Route)(nil)

// rule is a compiled Rule.
type rule struct {
	pattern string
	parts   []patternPart
	types   []string // empty means every type
}

// patternPart is a literal or, when path is not zero, a placeholder.
type patternPart struct {
	literal string
	path    Path
}

// NewRoute returns a route stage. It fails, naming every bad rule, if a
// pattern has unbalanced braces, a malformed path, characters not allowed
// in channel names, or (without placeholders) is not a valid channel name.
func NewRoute(opts RouteOptions) (*Route, error) {
	rules := opts.Rules
	if len(rules) == 0 {
		rules = DefaultRules()
	}
	r := &Route{rules: make([]rule, 0, len(rules))}
	var errs []error
	for i, rl := range rules {
		parts, err := parsePattern(rl.Channel)
		if err != nil {
			errs = append(errs, fmt.Errorf("Rules[%d]: %w", i, err))
		}
		for _, typ := range rl.Types {
			if !hub.ValidType(typ) {
				errs = append(errs, fmt.Errorf("Rules[%d]: %q is not a valid event type", i, typ))
			}
		}
		r.rules = append(r.rules, rule{pattern: rl.Channel, parts: parts, types: slices.Clone(rl.Types)})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("pipeline: route: %w", err)
	}
	return r, nil
}

// parsePattern splits a channel pattern into literals and placeholders.
func parsePattern(pattern string) ([]patternPart, error) {
	if pattern == "" {
		return nil, errors.New("channel pattern is empty")
	}
	var parts []patternPart
	placeholders := false
	for rest := pattern; rest != ""; {
		open := strings.IndexByte(rest, '{')
		lit := rest
		if open >= 0 {
			lit = rest[:open]
		}
		if lit != "" {
			if strings.IndexByte(lit, '}') >= 0 {
				return nil, fmt.Errorf("channel pattern %q has a '}' without '{'", pattern)
			}
			if !hub.ValidChannel(lit) {
				return nil, fmt.Errorf("channel pattern %q: %q holds characters not allowed in channel names (A-Z a-z 0-9 _ - . : / ~) or is too long", pattern, lit)
			}
			parts = append(parts, patternPart{literal: lit})
		}
		if open < 0 {
			break
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return nil, fmt.Errorf("channel pattern %q has a '{' without '}'", pattern)
		}
		p, err := ParsePath(rest[open+1 : open+end])
		if err != nil {
			return nil, fmt.Errorf("channel pattern %q: %w", pattern, err)
		}
		parts = append(parts, patternPart{path: p})
		placeholders = true
		rest = rest[open+end+1:]
	}
	if !placeholders && !hub.ValidChannel(pattern) {
		return nil, fmt.Errorf("channel pattern %q is not a valid channel name", pattern)
	}
	return parts, nil
}

// Name returns "route".
func (*Route) Name() string { return "route" }

// Process sets m.Channels, replacing what was there.
func (r *Route) Process(_ context.Context, m *Message) error {
	var channels []string
	for i := range r.rules {
		rl := &r.rules[i]
		if len(rl.types) > 0 && !slices.Contains(rl.types, m.Event.Type) {
			continue
		}
		ch, ok := rl.channel(m)
		if !ok {
			continue
		}
		if !hub.ValidChannel(ch) {
			return Permanentf("route: rule %q made %q, which is not a valid channel name", rl.pattern, ch)
		}
		if !slices.Contains(channels, ch) {
			channels = append(channels, ch)
		}
	}
	if len(channels) == 0 {
		return ErrDrop
	}
	m.Channels = channels
	return nil
}

// channel expands the rule for m; false means a placeholder's field is
// missing, empty or not a string or number.
func (rl *rule) channel(m *Message) (string, bool) {
	if len(rl.parts) == 1 && rl.parts[0].path.IsZero() {
		return rl.parts[0].literal, true
	}
	var b strings.Builder
	for _, part := range rl.parts {
		if part.path.IsZero() {
			b.WriteString(part.literal)
			continue
		}
		v, ok := part.path.GetString(m)
		if !ok || v == "" {
			return "", false
		}
		b.WriteString(v)
	}
	return b.String(), true
}
