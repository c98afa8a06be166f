package train

import (
	"context"
	"math"
	"testing"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/tensor"
)

// Validation every eval_every steps (and after the last) reports the same
// loss for every data-, tensor- and pipeline-parallel size and ZeRO stage, and it is the mean
// loss of the model over the first eval_batches global batches of the
// held-out windows.
func TestValidationLoss(t *testing.T) {
	spec := tinySpec(corpus(t))
	spec.Train.Steps, spec.Train.GlobalBatch, spec.Train.MicroBatch = 7, 8, 2
	spec.Data.Validation.Fraction = 0.1
	spec.Train.EvalEvery, spec.Train.EvalBatches = 3, 2
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	want := map[int]bool{3: true, 6: true, 7: true}
	var ref []float64
	for _, c := range []struct{ dp, tp, zero, pp int }{{1, 1, 0, 1}, {2, 1, 0, 1}, {2, 1, 3, 1}, {1, 2, 0, 1}, {2, 2, 3, 1}, {1, 1, 0, 2}, {2, 1, 1, 2}} {
		s := spec
		s.Parallel.DP, s.Parallel.TP, s.Parallel.Zero, s.Parallel.PP = c.dp, c.tp, c.zero, c.pp
		s.Train.MicroBatch = 2
		out, _ := layoutRun(t, s, runOpts{})
		var got []float64
		for _, st := range out[0] {
			if want[st.Step] != (st.ValLoss > 0) {
				t.Fatalf("%+v: step %d val loss %v", c, st.Step, st.ValLoss)
			}
			if st.ValLoss > 0 {
				got = append(got, st.ValLoss)
			}
		}
		if ref == nil {
			ref = got
			continue
		}
		for i := range ref {
			if math.Abs(got[i]-ref[i]) > 1e-5*ref[i] {
				t.Fatalf("%+v: validation %d loss %v, one rank %v", c, i, got[i], ref[i])
			}
		}
	}

	// The number itself: the trained model's loss over those windows.
	ds, err := data.OpenDataset(spec.Data, spec.Model.SeqLen)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	tr, err := New(Config{Spec: spec, Kernels: tensor.Reference{}, Loader: ds.Train, Validation: ds.Validation})
	if err != nil {
		t.Fatal(err)
	}
	var last Stats
	if err := tr.Run(context.Background(), func(s Stats) { last = s }); err != nil {
		t.Fatal(err)
	}
	n := spec.Train.EvalBatches * spec.Train.GlobalBatch
	T := spec.Model.SeqLen
	in, tg := make([]int32, n*T), make([]int32, n*T)
	if err := ds.Validation.FillSamples(0, n, in, tg); err != nil {
		t.Fatal(err)
	}
	acts, err := tr.Model.NewActs(n, T)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tr.Model.Loss(acts, in, tg)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(l-last.ValLoss) > 1e-5*l || math.Abs(last.ValLoss-ref[len(ref)-1]) > 1e-5*l {
		t.Fatalf("final validation loss %v, direct %v, dp runs %v", last.ValLoss, l, ref[len(ref)-1])
	}
}
