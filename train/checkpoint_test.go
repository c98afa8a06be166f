package train

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/tensor/fast"
)

// committer stands in for the coordinator in in-process tests: it commits
// a step once all world ranks have reported.
type committer struct {
	mu    sync.Mutex
	world int
	parts map[int][]checkpoint.RankPart
}

func (c *committer) report(_ context.Context, p checkpoint.RankPart) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.parts[p.Step] = append(c.parts[p.Step], p)
	if len(c.parts[p.Step]) < c.world {
		return nil
	}
	_, err := checkpoint.Commit(c.parts[p.Step], checkpoint.CommitOptions{})
	return err
}

// ckRun trains spec on dp ranks, saving every `every` steps under jobDir
// (every 0: no saves) after resuming from the checkpoint at resume ("":
// from scratch). It returns rank 0's losses by step number.
func ckRun(t *testing.T, spec api.JobSpec, dp int, jobDir string, every int, resume string) map[int]float64 {
	t.Helper()
	spec.Parallel.DP = dp
	c := &committer{world: spec.Parallel.WorldSize(), parts: map[int][]checkpoint.RankPart{}}
	var ck *checkpoint.Checkpoint
	if resume != "" {
		var err error
		if ck, err = checkpoint.Open(resume); err != nil {
			t.Fatal(err)
		}
	}
	stats, _ := layoutRun(t, spec, runOpts{setup: func(r int, tr *Trainer) error {
		if ck != nil {
			if err := tr.Restore(ck); err != nil {
				return err
			}
		}
		if every > 0 {
			return tr.EnableCheckpoints(CheckpointConfig{JobDir: jobDir, Every: every, Report: c.report})
		}
		return nil
	}})
	out := map[int]float64{}
	for _, s := range stats[0] {
		out[s.Step] = s.Loss
	}
	return out
}

// A run resumed from step k with the same layout reproduces the
// uninterrupted run's losses from step k+1 on bit for bit: parameters,
// AdamW moments and step counts, the LR schedule and data position all
// continue.
func TestResumeBitExact(t *testing.T) {
	for _, c := range []struct{ dp, zero int }{{1, 0}, {2, 1}, {2, 3}} {
		t.Run(fmt.Sprintf("dp=%d/zero=%d", c.dp, c.zero), func(t *testing.T) {
			spec := zeroSpec(corpus(t))
			spec.Train.Steps = 6
			spec.Parallel.Zero = c.zero
			dir := filepath.Join(t.TempDir(), "job")
			want := ckRun(t, spec, c.dp, dir, 3, "")
			got := ckRun(t, spec, c.dp, dir, 0, checkpoint.StepDir(dir, 3))
			if len(got) != 3 {
				t.Fatalf("resumed run took %d steps, want 3 (steps 4–6)", len(got))
			}
			for step := 4; step <= 6; step++ {
				if got[step] != want[step] {
					t.Errorf("step %d: resumed loss %.9g, uninterrupted %.9g", step, got[step], want[step])
				}
			}
		})
	}
}

// A checkpoint saved at one data-parallel size and ZeRO stage resumes at
// another: each rank reads the slices its new shard needs from whichever
// files hold them, and the next steps match the uninterrupted run.
func TestResumeReshard(t *testing.T) {
	cases := []struct{ fromDP, fromZero, toDP, toZero int }{
		{2, 1, 4, 1}, // dp 2→4
		{4, 2, 2, 2}, // dp 4→2
		{2, 1, 2, 3}, // ZeRO 1→3
		{2, 3, 2, 0}, // ZeRO 3→0
		{4, 3, 1, 0}, // everything sharded → one rank
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("dp%d.z%d→dp%d.z%d", c.fromDP, c.fromZero, c.toDP, c.toZero), func(t *testing.T) {
			spec := zeroSpec(corpus(t))
			spec.Train.Steps = 5
			spec.Parallel.Zero = c.fromZero
			dir := filepath.Join(t.TempDir(), "job")
			want := ckRun(t, spec, c.fromDP, dir, 3, "")
			spec.Parallel.Zero = c.toZero
			got := ckRun(t, spec, c.toDP, dir, 0, checkpoint.StepDir(dir, 3))
			if len(got) != 2 {
				t.Fatalf("resumed run took %d steps, want 2", len(got))
			}
			for step := 4; step <= 5; step++ {
				if rel := math.Abs(got[step]-want[step]) / want[step]; rel > 1e-5 {
					t.Errorf("step %d: resharded loss %.7f, uninterrupted %.7f (rel %.2g)", step, got[step], want[step], rel)
				}
			}
		})
	}
}

// A checkpoint written in format version 1 (flat-range slices, before
// N-d chunks; checkpoint/testdata/v1) still loads: resumed with the layout
// that saved it, steps 3 and 4 reproduce the losses the old Loom logged,
// bit for bit; resumed on one rank, within 1e-5.
func TestVersion1CheckpointLoads(t *testing.T) {
	src := filepath.Join("..", "checkpoint", "testdata", "v1")
	spec, err := api.LoadSpec(filepath.Join(src, "v1.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	spec.Data.Path = filepath.Join(src, "tok.bin")
	b, err := os.ReadFile(filepath.Join(src, "losses.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]float64
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	ck, err := checkpoint.Open(filepath.Join(src, "step-2"))
	if err != nil {
		t.Fatal(err)
	}
	if ck.Manifest.Version != 1 {
		t.Fatalf("fixture is version %d", ck.Manifest.Version)
	}
	for _, c := range []struct {
		dp, zero int
		exact    bool
	}{{2, 3, true}, {1, 0, false}} {
		s := spec
		s.Parallel.DP, s.Parallel.Zero = c.dp, c.zero
		// The old run computed with the fast kernels on one thread per worker.
		newFast := func() (tensor.Kernels, func()) { k := fast.New(1); return k, k.Close }
		stats, _ := layoutRun(t, s, runOpts{kernels: newFast, setup: func(_ int, tr *Trainer) error { return tr.Restore(ck) }})
		for _, st := range stats[0] {
			w := want[fmt.Sprint(st.Step)]
			if rel := math.Abs(st.Loss-w) / w; (c.exact && float32(st.Loss) != float32(w)) || rel > 1e-5 {
				t.Errorf("dp %d zero %d step %d: loss %.9g, the version-1 run logged %.9g", c.dp, c.zero, st.Step, st.Loss, w)
			}
		}
		if len(stats[0]) != 2 {
			t.Fatalf("resumed run took %d steps, want 2", len(stats[0]))
		}
	}
}
