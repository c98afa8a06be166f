package train

import (
	"fmt"
	"math"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/plan"
)

// zeroSpec is a tiny model whose parameter count, 31950, is not divisible
// by 4 (every tensor holds a multiple of dim elements and dim is even, so
// no model's count is odd: dp=2 always divides it), trained with 4
// micro-batches of accumulation per rank at dp=2 and 2 at dp=4, and
// clipping active.
func zeroSpec(path string) api.JobSpec {
	s := tinySpec(path)
	s.Model.Dim, s.Model.NHeads, s.Model.NKVHeads, s.Model.SeqLen = 30, 3, 1, 8
	s.Train.Steps = 10
	s.Train.GlobalBatch, s.Train.MicroBatch = 8, 1
	s.Train.GradClip = 0.5
	return s
}

// Every ZeRO stage at dp=2 and dp=4 reproduces the stage-0 single-rank loss
// trajectory.
func TestZeroStagesMatchSingleRank(t *testing.T) {
	spec := zeroSpec(corpus(t))
	if n := checkpoint.ModelConfig(spec.Model).NumParams(); n%4 == 0 {
		t.Fatalf("test model has %d parameters, divisible by 4", n)
	}
	want := dpLosses(t, spec, 1)
	for _, stage := range []int{1, 2, 3} {
		for _, dp := range []int{2, 4} {
			t.Run(fmt.Sprintf("zero=%d/dp=%d", stage, dp), func(t *testing.T) {
				s := spec
				s.Parallel.Zero = stage
				stats, _ := dpRun(t, s, dp)
				clipped := false
				for i := range want {
					got := stats[0][i]
					if rel := math.Abs(got.Loss-want[i]) / want[i]; rel > 1e-5 {
						t.Fatalf("step %d: loss %.7f, stage 0 dp=1 %.7f (rel %.2g)", i+1, got.Loss, want[i], rel)
					}
					clipped = clipped || got.GradNorm > s.Train.GradClip
				}
				if !clipped {
					t.Errorf("clipping never active (grad_norm <= %v every step)", s.Train.GradClip)
				}
			})
		}
	}
}

// Tied embeddings: the head's backward accumulates into the embedding,
// which stages 2 and 3 must keep bound from forward to backward.
func TestZeroTiedEmbeddings(t *testing.T) {
	spec := zeroSpec(corpus(t))
	spec.Model.TieEmbeddings = true
	spec.Train.Steps = 4
	want := dpLosses(t, spec, 1)
	for _, stage := range []int{2, 3} {
		t.Run(fmt.Sprintf("zero=%d", stage), func(t *testing.T) {
			s := spec
			s.Parallel.Zero = stage
			stats, _ := dpRun(t, s, 2)
			for i := range want {
				if rel := math.Abs(stats[0][i].Loss-want[i]) / want[i]; rel > 1e-5 {
					t.Fatalf("step %d: loss %.7f, want %.7f", i+1, stats[0][i].Loss, want[i])
				}
			}
		})
	}
}

// Counted model-state bytes per rank match the ZeRO formulas within 5%,
// equal the plan's estimate exactly, and the bytes sent per step match
// ring theory: 2Ψ·(n−1)/n elements at stages 0–2 and, at stage 3, 3Ψ less
// the head (gathered once for forward and backward). At stage 0 the
// untied embedding goes by the rows some rank's batch touched plus a flag
// per row: between none of its rows and all of them.
func TestZeroMemoryAndComm(t *testing.T) {
	spec := zeroSpec(corpus(t))
	spec.Train.Steps = 2
	mc := checkpoint.ModelConfig(spec.Model)
	l, err := model.NewLayout(mc)
	if err != nil {
		t.Fatal(err)
	}
	units := l.Units()
	head := float64(units[len(units)-1].Len)
	psi := float64(mc.NumParams())
	ring := func(o *parallel.GroupSpec) { o.AllReduce = parallel.Ring }
	t.Logf("Ψ = %d; bytes per rank (rank 0); comm per step sent by rank 0", mc.NumParams())
	t.Logf("%-5s %-3s %12s %12s %9s %12s %12s", "stage", "dp", "states", "formula", "working", "comm B/step", "theory")
	for _, dp := range []int{2, 4} {
		N := float64(dp)
		for stage := 0; stage <= 3; stage++ {
			s := spec
			s.Parallel.Zero = stage
			s.Train.GlobalBatch, s.Train.MicroBatch = dp, 1
			formula := [4]float64{16 * psi, 8*psi + 8*psi/N, 4*psi + 12*psi/N, 16 * psi / N}[stage]
			elems := 2 * psi
			if stage == 3 {
				elems = 3*psi - head
			}
			theory := 4 * elems * (N - 1) / N
			stats, mem := dpRun(t, s, dp, ring)
			part, err := plan.NewPartition(l, dp, plan.ZeroStage(stage), 0)
			if err != nil {
				t.Fatal(err)
			}
			for r, m := range mem {
				got := float64(m.ModelStates())
				if rel := math.Abs(got-formula) / formula; rel > 0.05 {
					t.Errorf("stage %d dp %d rank %d: model states %d bytes, formula %.0f (rel %.3f)", stage, dp, r, m.ModelStates(), formula, rel)
				}
				want := part.Memory(r, mc.TieEmbeddings)
				m.Activations = 0
				if m != want {
					t.Errorf("stage %d dp %d rank %d: counted %+v, plan %+v", stage, dp, r, m, want)
				}
			}
			for r := range stats {
				for _, st := range stats[r] {
					if stage == 0 {
						emb, rows := float64(units[0].Len), float64(mc.VocabSize)
						flags := 4 * 2 * rows * (N - 1) / N
						lo, hi := 4*(elems-2*emb)*(N-1)/N+flags, theory+flags
						if got := float64(st.CommBytes); got < lo || got > hi {
							t.Errorf("stage 0 dp %d rank %d step %d: sent %d bytes, want between %.0f (no embedding row) and %.0f (every row)", dp, r, st.Step, st.CommBytes, lo, hi)
						}
						continue
					}
					if rel := math.Abs(float64(st.CommBytes)-theory) / theory; rel > 0.05 {
						t.Errorf("stage %d dp %d rank %d step %d: sent %d bytes, theory %.0f (rel %.3f)", stage, dp, r, st.Step, st.CommBytes, theory, rel)
					}
				}
			}
			t.Logf("%-5d %-3d %12d %12.0f %9d %12d %12.0f", stage, dp, mem[0].ModelStates(), formula, mem[0].Working+mem[0].Comm, stats[0][0].CommBytes, theory)
		}
	}
}
