package main

import (
	"strings"
	"testing"
)

func TestPlan(t *testing.T) {
	spec, _ := fixture(t, "parallel: {dp: 2, zero: 2}\n")
	out, _, err := loom(t, "plan", spec, "--memory-per-worker", "40MiB")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"2 workers", "recommended (*): dp 2, tp 1, zero 0", "=  "} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = loom(t, "plan", spec, "--workers", "1", "--memory-per-worker", "1KiB", "--show-ranks")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1 workers", "no layout fits", "rank 1 (dp 1, tp 0, pp 0)", "model.layers.0.mlp.up_proj.weight", "dp 1:"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	for _, bad := range [][]string{{"plan"}, {"plan", spec, "--memory-per-worker", "lots"}, {"plan", spec, "--workers", "-1"}} {
		if _, _, err := loom(t, bad...); err == nil {
			t.Errorf("loom %v: no error", bad)
		}
	}
}
