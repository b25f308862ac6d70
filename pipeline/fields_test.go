package pipeline_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/heraldhq/herald/pipeline"
)

func TestParsePath(t *testing.T) {
	tests := []struct {
		path     string
		wantErr  string // "" means valid
		readOnly bool
	}{
		{path: "id", readOnly: true},
		{path: "type", readOnly: true},
		{path: "data.message"},
		{path: "data.author.id"},
		{path: "data.created_at"},
		{path: "data.é-ü_1"},
		{path: "", wantErr: "empty"},
		{path: "data", wantErr: "name a field under data"},
		{path: "data.", wantErr: "empty segment"},
		{path: "data..x", wantErr: "empty segment"},
		{path: ".data.x", wantErr: `must be "id", "type" or start with "data."`},
		{path: "fields.x", wantErr: `must be "id", "type" or start with "data."`},
		{path: "Data.x", wantErr: `must be "id", "type" or start with "data."`},
		{path: "id.x", wantErr: "has no fields"},
		{path: "type.x", wantErr: "has no fields"},
		{path: "data.a b", wantErr: "do not allow"},
		{path: "data.a{b", wantErr: "do not allow"},
		{path: "data.a}", wantErr: "do not allow"},
		{path: "data.a\tb", wantErr: "do not allow"},
		{path: "data.a\x00", wantErr: "do not allow"},
		{path: "data.\xff", wantErr: "not valid UTF-8"},
		{path: "data." + strings.Repeat("x", pipeline.MaxPathLen), wantErr: "longer than"},
		{path: "data" + strings.Repeat(".x", 40), wantErr: "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			p, err := pipeline.ParsePath(tt.path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParsePath(%q) error = %v, want one containing %q", tt.path, err, tt.wantErr)
				}
				if !p.IsZero() {
					t.Fatalf("ParsePath(%q) failed but returned a non-zero Path", tt.path)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePath(%q): %v", tt.path, err)
			}
			if p.String() != tt.path || p.ReadOnly() != tt.readOnly || p.IsZero() {
				t.Fatalf("ParsePath(%q) = %q, read-only %v, zero %v", tt.path, p, p.ReadOnly(), p.IsZero())
			}
		})
	}
}

func TestMustParsePathPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("MustParsePath(\"bad\") did not panic")
		}
	}()
	pipeline.MustParsePath("bad")
}

func TestPathGet(t *testing.T) {
	m := parsed(t, "test.event", `{"a":{"b":{"c":"deep"}},"n":12.50,"big":123456789012345678901234567890,`+
		`"t":true,"z":null,"arr":[1],"s":"x","empty":""}`)
	tests := []struct {
		path      string
		want      any
		ok        bool
		wantStr   string
		wantStrOK bool
	}{
		{"id", "evt-17", true, "evt-17", true},
		{"type", "test.event", true, "test.event", true},
		{"data.a.b.c", "deep", true, "deep", true},
		{"data.a.b", map[string]any{"c": "deep"}, true, "", false},
		{"data.n", json.Number("12.50"), true, "12.50", true},
		{"data.big", json.Number("123456789012345678901234567890"), true, "123456789012345678901234567890", true},
		{"data.t", true, true, "", false},
		{"data.z", nil, true, "", false},
		{"data.arr", []any{json.Number("1")}, true, "", false},
		{"data.s", "x", true, "x", true},
		{"data.empty", "", true, "", true},
		{"data.missing", nil, false, "", false},
		{"data.s.x", nil, false, "", false},     // through a string
		{"data.a.x.c", nil, false, "", false},   // through a missing object
		{"data.arr.0", nil, false, "", false},   // arrays have no fields
		{"data.z.x", nil, false, "", false},     // through null
		{"data.a.b.c.d", nil, false, "", false}, // past a leaf
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			p := pipeline.MustParsePath(tt.path)
			got, ok := p.Get(m)
			if ok != tt.ok || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Get = %#v, %v; want %#v, %v", got, ok, tt.want, tt.ok)
			}
			s, ok := p.GetString(m)
			if s != tt.wantStr || ok != tt.wantStrOK {
				t.Errorf("GetString = %q, %v; want %q, %v", s, ok, tt.wantStr, tt.wantStrOK)
			}
		})
	}
}

func TestPathGetStringGoNumbers(t *testing.T) {
	p := pipeline.MustParsePath("data.v")
	for _, tt := range []struct {
		v    any
		want string
	}{
		{float64(1.5), "1.5"}, {float64(1e21), "1000000000000000000000"}, {float32(0.25), "0.25"},
		{int(-3), "-3"}, {int64(1 << 40), "1099511627776"}, {int32(7), "7"},
		{uint(8), "8"}, {uint64(1 << 63), "9223372036854775808"}, {uint32(9), "9"},
	} {
		m := &pipeline.Message{Fields: map[string]any{"v": tt.v}}
		if got, ok := p.GetString(m); !ok || got != tt.want {
			t.Errorf("GetString(%T %v) = %q, %v; want %q", tt.v, tt.v, got, ok, tt.want)
		}
	}
}

func TestPathGetEmptyEventAndZeroPath(t *testing.T) {
	m := &pipeline.Message{}
	for _, path := range []string{"id", "type", "data.x"} {
		if v, ok := get(t, m, path); ok {
			t.Errorf("Get(%s) on an empty message = %v, true", path, v)
		}
	}
	var zero pipeline.Path
	if v, ok := zero.Get(parsed(t, "x", `{"":1}`)); ok {
		t.Errorf("zero Path Get = %v, true", v)
	}
	if err := zero.Set(m, 1); err == nil {
		t.Error("zero Path Set succeeded")
	}
	if zero.Delete(m) {
		t.Error("zero Path Delete reported true")
	}
}

