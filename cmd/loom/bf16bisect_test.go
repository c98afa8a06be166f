package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/tensor/fast"
	"github.com/loomtrain/loom/tensor/gemm"
	"github.com/loomtrain/loom/train"
)

// bisectKernels are float32 kernels that run the GEMMs pick selects on a
// bf16 engine, and optionally put noise on the gradients AdamW reads.
type bisectKernels struct {
	*fast.Kernels
	bf   *gemm.Engine
	pick func(transA, transB bool, m, n, k int) bool
	// all, when set, overrides pick: 32 runs every GEMM in float32, 16 in
	// bf16 (the validation passes).
	all int
	// noise, when non-zero, multiplies every gradient element by
	// 1 + noise·N(0, 1) before AdamW: unbiased noise, a control for
	// bf16's rounding.
	noise float64
	rng   *rand.Rand
}

func (k *bisectKernels) AdamW(p, g, m, v []float32, h tensor.AdamWHyper) {
	if k.noise != 0 {
		for i := range g {
			g[i] *= float32(1 + k.noise*k.rng.NormFloat64())
		}
	}
	k.Kernels.AdamW(p, g, m, v, h)
}

func (k *bisectKernels) Sgemm(transA, transB bool, m, n, kk int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	bf := k.pick(transA, transB, m, n, kk)
	switch k.all {
	case 32:
		bf = false
	case 16:
		bf = true
	}
	if bf {
		k.bf.Sgemm(transA, transB, m, n, kk, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	k.Kernels.Sgemm(transA, transB, m, n, kk, alpha, a, lda, b, ldb, beta, c, ldc)
}

// bisectPick selects GEMMs by role for a variant name: "all", "none",
// "fwd" (the forward's x·Wᵀ, transB), "dx" (input gradients, neither
// transposed), "dw" (weight gradients, transA), "head" (any GEMM with a
// vocabulary-sized dimension), "nohead"; joined with "+".
func bisectPick(variant string, vocab int) (func(transA, transB bool, m, n, k int) bool, error) {
	parts := strings.Split(variant, "+")
	for _, p := range parts {
		switch p {
		case "all", "none", "fwd", "dx", "dw", "head", "nohead":
		default:
			return nil, fmt.Errorf("LOOM_BF16_BISECT: variant %q: allowed: all, none, fwd, dx, dw, head, nohead (joined by +), noiseSIGMA; suffix @N perturbs (seed N)", p)
		}
	}
	return func(transA, transB bool, m, n, k int) bool {
		head := m == vocab || n == vocab || k == vocab
		for _, p := range parts {
			if p == "all" || p == "fwd" && !transA && transB || p == "dx" && !transA && !transB ||
				p == "dw" && transA && !transB || p == "head" && head || p == "nohead" && !head {
				return true
			}
		}
		return false
	}, nil
}

// bisectStep is one step of a bisect run; the validation losses (every
// 20 steps) are of the run's weights with every GEMM in fp32 and in bf16.
type bisectStep struct {
	Step     int     `json:"step"`
	Loss     float64 `json:"loss"`
	GradNorm float64 `json:"grad_norm"`
	Val32    float64 `json:"val_fp32,omitempty"`
	Val16    float64 `json:"val_bf16,omitempty"`
}

// TestBF16Bisect trains `make bf16-parity`'s 200 steps once per variant in
// LOOM_BF16_BISECT (comma-separated), to find where bf16's curve parts from
// fp32's: which GEMMs run in bf16 (bisectPick), or "noiseSIGMA" — all fp32
// with unbiased gradient noise — and a suffix "@N" that multiplies every
// initial weight by 1 + 1e-6·u (seed N; with noise, N seeds the noise).
// LOOM_BF16_BISECT_SEED sets train.seed, LOOM_BF16_BISECT_OUT a directory
// for VARIANT_SEED.json (every step). Each run also evaluates its weights
// every 20 steps on held-out Go source (unicode/utf8, container) with
// every GEMM in fp32 and in bf16, and requires the two to agree within
// 0.05%: a run's reported loss is what its weights are worth, not an
// artifact of bf16's forward. About 1 min per variant.
//
//	LOOM_BF16_BISECT=none,all,fwd,dx,dw,head,noise0.004@1 go test -run TestBF16Bisect -v ./cmd/loom
func TestBF16Bisect(t *testing.T) {
	variants := os.Getenv("LOOM_BF16_BISECT")
	if variants == "" {
		t.Skip("set LOOM_BF16_BISECT to variants, e.g. none,all,fwd,dx,dw,head,noise0.004@1")
	}
	spec := bf16Spec(t, 200)
	if s := os.Getenv("LOOM_BF16_BISECT_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("LOOM_BF16_BISECT_SEED: %v", err)
		}
		spec.Train.Seed = seed
	}
	outDir := os.Getenv("LOOM_BF16_BISECT_OUT")
	valPath := filepath.Join(t.TempDir(), "val.bin")
	src := filepath.Join(runtime.GOROOT(), "src")
	if _, _, err := data.Prep(context.Background(), data.PrepConfig{
		Inputs:  []string{filepath.Join(src, "unicode", "utf8"), filepath.Join(src, "container")},
		Include: []string{"*.go"}, Out: valPath, Workers: 1}); err != nil {
		t.Fatal(err)
	}
	for _, variant := range strings.Split(variants, ",") {
		t.Run(variant, func(t *testing.T) {
			name, perturb := variant, uint64(0)
			if i := strings.IndexByte(variant, '@'); i >= 0 {
				n, err := strconv.ParseUint(variant[i+1:], 10, 64)
				if err != nil {
					t.Fatalf("LOOM_BF16_BISECT: %q: @N wants a number: %v", variant, err)
				}
				name, perturb = variant[:i], n
			}
			noise := 0.0
			if s, ok := strings.CutPrefix(name, "noise"); ok {
				var err error
				if noise, err = strconv.ParseFloat(s, 64); err != nil {
					t.Fatalf("LOOM_BF16_BISECT: %q: noiseSIGMA wants a number: %v", variant, err)
				}
				name = "none"
			}
			pick, err := bisectPick(name, spec.Model.VocabSize)
			if err != nil {
				t.Fatal(err)
			}
			k32, err := newKernelsPrecision(1, "fp32")
			if err != nil {
				t.Fatal(err)
			}
			defer k32.Close()
			bf, err := gemm.NewWith(gemm.Options{Threads: 1, Precision: gemm.BF16})
			if err != nil {
				t.Fatal(err)
			}
			defer bf.Close()
			k := &bisectKernels{Kernels: k32, bf: bf, pick: pick, noise: noise, rng: rand.New(rand.NewPCG(perturb, 11))}
			tr, err := train.New(train.Config{Spec: spec, Kernels: k, Loader: bf16Loader(t, spec.Data.Path, spec.Model.SeqLen, true),
				Validation: bf16Loader(t, valPath, spec.Model.SeqLen, false)})
			if err != nil {
				t.Fatal(err)
			}
			if perturb != 0 && noise == 0 {
				r := rand.New(rand.NewPCG(perturb, 7))
				for i := range tr.Model.Params {
					tr.Model.Params[i] *= float32(1 + 1e-6*(2*r.Float64()-1))
				}
			}
			ctx := context.Background()
			var steps []bisectStep
			for range spec.Train.Steps {
				st, err := tr.Step(ctx)
				if err != nil {
					t.Fatal(err)
				}
				s := bisectStep{Step: st.Step, Loss: st.Loss, GradNorm: st.GradNorm}
				if st.Step%20 == 0 {
					k.all = 32
					s.Val32, err = tr.Validate(ctx)
					if err == nil {
						k.all = 16
						s.Val16, err = tr.Validate(ctx)
					}
					k.all = 0
					if err != nil {
						t.Fatal(err)
					}
					if d := math.Abs(s.Val16-s.Val32) / s.Val32; !(d <= 5e-4) {
						t.Errorf("step %d: validation loss with bf16 GEMMs %.5f is %.3g%% from fp32's %.5f on the same weights (limit 0.05%%)", st.Step, s.Val16, 100*d, s.Val32)
					}
				}
				steps = append(steps, s)
			}
			first, last := steps[0], steps[len(steps)-1]
			t.Logf("%s, train.seed %d: loss %.4f → %.4f; held-out loss at step %d: %.4f (fp32 GEMMs), %.4f (bf16)",
				variant, spec.Train.Seed, first.Loss, last.Loss, last.Step, last.Val32, last.Val16)
			if outDir != "" {
				b, err := json.Marshal(steps)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(outDir, fmt.Sprintf("%s_%d.json", variant, spec.Train.Seed)), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
