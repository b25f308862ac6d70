package pipeline_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/heraldhq/herald/pipeline"
)

func TestRender(t *testing.T) {
	tests := []struct {
		name        string
		opts        pipeline.RenderOptions
		data        string
		wantHTML    string // at wantField; "" means none
		wantField   string
		wantPayload string // "" means no payload
		wantErr     string
	}{
		{
			name:      "html snippet",
			opts:      pipeline.RenderOptions{HTML: `<li id="{{.data.id}}">{{.data.author.name}}: {{safeHTML .data.message}}</li>`},
			data:      exampleData,
			wantField: "data.html",
			wantHTML:  `<li id="p981">Ann: <p>Hello</p></li>`,
		},
		{
			name:      "html escapes by context",
			opts:      pipeline.RenderOptions{HTML: `<b title="{{.data.t}}">{{.data.t}}</b><a href="{{.data.u}}">x</a>`},
			data:      `{"t":"\"><script>alert(1)</script>","u":"javascript:alert(1)"}`,
			wantField: "data.html",
			wantHTML:  `<b title="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;">&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;</b><a href="#ZgotmplZ">x</a>`,
		},
		{
			name:      "html custom field and missing value",
			opts:      pipeline.RenderOptions{HTML: `<i>{{.data.nope}}</i>{{.type}}`, HTMLField: "data.render.snippet"},
			data:      `{}`,
			wantField: "data.render.snippet",
			wantHTML:  `<i></i>x`,
		},
		{
			name:        "payload",
			opts:        pipeline.RenderOptions{Payload: `{"id":{{json .id}},"type":{{json .type}},"msg":{{json .data.message}},"parent":{{json .data.parent}},"none":{{json .data.missing}}}`},
			data:        exampleData,
			wantPayload: `{"id":"evt-17","type":"x","msg":"\u003cp\u003eHello\u003c/p\u003e","parent":null,"none":null}`,
		},
		{
			name:        "payload json keeps numbers",
			opts:        pipeline.RenderOptions{Payload: ` {"n":{{json .data.n}}} `},
			data:        `{"n":12345678901234567890.5}`,
			wantPayload: `{"n":12345678901234567890.5}`,
		},
		{
			name:        "payload uses the snippet",
			opts:        pipeline.RenderOptions{HTML: `<p>{{.data.a}}</p>`, Payload: `{"html":{{json .data.html}}}`},
			data:        `{"a":"<x>"}`,
			wantField:   "data.html",
			wantHTML:    `<p>&lt;x&gt;</p>`,
			wantPayload: `{"html":"\u003cp\u003e\u0026lt;x\u0026gt;\u003c/p\u003e"}`,
		},
		{
			name:    "payload not json",
			opts:    pipeline.RenderOptions{Payload: `{"msg":"{{.data.message}}"}`},
			data:    `{"message":"say \"hi\""}`,
			wantErr: "render payload: the output is not valid JSON",
		},
		{
			name:    "payload empty",
			opts:    pipeline.RenderOptions{Payload: `{{if .data.x}}{}{{end}}`},
			data:    `{}`,
			wantErr: "render payload: the output is not valid JSON",
		},
		{
			name:    "payload exec error",
			opts:    pipeline.RenderOptions{Payload: `{{index .data.list 5}}`},
			data:    `{"list":[1]}`,
			wantErr: "render payload:",
		},
		{
			name:    "html exec error",
			opts:    pipeline.RenderOptions{HTML: `{{index .data.list 5}}`},
			data:    `{"list":[1]}`,
			wantErr: "render HTML:",
		},
		{
			name:    "html field through a string",
			opts:    pipeline.RenderOptions{HTML: `x`, HTMLField: "data.message.html"},
			data:    `{"message":"m"}`,
			wantErr: "data.message is a string, not an object",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := pipeline.NewRender(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			m := parsed(t, "x", tt.data)
			err = r.Process(context.Background(), m)
			wantErr(t, err, tt.wantErr, true)
			if err != nil {
				return
			}
			if tt.wantHTML != "" {
				if got, _ := get(t, m, tt.wantField); got != tt.wantHTML {
					t.Errorf("%s = %q, want %q", tt.wantField, got, tt.wantHTML)
				}
			} else if _, ok := get(t, m, "data.html"); ok {
				t.Error("data.html set without an HTML template")
			}
			if string(m.Payload) != tt.wantPayload {
				t.Errorf("Payload = %s, want %s", m.Payload, tt.wantPayload)
			}
			if tt.wantPayload != "" && !json.Valid(m.Payload) {
				t.Errorf("Payload is not JSON: %s", m.Payload)
			}
		})
	}
}

func TestRenderNilFields(t *testing.T) {
	r, err := pipeline.NewRender(pipeline.RenderOptions{HTML: `<p>{{.id}}</p>`, Payload: `{"h":{{json .data.html}}}`})
	if err != nil {
		t.Fatal(err)
	}
	m := &pipeline.Message{Event: pipeline.Event{ID: "e1", Type: "t"}}
	if err := r.Process(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if got := string(m.Payload); got != `{"h":"\u003cp\u003ee1\u003c/p\u003e"}` {
		t.Errorf("Payload = %s", got)
	}
}

func TestNewRenderRejects(t *testing.T) {
	tests := []struct {
		name string
		opts pipeline.RenderOptions
		want []string
	}{
		{name: "nothing", want: []string{"set HTML or Payload"}},
		{name: "bad html", opts: pipeline.RenderOptions{HTML: `{{.data.x`}, want: []string{"HTML: template: html:1"}},
		{name: "bad payload", opts: pipeline.RenderOptions{Payload: `{{end}}`}, want: []string{"Payload: template: payload:1"}},
		{name: "unknown function", opts: pipeline.RenderOptions{Payload: `{{nope 1}}`}, want: []string{`function "nope" not defined`}},
		{name: "html cannot escape", opts: pipeline.RenderOptions{HTML: `<a href="{{if .id}}x{{else}}"{{end}}">`}, want: []string{"HTML: html/template:html:1:", "branches end in different contexts"}},
		{name: "bad field", opts: pipeline.RenderOptions{HTML: `x`, HTMLField: "type"}, want: []string{`HTMLField[0]: field path "type" is read-only`}},
		{name: "all at once", opts: pipeline.RenderOptions{HTML: `{{`, HTMLField: "bad", Payload: `{{`},
			want: []string{"HTMLField[0]", "HTML: template", "Payload: template"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pipeline.NewRender(tt.opts)
			if err == nil {
				t.Fatal("NewRender succeeded")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}
