package train

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/tensor"
)

// tpSpec is the model of the tensor-parallel proofs: one kv head (fewer
// than any tp > 1, so kv heads are replicated), a vocabulary of 259 (not
// divisible by 2 or 4: the last rank holds padding), an odd sequence
// length, 10 steps of 4 accumulated micro-batches at dp 1 with clipping
// active.
func tpSpec(path string, tied bool) api.JobSpec {
	s := tinySpec(path)
	s.Model.VocabSize, s.Model.Dim, s.Model.NHeads, s.Model.NKVHeads, s.Model.FFNHidden, s.Model.SeqLen = 259, 16, 4, 1, 32, 9
	s.Model.TieEmbeddings = tied
	s.Train.Steps = 10
	s.Train.GlobalBatch, s.Train.MicroBatch = 8, 2
	s.Train.GradClip = 0.5
	return s
}

// compareRuns fails unless got reproduces want's loss and grad norm
// within 1e-5 relative at every step, and checks clipping was active.
func compareRuns(t *testing.T, got, want []Stats, clip float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d steps, want %d", len(got), len(want))
	}
	clipped := false
	for i := range want {
		g, w := got[i], want[i]
		if rel := math.Abs(g.Loss-w.Loss) / w.Loss; rel > 1e-5 {
			t.Fatalf("step %d: loss %.8f, one rank %.8f (rel %.2g)", i+1, g.Loss, w.Loss, rel)
		}
		if rel := math.Abs(g.GradNorm-w.GradNorm) / w.GradNorm; rel > 1e-5 {
			t.Fatalf("step %d: grad norm %.8f, one rank %.8f (rel %.2g)", i+1, g.GradNorm, w.GradNorm, rel)
		}
		clipped = clipped || w.GradNorm > clip
	}
	if !clipped {
		t.Errorf("clipping never active (grad_norm <= %v every step)", clip)
	}
}

// tp = 2 and tp = 4 reproduce one rank within 1e-5 per step over 10
// steps, tied and untied, with kv heads replicated, an odd sequence length
// and a vocabulary not divisible by tp. Half the cases run over loopback
// gRPC, half over the in-process fake (which -race runs much faster); the
// cmd/loom tests run tp over real worker processes.
func TestTensorParallelMatchesSingleRank(t *testing.T) {
	path := corpus(t)
	for _, tied := range []bool{false, true} {
		spec := tpSpec(path, tied)
		want, _ := layoutRun(t, spec, runOpts{})
		for _, tp := range []int{2, 4} {
			grpc := tied == (tp == 4)
			t.Run(fmt.Sprintf("tied=%v/tp=%d/grpc=%v", tied, tp, grpc), func(t *testing.T) {
				s := spec
				s.Parallel.TP = tp
				got, _ := layoutRun(t, s, runOpts{inproc: !grpc})
				compareRuns(t, got[0], want[0], s.Train.GradClip)
			})
		}
	}
}

// dp 2 × tp 2 with every ZeRO stage, sequence parallelism off and on,
// reproduces one rank; the tensor-parallel operations counted each step
// are exactly plan.TPComm's, and the memory each rank counts from its
// allocations is the plan's.
func TestDataTensorParallelZeroMatchesSingleRank(t *testing.T) {
	path := corpus(t)
	spec := tpSpec(path, false)
	spec.Train.Steps = 6
	want, _ := layoutRun(t, spec, runOpts{})
	for _, sp := range []bool{false, true} {
		for zs := 0; zs <= 3; zs++ {
			grpc := zs == 1 && !sp || zs == 3 && sp
			t.Run(fmt.Sprintf("sp=%v/zero=%d/grpc=%v", sp, zs, grpc), func(t *testing.T) {
				s := spec
				s.Parallel.DP, s.Parallel.TP, s.Parallel.Zero, s.Parallel.SequenceParallel = 2, 2, zs, sp
				got, mem := layoutRun(t, s, runOpts{inproc: !grpc})
				compareRuns(t, got[0], want[0], s.Train.GradClip)
				p, err := plan.New(s, 4)
				if err != nil {
					t.Fatal(err)
				}
				for r := range got {
					checkTPComm(t, p, r, got[r])
					est := p.Memory(r)
					est.Runtime = 0
					if mem[r] != est {
						t.Errorf("rank %d: counted memory %+v, plan %+v", r, mem[r], est)
					}
				}
			})
		}
	}
}

