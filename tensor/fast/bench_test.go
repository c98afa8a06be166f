package fast_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/tensor/fast"
)

// benchShape is one of shared/bench's anchor configurations.
type benchShape struct {
	name                      string
	V, d, L, H, KV, ffn, T, B int
}

var benchShapes = []benchShape{
	{"tiny", 258, 128, 4, 4, 4, 352, 128, 16},
	{"small", 4096, 512, 8, 8, 8, 1376, 256, 8},
}

func randF(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

func forBench(b *testing.B, f func(b *testing.B, s benchShape, k tensor.Kernels)) {
	for _, s := range benchShapes {
		for _, th := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/threads=%d", s.name, th), func(b *testing.B) {
				k := fast.New(th)
				defer k.Close()
				f(b, s, k)
			})
		}
	}
}

// loop runs f b.N times and reports GFLOP/s for flops per call, by the
// wall clock and per CPU-second (the process's CPU time: on a loaded
// machine the steadier figure; with 2 threads it is per core).
func loop(b *testing.B, flops float64, f func()) {
	f()
	b.ResetTimer()
	cpu0 := processCPU()
	for b.Loop() {
		f()
	}
	cpu := processCPU() - cpu0
	total := flops * float64(b.N)
	b.ReportMetric(total/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	if cpu > 0 {
		b.ReportMetric(total/cpu/1e9, "cpu-GFLOP/s")
	}
}

// attnFlops counts causal attention's matmul FLOPs: passes products of
// T(T+1)/2 query-key pairs by headDim, 2 FLOPs per multiply-add.
func attnFlops(s benchShape, passes float64) float64 {
	return passes * 2 * float64(s.B*s.H*(s.d/s.H)) * float64(s.T) * float64(s.T+1) / 2
}

func BenchmarkAttentionForward(b *testing.B) { benchAttentionForward(b, nil) }

// BenchmarkAttentionForwardRegTiled and BenchmarkAttentionForwardTiles are
// BenchmarkAttentionForward forced onto the register-tiled kernel
// (attn512_amd64.s, where it applies) and onto the tile path.
func BenchmarkAttentionForwardRegTiled(b *testing.B) { benchAttentionForward(b, ptr(true)) }

func BenchmarkAttentionForwardTiles(b *testing.B) { benchAttentionForward(b, ptr(false)) }

func ptr[T any](v T) *T { return &v }

// benchAttentionForward times the forward, on the kernel regTiled forces
// (nil: the default choice).
func benchAttentionForward(b *testing.B, regTiled *bool) {
	forBench(b, func(b *testing.B, s benchShape, k tensor.Kernels) {
		if regTiled != nil {
			fast.SetAttentionKernel(k.(*fast.Kernels), *regTiled)
		}
		rng := rand.New(rand.NewPCG(1, 1))
		hd := s.d / s.H
		n := s.B * s.T * s.d
		q, kk, v, out := randF(rng, n), randF(rng, n), randF(rng, n), make([]float32, n)
		lse := make([]float32, s.B*s.H*s.T)
		loop(b, attnFlops(s, 2), func() { k.AttentionForward(out, lse, q, kk, v, s.B, s.T, s.H, s.KV, hd) })
	})
}

func BenchmarkAttentionBackward(b *testing.B) {
	forBench(b, func(b *testing.B, s benchShape, k tensor.Kernels) {
		rng := rand.New(rand.NewPCG(1, 1))
		hd := s.d / s.H
		n := s.B * s.T * s.d
		q, kk, v, out, dout := randF(rng, n), randF(rng, n), randF(rng, n), make([]float32, n), randF(rng, n)
		dq, dk, dv := make([]float32, n), make([]float32, n), make([]float32, n)
		lse := make([]float32, s.B*s.H*s.T)
		k.AttentionForward(out, lse, q, kk, v, s.B, s.T, s.H, s.KV, hd)
		loop(b, attnFlops(s, 5), func() { k.AttentionBackward(dq, dk, dv, dout, out, lse, q, kk, v, s.B, s.T, s.H, s.KV, hd) })
	})
}

func BenchmarkCrossEntropy(b *testing.B) {
	forBench(b, func(b *testing.B, s benchShape, k tensor.Kernels) {
		rng := rand.New(rand.NewPCG(1, 1))
		n := s.B * s.T
		logits, d := randF(rng, n*s.V), make([]float32, n*s.V)
		targets := make([]int32, n)
		for i := range targets {
			targets[i] = int32(rng.IntN(s.V))
		}
		b.SetBytes(int64(4 * n * s.V))
		for b.Loop() {
			k.CrossEntropy(d, logits, targets, n, s.V, 1)
		}
	})
}

func BenchmarkRMSNorm(b *testing.B) {
	forBench(b, func(b *testing.B, s benchShape, k tensor.Kernels) {
		rng := rand.New(rand.NewPCG(1, 1))
		n := s.B * s.T
		x, w, out, dout, dx, dw := randF(rng, n*s.d), randF(rng, s.d), make([]float32, n*s.d), randF(rng, n*s.d), make([]float32, n*s.d), make([]float32, s.d)
		rstd := make([]float32, n)
		b.SetBytes(int64(4 * n * s.d))
		for b.Loop() {
			k.RMSNormForward(out, rstd, x, w, n, s.d, 1e-5)
			k.RMSNormBackward(dx, dw, dout, x, w, rstd, n, s.d)
		}
	})
}

func BenchmarkRoPE(b *testing.B) {
	forBench(b, func(b *testing.B, s benchShape, k tensor.Kernels) {
		rng := rand.New(rand.NewPCG(1, 1))
		hd := s.d / s.H
		x := randF(rng, s.B*s.T*s.d)
		cos, sin := tensor.RoPETables(s.T, hd, 10000)
		b.SetBytes(int64(4 * len(x)))
		for b.Loop() {
			k.RoPEForward(x, cos, sin, s.B, s.T, s.H, hd)
			k.RoPEBackward(x, cos, sin, s.B, s.T, s.H, hd)
		}
	})
}

func BenchmarkSwiGLU(b *testing.B) {
	forBench(b, func(b *testing.B, s benchShape, k tensor.Kernels) {
		rng := rand.New(rand.NewPCG(1, 1))
		n := s.B * s.T * s.ffn
		g, u, out, dg, du := randF(rng, n), randF(rng, n), make([]float32, n), make([]float32, n), make([]float32, n)
		b.SetBytes(int64(4 * n))
		for b.Loop() {
			k.SwiGLUForward(out, g, u)
			k.SwiGLUBackward(dg, du, out, g, u)
		}
	})
}

func BenchmarkAdamW(b *testing.B) {
	forBench(b, func(b *testing.B, s benchShape, k tensor.Kernels) {
		rng := rand.New(rand.NewPCG(1, 1))
		n := s.L*(4*s.d*s.d+3*s.d*s.ffn) + 2*s.d*s.V
		p, g, m, v := randF(rng, n), randF(rng, n), make([]float32, n), make([]float32, n)
		h := tensor.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: 3}
		b.SetBytes(int64(4 * n))
		for b.Loop() {
			k.AdamW(p, g, m, v, h)
			k.SumSquares(g)
			k.Scale(g, 1)
		}
	})
}

// BenchmarkTrainStep is one forward+backward+AdamW step of the whole model;
// it reports tokens/s.
func BenchmarkTrainStep(b *testing.B) {
	forBench(b, func(b *testing.B, s benchShape, k tensor.Kernels) {
		cfg := model.Config{VocabSize: s.V, Dim: s.d, NLayers: s.L, NHeads: s.H, NKVHeads: s.KV, FFNHidden: s.ffn, SeqLen: s.T,
			RopeTheta: 10000, NormEps: 1e-5}
		tr := newTrainerB(b, cfg, k, s.B)
		n := s.B * s.T
		tokens, targets := make([]int32, n), make([]int32, n)
		for i := range tokens {
			tokens[i], targets[i] = int32(i*7%s.V), int32(i*5%s.V)
		}
		for b.Loop() {
			tr.step(b, tokens, targets)
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tok/s")
	})
}
