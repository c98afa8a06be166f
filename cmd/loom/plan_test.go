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
	for _, want := range []string{"dp 2", "*2", "fits in 40.00 MiB per worker: stage 0, 1, 2, 3"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	// No stage fits: the table is printed and the command fails, so a
	// script does not take it for a plan.
	out, _, err = loom(t, "plan", spec, "--workers", "1", "--memory-per-worker", "1KiB", "--shards")
	if err == nil || !strings.Contains(err.Error(), "no stage fits in 0.00 MiB per worker") {
		t.Fatalf("no stage fits: err %v", err)
	}
	for _, want := range []string{"dp 1", "rank 0:", "model.layers.0.mlp.up_proj.weight"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	// --workers 4 makes dp 4, over which the global batch of 4 (micro-batch
	// 2) does not split: refused like `loom run` refuses it, no plan printed.
	out, _, err = loom(t, "plan", spec, "--workers", "4", "--memory-per-worker", "40MiB")
	if err == nil || !strings.Contains(err.Error(), "train.global_batch") || !strings.Contains(err.Error(), "--workers 4") || out != "" {
		t.Fatalf("--workers 4 with global_batch 4, micro_batch 2: err %v, output:\n%s", err, out)
	}
	for _, bad := range [][]string{{"plan"}, {"plan", spec, "--memory-per-worker", "lots"}, {"plan", spec, "--workers", "-1"}} {
		if _, _, err := loom(t, bad...); err == nil {
			t.Errorf("loom %v: no error", bad)
		}
	}
}
