package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"

	"github.com/heraldhq/herald/hub"
)

// BenchmarkFanout measures the publish → subscriber-queue path: one publish
// to a channel with N subscribers, then every subscriber's writer drains its
// queue (as a transport would, minus the socket write). It reports
// deliveries per second and allocations per delivery.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			h := newHub(b, hub.Config{MaxQueueBytes: 64 << 20})
			sessions := make([]*hub.Session, n)
			for i := range sessions {
				s, err := h.NewSession(hub.SessionOptions{Transport: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Subscribe(context.Background(), []string{"thread:1"}, nil); err != nil {
					b.Fatal(err)
				}
				s.Drain(nil)
				sessions[i] = s
			}
			p := hub.Publication{Channels: []string{"thread:1"}, Type: "post.created", Data: json.RawMessage(`{"id":"p981","message":"hello"}`)}
			bufs := make([][]hub.Item, n)
			b.ReportAllocs()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := h.Publish(context.Background(), p); err != nil {
					b.Fatal(err)
				}
				for j, s := range sessions {
					bufs[j] = s.Drain(bufs[j][:0])
					if len(bufs[j]) != 1 {
						b.Fatalf("session %d drained %d items", j, len(bufs[j]))
					}
				}
			}
			b.StopTimer()
			runtime.ReadMemStats(&after)
			deliveries := float64(b.N) * float64(n)
			b.ReportMetric(deliveries/b.Elapsed().Seconds(), "deliveries/s")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/deliveries, "allocs/delivery")
		})
	}
}

// BenchmarkPublish measures publishing to a channel with no subscribers:
// validation, history append and envelope encoding.
func BenchmarkPublish(b *testing.B) {
	h := newHub(b, hub.Config{})
	p := hub.Publication{Channels: []string{"thread:1"}, Type: "post.created", Data: json.RawMessage(`{"id":"p981","message":"hello"}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.Publish(context.Background(), p); err != nil {
			b.Fatal(err)
		}
	}
}