func TestPathSet(t *testing.T) {
	tests := []struct {
		name    string
		data    string // "" means a message with nil Fields
		path    string
		wantErr string
		want    string // Fields as JSON after Set
	}{
		{name: "replace", data: `{"a":1}`, path: "data.a", want: `{"a":"v"}`},
		{name: "add", data: `{"a":1}`, path: "data.b", want: `{"a":1,"b":"v"}`},
		{name: "create intermediates", data: `{"a":1}`, path: "data.x.y.z", want: `{"a":1,"x":{"y":{"z":"v"}}}`},
		{name: "nil fields", path: "data.x.y", want: `{"x":{"y":"v"}}`},
		{name: "into existing object", data: `{"x":{"k":1}}`, path: "data.x.y", want: `{"x":{"k":1,"y":"v"}}`},
		{name: "through string", data: `{"x":{"y":"s"}}`, path: "data.x.y.z", wantErr: "data.x.y is a string, not an object", want: `{"x":{"y":"s"}}`},
		{name: "through null", data: `{"x":null}`, path: "data.x.y", wantErr: "data.x is null, not an object", want: `{"x":null}`},
		{name: "through array", data: `{"x":[]}`, path: "data.x.y", wantErr: "data.x is an array, not an object", want: `{"x":[]}`},
		{name: "id", data: `{}`, path: "id", wantErr: "read-only", want: `{}`},
		{name: "type", data: `{}`, path: "type", wantErr: "read-only", want: `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &pipeline.Message{Event: pipeline.Event{ID: "e", Type: "t"}}
			if tt.data != "" {
				m = parsed(t, "t", tt.data)
			}
			err := pipeline.MustParsePath(tt.path).Set(m, "v")
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Set error = %v, want %q", err, tt.wantErr)
			}
			if got := fields(t, m); got != tt.want {
				t.Errorf("fields = %s, want %s", got, tt.want)
			}
			if m.Event.ID != "evt-17" && m.Event.ID != "e" {
				t.Errorf("event ID changed to %q", m.Event.ID)
			}
		})
	}
}

func TestPathDelete(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
		want string
	}{
		{"data.author.email", true, `{"author":{"email":null,"id":"u7"}}`},
		{"data.author", true, `{"author":{"email":null,"id":"u7"}}`},
		{"data.author.ip", false, `{"author":{"email":null,"id":"u7"}}`},
		{"data.nope.x", false, `{"author":{"email":null,"id":"u7"}}`},
		{"data.author.id.x", false, `{"author":{"email":null,"id":"u7"}}`},
		{"id", false, `{"author":{"email":null,"id":"u7"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			m := parsed(t, "t", `{"author":{"email":null,"id":"u7"}}`)
			if got := pipeline.MustParsePath(tt.path).Delete(m); got != tt.ok {
				t.Fatalf("Delete = %v, want %v", got, tt.ok)
			}
			if _, still := get(t, m, tt.path); tt.ok && still {
				t.Fatalf("%s still present after Delete", tt.path)
			}
			want := tt.want
			if tt.ok {
				want = map[string]string{
					"data.author.email": `{"author":{"id":"u7"}}`,
					"data.author":       `{}`,
				}[tt.path]
			}
			if got := fields(t, m); got != want {
				t.Errorf("fields = %s, want %s", got, want)
			}
			if m.Event.ID != "evt-17" {
				t.Errorf("id deleted: %q", m.Event.ID)
			}
		})
	}
}

// FuzzPath parses arbitrary paths: no panic, and a valid path names a
// place that Set, Get and Delete agree on.
func FuzzPath(f *testing.F) {
	for _, s := range []string{
		"id", "type", "data", "data.message", "data.author.id", "data..x", "data.a b",
		"data.{x}", "x.y", "data.é", "data.\xff", "id.x", "data.a.b.c.d.e.f",
	} {
		f.Add(s, "value")
	}
	f.Fuzz(func(t *testing.T, s, value string) {
		p, err := pipeline.ParsePath(s)
		if err != nil {
			if !p.IsZero() {
				t.Fatalf("ParsePath(%q) failed with a non-zero Path", s)
			}
			return
		}
		if p.String() != s {
			t.Fatalf("String() = %q, want %q", p.String(), s)
		}
		if strings.ContainsAny(s, "{} \t\r\n") || len(s) > pipeline.MaxPathLen {
			t.Fatalf("ParsePath accepted %q", s)
		}
		m := &pipeline.Message{Event: pipeline.Event{ID: "id1", Type: "type1"}}
		if p.ReadOnly() {
			if err := p.Set(m, value); err == nil {
				t.Fatalf("Set on read-only %q succeeded", s)
			}
			if p.Delete(m) {
				t.Fatalf("Delete on read-only %q reported true", s)
			}
			if got, ok := p.GetString(m); !ok || (got != "id1" && got != "type1") {
				t.Fatalf("GetString(%q) = %q, %v", s, got, ok)
			}
			return
		}
		if err := p.Set(m, value); err != nil {
			t.Fatalf("Set(%q) on an empty message: %v", s, err)
		}
		if got, ok := p.GetString(m); !ok || got != value {
			t.Fatalf("GetString(%q) after Set = %q, %v; want %q", s, got, ok, value)
		}
		if _, err := json.Marshal(m.Fields); err != nil {
			t.Fatalf("fields after Set(%q) do not encode: %v", s, err)
		}
		if !p.Delete(m) {
			t.Fatalf("Delete(%q) after Set reported false", s)
		}
		if _, ok := p.Get(m); ok {
			t.Fatalf("Get(%q) after Delete reported true", s)
		}
		if p.Delete(m) {
			t.Fatalf("second Delete(%q) reported true", s)
		}
	})
}
