package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// The leader's commit records the job's run id in the manifest, applies
// retention to that run only, and never replaces another run's step
// directory: a new run sharing a job directory with an old one loses
// nothing of either.
func TestCommitKeepsOtherRunsCheckpoints(t *testing.T) {
	jobDir := filepath.Join(t.TempDir(), "j")
	for _, step := range []int{20, 25, 30} {
		if _, err := checkpoint.Commit(writeRanks(t, jobDir, step, 2), checkpoint.CommitOptions{Run: "old"}); err != nil {
			t.Fatal(err)
		}
	}
	c := &Coordinator{cfg: Config{Now: time.Now}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	commit := func(step int) Action {
		t.Helper()
		var reports []*loomv1.CheckpointReport
		for _, p := range writeRanks(t, jobDir, step, 2) {
			b, _ := json.Marshal(p)
			r := report(1, int64(step), p.Rank, 2)
			r.PartJson = b
			reports = append(reports, r)
		}
		acts := Decide(Observed{Version: "v1", Jobs: []JobObserved{{
			Desired: &loomv1.JobDesired{Name: "j", WorldSize: 2, RunId: "new"},
			Reports: map[int64]map[int]*loomv1.CheckpointReport{int64(step): {0: reports[0], 1: reports[1]}},
		}}})
		done, err := c.commitCheckpoints(context.Background(), acts)
		if err != nil {
			t.Fatal(err)
		}
		if len(done) == 0 || done[0].Kind != Checkpoints {
			t.Fatalf("step %d: actions %v, want a checkpoints action first", step, done)
		}
		return done[0]
	}
	// keep is 1 (the reports' spec does not parse): only the new run's
	// newest is kept of its own, and the old run's three stay.
	for _, step := range []int{5, 10} {
		if a := commit(step); len(a.Commits) != 1 || a.Record == nil || a.Record.Step != int64(step) {
			t.Fatalf("step %d: %v", step, a)
		}
	}
	runs := map[int]string{}
	infos, err := checkpoint.List(jobDir, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		if in.Err != nil {
			t.Errorf("%s: %v", in.Dir, in.Err)
			continue
		}
		runs[in.Step] = in.Manifest.Run
	}
	want := map[int]string{10: "new", 20: "old", 25: "old", 30: "old"}
	if len(runs) != len(want) {
		t.Fatalf("checkpoints by step: %v, want %v", runs, want)
	}
	for s, r := range want {
		if runs[s] != r {
			t.Errorf("step %d: run %q, want %q (all: %v)", s, runs[s], r, runs)
		}
	}
	// The new run reaching step 20 does not replace the old run's step-20.
	if a := commit(20); len(a.Commits) != 0 || a.Record != nil || fmt.Sprint(a.Drops) != "[20]" {
		t.Fatalf("commit over another run's step-20: %v, want it dropped", a)
	}
	m, err := checkpoint.ReadManifest(checkpoint.StepDir(jobDir, 20))
	if err != nil || m.Run != "old" {
		t.Fatalf("step-20 after the refused commit: %+v, %v", m, err)
	}
	if _, err := os.Stat(checkpoint.PartialDir(jobDir, 20)); err != nil {
		t.Errorf("the refused step's partial directory: %v (kept for `loom checkpoints` to show)", err)
	}
}
