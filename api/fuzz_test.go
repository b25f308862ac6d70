package api

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
)

// FuzzPublishBody sends arbitrary bodies to POST /v1/publish: every answer
// is a success or a client error with a JSON body, never a panic or a 500.
func FuzzPublishBody(f *testing.F) {
	for _, seed := range []string{
		`{"channels":["thread:42","forum:tech"],"type":"post.created","data":{"id":"p981"},"idempotency_key":"k"}`,
		`{"channel":"a","data":"<script>\u2028"}`,
		`{"channel":"a","data":[1,2,{"x":null}]}`,
		`{"channels":[]}`,
		`{"channel":"a","extra":1}`,
		`{"channel":"a"}{"channel":"b"}`,
		`{"channels":["a",null]}`,
		`{"data":1e999}`,
		`[]`, `null`, `"x"`, `{`, "\xff\xfe", ``,
	} {
		f.Add([]byte(seed))
	}
	h := testutil.NewHub(f, hub.Config{MaxMessageBytes: 4096})
	a := New(h, Config{})
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, path := range []string{"/v1/publish", "/v1/publish/fuzz:raw"} {
			req := httptest.NewRequest("POST", path, strings.NewReader(string(body)))
			req.RemoteAddr = "127.0.0.1:1234"
			rec := httptest.NewRecorder()
			a.ServeHTTP(rec, req)
			switch rec.Code {
			case 200, 400, 413, 429:
			default:
				t.Fatalf("%s %q: status %d: %s", path, body, rec.Code, rec.Body)
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %q: answer is not JSON: %s", path, body, rec.Body)
			}
		}
	})
}
