package model_test

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/optim"
	"github.com/loomtrain/loom/tensor"
)

var update = flag.Bool("update", false, "regenerate model/testdata/*.bin with scripts/golden/make_fixtures.py (needs /usr/bin/python3 with torch)")

// Fixture format: see scripts/golden/make_fixtures.py.
const (
	fixtureMagic   = "LOOMGLD\x00"
	fixtureVersion = 1
	dtF32          = 1
	dtI32          = 2
	dtF64          = 3
)

var goldenCases = []string{"gqa_untied", "mqa_tied", "mha_untied"}

type record struct {
	shape []int
	f32   []float32
	i32   []int32
	f64   []float64
}

type fixture map[string]*record

func readFixture(path string) (fixture, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := bytes.NewReader(data)
	magic := make([]byte, 8)
	if _, err := r.Read(magic); err != nil || string(magic) != fixtureMagic {
		return nil, fmt.Errorf("%s: bad magic %q", path, magic)
	}
	var hdr struct{ Version, Count uint32 }
	if err := binary.Read(r, binary.LittleEndian, &hdr); err != nil {
		return nil, fmt.Errorf("%s: header: %w", path, err)
	}
	if hdr.Version != fixtureVersion {
		return nil, fmt.Errorf("%s: version %d, want %d", path, hdr.Version, fixtureVersion)
	}
	f := fixture{}
	for i := 0; i < int(hdr.Count); i++ {
		var nameLen uint32
		if err := binary.Read(r, binary.LittleEndian, &nameLen); err != nil || nameLen > 1024 {
			return nil, fmt.Errorf("%s: record %d: name length %d: %v", path, i, nameLen, err)
		}
		name := make([]byte, nameLen)
		if _, err := r.Read(name); err != nil {
			return nil, fmt.Errorf("%s: record %d name: %w", path, i, err)
		}
		var dt, ndim uint32
		binary.Read(r, binary.LittleEndian, &dt)
		if err := binary.Read(r, binary.LittleEndian, &ndim); err != nil || ndim > 8 {
			return nil, fmt.Errorf("%s: record %q: ndim %d: %v", path, name, ndim, err)
		}
		dims := make([]uint32, ndim)
		if err := binary.Read(r, binary.LittleEndian, dims); err != nil {
			return nil, fmt.Errorf("%s: record %q dims: %w", path, name, err)
		}
		rec := &record{}
		n := 1
		for _, d := range dims {
			rec.shape = append(rec.shape, int(d))
			n *= int(d)
		}
		if n > r.Len() {
			return nil, fmt.Errorf("%s: record %q: %d elements but %d bytes left", path, name, n, r.Len())
		}
		switch dt {
		case dtF32:
			rec.f32 = make([]float32, n)
			err = binary.Read(r, binary.LittleEndian, rec.f32)
		case dtI32:
			rec.i32 = make([]int32, n)
			err = binary.Read(r, binary.LittleEndian, rec.i32)
		case dtF64:
			rec.f64 = make([]float64, n)
			err = binary.Read(r, binary.LittleEndian, rec.f64)
		default:
			err = fmt.Errorf("unknown dtype %d", dt)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: record %q data: %w", path, name, err)
		}
		f[string(name)] = rec
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%s: %d trailing bytes", path, r.Len())
	}
	return f, nil
}

func (f fixture) get(t *testing.T, name string) *record {
	t.Helper()
	r, ok := f[name]
	if !ok {
		t.Fatalf("fixture has no record %q", name)
	}
	return r
}

// compareRel fails if the relative L2 error of got against want exceeds tol,
// naming the tensor and the largest element difference.
func compareRel(t *testing.T, name string, got, want []float32, tol float64) float64 {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d elements, want %d", name, len(got), len(want))
		return math.Inf(1)
	}
	var d2, w2, worst float64
	at := 0
	for i := range got {
		d := float64(got[i]) - float64(want[i])
		d2 += d * d
		w2 += float64(want[i]) * float64(want[i])
		if math.Abs(d) > worst || math.IsNaN(d) {
			worst, at = math.Abs(d), i
		}
	}
	rel := math.Sqrt(d2) / math.Max(math.Sqrt(w2), 1e-30)
	if w2 == 0 && d2 == 0 {
		rel = 0
	}
	if rel > tol || math.IsNaN(rel) {
		t.Errorf("%s: relative L2 error %.3g > %.3g; largest |diff| %.3g at flat index %d (got %v, want %v)",
			name, rel, tol, worst, at, got[at], want[at])
	}
	return rel
}

