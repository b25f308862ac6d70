package pipeline_test

import (
	"context"
	"strings"
	"testing"

	"github.com/heraldhq/herald/pipeline"
	"github.com/microcosm-cc/bluemonday"
	"golang.org/x/net/html"
)

// unsafeHTML returns what in s, parsed as a browser would, can run
// script: a script-capable element, an event handler attribute, or a URL
// attribute with a javascript:, vbscript: or data: scheme (the tokenizer
// decodes entities, and browsers ignore white space and control characters
// in schemes). It returns "" when s is safe.
func unsafeHTML(s string) string {
	z := html.NewTokenizer(strings.NewReader(s))
	for {
		switch z.Next() {
		case html.ErrorToken:
			return ""
		case html.StartTagToken, html.SelfClosingTagToken:
			tok := z.Token()
			switch tok.Data {
			case "script", "svg", "math", "iframe", "frame", "object", "embed", "style", "form",
				"meta", "base", "link", "noscript", "template", "button", "input":
				return "element <" + tok.Data + ">"
			}
			for _, a := range tok.Attr {
				name := strings.ToLower(a.Key)
				if strings.HasPrefix(name, "on") || name == "style" || name == "srcdoc" {
					return "attribute " + a.Key
				}
				v := strings.Map(func(r rune) rune {
					if r <= ' ' || r == 0x7f {
						return -1
					}
					return r
				}, strings.ToLower(a.Val))
				for _, scheme := range []string{"javascript:", "vbscript:", "data:"} {
					if strings.HasPrefix(v, scheme) {
						return "URL " + a.Key + "=" + a.Val
					}
				}
			}
		}
	}
}

func TestSanitizeRemovesScript(t *testing.T) {
	tests := []struct {
		name, in string
		want     string // "" means only the safety check
	}{
		{name: "plain", in: "<p>Hello</p>", want: "<p>Hello</p>"},
		{name: "formatting", in: "<p><b>bold</b> <em>it</em></p>", want: "<p><b>bold</b> <em>it</em></p>"},
		{name: "safe link", in: `<a href="https://example.com/x">x</a>`, want: `<a href="https://example.com/x" rel="nofollow">x</a>`},
		{name: "text stays", in: "5 > 3 & 2 < 4", want: "5 &gt; 3 &amp; 2 &lt; 4"},
		{name: "script", in: `<p>hi</p><script>alert(1)</script>`, want: "<p>hi</p>"},
		{name: "script upper", in: `<SCRIPT SRC=//evil.example/x.js></SCRIPT>`, want: ""},
		{name: "javascript href", in: `<a href="javascript:alert(1)">x</a>`, want: "x"},
		{name: "mixed case javascript", in: `<a href="JaVaScRiPt:alert(1)">x</a>`, want: "x"},
		{name: "javascript with tab", in: "<a href=\"jav\tascript:alert(1)\">x</a>"},
		{name: "javascript entities", in: `<a href="&#106;avascript:alert(1)">x</a>`},
		{name: "javascript hex entities", in: `<a href="&#x6A;&#x61;vascript:alert(1)">x</a>`},
		{name: "javascript leading space", in: `<a href=" javascript:alert(1)">x</a>`},
		{name: "vbscript", in: `<a href="vbscript:msgbox(1)">x</a>`},
		{name: "data url", in: `<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>`},
		{name: "img onerror", in: `<img src=x onerror=alert(1)>`},
		{name: "img onerror quoted", in: `<img src="x" onerror="alert(1)" alt="a">`},
		{name: "body onload", in: `<body onload=alert(1)>hi</body>`},
		{name: "onclick on allowed tag", in: `<p onclick="alert(1)">hi</p>`, want: "<p>hi</p>"},
		{name: "svg script", in: `<svg><script>alert(1)</script></svg>`},
		{name: "svg onload", in: `<svg onload=alert(1)>`},
		{name: "svg animate", in: `<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>`},
		{name: "unclosed script", in: `<script>alert(1)`},
		{name: "unclosed tag", in: `<img src=x onerror=alert(1)`},
		{name: "unclosed attribute", in: `<a href="javascript:alert(1)>x`},
		{name: "nested broken", in: `<scr<script>ipt>alert(1)</scr</script>ipt>`},
		{name: "iframe", in: `<iframe src="javascript:alert(1)"></iframe>`},
		{name: "iframe srcdoc", in: `<iframe srcdoc="<script>alert(1)</script>"></iframe>`},
		{name: "object", in: `<object data="x.swf"></object><embed src="x.swf">`},
		{name: "style expression", in: `<p style="background:url(javascript:alert(1))">x</p>`},
		{name: "style element", in: `<style>body{background:url("javascript:alert(1)")}</style>`},
		{name: "form action", in: `<form action="javascript:alert(1)"><button>x</button></form>`},
		{name: "meta refresh", in: `<meta http-equiv="refresh" content="0;url=javascript:alert(1)">`},
		{name: "math", in: `<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>`},
		{name: "comment trick", in: `<!--<img src="--><img src=x onerror=alert(1)//">`},
		{name: "noscript", in: `<noscript><p title="</noscript><img src=x onerror=alert(1)>">`},
		{name: "null byte", in: "<scr\x00ipt>alert(1)</script>"},
	}
	s, err := pipeline.NewSanitize(pipeline.SanitizeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &pipeline.Message{Fields: map[string]any{"message": tt.in, "other": tt.in}}
			if err := s.Process(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			got := m.Fields["message"].(string)
			if bad := unsafeHTML(got); bad != "" {
				t.Errorf("sanitize(%q) = %q: %s got through", tt.in, got, bad)
			}
			if tt.want != "" && got != tt.want {
				t.Errorf("sanitize(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if m.Fields["other"] != tt.in {
				t.Errorf("a field not in Paths changed: %q", m.Fields["other"])
			}
		})
	}
}

