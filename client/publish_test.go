package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"testing"
)

func TestPublish(t *testing.T) {
	var body []byte
	srv := newScriptServer(t,
		func(w http.ResponseWriter, r *http.Request) {
			body, _ = io.ReadAll(r.Body)
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"results":[{"channel":"a","epoch":"e","offset":3},{"channel":"b","epoch":"f","offset":1}]}`)
		},
		httpError(401, "unauthorized"),
		func(w http.ResponseWriter, r *http.Request) { http.Error(w, "bad gateway", http.StatusBadGateway) },
	)
	c := New(srv.URL+"/", WithAPIKey("k1"))
	res, err := c.Publish(context.Background(), Publication{
		Channels: []string{"a", "b"}, Type: "post.created", Data: json.RawMessage(`{"id": 1}`), IdempotencyKey: "p1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Result{{"a", "e", 3}, {"b", "f", 1}}; !slices.Equal(res, want) {
		t.Errorf("results = %v, want %v", res, want)
	}
	r := srv.request(t, 0)
	if r.Method != http.MethodPost || r.URL.Path != "/v1/publish" || r.Header.Get("Authorization") != "Bearer k1" ||
		r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("request %s %s %v", r.Method, r.URL, r.Header)
	}
	if got, want := string(body), `{"channels":["a","b"],"type":"post.created","data":{"id":1},"idempotency_key":"p1"}`; got != want {
		t.Errorf("body %s, want %s", got, want)
	}

	_, err = c.Publish(context.Background(), Publication{Channels: []string{"a"}, Data: map[string]int{"x": 1}})
	var he *Error
	if !errors.As(err, &he) || he.Status != 401 || he.Code != "unauthorized" || he.Message != "test unauthorized" {
		t.Errorf("err = %#v", err)
	}
	if err.Error() != "client: 401 unauthorized: test unauthorized" {
		t.Errorf("Error() = %q", err.Error())
	}
	_, err = c.Publish(context.Background(), Publication{Channels: []string{"a"}})
	if !errors.As(err, &he) || he.Status != 502 || he.Code != "" || he.Message != "bad gateway" {
		t.Errorf("err = %#v", err)
	}
	if _, err := c.Publish(context.Background(), Publication{Channels: []string{"a"}, Data: func() {}}); err == nil {
		t.Error("unencodable data: no error")
	}
}
