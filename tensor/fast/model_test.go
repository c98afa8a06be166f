package fast_test

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/loomtrain/loom/internal/golden"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/optim"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/tensor/fast"
)

// relL2 is ‖got − want‖₂ / ‖want‖₂ and the index of the largest difference.
func relL2(got, want []float32) (float64, int) {
	var d2, w2, worst float64
	at := 0
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		d2 += d * d
		w2 += float64(want[i]) * float64(want[i])
		if math.Abs(d) > worst || math.IsNaN(d) {
			worst, at = math.Abs(d), i
		}
	}
	if d2 == 0 {
		return 0, at
	}
	return math.Sqrt(d2) / math.Max(math.Sqrt(w2), 1e-30), at
}

func compare(t *testing.T, name string, got, want []float32, tol float64) {
	t.Helper()
	if rel, at := relL2(got, want); rel > tol || math.IsNaN(rel) {
		t.Errorf("%s: relative L2 error %.3g > %.3g; largest diff at %d (got %v, want %v)", name, rel, tol, at, got[at], want[at])
	}
}

// trainer runs AdamW steps with global-norm clipping on one model.
type trainer struct {
	m    *model.Model
	a    *model.Acts
	opt  *optim.AdamW
	norm float64
}

func newTrainer(t *testing.T, cfg model.Config, k tensor.Kernels, B int) *trainer {
	return newTrainerB(t, cfg, k, B)
}

func newTrainerB(t testing.TB, cfg model.Config, k tensor.Kernels, B int) *trainer {
	m, err := model.New(cfg, k)
	if err != nil {
		t.Fatal(err)
	}
	m.Init(7)
	var segs []optim.Segment
	for _, v := range m.Layout.Views {
		segs = append(segs, optim.Segment{Offset: v.Offset, Len: v.Len(), Decay: v.Decay})
	}
	opt, err := optim.NewAdamW(k, optim.DefaultAdamW(), segs, 0, len(m.Params))
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.NewActs(B, cfg.SeqLen)
	if err != nil {
		t.Fatal(err)
	}
	return &trainer{m: m, a: a, opt: opt}
}

func (tr *trainer) step(t testing.TB, tokens, targets []int32) float64 {
	tr.m.ZeroGrads()
	loss, err := tr.m.ForwardBackward(tr.a, tokens, targets, 1)
	if err != nil {
		t.Fatal(err)
	}
	tr.norm = optim.ClipGradNorm(tr.m.Kernels(), tr.m.Grads, 1)
	if err := tr.opt.Step(tr.m.Params, tr.m.Grads, 1e-3); err != nil {
		t.Fatal(err)
	}
	return loss
}

// TestTrainingMatchesReference trains the same model with the reference
// and the fast kernels and compares losses, gradient norms and parameters.
func TestTrainingMatchesReference(t *testing.T) {
	cfg := model.Config{VocabSize: 67, Dim: 64, NLayers: 2, NHeads: 4, NKVHeads: 2, FFNHidden: 96, SeqLen: 70,
		RopeTheta: 10000, NormEps: 1e-5}
	B, steps := 3, 3
	if testing.Short() {
		cfg.SeqLen, B, steps = 17, 2, 2
	}
	k := fast.New(2)
	defer k.Close()
	ref, fst := newTrainer(t, cfg, tensor.Reference{}, B), newTrainer(t, cfg, k, B)
	n := B * cfg.SeqLen
	tokens, targets := make([]int32, n), make([]int32, n)
	for s := 0; s < steps; s++ {
		for i := range tokens {
			tokens[i] = int32((i*7 + s*13) % cfg.VocabSize)
			targets[i] = int32((i*5 + s*3 + 1) % cfg.VocabSize)
		}
		targets[s] = -100
		lr, lf := ref.step(t, tokens, targets), fst.step(t, tokens, targets)
		if e := math.Abs(lf-lr) / lr; e > 1e-5 {
			t.Errorf("step %d: loss %.8g, reference %.8g (rel err %.3g)", s, lf, lr, e)
		}
		if e := math.Abs(fst.norm-ref.norm) / ref.norm; e > 1e-5 {
			t.Errorf("step %d: grad norm %.8g, reference %.8g (rel err %.3g)", s, fst.norm, ref.norm, e)
		}
	}
	for _, v := range ref.m.Layout.Views {
		// AdamW normalizes each gradient element, so float32 noise in tiny
		// gradients moves parameters more than it moves the loss (as in model/).
		compare(t, v.Name+" after training", fst.m.Params[v.Offset:v.End()], ref.m.Params[v.Offset:v.End()], 1e-4)
	}
}

// TestGoldenFixtures runs the model's PyTorch fixtures (model/testdata) with
// the fast kernels: logits, loss and every gradient.
func TestGoldenFixtures(t *testing.T) {
	k := fast.New(2)
	defer k.Close()
	for _, name := range []string{"gqa_untied", "mqa_tied", "mha_untied"} {
		t.Run(name, func(t *testing.T) {
			f, err := golden.Read(filepath.Join("..", "..", "model", "testdata", name+".bin"))
			if err != nil {
				t.Fatal(err)
			}
			m, err := model.New(f.Config(t), k)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range m.Layout.Views {
				copy(m.Params[v.Offset:v.End()], f.Get(t, "param/"+v.Name).F32)
			}
			tok, tgt := f.Get(t, "tokens"), f.Get(t, "targets")
			a, err := m.NewActs(tok.Shape[0], tok.Shape[1])
			if err != nil {
				t.Fatal(err)
			}
			logits, err := m.Logits(a, tok.I32)
			if err != nil {
				t.Fatal(err)
			}
			compare(t, "logits", logits, f.Get(t, "logits").F32, 1e-5)
			m.ZeroGrads()
			loss, err := m.ForwardBackward(a, tok.I32, tgt.I32, 1)
			if err != nil {
				t.Fatal(err)
			}
			if want := f.Get(t, "loss").F64[0]; math.Abs(loss-want)/math.Abs(want) > 1e-5 {
				t.Errorf("loss %.8f, want %.8f", loss, want)
			}
			for _, v := range m.Layout.Views {
				compare(t, "grad "+v.Name, m.Grads[v.Offset:v.End()], f.Get(t, "grad/"+v.Name).F32, 1e-4)
			}
		})
	}
}
