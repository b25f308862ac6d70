package client

import "testing"

func TestCursorMerge(t *testing.T) {
	var c cursorState
	intern := func(b []byte) string { return string(b) }
	if !c.merge([]byte("thread:42@k3j4h5g6:17,forum:tech@x9q2m4a1:5"), intern) {
		t.Fatal("valid cursor rejected")
	}
	if !c.merge([]byte("forum:tech@x9q2m4a1:6,user:1@z:0"), intern) {
		t.Fatal("valid cursor rejected")
	}
	if got, want := string(c.appendTo(nil)), "thread:42@k3j4h5g6:17,forum:tech@x9q2m4a1:6,user:1@z:0"; got != want {
		t.Fatalf("cursor = %q, want %q", got, want)
	}
	for _, bad := range []string{"a", "a@e", "a@e:", "a@:1", "@e:1", "a@e:01", "a@e:1,", "a b@e:1", "a@e!:1", "a@e:18446744073709551616"} {
		if c.merge([]byte(bad), intern) {
			t.Errorf("%q accepted", bad)
		}
	}
	if got, want := string(c.appendTo(nil)), "thread:42@k3j4h5g6:17,forum:tech@x9q2m4a1:6,user:1@z:0"; got != want {
		t.Fatalf("a rejected cursor changed the state: %q", got)
	}
	if !c.merge(nil, intern) {
		t.Error("empty cursor rejected")
	}
}

func TestCursorMergeAllocs(t *testing.T) {
	var c cursorState
	intern := func(b []byte) string { return string(b) }
	c.merge([]byte("thread:42@k3j4h5g6:17,forum:tech@x9q2m4a1:5"), intern)
	next := []byte("thread:42@k3j4h5g6:18,forum:tech@x9q2m4a1:5")
	if n := testing.AllocsPerRun(100, func() { c.merge(next, intern) }); n != 0 {
		t.Errorf("%v allocations per merge of known channels, want 0", n)
	}
}
