package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
)

// benchSubscription is a subscription to "thread:42" with no connection,
// for driving the per-event path directly.
func benchSubscription(onEvent func(Event)) *Subscription {
	s := &Subscription{opts: SubscribeOptions{Channels: []string{"thread:42"}, OnEvent: onEvent}, ctx: context.Background()}
	s.cur.merge([]byte("thread:42@k3j4h5g6:0"), s.internChannel)
	return s
}

const benchFrames = 1000

// BenchmarkReceive measures the client's work per received event, from
// wire bytes to OnEvent, with and without an OnEvent (which gets its own
// copy of Data: the one allocation per event).
func BenchmarkReceive(b *testing.B) {
	var sse bytes.Buffer
	ws := make([][]byte, benchFrames)
	for i := range benchFrames {
		off := uint64(i + 1)
		env := envelopeFor("thread:42", "k3j4h5g6", off, "post.created", `{"id":"p981","body":"hello, world"}`)
		fmt.Fprintf(&sse, "id: thread:42@k3j4h5g6:%d\nevent: post.created\ndata: %s\n\n", off, env)
		ws[i] = []byte(env)
	}
	for _, withData := range []bool{false, true} {
		var onEvent func(Event)
		n := 0
		if withData {
			onEvent = func(Event) { n++ }
		}
		b.Run(fmt.Sprintf("sse/onEvent=%v", withData), func(b *testing.B) {
			s := benchSubscription(onEvent)
			r := bytes.NewReader(sse.Bytes())
			b.SetBytes(int64(sse.Len() / benchFrames))
			b.ReportAllocs()
			for i := 0; i < b.N; i += benchFrames {
				r.Reset(sse.Bytes())
				s.cur.entries[0].offset = 0
				if err := s.readSSE(r); err != io.EOF {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64((b.N+benchFrames-1)/benchFrames*benchFrames), "ns/event")
		})
		b.Run(fmt.Sprintf("ws/onEvent=%v", withData), func(b *testing.B) {
			s := benchSubscription(onEvent)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if i%benchFrames == 0 {
					s.cur.entries[0].offset = 0
				}
				if err := s.handleWS(ws[i%benchFrames]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestReceiveAllocs(t *testing.T) {
	s := benchSubscription(nil)
	frames := make([][]byte, 200)
	for i := range frames {
		frames[i] = []byte(envelopeFor("thread:42", "k3j4h5g6", uint64(i+1), "post.created", `{"id":"p981"}`))
	}
	i := 0
	if n := testing.AllocsPerRun(100, func() {
		if err := s.handleWS(frames[i]); err != nil {
			t.Fatal(err)
		}
		i++
	}); n != 0 {
		t.Errorf("%v allocations per event without OnEvent, want 0", n)
	}
}
