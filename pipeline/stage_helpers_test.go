package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/heraldhq/herald/pipeline"
)

// exampleData is the data of the comment event the brief's examples use.
const exampleData = `{"id":"p981","thread":"t42","forum":"tech","parent":null,` +
	`"author":{"id":"u7","name":"Ann","email":"ann@example.com","ip":"203.0.113.9"},` +
	`"message":"<p>Hello</p>","created_at":"2026-11-21T10:00:00Z"}`

// parsed returns a message of type typ with data, through the default
// parse stage.
func parsed(t testing.TB, typ, data string) *pipeline.Message {
	t.Helper()
	p, err := pipeline.NewParse(pipeline.ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := &pipeline.Message{
		Event: pipeline.Event{ID: "evt-17", Type: typ, Data: json.RawMessage(data)},
		Key:   "test:evt-17",
	}
	if err := p.Process(context.Background(), m); err != nil {
		t.Fatalf("parse %s: %v", data, err)
	}
	return m
}

// fields returns the message's fields as compact JSON, for comparisons.
func fields(t testing.TB, m *pipeline.Message) string {
	t.Helper()
	b, err := json.Marshal(m.Fields)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// get returns the value at path, failing the test on a bad path.
func get(t testing.TB, m *pipeline.Message, path string) (any, bool) {
	t.Helper()
	p, err := pipeline.ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	return p.Get(m)
}

// wantErr checks err against want: "" means no error; otherwise err must
// contain want and be permanent when permanent is set.
func wantErr(t testing.TB, err error, want string, permanent bool) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want == "":
		return
	case err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	case permanent && !pipeline.IsPermanent(err):
		t.Fatalf("error %q is not permanent", err)
	case !permanent && pipeline.IsPermanent(err):
		t.Fatalf("error %q is permanent, want retryable", err)
	}
}

// isDrop reports whether err is pipeline.ErrDrop.
func isDrop(err error) bool { return errors.Is(err, pipeline.ErrDrop) }
