package train

import (
	"fmt"
	"math"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/model"
)

// zeroSpec is a tiny model whose parameter count, 31950, is not divisible
// by 4 (every tensor holds a multiple of dim elements and dim is even, so
// no model's count is odd: dp=2 always divides it), trained with 4
// micro-batches of accumulation per rank at dp=2 and 2 at dp=4, and
// clipping active.
func zeroSpec(path string) api.JobSpec {
	s := tinySpec(path)
	s.Model.Dim, s.Model.NHeads, s.Model.NKVHeads = 30, 3, 1
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

var _ = model.InitStd