func loadGolden(t *testing.T, name string) (fixture, *model.Model) {
	t.Helper()
	f, err := readFixture(filepath.Join("testdata", name+".bin"))
	if err != nil {
		t.Fatal(err)
	}
	c, cf := f.get(t, "config").i32, f.get(t, "config_f64").f64
	cfg := model.Config{VocabSize: int(c[0]), Dim: int(c[1]), NLayers: int(c[2]), NHeads: int(c[3]), NKVHeads: int(c[4]),
		FFNHidden: int(c[5]), SeqLen: int(c[6]), TieEmbeddings: c[7] != 0, RopeTheta: cf[0], NormEps: cf[1]}
	m, err := model.New(cfg, tensor.Reference{})
	if err != nil {
		t.Fatal(err)
	}
	loadParams(t, f, m)
	return f, m
}

func loadParams(t *testing.T, f fixture, m *model.Model) {
	t.Helper()
	n := 0
	for _, v := range m.Layout.Views {
		r := f.get(t, "param/"+v.Name)
		if fmt.Sprint(r.shape) != fmt.Sprint(v.Shape) {
			t.Fatalf("%s: fixture shape %v, layout shape %v", v.Name, r.shape, v.Shape)
		}
		copy(m.Params[v.Offset:v.End()], r.f32)
		n++
	}
	for k := range f {
		if len(k) > 6 && k[:6] == "param/" {
			n--
		}
	}
	if n != 0 {
		t.Fatalf("fixture and layout disagree on the parameter count (difference %d)", n)
	}
}

func TestGoldenRegenerate(t *testing.T) {
	if !*update {
		t.Skip("run with -update to regenerate fixtures with PyTorch")
	}
	cmd := exec.Command("/usr/bin/python3", "../scripts/golden/make_fixtures.py", "--out", "testdata")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("make_fixtures.py: %v", err)
	}
}

func TestGoldenForwardBackward(t *testing.T) {
	for _, name := range goldenCases {
		t.Run(name, func(t *testing.T) {
			f, m := loadGolden(t, name)
			tok, tgt := f.get(t, "tokens"), f.get(t, "targets")
			B, T := tok.shape[0], tok.shape[1]
			a, err := m.NewActs(B, T)
			if err != nil {
				t.Fatal(err)
			}
			logits, err := m.Logits(a, tok.i32)
			if err != nil {
				t.Fatal(err)
			}
			rel := compareRel(t, "logits", logits, f.get(t, "logits").f32, 1e-5)
			t.Logf("logits rel L2 err %.3g", rel)

			m.ZeroGrads()
			loss, err := m.ForwardBackward(a, tok.i32, tgt.i32, 1)
			if err != nil {
				t.Fatal(err)
			}
			want := f.get(t, "loss").f64[0]
			lossErr := math.Abs(loss-want) / math.Abs(want)
			if lossErr > 1e-5 {
				t.Errorf("loss %.8f, want %.8f (rel err %.3g)", loss, want, lossErr)
			}
			worst, worstName := 0.0, ""
			for _, v := range m.Layout.Views {
				rel := compareRel(t, "grad "+v.Name, m.Grads[v.Offset:v.End()], f.get(t, "grad/"+v.Name).f32, 1e-4)
				if rel > worst {
					worst, worstName = rel, v.Name
				}
			}
			t.Logf("loss rel err %.3g; worst grad rel L2 err %.3g (%s)", lossErr, worst, worstName)
		})
	}
}

