package hub_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
)

// flakyHistory stores like the memory store and remembers keys like a
// durable one; the first Append of a key stores the message and then
// fails, as a store whose acknowledgement was lost would.
type flakyHistory struct {
	*hub.MemoryHistory
	mu   sync.Mutex
	seen map[string]hub.Position
}

func (f *flakyHistory) Append(ctx context.Context, m *hub.Message, o hub.HistoryOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pos, ok := f.seen[m.Key+"|"+m.Channel]; ok {
		m.Epoch, m.Offset = pos.Epoch, pos.Offset
		m.Seal()
		return hub.ErrDuplicate
	}
	if err := f.MemoryHistory.Append(ctx, m, o); err != nil {
		return err
	}
	f.seen[m.Key+"|"+m.Channel] = hub.Position{Epoch: m.Epoch, Offset: m.Offset}
	return errors.New("acknowledgement lost")
}

// TestDuplicateStillDelivered: a publish that stored its message but
// failed before delivering it, then repeated with the same key, reaches
// live subscribers once.
func TestDuplicateStillDelivered(t *testing.T) {
	hist := &flakyHistory{MemoryHistory: hub.NewMemoryHistory(), seen: map[string]hub.Position{}}
	h, err := hub.New(hub.Config{History: hist})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Shutdown(context.Background()) })
	s, err := h.NewSession(hub.SessionOptions{Transport: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(t.Context(), []string{"c"}, nil); err != nil {
		t.Fatal(err)
	}
	p := hub.Publication{Channels: []string{"c"}, Type: "t", Data: []byte(`1`), IdempotencyKey: "k1"}
	if _, err := h.Publish(t.Context(), p); err == nil {
		t.Fatal("the first publish should fail (its acknowledgement was lost)")
	}
	// The retry (the pipeline delivering the event again) reaches the
	// subscriber that was there all along.
	if _, err := h.Publish(t.Context(), p); err != nil {
		t.Fatalf("repeat: %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	var offsets []uint64
	for time.Now().Before(deadline) && len(offsets) == 0 {
		for _, it := range s.Drain(nil) {
			if it.Kind == hub.ItemMessage {
				offsets = append(offsets, it.Msg.Offset)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(offsets) != 1 || offsets[0] != 1 {
		t.Fatalf("live subscriber got offsets %v, want [1]", offsets)
	}
}
