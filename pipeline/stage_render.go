package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"strings"
	texttemplate "text/template"
)

// RenderOptions configures the render stage. At least one of HTML and
// Payload must be set.
type RenderOptions struct {
	// HTML is an html/template rendering an HTML snippet that is stored
	// as a string at HTMLField. Empty means no snippet. html/template
	// escapes by context; to insert a field as HTML use the safeHTML
	// function, and only on fields the sanitize stage cleaned.
	HTML string
	// HTMLField is where the snippet goes, a field path under data.
	// Empty means "data.html".
	HTMLField string
	// Payload is a text/template whose output, which must be valid JSON,
	// becomes Message.Payload (published instead of Fields). Empty means
	// no payload. Use the json function to insert values: {"msg":
	// {{json .data.message}}}. Payload runs after HTML, so it can use the
	// snippet.
	Payload string
}

// Render is the "render" stage: it renders each event once, whatever the
// number of subscribers, with templates parsed once by NewRender. The
// templates' dot is a map with keys "id" and "type" (the event's) and
// "data" (Message.Fields). Both templates have the function json (the
// value as JSON; a missing value is null); the HTML template also has
// safeHTML (a string inserted without escaping). Errors executing a
// template, and a payload that is not JSON, are permanent.
type Render struct {
	html      *htmltemplate.Template // nil when there is no snippet
	htmlField Path
	payload   *texttemplate.Template // nil when there is no payload
}

var _ Stage = (*Render)(nil)

// NewRender returns a render stage. It fails if neither template is set,
// if a template does not parse (or, for HTML, cannot be escaped), or if
// HTMLField is malformed.
func NewRender(opts RenderOptions) (*Render, error) {
	r := &Render{}
	var errs []error
	if opts.HTML == "" && opts.Payload == "" {
		errs = append(errs, errors.New("set HTML or Payload (or both)"))
	}
	if opts.HTML != "" {
		field := opts.HTMLField
		if field == "" {
			field = "data.html"
		}
		paths, err := parsePaths("HTMLField", []string{field}, true)
		if err != nil {
			errs = append(errs, err)
		} else {
			r.htmlField = paths[0]
		}
		t, err := htmltemplate.New("html").Funcs(htmltemplate.FuncMap{
			"json":     templateJSON,
			"safeHTML": safeHTML,
		}).Parse(opts.HTML)
		if err == nil {
			err = checkEscaping(t)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("HTML: %w", err))
		}
		r.html = t
	}
	if opts.Payload != "" {
		t, err := texttemplate.New("payload").Funcs(texttemplate.FuncMap{
			"json": templateJSON,
		}).Parse(opts.Payload)
		if err != nil {
			errs = append(errs, fmt.Errorf("Payload: %w", err))
		}
		r.payload = t
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("pipeline: render: %w", err)
	}
	return r, nil
}

// checkEscaping makes html/template escape t now rather than on the first
// event, so that a template it cannot escape fails NewRender. Execution
// errors of the trial run, on empty data, do not count.
func checkEscaping(t *htmltemplate.Template) error {
	err := t.Execute(io.Discard, map[string]any{"id": "", "type": "", "data": map[string]any{}})
	var escErr *htmltemplate.Error
	if errors.As(err, &escErr) {
		return err
	}
	return nil
}

// templateJSON is the templates' json function.
func templateJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// safeHTML is the HTML template's safeHTML function. A value that is not a
// string inserts nothing.
func safeHTML(v any) htmltemplate.HTML {
	s, _ := v.(string)
	return htmltemplate.HTML(s)
}

// Name returns "render".
func (*Render) Name() string { return "render" }

// Process renders m's snippet and payload.
func (r *Render) Process(_ context.Context, m *Message) error {
	dot := map[string]any{"id": m.Event.ID, "type": m.Event.Type, "data": m.Fields}
	if r.html != nil {
		var b strings.Builder
		if err := r.html.Execute(&b, dot); err != nil {
			return Permanentf("render HTML: %v", err)
		}
		if err := r.htmlField.Set(m, b.String()); err != nil {
			return Permanent(err)
		}
		dot["data"] = m.Fields // Set creates Fields when there were none
	}
	if r.payload != nil {
		var b bytes.Buffer
		if err := r.payload.Execute(&b, dot); err != nil {
			return Permanentf("render payload: %v", err)
		}
		out := bytes.Trim(b.Bytes(), jsonSpace)
		if !json.Valid(out) {
			return Permanentf("render payload: the output is not valid JSON: %s", jsonProblem(json.Unmarshal(out, new(any))))
		}
		m.Payload = out
	}
	return nil
}