// checkTPComm compares the tensor-parallel operations rank r counted in
// each step with the plan's formula for Accum micro-batches.
func checkTPComm(t *testing.T, p *plan.Plan, r int, steps []Stats) {
	t.Helper()
	want := map[string]plan.CommOp{}
	for _, op := range p.TPComm(r, p.MicroBatch, p.SeqLen) {
		op.Calls *= int64(p.Accum)
		op.Elements *= int64(p.Accum)
		want[op.Group+" "+op.Op] = op
	}
	for _, st := range steps {
		got := map[string]plan.CommOp{}
		for g, m := range map[string]map[parallel.Op]parallel.OpCount{plan.KindTP: st.TP, plan.KindKV: st.KV} {
			for op, c := range m {
				got[g+" "+string(op)] = plan.CommOp{Group: g, Op: string(op), Calls: c.Calls, Elements: c.Elements}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("rank %d step %d: counted %v, plan.TPComm %v", r, st.Step, got, want)
		}
	}
}

// layoutCk is ckRun for any layout: it trains spec (its parallel section
// as given), saving every `every` steps under jobDir after resuming from
// resume (""), and returns rank 0's statistics and, if whole, the whole
// model assembled after the last step.
func layoutCk(t *testing.T, spec api.JobSpec, jobDir string, every int, resume string, whole, inproc bool) ([]Stats, *model.Model) {
	t.Helper()
	c := &committer{world: spec.Parallel.WorldSize(), parts: map[int][]checkpoint.RankPart{}}
	var ck *checkpoint.Checkpoint
	if resume != "" {
		var err error
		if ck, err = checkpoint.Open(resume); err != nil {
			t.Fatal(err)
		}
	}
	var m *model.Model
	stats, _ := layoutRun(t, spec, runOpts{inproc: inproc, setup: func(r int, tr *Trainer) error {
		if ck != nil {
			if err := tr.Restore(ck); err != nil {
				return err
			}
		}
		if every > 0 {
			return tr.EnableCheckpoints(CheckpointConfig{JobDir: jobDir, Every: every, Report: c.report})
		}
		return nil
	}, after: func(r int, tr *Trainer) error {
		if !whole {
			return nil
		}
		wm, err := tr.WholeModel(context.Background())
		if r == 0 {
			m = wm
		}
		return err
	}})
	return stats[0], m
}

// A checkpoint resharded along a chain of layouts — (dp 2, tp 2, ZeRO 1)
// → (dp 1, tp 4, ZeRO 0) → (dp 4, tp 1, ZeRO 3) → one rank — continues
// within 1e-5 of the uninterrupted single-rank run at every step (the
// first link over loopback gRPC, the others over the in-process fake); the
// same layout resumes bit for bit (with and without sequence parallelism); the
// whole model exported from a tensor-parallel checkpoint is the run's own
// final model, and within float noise of the single rank's.
func TestResumeReshardTensorParallel(t *testing.T) {
	path := corpus(t)
	spec := tpSpec(path, false)
	spec.Train.Steps = 8
	dir := t.TempDir()
	job := func(name string) string { return filepath.Join(dir, name) }
	want, ref := layoutCk(t, spec, job("ref"), 0, "", true, false)
	type layout struct{ dp, tp, zero int }
	chain := []layout{{2, 2, 1}, {1, 4, 0}, {4, 1, 3}, {1, 1, 0}}
	prev := ""
	for i, l := range chain {
		s := spec
		s.Parallel.DP, s.Parallel.TP, s.Parallel.Zero = l.dp, l.tp, l.zero
		s.Train.GlobalBatch = 8
		name := fmt.Sprintf("chain%d", i)
		got, _ := layoutCk(t, s, job(name), 2, prev, false, i != 0)
		from := 2 * i // the run resumed after step 2i
		if len(got) != len(want)-from {
			t.Fatalf("%+v resumed after step %d took %d steps", l, from, len(got))
		}
		for _, st := range got {
			w := want[st.Step-1]
			if rel := math.Abs(st.Loss-w.Loss) / w.Loss; rel > 1e-5 {
				t.Fatalf("%+v (resumed after step %d) step %d: loss %.8f, uninterrupted one rank %.8f (rel %.2g)", l, from, st.Step, st.Loss, w.Loss, rel)
			}
		}
		prev = checkpoint.StepDir(job(name), 2*(i+1))
	}
	for _, sp := range []bool{false, true} {
		s := spec
		s.Parallel.DP, s.Parallel.TP, s.Parallel.Zero, s.Parallel.SequenceParallel = 2, 2, 3, sp
		name := fmt.Sprintf("same-sp%v", sp)
		full, final := layoutCk(t, s, job(name), 4, "", true, !sp)
		again, _ := layoutCk(t, s, job(name+"-again"), 0, checkpoint.StepDir(job(name), 4), false, !sp)
		for i, st := range again {
			if w := full[4+i]; st.Loss != w.Loss || st.GradNorm != w.GradNorm {
				t.Fatalf("sp=%v: resumed step %d loss %v grad norm %v, uninterrupted %v %v", sp, st.Step, st.Loss, st.GradNorm, w.Loss, w.GradNorm)
			}
		}
		ck, err := checkpoint.Open(checkpoint.StepDir(job(name), 8))
		if err != nil {
			t.Fatal(err)
		}
		exported, err := ck.Model(tensor.Reference{})
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, name+"-hf")
		if err := checkpoint.SaveModel(out, exported, nil); err != nil {
			t.Fatal(err)
		}
		hf, err := checkpoint.LoadModel(out, tensor.Reference{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(hf.Params, final.Params) {
			t.Fatalf("sp=%v: the export of the tp checkpoint differs from the run's own final model", sp)
		}
		worst := 0.0
		for _, v := range hf.Layout.Views {
			a, b := hf.Params[v.Offset:v.End()], ref.Params[v.Offset:v.End()]
			var d, scale float64
			for j := range a {
				d = math.Max(d, math.Abs(float64(a[j]-b[j])))
				scale = math.Max(scale, math.Abs(float64(b[j])))
			}
			worst = math.Max(worst, d/scale)
			if d > 1e-4*scale {
				t.Errorf("sp=%v: exported %s differs from the single rank's by %.3g (largest element %.3g)", sp, v.Name, d, scale)
			}
		}
		t.Logf("sp=%v: exported tensors differ from the single rank's by at most %.2g of their largest element", sp, worst)
	}
}
