package pipeline_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/pipeline"
)

func TestDefaultRules(t *testing.T) {
	var got []string
	for _, r := range pipeline.DefaultRules() {
		if len(r.Types) != 0 {
			t.Errorf("default rule %q has types %v", r.Channel, r.Types)
		}
		got = append(got, r.Channel)
	}
	want := []string{"thread:{data.thread}", "forum:{data.forum}", "post:{data.id}", "user:{data.author.id}", "firehose"}
	if !slices.Equal(got, want) {
		t.Errorf("DefaultRules = %q, want %q", got, want)
	}
}

func TestRoute(t *testing.T) {
	modRules := append(pipeline.DefaultRules(),
		pipeline.Rule{Channel: "mod:forum:{data.forum}", Types: []string{"post.created", "post.deleted"}},
		pipeline.Rule{Channel: "{data.forum}/{data.thread}.{data.id}"},
	)
	tests := []struct {
		name    string
		rules   []pipeline.Rule
		typ     string
		data    string
		want    []string
		wantErr string
		drop    bool
	}{
		{name: "defaults", typ: "post.created", data: exampleData,
			want: []string{"thread:t42", "forum:tech", "post:p981", "user:u7", "firehose"}},
		{name: "deleted has no author", typ: "post.deleted", data: `{"id":"p1","thread":"t1","forum":"f"}`,
			want: []string{"thread:t1", "forum:f", "post:p1", "firehose"}},
		{name: "numbers", typ: "x", data: `{"id":981,"thread":42.5}`,
			want: []string{"thread:42.5", "post:981", "firehose"}},
		{name: "non-scalars skip", typ: "x", data: `{"id":{},"thread":[1],"forum":true,"author":{"id":null}}`,
			want: []string{"firehose"}},
		{name: "empty string skips", typ: "x", data: `{"thread":"","forum":"f"}`,
			want: []string{"forum:f", "firehose"}},
		{name: "type filter matches", rules: modRules, typ: "post.created", data: exampleData,
			want: []string{"thread:t42", "forum:tech", "post:p981", "user:u7", "firehose", "mod:forum:tech", "tech/t42.p981"}},
		{name: "type filter skips", rules: modRules, typ: "post.updated", data: exampleData,
			want: []string{"thread:t42", "forum:tech", "post:p981", "user:u7", "firehose", "tech/t42.p981"}},
		{name: "duplicates removed in order", rules: []pipeline.Rule{{Channel: "c:{data.a}"}, {Channel: "x"}, {Channel: "c:{data.b}"}, {Channel: "x"}},
			typ: "x", data: `{"a":"1","b":1}`, want: []string{"c:1", "x"}},
		{name: "nothing routes", rules: []pipeline.Rule{{Channel: "thread:{data.thread}"}}, typ: "x", data: `{}`, drop: true},
		{name: "type filter only", rules: []pipeline.Rule{{Channel: "all", Types: []string{"a"}}}, typ: "b", data: `{}`, drop: true},
		{name: "invalid channel from value", typ: "x", data: `{"thread":"t 42"}`,
			wantErr: `route: rule "thread:{data.thread}" made "thread:t 42", which is not a valid channel name`},
		{name: "invalid unicode value", typ: "x", data: `{"author":{"id":"ü"}}`,
			wantErr: `made "user:ü"`},
		{name: "too long", typ: "x", data: `{"id":"` + strings.Repeat("p", hub.MaxChannelLen) + `"}`,
			wantErr: "which is not a valid channel name"},
		{name: "id and type placeholders", rules: []pipeline.Rule{{Channel: "events:{type}:{id}"}}, typ: "post.created", data: exampleData,
			want: []string{"events:post.created:evt-17"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := pipeline.NewRoute(pipeline.RouteOptions{Rules: tt.rules})
			if err != nil {
				t.Fatal(err)
			}
			m := parsed(t, tt.typ, tt.data)
			err = r.Process(context.Background(), m)
			if tt.drop {
				if !isDrop(err) {
					t.Fatalf("err = %v, want ErrDrop", err)
				}
				return
			}
			wantErr(t, err, tt.wantErr, true)
			if err == nil && !slices.Equal(m.Channels, tt.want) {
				t.Errorf("Channels = %q, want %q", m.Channels, tt.want)
			}
		})
	}
}

func TestRouteReplacesChannels(t *testing.T) {
	r, err := pipeline.NewRoute(pipeline.RouteOptions{Rules: []pipeline.Rule{{Channel: "a"}}})
	if err != nil {
		t.Fatal(err)
	}
	m := &pipeline.Message{Channels: []string{"old"}}
	if err := r.Process(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m.Channels, []string{"a"}) {
		t.Errorf("Channels = %q, want [a]", m.Channels)
	}
}

func TestNewRouteRejects(t *testing.T) {
	tests := []struct {
		name    string
		channel string
		types   []string
		want    string
	}{
		{name: "empty", channel: "", want: "channel pattern is empty"},
		{name: "unclosed", channel: "thread:{data.thread", want: "has a '{' without '}'"},
		{name: "stray close", channel: "thread:data.thread}", want: "has a '}' without '{'"},
		{name: "empty placeholder", channel: "thread:{}", want: "field path is empty"},
		{name: "nested", channel: "a:{data.{x}}", want: "do not allow"},
		{name: "bad path", channel: "a:{thread}", want: `field path "thread" must be`},
		{name: "bad literal", channel: "thread {data.thread}", want: "characters not allowed in channel names"},
		{name: "bad literal after", channel: "{data.a}@x", want: "characters not allowed in channel names"},
		{name: "bad static", channel: "fire hose", want: "characters not allowed"},
		{name: "too long static", channel: strings.Repeat("x", hub.MaxChannelLen+1), want: "too long"},
		{name: "bad type", channel: "x", types: []string{"post created"}, want: `"post created" is not a valid event type`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pipeline.NewRoute(pipeline.RouteOptions{Rules: []pipeline.Rule{{Channel: "ok"}, {Channel: tt.channel, Types: tt.types}}})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "Rules[1]") {
				t.Fatalf("NewRoute(%q) error = %v, want Rules[1] and %q", tt.channel, err, tt.want)
			}
		})
	}
}

// FuzzRoutePattern compiles arbitrary patterns: no panic, and whatever a
// compiled rule makes is a valid channel or a permanent error.
func FuzzRoutePattern(f *testing.F) {
	for _, s := range []string{"thread:{data.thread}", "firehose", "{data.a}{data.b}", "a:{", "}", "{id}:{type}", "a{data.}b", ""} {
		f.Add(s, "t42")
	}
	f.Fuzz(func(t *testing.T, pattern, value string) {
		r, err := pipeline.NewRoute(pipeline.RouteOptions{Rules: []pipeline.Rule{{Channel: pattern}}})
		if err != nil {
			return
		}
		m := &pipeline.Message{Event: pipeline.Event{ID: value, Type: value}}
		// Give every data path in the pattern the value.
		for _, part := range strings.Split(pattern, "{")[1:] {
			if p, err := pipeline.ParsePath(strings.SplitN(part, "}", 2)[0]); err == nil && !p.ReadOnly() {
				_ = p.Set(m, value)
			}
		}
		err = r.Process(context.Background(), m)
		switch {
		case err == nil:
			if len(m.Channels) != 1 || !hub.ValidChannel(m.Channels[0]) {
				t.Fatalf("pattern %q value %q made %q", pattern, value, m.Channels)
			}
		case isDrop(err):
		case !pipeline.IsPermanent(err):
			t.Fatalf("pattern %q value %q: error not permanent: %v", pattern, value, err)
		}
	})
}
