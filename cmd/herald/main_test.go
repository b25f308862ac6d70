package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	tests := []struct {
		args       []string
		code       int
		out, errex string
	}{
		{nil, 2, "", "Usage:"},
		{[]string{"help"}, 0, "herald serve", ""},
		{[]string{"--help"}, 0, "herald bench", ""},
		{[]string{"help", "serve"}, 0, "HERALD_SSE_HEARTBEAT (sse.heartbeat)", ""},
		{[]string{"version"}, 0, "herald ", ""},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"serve", "--nope"}, 2, "", "flag provided but not defined"},
		{[]string{"serve", "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"serve", "-h"}, 0, "", "HERALD_LISTEN"},
		{[]string{"serve", "--config", "/nonexistent/herald.yaml"}, 2, "", "no such file"},
		{[]string{"serve", "--listen", "nowhere"}, 2, "", "listen"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stdout.String(), tt.out) || !strings.Contains(stderr.String(), tt.errex) {
			t.Errorf("herald %v: exit %d, stdout %q, stderr %q; want exit %d, stdout ∋ %q, stderr ∋ %q",
				tt.args, code, stdout.String(), stderr.String(), tt.code, tt.out, tt.errex)
		}
	}
}
