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
	for _, want := range []string{"2 workers", "recommended (*): dp 2, tp 1, pp 1, zero 0", "=   2   1   1     2"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	// No stage fits: the table is printed and the command fails, so a
	// script does not take it for a plan.
	out, _, err = loom(t, "plan", spec, "--workers", "1", "--memory-per-worker", "1KiB", "--show-ranks", "--all")
	if err == nil || !strings.Contains(err.Error(), "no layout of 1 workers fits in 0.00 MiB per worker") {
		t.Fatalf("no layout fits: err %v", err)
	}
	for _, want := range []string{"1 workers", "no layout fits", "rank 1 (dp 1, tp 0, pp 0)", "model.layers.0.mlp.up_proj.weight", "dp 1:"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	// --workers 3: no dp divides the global batch of 4 and no tp the 4
	// heads: refused, no plan printed.
	out, _, err = loom(t, "plan", spec, "--workers", "3", "--memory-per-worker", "40MiB")
	if err == nil || !strings.Contains(err.Error(), "train.global_batch") || !strings.Contains(err.Error(), "--workers 3") || out != "" {
		t.Fatalf("--workers 3 with global_batch 4: err %v, output:\n%s", err, out)
	}
	// --workers 4 lists tensor-parallel layouts too, each rank's memory
	// including its activations.
	out, _, err = loom(t, "plan", spec, "--workers", "4", "--memory-per-worker", "40MiB")
	if err != nil || !strings.Contains(out, "  2   2   1 ") || !strings.Contains(out, "  1   4   1 ") {
		t.Fatalf("--workers 4: err %v, output:\n%s", err, out)
	}
	for _, bad := range [][]string{{"plan"}, {"plan", spec, "--memory-per-worker", "lots"}, {"plan", spec, "--workers", "-1"}} {
		if _, _, err := loom(t, bad...); err == nil {
			t.Errorf("loom %v: no error", bad)
		}
	}
}
