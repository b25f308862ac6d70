package amqpqueue

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// fresh reserves ids and returns which were new, committing them.
func fresh(t *testing.T, r *recentIDs, ids ...string) string {
	t.Helper()
	entries, err := r.reserve(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i, e := range entries {
		if e != nil {
			out = append(out, ids[i])
			r.commit(e)
		}
	}
	return fmt.Sprint(out)
}

func TestRecentIDsWindow(t *testing.T) {
	r := newRecentIDs(100*time.Millisecond, 1000)
	if got := fresh(t, r, "a", "b", "a"); got != "[a b]" {
		t.Fatalf("first = %s", got)
	}
	if got := fresh(t, r, "a", "c"); got != "[c]" {
		t.Fatalf("within the window = %s", got)
	}
	time.Sleep(150 * time.Millisecond)
	if got := fresh(t, r, "a", "b", "c"); got != "[a b c]" {
		t.Fatalf("after the window = %s", got)
	}
}

func TestRecentIDsBound(t *testing.T) {
	r := newRecentIDs(time.Hour, 2)
	fresh(t, r, "a", "b", "c") // a goes at the next call
	if got := fresh(t, r, "a"); got != "[a]" {
		t.Fatalf("past the bound = %s", got)
	}
	if len(r.ids) > 3 {
		t.Fatalf("%d IDs remembered", len(r.ids))
	}
}

// TestRecentIDsPending: a second reservation of a pending ID waits for
// the first to end: released, the ID is new again; committed, it is not.
func TestRecentIDsPending(t *testing.T) {
	r := newRecentIDs(time.Hour, 1000)
	for _, commit := range []bool{false, true} {
		id := fmt.Sprint(commit)
		first, err := r.reserve(context.Background(), []string{id})
		if err != nil || first[0] == nil {
			t.Fatalf("reserve = %v, %v", first, err)
		}
		got := make(chan string)
		go func() { got <- fresh(t, r, id) }()
		select {
		case g := <-got:
			t.Fatalf("did not wait for the pending reservation: %s", g)
		case <-time.After(50 * time.Millisecond):
		}
		want := "[" + id + "]"
		if commit {
			r.commit(first[0])
			want = "[]"
		} else {
			r.release(first[0])
		}
		if g := <-got; g != want {
			t.Fatalf("after the first ended (commit %v) = %s, want %s", commit, g, want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	e, _ := r.reserve(ctx, []string{"x"})
	cancel()
	if _, err := r.reserve(ctx, []string{"x"}); err == nil {
		t.Fatal("reserve of a pending ID returned despite the context ending")
	}
	r.release(e[0])
}
