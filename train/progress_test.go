package train

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// A run resumed at step 500 of 1000: the time to the end is the pace of
// the steps since the resume times the 489 left, not the elapsed time
// spread over all 511 steps (which would say a fraction of a second).
func TestProgressETAAfterResume(t *testing.T) {
	var out bytes.Buffer
	p, err := NewProgress(&out, "json", 1000, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for step := 501; step <= 511; step++ {
		time.Sleep(20 * time.Millisecond) // each step takes at least 20 ms
		p.Report(Stats{Step: step, Loss: 1})
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var last struct {
		Step int     `json:"step"`
		ETA  float64 `json:"eta_s"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Step != 511 {
		t.Fatalf("last line %q: %v", lines[len(lines)-1], err)
	}
	// At least 20 ms × 489 steps ≈ 9.8 s; elapsed/511·489 would be ~0.2 s.
	if last.ETA < 489*0.02*0.9 {
		t.Errorf("eta at step 511 of 1000 after a resume at 500: %.2f s, want ≥ %.1f s (20 ms/step × 489 steps)", last.ETA, 489*0.02*0.9)
	}
}
