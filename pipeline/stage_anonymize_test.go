package pipeline_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/heraldhq/herald/pipeline"
)

// hmacHex is the expected hash of value under salt.
func hmacHex(salt, value string) string {
	mac := hmac.New(sha256.New, []byte(salt))
	mac.Write([]byte(value))
	return hex.EncodeToString(mac.Sum(nil))
}

func TestAnonymize(t *testing.T) {
	tests := []struct {
		name    string
		opts    pipeline.AnonymizeOptions
		data    string
		want    string // fields as JSON
		wantErr string
	}{
		{
			name: "defaults drop email and ip",
			data: exampleData,
			want: `{"author":{"id":"u7","name":"Ann"},"created_at":"2026-11-21T10:00:00Z","forum":"tech","id":"p981",` +
				`"message":"\u003cp\u003eHello\u003c/p\u003e","parent":null,"thread":"t42"}`,
		},
		{name: "defaults with nothing to drop", data: `{"author":{"id":"u7"}}`, want: `{"author":{"id":"u7"}}`},
		{name: "defaults without author", data: `{"x":1}`, want: `{"x":1}`},
		{
			name: "hash and drop",
			opts: pipeline.AnonymizeOptions{Hash: []string{"data.author.id", "data.n"}, Salt: "s3cret"},
			data: `{"author":{"id":"u7","email":"a@b","ip":"1.2.3.4"},"n":42}`,
			want: `{"author":{"id":"` + hmacHex("s3cret", "u7") + `"},"n":"` + hmacHex("s3cret", "42") + `"}`,
		},
		{
			name: "hash only, empty drop",
			opts: pipeline.AnonymizeOptions{Drop: []string{}, Hash: []string{"data.author.ip"}, Salt: "k"},
			data: `{"author":{"email":"a@b","ip":"1.2.3.4"}}`,
			want: `{"author":{"email":"a@b","ip":"` + hmacHex("k", "1.2.3.4") + `"}}`,
		},
		{
			name: "hash missing and null skipped",
			opts: pipeline.AnonymizeOptions{Drop: []string{}, Hash: []string{"data.a", "data.b.c"}, Salt: "k"},
			data: `{"a":null}`,
			want: `{"a":null}`,
		},
		{
			name:    "hash object",
			opts:    pipeline.AnonymizeOptions{Hash: []string{"data.author"}, Salt: "k"},
			data:    exampleData,
			wantErr: "data.author: must be a string or number to hash, not an object",
		},
		{
			name:    "hash boolean",
			opts:    pipeline.AnonymizeOptions{Hash: []string{"data.b"}, Salt: "k"},
			data:    `{"b":true}`,
			wantErr: "data.b: must be a string or number to hash, not a boolean",
		},
		{
			name: "custom drop",
			opts: pipeline.AnonymizeOptions{Drop: []string{"data.secret", "data.deep.x"}},
			data: `{"secret":1,"deep":{"x":2,"y":3},"author":{"email":"kept"}}`,
			want: `{"author":{"email":"kept"},"deep":{"y":3}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := pipeline.NewAnonymize(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			m := parsed(t, "x", tt.data)
			err = a.Process(context.Background(), m)
			wantErr(t, err, tt.wantErr, true)
			if err == nil {
				if got := fields(t, m); got != tt.want {
					t.Errorf("fields = %s\nwant     %s", got, tt.want)
				}
			}
		})
	}
}

func TestAnonymizeHashIsStableAndKeyed(t *testing.T) {
	hash := func(salt, id string) string {
		a, err := pipeline.NewAnonymize(pipeline.AnonymizeOptions{Hash: []string{"data.author.id"}, Salt: salt})
		if err != nil {
			t.Fatal(err)
		}
		m := parsed(t, "x", `{"author":{"id":"`+id+`"}}`)
		if err := a.Process(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		s, _ := get(t, m, "data.author.id")
		return s.(string)
	}
	h := hash("a", "u7")
	if len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
		t.Fatalf("hash %q is not 64 hex digits", h)
	}
	if hash("a", "u7") != h {
		t.Error("the same value and salt hash differently")
	}
	if hash("b", "u7") == h {
		t.Error("the salt does not change the hash")
	}
	if hash("a", "u8") == h {
		t.Error("different values hash the same")
	}
}

func TestNewAnonymizeRejects(t *testing.T) {
	tests := []struct {
		name string
		opts pipeline.AnonymizeOptions
		want []string
	}{
		{name: "hash without salt", opts: pipeline.AnonymizeOptions{Hash: []string{"data.x"}}, want: []string{"Salt is required"}},
		{name: "read-only", opts: pipeline.AnonymizeOptions{Drop: []string{"id"}, Hash: []string{"type"}, Salt: "k"},
			want: []string{`Drop[0]: field path "id" is read-only`, `Hash[0]: field path "type" is read-only`}},
		{name: "malformed", opts: pipeline.AnonymizeOptions{Drop: []string{"data."}}, want: []string{`Drop[0]: field path "data." has an empty segment`}},
		{name: "overlap", opts: pipeline.AnonymizeOptions{Hash: []string{"data.author.ip"}, Salt: "k"},
			want: []string{`"data.author.ip" is in both Drop and Hash`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pipeline.NewAnonymize(tt.opts)
			if err == nil {
				t.Fatal("NewAnonymize succeeded")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}
