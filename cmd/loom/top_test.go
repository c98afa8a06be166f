package main

import (
	"strings"
	"testing"

	"github.com/loomtrain/loom/coordinator"
)

func TestWriteTopSlowestFirst(t *testing.T) {
	d := &coordinator.JobDetail{
		JobSummary: coordinator.JobSummary{Name: "j", State: "RUNNING", Step: 10, TotalSteps: 100, Progress: 0.1,
			ETASeconds: 90, TokensPerSec: 1234, MFU: 0.25, PeakFLOPS: 2e11, ValLoss: 2.5, ValStep: 8},
		StragglerRatio: 1.2,
		Ranks: []coordinator.RankRow{
			{Rank: 0, Addr: "a:1", Step: 10, StepS: 0.02, ComputeS: 0.005, WaitS: 0.014, Slowdown: 0.4, Order: 2},
			{Rank: 1, Addr: "a:2", Step: 10, StepS: 0.02, ComputeS: 0.019, Slowdown: 1.6, Straggler: true, Order: 1,
				Memory: map[string]int64{"params": 1 << 20, "grads": 1 << 20}},
		},
	}
	var b strings.Builder
	writeTop(&b, d)
	out := b.String()
	lines := strings.Split(out, "\n")
	var ranks []string
	for _, l := range lines {
		if strings.Contains(l, "a:") {
			ranks = append(ranks, l)
		}
	}
	if len(ranks) != 2 || !strings.Contains(ranks[0], "a:2") || !strings.Contains(ranks[0], "STRAGGLER") ||
		!strings.Contains(ranks[0], "2.0MiB") || strings.Contains(ranks[1], "STRAGGLER") {
		t.Fatalf("want rank 1 first, flagged, with its memory:\n%s", out)
	}
	if !strings.Contains(out, "step 10/100") || !strings.Contains(out, "MFU 25.0%") || !strings.Contains(out, "eta 1m30s") ||
		!strings.Contains(out, "val loss 2.5000 (step 8)") {
		t.Fatalf("header:\n%s", out)
	}
}
