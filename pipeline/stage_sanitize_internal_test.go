package pipeline

import (
	"testing"

	"github.com/microcosm-cc/bluemonday"
)

// FuzzSanitizeClean checks the sanitize stage's shortcut for plain text
// against the policies themselves: whatever the input, the stage's result
// is the policy's.
func FuzzSanitizeClean(f *testing.F) {
	for _, s := range []string{
		"", "m", "Hello, world", "plain text with a newline\nand a tab\t", "caf\u00e9 \u2028 \U0001F600",
		"nul\x00byte", "bad utf-8 \xff\xfe", "don't", `say "hi"`, "a & b", "1 < 2", "3 > 2", "cr\r\nlf",
		"<p>Hello</p>", "<script>alert(1)</script>", "&lt;script&gt;", "<!-- c -->", "javascript:alert(1)",
	} {
		f.Add(s)
	}
	unsafe := bluemonday.NewPolicy()
	unsafe.AllowElements("script", "style", "p")
	unsafe.AllowUnsafe(true)
	unsafe.AddSpaceWhenStrippingTag(true)
	stages := make([]*Sanitize, 0, 3)
	for _, p := range []*bluemonday.Policy{nil, bluemonday.StrictPolicy(), unsafe} {
		st, err := NewSanitize(SanitizeOptions{Policy: p})
		if err != nil {
			f.Fatal(err)
		}
		stages = append(stages, st)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, st := range stages {
			if got, want := st.clean(s), st.policy.Sanitize(s); got != want {
				t.Fatalf("clean(%q) = %q, the policy gives %q (plain text: %v)", s, got, want, plainText(s))
			}
		}
	})
}

// TestPlainTextSkipsTheTokenizer checks that the shortcut is taken: plain
// text costs no allocation, markup goes through the policy.
func TestPlainTextSkipsTheTokenizer(t *testing.T) {
	st, err := NewSanitize(SanitizeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	text := "A plain comment, with punctuation; and a newline\n"
	if n := testing.AllocsPerRun(50, func() { _ = st.clean(text) }); n != 0 {
		t.Errorf("plain text: %v allocations, want 0", n)
	}
	if got := st.clean("<p>Hi<script>x</script></p>"); got != "<p>Hi</p>" {
		t.Errorf("markup: %q", got)
	}
}
