package app

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/bench"
	"github.com/heraldhq/herald/internal/config"
)

// TestIngestBench runs `herald bench --ingest` against a real server:
// events posted to /v1/events go through the default pipeline and reach
// every subscriber of their thread: channel once, in order.
func TestIngestBench(t *testing.T) {
	r := startApp(t, config.Config{})
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := bench.Main(ctx, []string{"--ingest", "--url", r.url, "--in-process", "--progress=false",
		"--subscribers", "40", "--channels", "4", "--rate", "200", "--duration", "1s", "--drain", "2s",
		"--workers", "2", "--json", jsonPath}, &stdout, &stderr)
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatalf("exit %d, no report: %v\n%s\n%s", code, err, stdout.String(), stderr.String())
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		if !strings.HasPrefix(p, "the publisher fell behind") {
			t.Fatalf("exit %d: %v\n%s", code, rep.Problems, stdout.String())
		}
	}
	d := rep.Delivery
	if rep.Publish.OK == 0 || d.Delivered != d.Expected || d.Expected != rep.Publish.OK*10 ||
		d.Lost != 0 || d.Duplicates != 0 || d.OutOfOrder != 0 || d.Misrouted != 0 {
		t.Fatalf("publish %+v, delivery %+v\n%s", rep.Publish, d, stdout.String())
	}
}
