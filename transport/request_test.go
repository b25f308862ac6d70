package transport_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"unsafe"

	"github.com/heraldhq/herald/transport"
)

// TestParseRequestKeepsNoneOfTheRequest: the channels and the cursor a
// session keeps are copies, not parts of the request's strings, which may
// share one allocation with a whole request head (cookies included).
func TestParseRequestKeepsNoneOfTheRequest(t *testing.T) {
	head := "channel=thread:42&channel=forum:tech|thread:42@ep1:5|" + strings.Repeat("c", 4000)
	query, rest, _ := strings.Cut(head, "|")
	cursor, _, _ := strings.Cut(rest, "|")
	r := httptest.NewRequest(http.MethodGet, "/v1/sse", nil)
	r.URL = &url.URL{Path: "/v1/sse", RawQuery: query}
	r.Header["Last-Event-Id"] = []string{cursor}

	req, ok := transport.ParseRequest(httptest.NewRecorder(), r, true)
	if !ok {
		t.Fatal("ParseRequest refused the request")
	}
	start := uintptr(unsafe.Pointer(unsafe.StringData(head)))
	inHead := func(s string) bool {
		p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
		return s != "" && p >= start && p < start+uintptr(len(head))
	}
	if len(req.Channels) != 2 {
		t.Fatalf("channels %q", req.Channels)
	}
	for _, ch := range req.Channels {
		if inHead(ch) {
			t.Errorf("channel %q is part of the request's memory", ch)
		}
	}
	entries := req.Cursor.Entries()
	if len(entries) != 1 || entries[0].Position.Epoch != "ep1" || entries[0].Position.Offset != 5 {
		t.Fatalf("cursor %+v", entries)
	}
	for _, e := range entries {
		if inHead(e.Channel) || inHead(e.Position.Epoch) {
			t.Errorf("cursor entry %+v is part of the request's memory", e)
		}
	}
}
