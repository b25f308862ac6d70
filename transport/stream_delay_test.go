package transport_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/transport/sse"
)

// TestWriteDelayBatchesMessages: with a write delay, messages published
// in quick succession reach the client in one chunk, and none is lost.
func TestWriteDelayBatchesMessages(t *testing.T) {
	h := testutil.NewHub(t, hub.Config{})
	srv := httptest.NewServer(sse.New(h, sse.Config{WriteDelay: 500 * time.Millisecond}))
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "?channel=c")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	// Wait for the end of the (empty) replay: the bare "id:" line.
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "id: ") {
			break
		}
	}
	// Spaced publishes: without the delay the first one is written alone
	// long before the next arrives.
	for i := 0; i < 5; i++ {
		if i > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		if _, err := h.Publish(context.Background(), hub.Publication{Channels: []string{"c"}, Data: json.RawMessage(`1`)}); err != nil {
			t.Fatal(err)
		}
	}
	// All five arrive; with the delay they come in one flush, so after
	// the first data line the other four are already buffered.
	got := 0
	testutil.Eventually(t, 5*time.Second, func() error {
		for got < 5 {
			line, err := br.ReadString('\n')
			if err != nil {
				return err
			}
			if strings.HasPrefix(line, "data: ") {
				got++
				if got == 1 && br.Buffered() < 4*len(line) {
					t.Errorf("after the first message only %d bytes are buffered: not batched", br.Buffered())
				}
			}
		}
		return nil
	})
}
