package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/loomtrain/loom/tensor/gemm"
)

// gemmShape is one m×n×k multiplication (after op).
type gemmShape struct{ m, n, k int }

// defaultGemmShapes are the transformer matmuls at 4096 tokens: projections
// (d×d) and FFN up/down for d=768, ffn=3072, and d=512, ffn=1376 at 2048.
var defaultGemmShapes = []gemmShape{
	{2048, 512, 512}, {2048, 1376, 512}, {2048, 512, 1376},
	{4096, 768, 768}, {4096, 3072, 768}, {4096, 768, 3072},
}

// gemmResult is one measurement, as printed with --log-format json.
type gemmResult struct {
	M         int     `json:"m"`
	N         int     `json:"n"`
	K         int     `json:"k"`
	Threads   int     `json:"threads"`
	Trans     string  `json:"trans"`
	GFLOPS    float64 `json:"gflops"`      // median over iterations
	GFLOPSMax float64 `json:"gflops_best"` // best iteration
	Iters     int     `json:"iters"`
	Kernel    string  `json:"kernel"`
	Precision string  `json:"precision"`
	MC        int     `json:"mc"`
	KC        int     `json:"kc"`
	NC        int     `json:"nc"`
	Grid      string  `json:"grid"` // thread grid over C, "auto" when chosen per call
	Tuned     bool    `json:"tuned"`
}

// peakResult is the FMA-loop peak, printed with --peak.
type peakResult struct {
	Threads   int     `json:"threads"`
	Peak      float64 `json:"peak_gflops"`
	Kernel    string  `json:"kernel"`
	Precision string  `json:"precision"`
}

// cmdBenchGemm times tensor/gemm's Sgemm at transformer shapes (or one given
// shape) for each transpose case and thread count, and prints GFLOP/s.
func cmdBenchGemm(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "bench gemm", "[--m M --n N --k K] [--threads 1,2] [--trans nn,nt,tn] [--iters N] [--precision fp32|bf16] [--tune] [--peak] [--log-format text|json]\n\n"+
		"Times C = op(A)·op(B) (row-major float32, beta = 0) and prints GFLOP/s = 2·m·n·k / time,\n"+
		"median and best over --iters calls after one warm-up call, with the micro-kernel and cache\n"+
		"blocks each shape ran with. Without --m/--n/--k it runs Loom's transformer shapes. tn\n"+
		"multiplies Aᵀ·B with A stored k×m (weight gradients), nt A·Bᵀ with B stored n×k (input\n"+
		"gradients). --precision bf16 rounds A and B to bfloat16 while packing (float32 accumulation).\n"+
		"--tune searches kernel, blocks and thread grid for each shape first, replacing cached plans;\n"+
		"without it, cached plans are used and a shape without one is tuned on its first call, as in\n"+
		"training (LOOM_GEMM_TUNE=off: derived blocks only).")
	m := fs.Int("m", 0, "rows of op(A) and C (with --n and --k; default: transformer shapes)")
	n := fs.Int("n", 0, "columns of op(B) and C")
	k := fs.Int("k", 0, "inner dimension")
	threadsFlag := fs.String("threads", "", "comma-separated thread counts (default: 1 and all cores)")
	transFlag := fs.String("trans", "nn,nt,tn", "comma-separated transpose cases from nn, nt, tn, tt")
	iters := fs.Int("iters", 5, "timed calls per measurement")
	peak := fs.Bool("peak", false, "also print the FMA-loop (bf16: VDPBF16PS-loop) peak GFLOP/s for each thread count")
	precFlag := fs.String("precision", "fp32", "fp32, or bf16 (inputs rounded to bfloat16 when packed)")
	tune := fs.Bool("tune", false, "tune each shape before timing it and cache the plans (see docs/kernels.md)")
	logFormat := fs.String("log-format", "text", "text (a table) or json (one object per measurement)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}

	var errs []error
	if len(pos) != 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", pos))
	}
	shapes := defaultGemmShapes
	if *m != 0 || *n != 0 || *k != 0 {
		if *m < 1 || *n < 1 || *k < 1 {
			errs = append(errs, fmt.Errorf("--m %d --n %d --k %d: give all three, each ≥ 1", *m, *n, *k))
		}
		shapes = []gemmShape{{*m, *n, *k}}
	}
	threads := []int{1, runtime.NumCPU()}
	if runtime.NumCPU() == 1 {
		threads = threads[:1]
	}
	if *threadsFlag != "" {
		threads = nil
		for _, s := range strings.Split(*threadsFlag, ",") {
			t, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || t < 1 {
				errs = append(errs, fmt.Errorf("--threads %q: want comma-separated counts ≥ 1", *threadsFlag))
				break
			}
			threads = append(threads, t)
		}
	}
	var trans []string
	for _, s := range strings.Split(*transFlag, ",") {
		s = strings.TrimSpace(s)
		switch s {
		case "nn", "nt", "tn", "tt":
			trans = append(trans, s)
		default:
			errs = append(errs, fmt.Errorf("--trans %q: allowed: nn, nt, tn, tt", s))
		}
	}
	if *iters < 1 {
		errs = append(errs, fmt.Errorf("--iters %d: want ≥ 1", *iters))
	}
	if *logFormat != "text" && *logFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: allowed: text, json", *logFormat))
	}
	prec, err := gemm.ParsePrecision(*precFlag)
	if err != nil {
		errs = append(errs, fmt.Errorf("--precision: %w", err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench gemm: %w", errors.Join(errs...))
	}

	jsonOut := *logFormat == "json"
	emit := func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(env.stdout, "%s\n", b)
	}
	header := false
	for _, t := range threads {
		e, err := gemm.NewWith(gemm.Options{Threads: t, Precision: prec, Tune: benchTuning(*tune)})
		if err != nil {
			return fmt.Errorf("bench gemm: %w", err)
		}
		if *peak {
			p := peakResult{Threads: t, Peak: gemm.MeasurePeakPrecision(prec, t, 500*time.Millisecond), Kernel: e.Kernel(), Precision: prec.String()}
			if jsonOut {
				emit(p)
			} else {
				fmt.Fprintf(env.stdout, "%s peak (%s loop), %d threads: %.1f GFLOP/s\n", prec, p.Kernel, t, p.Peak)
			}
		}
		if *tune {
			var ss []gemm.Shape
			for _, s := range shapes {
				for _, tr := range trans {
					ss = append(ss, gemm.Shape{TransA: tr[0] == 't', TransB: tr[1] == 't', M: s.m, N: s.n, K: s.k})
				}
			}
			t0 := time.Now()
			if _, err := e.Tune(ss); err != nil {
				e.Close()
				return fmt.Errorf("bench gemm: %w", err)
			}
			if !jsonOut {
				fmt.Fprintf(env.stdout, "tuned %d shapes in %.1f s (%s)\n", len(ss), time.Since(t0).Seconds(), e.TuneStatus())
			}
		}
		for _, s := range shapes {
			for _, tr := range trans {
				if err := ctx.Err(); err != nil {
					e.Close()
					return err
				}
				r := timeSgemm(e, s, tr, *iters)
				if jsonOut {
					emit(r)
					continue
				}
				if !header {
					mr, nr, mc, kc, nc := e.Blocks()
					fmt.Fprintf(env.stdout, "%s; default kernel %s, tile %d×%d, blocks MC=%d KC=%d NC=%d\n", e.TuneStatus(), e.Kernel(), mr, nr, mc, kc, nc)
					if prec == gemm.BF16 {
						fmt.Fprintf(env.stdout, "%s\n", gemm.AMXStatus())
					}
					fmt.Fprintf(env.stdout, "%-18s %-5s %7s %9s %9s  %-12s %5s %5s %5s %5s %s\n", "MxNxK", "trans", "threads", "GFLOP/s", "best", "kernel", "MC", "KC", "NC", "grid", "plan")
					header = true
				}
				src := "derived"
				if r.Tuned {
					src = "tuned"
				}
				fmt.Fprintf(env.stdout, "%-18s %-5s %7d %9.1f %9.1f  %-12s %5d %5d %5d %5s %s\n", fmt.Sprintf("%dx%dx%d", r.M, r.N, r.K), r.Trans, r.Threads, r.GFLOPS, r.GFLOPSMax,
					r.Kernel, r.MC, r.KC, r.NC, r.Grid, src)
			}
		}
		e.Close()
	}
	return nil
}

