package fast_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

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
			f, err := readFixture(filepath.Join("..", "..", "model", "testdata", name+".bin"))
			if err != nil {
				t.Fatal(err)
			}
			c, cf := f.get(t, "config").i32, f.get(t, "config_f64").f64
			cfg := model.Config{VocabSize: int(c[0]), Dim: int(c[1]), NLayers: int(c[2]), NHeads: int(c[3]), NKVHeads: int(c[4]),
				FFNHidden: int(c[5]), SeqLen: int(c[6]), TieEmbeddings: c[7] != 0, RopeTheta: cf[0], NormEps: cf[1]}
			m, err := model.New(cfg, k)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range m.Layout.Views {
				copy(m.Params[v.Offset:v.End()], f.get(t, "param/"+v.Name).f32)
			}
			tok, tgt := f.get(t, "tokens"), f.get(t, "targets")
			a, err := m.NewActs(tok.shape[0], tok.shape[1])
			if err != nil {
				t.Fatal(err)
			}
			logits, err := m.Logits(a, tok.i32)
			if err != nil {
				t.Fatal(err)
			}
			compare(t, "logits", logits, f.get(t, "logits").f32, 1e-5)
			m.ZeroGrads()
			loss, err := m.ForwardBackward(a, tok.i32, tgt.i32, 1)
			if err != nil {
				t.Fatal(err)
			}
			if want := f.get(t, "loss").f64[0]; math.Abs(loss-want)/math.Abs(want) > 1e-5 {
				t.Errorf("loss %.8f, want %.8f", loss, want)
			}
			for _, v := range m.Layout.Views {
				compare(t, "grad "+v.Name, m.Grads[v.Offset:v.End()], f.get(t, "grad/"+v.Name).f32, 1e-4)
			}
		})
	}
}

// Fixture format: scripts/golden/make_fixtures.py (reader as in model/golden_test.go).
type record struct {
	shape []int
	f32   []float32
	i32   []int32
	f64   []float64
}

type fixture map[string]*record

func (f fixture) get(t *testing.T, name string) *record {
	t.Helper()
	r, ok := f[name]
	if !ok {
		t.Fatalf("fixture has no record %q", name)
	}
	return r
}

func readFixture(path string) (fixture, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := bytes.NewReader(data)
	magic := make([]byte, 8)
	if _, err := r.Read(magic); err != nil || string(magic) != "LOOMGLD\x00" {
		return nil, fmt.Errorf("%s: bad magic %q", path, magic)
	}
	var hdr struct{ Version, Count uint32 }
	if err := binary.Read(r, binary.LittleEndian, &hdr); err != nil || hdr.Version != 1 {
		return nil, fmt.Errorf("%s: header %+v: %v", path, hdr, err)
	}
	f := fixture{}
	for i := 0; i < int(hdr.Count); i++ {
		var nameLen uint32
		if err := binary.Read(r, binary.LittleEndian, &nameLen); err != nil || nameLen > 1024 {
			return nil, fmt.Errorf("%s: record %d: name length %d: %v", path, i, nameLen, err)
		}
		name := make([]byte, nameLen)
		r.Read(name)
		var dt, ndim uint32
		binary.Read(r, binary.LittleEndian, &dt)
		if err := binary.Read(r, binary.LittleEndian, &ndim); err != nil || ndim > 8 {
			return nil, fmt.Errorf("%s: record %q: ndim %d: %v", path, name, ndim, err)
		}
		dims := make([]uint32, ndim)
		if err := binary.Read(r, binary.LittleEndian, dims); err != nil {
			return nil, err
		}
		rec := &record{}
		n := 1
		for _, d := range dims {
			rec.shape = append(rec.shape, int(d))
			n *= int(d)
		}
		if n > r.Len() {
			return nil, fmt.Errorf("%s: record %q truncated", path, name)
		}
		switch dt {
		case 1:
			rec.f32 = make([]float32, n)
			err = binary.Read(r, binary.LittleEndian, rec.f32)
		case 2:
			rec.i32 = make([]int32, n)
			err = binary.Read(r, binary.LittleEndian, rec.i32)
		case 3:
			rec.f64 = make([]float64, n)
			err = binary.Read(r, binary.LittleEndian, rec.f64)
		default:
			err = fmt.Errorf("unknown dtype %d", dt)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: record %q: %w", path, name, err)
		}
		f[string(name)] = rec
	}
	return f, nil
}
