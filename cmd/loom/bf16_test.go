package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/train"
)

// bf16Losses trains the spec for its steps with GEMMs in the given
// precision and returns the loss of every step.
func bf16Losses(t *testing.T, spec api.JobSpec, precision string) []float64 {
	t.Helper()
	k, err := newKernelsPrecision(1, precision)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	tr, err := train.New(train.Config{Spec: spec, Kernels: k, Loader: bf16Loader(t, spec.Data.Path, spec.Model.SeqLen, true)})
	if err != nil {
		t.Fatal(err)
	}
	var losses []float64
	for range spec.Train.Steps {
		st, err := tr.Step(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		losses = append(losses, st.Loss)
	}
	return losses
}

// bf16Spec is examples/tiny.yaml for steps steps on the Go sources of
// strings, bytes and sort (byte-level tokens, prepared in a temporary
// directory), without checkpoints.
func bf16Spec(t *testing.T, steps int) api.JobSpec {
	t.Helper()
	spec, err := api.LoadSpec(filepath.Join("..", "..", "examples", "tiny.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	spec.Data.Path = filepath.Join(t.TempDir(), "go.bin")
	src := filepath.Join(runtime.GOROOT(), "src")
	if _, _, err := data.Prep(context.Background(), data.PrepConfig{
		Inputs:  []string{filepath.Join(src, "strings"), filepath.Join(src, "bytes"), filepath.Join(src, "sort")},
		Include: []string{"*.go"}, Out: spec.Data.Path, Workers: 1}); err != nil {
		t.Fatal(err)
	}
	spec.Train.Steps = steps
	spec.Checkpoint.Every = 0
	return spec
}

// bf16Loader opens a token file for the test's duration and returns a
// loader of windows of seqLen, shuffled (seed 1) or in file order.
func bf16Loader(t *testing.T, path string, seqLen int, shuffle bool) *data.Loader {
	t.Helper()
	f, err := data.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	l, err := data.NewLoader(f, data.LoaderConfig{SeqLen: seqLen, Shuffle: shuffle, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestBF16TracksFP32 trains `tiny` (examples/tiny.yaml) on Go source text
// twice, with float32 and with bf16 GEMMs, and compares the losses step by
// step. It asserts each 10-step mean within 1% of fp32's and every single
// step within 3%, and logs every step beyond the 1% per step — a
// criterion it does not assert, because bf16 does not meet it here and
// neither does PyTorch's bf16 on the same model (docs/kernels.md, "bf16
// against fp32"). The full 200 steps take about two minutes, so they run
// with LOOM_BF16_PARITY=1 (`make bf16-parity`); otherwise the first 20 steps
// run, where the curves agree within 0.03%.
func TestBF16TracksFP32(t *testing.T) {
	steps := 20
	if os.Getenv("LOOM_BF16_PARITY") == "1" {
		steps = 200
	} else if raceEnabled || testing.Short() {
		t.Skip("200-step parity: LOOM_BF16_PARITY=1 (make bf16-parity); the 20-step check skips under -race and -short")
	}
	spec := bf16Spec(t, steps)
	fp32 := bf16Losses(t, spec, "fp32")
	bf16 := bf16Losses(t, spec, "bf16")
	// The two runs see the same batches, and at the same weights their
	// losses agree to 0.002% (TestBF16GradientsMatchFP32), but from step
	// ~25 the weights follow different paths, and the batches where the
	// fp32 run's gradient norm spikes (step 56: 2.8, against 0.7 typically)
	// are where the curves part most. The 10-step means are what a loss
	// curve shows.
	worst, at := 0.0, 0
	var over []string // the steps beyond the 1% per step
	lower := 0
	for i := range fp32 {
		d := math.Abs(bf16[i]-fp32[i]) / fp32[i]
		if d > worst || math.IsNaN(d) {
			worst, at = d, i
		}
		if d > 0.01 {
			over = append(over, fmt.Sprintf("%d (%+.2f%%)", i+1, 100*(bf16[i]-fp32[i])/fp32[i]))
			if bf16[i] < fp32[i] {
				lower++
			}
		}
	}
	worstLog, atLog := 0.0, 0
	for i := 0; i < steps; i += 10 {
		var a, b float64
		for j := i; j < i+10; j++ {
			a += fp32[j]
			b += bf16[j]
		}
		d := math.Abs(b-a) / a
		t.Logf("steps %3d–%3d: mean loss fp32 %.4f, bf16 %.4f (%+.2f%%)", i+1, i+10, a/10, b/10, 100*(b-a)/a)
		if d > worstLog || math.IsNaN(d) {
			worstLog, atLog = d, i+10
		}
	}
	t.Logf("%d steps: loss fp32 %.4f → %.4f, bf16 %.4f → %.4f; worst 10-step mean difference %.3g%% (steps %d–%d), worst single step %.3g%% (step %d)",
		steps, fp32[0], fp32[steps-1], bf16[0], bf16[steps-1], 100*worstLog, atLog-9, atLog, 100*worst, at+1)
	t.Logf("%d of %d steps differ by more than 1%% (bf16 lower at %d): %s", len(over), steps, lower, strings.Join(over, ", "))
	if !(worstLog <= 0.01) {
		t.Errorf("bf16's mean loss over steps %d–%d is %.3g%% from fp32's (limit 1%%)", atLog-9, atLog, 100*worstLog)
	}
	if !(worst <= 0.03) {
		t.Errorf("bf16 loss %.5f at step %d is %.3g%% from fp32's %.5f (limit 3%% for single steps)", bf16[at], at+1, 100*worst, fp32[at])
	}
	if fp32[steps-1] >= fp32[0] {
		t.Fatalf("fp32 did not learn: loss %.4f → %.4f", fp32[0], fp32[steps-1])
	}
}

// TestBF16GradientsMatchFP32 separates bf16's rounding from a defect in
// the bf16 path. At the same weights and batch, the bf16 loss must equal
// the float32 loss to rounding, every parameter's bf16 gradient must point
// the same way at the same size, and the weights (the fp32 masters) must
// come out of the bf16 passes unchanged. A dropped scale, a transposed or
// stale operand, or a gradient taken through the wrong values shows up
// here as a per-tensor error of percents or more, or as a scale away from
// 1; bf16's round-to-nearest leaves 0.2–0.6% error and scales within
// 0.15% of 1 here (truncating instead of rounding fails the scale limit).
// Checked at the initial weights and, outside -race, after 30 float32
// steps of `make bf16-parity`'s run (before its first loss spike, where
// the error reaches 1% in the layer the spike comes from).
func TestBF16GradientsMatchFP32(t *testing.T) {
	if testing.Short() {
		t.Skip("trains tiny; skipped with -short")
	}
	at := []int{0, 30}
	if raceEnabled {
		at = at[:1]
	}
	spec := bf16Spec(t, 200)
	loader := bf16Loader(t, spec.Data.Path, spec.Model.SeqLen, true)
	k32, err := newKernelsPrecision(1, "fp32")
	if err != nil {
		t.Fatal(err)
	}
	defer k32.Close()
	k16, err := newKernelsPrecision(1, "bf16")
	if err != nil {
		t.Fatal(err)
	}
	defer k16.Close()
	tr, err := train.New(train.Config{Spec: spec, Kernels: k32, Loader: loader})
	if err != nil {
		t.Fatal(err)
	}
	cfg := plan.ModelConfig(spec.Model)
	B, T := spec.Train.GlobalBatch, spec.Model.SeqLen
	in, tg := make([]int32, B*T), make([]int32, B*T)
	// grads returns the loss and gradient of the batch of step s at the
	// trainer's weights, with k's GEMMs.
	grads := func(k tensor.Kernels, s int) (*model.Model, float64) {
		m, err := model.New(cfg, k)
		if err != nil {
			t.Fatal(err)
		}
		copy(m.Params, tr.Model.Params)
		a, err := m.NewActs(B, T)
		if err != nil {
			t.Fatal(err)
		}
		if err := loader.FillStep(s, B, 0, B, in, tg); err != nil {
			t.Fatal(err)
		}
		m.ZeroGrads()
		l, err := m.ForwardBackward(a, in, tg, 1)
		if err != nil {
			t.Fatal(err)
		}
		return m, l
	}
	for _, s := range at {
		for tr.StepsDone() < s {
			if _, err := tr.Step(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		m32, l32 := grads(k32, s)
		m16, l16 := grads(k16, s)
		for i, w := range tr.Model.Params { // fp32 masters: bf16 rounds copies, never the weights
			if math.Float32bits(m16.Params[i]) != math.Float32bits(w) {
				t.Fatalf("step %d: the bf16 passes changed weight %d from %g to %g", s+1, i, w, m16.Params[i])
			}
		}
		if d := math.Abs(l16-l32) / l32; !(d <= 1e-4) {
			t.Errorf("step %d: bf16 loss %.6f is %.3g%% from fp32's %.6f at the same weights (limit 0.01%%)", s+1, l16, 100*d, l32)
		}
		var n32, n16, worstErr float64
		worstScale := 1.0
		var errAt, scaleAt string
		for _, v := range m32.Layout.Views {
			g32, g16 := m32.Grads[v.Offset:v.End()], m16.Grads[v.Offset:v.End()]
			var aa, bb, ab, dd float64
			for i := range g32 {
				x, y := float64(g32[i]), float64(g16[i])
				aa, bb, ab, dd = aa+x*x, bb+y*y, ab+x*y, dd+(y-x)*(y-x)
			}
			n32, n16 = n32+aa, n16+bb
			rel, scale := math.Sqrt(dd/aa), ab/aa // scale: g16's component along g32, in units of g32
			if !(rel <= 0.015) || !(math.Abs(scale-1) <= 0.005) {
				t.Errorf("step %d: %s: bf16 gradient's relative error %.3g%%, scale along fp32's %.5f (limits 1.5%%, 1 ± 0.005)", s+1, v.Name, 100*rel, scale)
			}
			if rel > worstErr {
				worstErr, errAt = rel, v.Name
			}
			if math.Abs(scale-1) > math.Abs(worstScale-1) {
				worstScale, scaleAt = scale, v.Name
			}
		}
		ratio := math.Sqrt(n16 / n32)
		if !(math.Abs(ratio-1) <= 0.005) {
			t.Errorf("step %d: bf16 grad norm %.6f is %.3g%% from fp32's %.6f (limit 0.5%%)", s+1, math.Sqrt(n16), 100*(ratio-1), math.Sqrt(n32))
		}
		t.Logf("step %d at the same weights: loss fp32 %.6f bf16 %.6f; grad norm fp32 %.6f bf16 %.6f; worst relative error %.3g%% (%s), worst scale %.5f (%s)",
			s+1, l32, l16, math.Sqrt(n32), math.Sqrt(n16), 100*worstErr, errAt, worstScale, scaleAt)
	}
}
