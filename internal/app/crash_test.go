package app

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// firehoseReader follows the firehose over SSE, reconnecting with the last
// cursor it saw, and counts every comment it receives by post id.
type firehoseReader struct {
	mu     sync.Mutex
	seen   map[string]int
	cursor string
	gaps   int
}

// follow reads url's firehose until ctx ends or the stream breaks.
func (f *firehoseReader) follow(ctx context.Context, url string) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/v1/sse?channel=firehose", nil)
	f.mu.Lock()
	if f.cursor != "" {
		req.Header.Set("Last-Event-ID", f.cursor)
	}
	f.mu.Unlock()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("subscribe: %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	var event, id, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "event: "):
			event = line[7:]
		case strings.HasPrefix(line, "data: "):
			data = line[6:]
		case line == "":
			f.mu.Lock()
			if id != "" {
				f.cursor = id
			}
			switch event {
			case "gap":
				f.gaps++
			case "post.created":
				var env struct {
					Data struct {
						ID string `json:"id"`
					} `json:"data"`
				}
				if json.Unmarshal([]byte(data), &env) == nil {
					f.seen[env.Data.ID]++
				}
			}
			f.mu.Unlock()
			event, id, data = "", "", ""
		}
	}
	return sc.Err()
}

// TestCrashLosesNothing is the pipeline's crash test: events pour into a
// real herald process, which is killed with SIGKILL and started again on
// the same data directory. Every event that got a 202 reaches the
// firehose subscriber, which resumes with its cursor, and none arrives
// twice. The channel history is on JetStream (history: jetstream), so
// what was published but not yet written to the subscriber when the
// process died is still there to resume from.
func TestCrashLosesNothing(t *testing.T) {
	dataDir := t.TempDir()
	env := []string{"HERALD_DATA_DIR=" + dataDir, "HERALD_HISTORY=jetstream", "HERALD_QUEUE_ACK_WAIT=2s"}
	h := startHerald(t, env, "--listen", "127.0.0.1:0")

	reader := &firehoseReader{seen: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	readerURL := make(chan string, 1)
	readerURL <- h.url
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		url := <-readerURL
		for ctx.Err() == nil {
			_ = reader.follow(ctx, url)
			select {
			case url = <-readerURL:
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
			}
		}
	}()
	// The subscription exists before the first event.
	waitStatus(t, h.url, func(st map[string]any) bool { return st["subscribers"].(float64) == 1 })

	var accepted []string
	post := func(url string, i int) bool {
		body := fmt.Sprintf(`{"id":"evt-%d","type":"post.created","data":{"id":"p%d","thread":"t%d","forum":"f",`+
			`"author":{"id":"u1","email":"a@example.com"},"message":"<b>%d</b>"}}`, i, i, i%7, i)
		resp, err := http.Post(url+"/v1/events", "application/json", strings.NewReader(body))
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			accepted = append(accepted, fmt.Sprintf("p%d", i))
			return true
		}
		return false
	}

	// Events pour in; the process is killed while they do, once 100 were
	// accepted (counted, not timed: a slow machine accepts fewer in a
	// given time).
	const killAfter = 100
	i := 0
	killed := make(chan struct{})
	kill := func() {
		_ = h.cmd.Process.Kill()
		close(killed)
	}
	for ; ; i++ {
		if len(accepted) == killAfter {
			go kill()
		}
		if !post(h.url, i) {
			if len(accepted) < killAfter {
				t.Fatalf("event %d refused before the kill", i)
			}
			<-killed
			break
		}
	}
	<-h.exited
	before := len(accepted)

	h2 := startHerald(t, env, "--listen", "127.0.0.1:0")
	readerURL <- h2.url
	for j := range 50 {
		if !post(h2.url, i+1+j) {
			t.Fatalf("event %d refused after the restart", i+1+j)
		}
	}

	deadline := time.Now().Add(30 * time.Second)
	for {
		reader.mu.Lock()
		missing, twice := 0, 0
		var firstMissing string
		for _, id := range accepted {
			switch n := reader.seen[id]; {
			case n == 0:
				missing++
				if firstMissing == "" {
					firstMissing = id
				}
			case n > 1:
				twice++
			}
		}
		gaps := reader.gaps
		reader.mu.Unlock()
		if twice > 0 {
			t.Fatalf("%d events delivered twice", twice)
		}
		if missing == 0 {
			t.Logf("%d events accepted before the kill, %d after; all delivered once; %d gap signals", before, len(accepted)-before, gaps)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d accepted events never arrived (first %s); %d gap signals", missing, len(accepted), firstMissing, gaps)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Nothing arrives twice later either (a redelivery after the
	// acknowledgement wait).
	time.Sleep(3 * time.Second)
	reader.mu.Lock()
	for id, n := range reader.seen {
		if n > 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
	reader.mu.Unlock()
	cancel()
	<-readerDone
}

// waitStatus polls /v1/status until ok accepts it.
func waitStatus(t *testing.T, url string, ok func(map[string]any) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st map[string]any
		if resp, err := http.Get(url + "/v1/status"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if st != nil && ok(st) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never as expected: %v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