func TestSanitizeFields(t *testing.T) {
	s, err := pipeline.NewSanitize(pipeline.SanitizeOptions{Paths: []string{"data.message", "data.author.bio"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, data, wantErr, want string
	}{
		{name: "both", data: `{"message":"<b>x</b><script>1</script>","author":{"bio":"<i onclick=1>y</i>"}}`,
			want: `{"author":{"bio":"\u003ci\u003ey\u003c/i\u003e"},"message":"\u003cb\u003ex\u003c/b\u003e"}`},
		{name: "missing skipped", data: `{"author":{}}`, want: `{"author":{}}`},
		{name: "null skipped", data: `{"message":null}`, want: `{"message":null}`},
		{name: "parent missing skipped", data: `{"message":"a"}`, want: `{"message":"a"}`},
		{name: "number", data: `{"message":1}`, wantErr: "data.message: must be a string to sanitize, not a number"},
		{name: "object", data: `{"author":{"bio":{"x":1}}}`, wantErr: "data.author.bio: must be a string to sanitize, not an object"},
		{name: "array", data: `{"message":["<script>"]}`, wantErr: "data.message: must be a string to sanitize, not an array"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := parsed(t, "x", tt.data)
			err := s.Process(context.Background(), m)
			wantErr(t, err, tt.wantErr, true)
			if err == nil {
				if got := fields(t, m); got != tt.want {
					t.Errorf("fields = %s, want %s", got, tt.want)
				}
			}
		})
	}
}

func TestSanitizeCustomPolicy(t *testing.T) {
	s, err := pipeline.NewSanitize(pipeline.SanitizeOptions{Policy: bluemonday.StrictPolicy()})
	if err != nil {
		t.Fatal(err)
	}
	m := parsed(t, "post.created", exampleData)
	if err := s.Process(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if got := m.Fields["message"]; got != "Hello" {
		t.Errorf("strict policy: message = %q, want %q", got, "Hello")
	}
}

func TestNewSanitizeRejectsBadPaths(t *testing.T) {
	_, err := pipeline.NewSanitize(pipeline.SanitizeOptions{Paths: []string{"data.ok", "id", "data..x", "message"}})
	if err == nil {
		t.Fatal("NewSanitize accepted bad paths")
	}
	for _, want := range []string{`Paths[1]: field path "id" is read-only`, `Paths[2]: field path "data..x" has an empty segment`, `Paths[3]: field path "message" must be`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "data.ok") {
		t.Errorf("error %q blames a good path", err)
	}
}

// TestUnsafeHTMLOracle checks the checker: raw attacks are caught.
func TestUnsafeHTMLOracle(t *testing.T) {
	for _, in := range []string{
		`<script>alert(1)</script>`, `<a href="JaVaScRiPt:alert(1)">x</a>`, `<img src=x onerror=alert(1)>`,
		`<svg><script>alert(1)</script></svg>`, `<a href="&#106;avascript:alert(1)">x</a>`,
		"<a href=\"jav\tascript:alert(1)\">x</a>", `<p style="x">`, `<iframe srcdoc="x">`,
	} {
		if unsafeHTML(in) == "" {
			t.Errorf("unsafeHTML(%q) found nothing", in)
		}
	}
	for _, in := range []string{`<p>Hello</p>`, `<a href="https://x.example/" rel="nofollow">x</a>`, `javascript: is text here`} {
		if bad := unsafeHTML(in); bad != "" {
			t.Errorf("unsafeHTML(%q) = %s, want safe", in, bad)
		}
	}
}
