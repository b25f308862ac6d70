package app

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/testutil"
)

// TestStagesInSeparateProcesses runs one logical pipeline as two herald
// processes connected by a Redis stream: the first validates, sanitises
// and anonymises (then enqueues), the second routes and publishes to its
// subscribers. An event posted to the first reaches a subscriber of the
// second, cleaned, once.
func TestStagesInSeparateProcesses(t *testing.T) {
	redisAddr, _ := testutil.Redis(t)
	conf := filepath.Join(t.TempDir(), "herald.yaml")
	yaml := fmt.Sprintf(`
sources:
  - {name: cleaned, type: redis, url: "redis://%s", prefix: "herald:cleaned"}
pipelines:
  - name: clean
    stages: [{type: parse}, {type: sanitize}, {type: anonymize}, {type: enqueue, source: cleaned}]
  - name: fanout
    source: cleaned
    stages: [{type: parse}, {type: route}, {type: publish}]
`, redisAddr)
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	front := startHerald(t, []string{"HERALD_DATA_DIR=" + t.TempDir()}, "--config", conf, "--listen", "127.0.0.1:0", "--pipelines", "clean")
	back := startHerald(t, []string{"HERALD_DATA_DIR=" + t.TempDir()}, "--config", conf, "--listen", "127.0.0.1:0", "--pipelines", "fanout")

	sub := sseData(t, back.url, "thread:t9")
	waitStatus(t, back.url, func(st map[string]any) bool { return st["subscribers"].(float64) == 1 })
	resp, err := http.Post(front.url+"/v1/events", "application/json", strings.NewReader(
		`{"id":"evt-9","type":"post.created","data":{"id":"p9","thread":"t9","forum":"f","author":{"id":"u","email":"e@example.com"},"message":"<i>hi</i><script>x()</script>"}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	select {
	case d := <-sub:
		var env struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		}
		if err := json.Unmarshal([]byte(d), &env); err != nil {
			t.Fatal(err)
		}
		if env.Type != "post.created" || strings.Contains(d, "script") || strings.Contains(d, "e@example.com") ||
			!strings.Contains(fmt.Sprint(env.Data["message"]), "hi") {
			t.Fatalf("subscriber of the second process got %s", d)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("nothing reached the second process's subscriber")
	}
	// Each process ran only its own pipeline.
	for _, c := range []struct {
		url, want string
	}{{front.url, "clean"}, {back.url, "fanout"}} {
		var st struct {
			Pipelines []struct {
				Pipeline string `json:"pipeline"`
				Acked    int    `json:"acked"`
			} `json:"pipelines"`
		}
		testutil.Eventually(t, 5*time.Second, func() error {
			resp, err := http.Get(c.url + "/v1/status")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
				return err
			}
			if len(st.Pipelines) != 1 || st.Pipelines[0].Pipeline != c.want || st.Pipelines[0].Acked != 1 {
				return fmt.Errorf("pipelines %+v, want only %s with 1 acked", st.Pipelines, c.want)
			}
			return nil
		})
	}
}