// timeSgemm runs one warm-up call and iters timed calls of C = op(A)·op(B).
func timeSgemm(e *gemm.Engine, s gemmShape, trans string, iters int) gemmResult {
	transA, transB := trans[0] == 't', trans[1] == 't'
	lda, ldb := s.k, s.n
	if transA {
		lda = s.m
	}
	if transB {
		ldb = s.k
	}
	a := make([]float32, s.m*s.k)
	b := make([]float32, s.k*s.n)
	c := make([]float32, s.m*s.n)
	for i := range a {
		a[i] = float32(i%13)/13 - 0.5
	}
	for i := range b {
		b[i] = float32(i%11)/11 - 0.5
	}
	e.Sgemm(transA, transB, s.m, s.n, s.k, 1, a, lda, b, ldb, 0, c, s.n)
	flops := 2 * float64(s.m) * float64(s.n) * float64(s.k)
	g := make([]float64, iters)
	for i := range g {
		t0 := time.Now()
		e.Sgemm(transA, transB, s.m, s.n, s.k, 1, a, lda, b, ldb, 0, c, s.n)
		g[i] = flops / time.Since(t0).Seconds() / 1e9
	}
	sort.Float64s(g)
	p := e.PlanFor(gemm.Shape{TransA: transA, TransB: transB, M: s.m, N: s.n, K: s.k})
	return gemmResult{M: s.m, N: s.n, K: s.k, Threads: e.Threads(), Trans: trans,
		GFLOPS: g[len(g)/2], GFLOPSMax: g[len(g)-1], Iters: iters, Kernel: p.Kernel, Precision: e.Precision().String(),
		MC: p.MC, KC: p.KC, NC: p.NC, Grid: p.Grid(), Tuned: p.Tuned}
}

// benchTuning is the commands' tuning, with Retune for --tune (which
// tunes even when LOOM_GEMM_TUNE=off).
func benchTuning(retune bool) *gemm.TuneOptions {
	t := gemmTuning()
	if retune {
		t = &gemm.TuneOptions{Retune: true}
	}
	return t
}
