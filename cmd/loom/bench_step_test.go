package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestBenchStepBreakdown runs `loom bench step --breakdown` on a small job:
// the step line, the CPU-time line and one breakdown row per op kind, with
// the GEMMs by shape; and the JSON form's CPU time.
func TestBenchStepBreakdown(t *testing.T) {
	t.Setenv(tuneEnv, "off") // no tuning, no cache written
	spec, _ := fixture(t, "")
	out, _, err := loom(t, "bench", "step", spec, "--threads", "2", "--steps", "2", "--warmup", "1", "--breakdown")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"median step", "CPU time per step", "breakdown per step (2 steps",
		"sgemm              nt ", "attention-fwd", "attention-bwd", "rmsnorm-bwd", "swiglu-fwd", "rope-fwd", "cross-entropy", "adamw"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = loom(t, "bench", "step", spec, "--threads", "1", "--steps", "1", "--warmup", "0", "--log-format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Step float64 `json:"step_s_p50"`
		CPU  float64 `json:"step_cpu_s_p50"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &rec); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if rec.Step <= 0 || rec.CPU <= 0 {
		t.Fatalf("step %v s, CPU %v s: want both > 0", rec.Step, rec.CPU)
	}
}
