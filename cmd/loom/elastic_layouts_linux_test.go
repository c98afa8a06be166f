package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// TestElasticKeepsTensorAndPipelineParallelism: dp is what shrinks; tp and
// pp stay. A dp 2 × tp 2 job and a dp 2 × pp 2 job (four workers each)
// lose a worker mid-step and go on at dp 1 × tp 2 and dp 1 × pp 2 — the
// plan recomputed for the new size, the checkpoint resharded — on the
// uninterrupted run's curve.
func TestElasticKeepsTensorAndPipelineParallelism(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	for _, layout := range []string{"tp: 2", "pp: 2"} {
		t.Run(strings.ReplaceAll(layout, ": ", ""), func(t *testing.T) {
			path, _ := elasticSpec(t, "lay", 2, 16, 4, "{min_dp: 1, max_dp: 2, max_restarts: 2, step_timeout: 30s, rendezvous_timeout: 20s}")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			s := strings.Replace(string(b), "n_layers: 1,", "n_layers: 2,", 1)
			s = strings.Replace(s, "parallel: {dp: 2}", "parallel: {dp: 2, "+layout+"}", 1)
			if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
			src := []byte(s)
			want, _ := reference(t, path, 1)
			w := newElasticWorld(t, 2*time.Second, "LOOM_TEST_SLOW_RANK=0:100ms")
			coord := w.coordinatorInProcess()
			for range 4 {
				w.worker(coord)
			}
			w.waitRegistered(4)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			killed := false
			final, err := w.follow(ctx, coord, src, -1, func(ev *loomv1.JobEvent) {
				if p := ev.GetProgress(); p != nil && !killed && p.Generation == 1 && p.Steps[len(p.Steps)-1].Step >= 5 {
					killed = true
					go func() {
						// Rank 3: the second dp replica's last rank (its tp partner
						// or its pipeline stage 1).
						if pr := w.workerAt(w.statuses[len(w.statuses)-1].Ranks[3].Addr); pr != nil {
							_ = pr.cmd.Process.Kill()
						}
					}()
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if final.State != loomv1.JobState_JOB_STATE_SUCCEEDED || final.Generation != 2 || final.Dp != 1 || len(final.Ranks) != 2 {
				t.Fatalf("final: %s gen %d dp %d ranks %d: %s", final.State, final.Generation, final.Dp, len(final.Ranks), final.Message)
			}
			for _, r := range final.Ranks {
				if fmt.Sprintf("(%d,%d,%d)", r.Dp, r.Pp, r.Tp) != map[string][]string{"tp: 2": {"(0,0,0)", "(0,0,1)"}, "pp: 2": {"(0,0,0)", "(0,1,0)"}}[layout][r.Rank] {
					t.Errorf("generation 2 rank %d at (dp,pp,tp) (%d,%d,%d)", r.Rank, r.Dp, r.Pp, r.Tp)
				}
			}
			t.Logf("recovery: %s", recoveryLine(final.Recoveries[0]))
			same, other, n := w.compareLosses(want, map[uint64]int32{1: 2, 2: 1}, 1)
			t.Logf("%d steps: max relative difference from the uninterrupted dp 1 run %.2g at dp 1, %.2g at dp 2", n, same, other)
			if same > 1e-5 || other > 1e-5 {
				t.Errorf("losses off the uninterrupted curve: %.2g, %.2g", same, other)
			}
		})
	}
}

// TestRunReplacesAKilledWorker: `loom run` of a dp 2 job whose rank 1
// kills itself halfway through the step-4 checkpoint: the local launcher
// starts a replacement worker process, the job restarts from step 2 with
// it, and the run succeeds on the uninterrupted curve — no command typed.
func TestRunReplacesAKilledWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	path, _ := elasticSpec(t, "rr", 2, 8, 2, "{max_restarts: 2}")
	want, _ := reference(t, path, 1)
	t.Setenv("LOOM_TEST_CHECKPOINT_KILL", "shard-half:4:1")
	out, stderr, err := loom(t, "run", path, "--log-format", "json", "--threads", "1", "--sample-tokens", "0")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, s := range []string{"kills itself at shard-half", "exited before the job finished", "starting a replacement (1 more allowed)", "resumed from"} {
		if !strings.Contains(stderr, s) {
			t.Errorf("stderr lacks %q", s)
		}
	}
	got := stepLossMap(t, out)
	for step, loss := range got {
		if rel := abs(loss-want[step]) / want[step]; rel > 1e-5 {
			t.Errorf("step %d: loss %.7f, uninterrupted %.7f", step, loss, want[step])
		}
	}
	// The restarted generation (from step 2) reports every step it trains;
	// the ended one's last reports may have been dropped with it.
	for step := 3; step <= 8; step++ {
		if _, ok := got[step]; !ok {
			t.Errorf("step %d not reported:\n%s", step, out)
		}
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
