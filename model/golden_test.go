package model_test

import (
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/loomtrain/loom/internal/golden"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/optim"
	"github.com/loomtrain/loom/tensor"
)

var update = flag.Bool("update", false, "regenerate model/testdata/*.bin with scripts/golden/make_fixtures.py (needs /usr/bin/python3 with torch)")

var goldenCases = []string{"gqa_untied", "mqa_tied", "mha_untied"}

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

func loadGolden(t *testing.T, name string) (golden.Fixture, *model.Model) {
	t.Helper()
	f, err := golden.Read(filepath.Join("testdata", name+".bin"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.New(f.Config(t), tensor.Reference{})
	if err != nil {
		t.Fatal(err)
	}
	loadParams(t, f, m)
	return f, m
}

func loadParams(t *testing.T, f golden.Fixture, m *model.Model) {
	t.Helper()
	n := 0
	for _, v := range m.Layout.Views {
		r := f.Get(t, "param/"+v.Name)
		if fmt.Sprint(r.Shape) != fmt.Sprint(v.Shape) {
			t.Fatalf("%s: fixture shape %v, layout shape %v", v.Name, r.Shape, v.Shape)
		}
		copy(m.Params[v.Offset:v.End()], r.F32)
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
			tok, tgt := f.Get(t, "tokens"), f.Get(t, "targets")
			B, T := tok.Shape[0], tok.Shape[1]
			a, err := m.NewActs(B, T)
			if err != nil {
				t.Fatal(err)
			}
			logits, err := m.Logits(a, tok.I32)
			if err != nil {
				t.Fatal(err)
			}
			rel := compareRel(t, "logits", logits, f.Get(t, "logits").F32, 1e-5)
			t.Logf("logits rel L2 err %.3g", rel)

			m.ZeroGrads()
			loss, err := m.ForwardBackward(a, tok.I32, tgt.I32, 1)
			if err != nil {
				t.Fatal(err)
			}
			want := f.Get(t, "loss").F64[0]
			lossErr := math.Abs(loss-want) / math.Abs(want)
			if lossErr > 1e-5 {
				t.Errorf("loss %.8f, want %.8f (rel err %.3g)", loss, want, lossErr)
			}
			worst, worstName := 0.0, ""
			for _, v := range m.Layout.Views {
				rel := compareRel(t, "grad "+v.Name, m.Grads[v.Offset:v.End()], f.Get(t, "grad/"+v.Name).F32, 1e-4)
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
			of, oi := f.Get(t, "optim_f64").F64, f.Get(t, "optim_i32").I32
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
			tok, tgt := f.Get(t, "tokens"), f.Get(t, "targets")
			B, T := tok.Shape[0], tok.Shape[1]
			rows := B / micro
			a, err := m.NewActs(rows, T)
			if err != nil {
				t.Fatal(err)
			}
			wantLoss, wantNorm, wantLR := f.Get(t, "step_loss").F64, f.Get(t, "step_norm").F64, f.Get(t, "step_lr").F64
			for s := 0; s < steps; s++ {
				m.ZeroGrads()
				var loss float64
				for i := 0; i < micro; i++ {
					sl := tok.I32[i*rows*T : (i+1)*rows*T]
					tl := tgt.I32[i*rows*T : (i+1)*rows*T]
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
				rel := compareRel(t, fmt.Sprintf("%s after %d steps", v.Name, steps), m.Params[v.Offset:v.End()], f.Get(t, "after/"+v.Name).F32, 1e-4)
				if rel > worst {
					worst, worstName = rel, v.Name
				}
			}
			t.Logf("worst param rel L2 err after %d steps %.3g (%s)", steps, worst, worstName)
		})
	}
}

func TestGoldenSchedule(t *testing.T) {
	f, err := golden.Read(filepath.Join("testdata", goldenCases[0]+".bin"))
	if err != nil {
		t.Fatal(err)
	}
	sf, si, want := f.Get(t, "sched_f64").F64, f.Get(t, "sched_i32").I32, f.Get(t, "sched_lr").F64
	s := optim.Schedule{MaxLR: sf[0], MinLR: sf[1], WarmupSteps: int(si[0]), TotalSteps: int(si[1])}
	for step, w := range want {
		if got := s.LR(step); math.Abs(got-w) > 1e-12*w {
			t.Errorf("step %d: lr %.10g, PyTorch LambdaLR %.10g", step, got, w)
		}
	}
}