func TestGoldenAdamWSteps(t *testing.T) {
	for _, name := range goldenCases {
		t.Run(name, func(t *testing.T) {
			f, m := loadGolden(t, name)
			of, oi := f.get(t, "optim_f64").f64, f.get(t, "optim_i32").i32
			sched := optim.Schedule{MaxLR: of[0], MinLR: of[1], WarmupSteps: int(oi[0]), TotalSteps: int(oi[1])}
			if err := sched.Validate(); err != nil {
				t.Fatal(err)
			}
			cfg := optim.AdamWConfig{Beta1: of[2], Beta2: of[3], Eps: of[4], WeightDecay: of[5]}
			maxNorm, steps, micro := of[6], int(oi[2]), int(oi[3])
			var segs []optim.Segment
			for _, v := range m.Layout.Views {
				segs = append(segs, optim.Segment{Offset: v.Offset, Len: v.Len(), Decay: v.Decay})
			}
			opt, err := optim.NewAdamW(m.Kernels(), cfg, segs, 0, len(m.Params))
			if err != nil {
				t.Fatal(err)
			}
			tok, tgt := f.get(t, "tokens"), f.get(t, "targets")
			B, T := tok.shape[0], tok.shape[1]
			rows := B / micro
			a, err := m.NewActs(rows, T)
			if err != nil {
				t.Fatal(err)
			}
			wantLoss, wantNorm, wantLR := f.get(t, "step_loss").f64, f.get(t, "step_norm").f64, f.get(t, "step_lr").f64
			for s := 0; s < steps; s++ {
				m.ZeroGrads()
				var loss float64
				for i := 0; i < micro; i++ {
					sl := tok.i32[i*rows*T : (i+1)*rows*T]
					tl := tgt.i32[i*rows*T : (i+1)*rows*T]
					l, err := m.ForwardBackward(a, sl, tl, 1/float32(micro))
					if err != nil {
						t.Fatal(err)
					}
					loss += l / float64(micro)
				}
				norm := optim.ClipGradNorm(m.Kernels(), m.Grads, maxNorm)
				if norm <= maxNorm {
					t.Fatalf("step %d: clipping did not trigger (norm %v, max %v)", s, norm, maxNorm)
				}
				lr := sched.LR(s)
				for _, c := range []struct {
					what      string
					got, want float64
					tol       float64
				}{{"loss", loss, wantLoss[s], 1e-5}, {"grad norm", norm, wantNorm[s], 1e-5}, {"lr", lr, wantLR[s], 1e-12}} {
					if e := math.Abs(c.got-c.want) / math.Abs(c.want); e > c.tol {
						t.Errorf("step %d: %s %.8g, want %.8g (rel err %.3g)", s, c.what, c.got, c.want, e)
					}
				}
				if err := opt.Step(m.Params, m.Grads, lr); err != nil {
					t.Fatal(err)
				}
			}
			worst, worstName := 0.0, ""
			for _, v := range m.Layout.Views {
				rel := compareRel(t, fmt.Sprintf("%s after %d steps", v.Name, steps), m.Params[v.Offset:v.End()], f.get(t, "after/"+v.Name).f32, 1e-4)
				if rel > worst {
					worst, worstName = rel, v.Name
				}
			}
			t.Logf("worst param rel L2 err after %d steps %.3g (%s)", steps, worst, worstName)
		})
	}
}

func TestGoldenSchedule(t *testing.T) {
	f, err := readFixture(filepath.Join("testdata", goldenCases[0]+".bin"))
	if err != nil {
		t.Fatal(err)
	}
	sf, si, want := f.get(t, "sched_f64").f64, f.get(t, "sched_i32").i32, f.get(t, "sched_lr").f64
	s := optim.Schedule{MaxLR: sf[0], MinLR: sf[1], WarmupSteps: int(si[0]), TotalSteps: int(si[1])}
	for step, w := range want {
		if got := s.LR(step); math.Abs(got-w) > 1e-12*w {
			t.Errorf("step %d: lr %.10g, PyTorch LambdaLR %.10g", step, got, w)
		}
	}
}
