package gemm

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// benchShapes are Loom's transformer matmuls at M = tokens: projections
// (d×d), FFN up (d→ffn) and down (ffn→d) for d=512/ffn=1376 and
// d=768/ffn=3072, plus a square reference point.
var benchShapes = []shape{
	{2048, 512, 512}, {2048, 1376, 512}, {2048, 512, 1376},
	{4096, 768, 768}, {4096, 3072, 768}, {4096, 768, 3072},
	{2048, 2048, 2048},
}

// BenchmarkSgemm reports GFLOP/s for every shape, transpose case (nn:
// forward, nt: input gradient against a stored weight, tn: weight
// gradient) and thread count 1 and 2. The tn case multiplies Xᵀ·dY, so its
// M and K are swapped: M = d, K = tokens.
func BenchmarkSgemm(b *testing.B) {
	for _, threads := range []int{1, 2} {
		e := New(threads)
		for _, s := range benchShapes {
			for _, tr := range []struct {
				name           string
				transA, transB bool
			}{{"nn", false, false}, {"nt", false, true}, {"tn", true, false}} {
				m, n, k := s.m, s.n, s.k
				if tr.transA {
					m, k = s.k, s.m
				}
				name := fmt.Sprintf("%s/%dx%dx%d/%s/threads=%d", e.Kernel(), m, n, k, tr.name, threads)
				b.Run(name, func(b *testing.B) { benchOne(b, e, tr.transA, tr.transB, m, n, k) })
			}
		}
		e.Close()
	}
}

func benchOne(b *testing.B, e *Engine, transA, transB bool, m, n, k int) {
	ar, ac := stored(m, k, transA)
	br, bc := stored(k, n, transB)
	a, bm, c := make([]float32, ar*ac), make([]float32, br*bc), make([]float32, m*n)
	for i := range a {
		a[i] = float32(i%13)/13 - 0.5
	}
	for i := range bm {
		bm[i] = float32(i%11)/11 - 0.5
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	e.Sgemm(transA, transB, m, n, k, 1, a, ac, bm, bc, 0, c, n)
	b.ResetTimer()
	cpu0, _ := threadCPU()
	for b.Loop() {
		e.Sgemm(transA, transB, m, n, k, 1, a, ac, bm, bc, 0, c, n)
	}
	cpu1, _ := threadCPU()
	cpu := (cpu1 - cpu0).Seconds()
	flops := 2 * float64(m) * float64(n) * float64(k) * float64(b.N)
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	if e.Threads() == 1 && cpu > 0 {
		// On a loaded machine the calling thread's CPU time, not the
		// wall clock, is what one thread's work took.
		b.ReportMetric(flops/cpu/1e9, "cpu-GFLOP/s")
	}
}

func BenchmarkPeak(b *testing.B) {
	k := bestKernel()
	if k.peak == nil {
		b.Skip("no assembly FMA loop")
	}
	var flops float64
	for b.Loop() {
		flops += k.peak(1 << 16)
	}
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkMicroKernel runs each micro-kernel on L1-resident panels of
// depth 256 (k-steps: bf16 kernels do two multiply-adds per step): the
// ceiling for the packed loops. LOOM_BENCH_DEPTHS ("64,128,...") runs
// those depths too, to see the per-call cost of loading and storing C.
func BenchmarkMicroKernel(b *testing.B) {
	depths := []int{256}
	if v := os.Getenv("LOOM_BENCH_DEPTHS"); v != "" {
		depths = depths[:0]
		for _, f := range strings.Split(v, ",") {
			if d, err := strconv.Atoi(f); err == nil && d > 0 {
				depths = append(depths, d)
			}
		}
	}
	for _, kern := range availableKernels() {
		for _, k := range depths {
			name := kern.name
			if len(depths) > 1 || k != 256 {
				name += fmt.Sprintf("/k=%d", k)
			}
			b.Run(name, func(b *testing.B) { benchMicroKernel(b, kern, k) })
		}
	}
}

func benchMicroKernel(b *testing.B, kern kernel, k int) {
	a := make([]float32, k*kern.mr)
	bp := make([]float32, k*kern.nr)
	c := make([]float32, kern.mr*kern.nr)
	flops := 2 * float64(k*kern.mr*kern.nr)
	if kern.pairs() {
		flops *= 2
	}
	timeKernel(b, flops, func() { kern.full(k, &a[0], &bp[0], &c[0], kern.nr, 1, 1) })
}

// timeKernel runs call in b.Loop on a locked OS thread and reports its
// rate in GFLOP/s of wall time and of the thread's CPU time, flops per
// call.
func timeKernel(b *testing.B, flops float64, call func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0, _ := threadCPU()
	for b.Loop() {
		call()
	}
	c1, _ := threadCPU()
	b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	b.ReportMetric(flops*float64(b.N)/(c1-c0).Seconds()/1e9, "cpu-GFLOP/s")
}

// BenchmarkBlocks measures one shape under the blocking in GEMM_BLOCKS
// ("mc,kc,nc" or "mc,kc,nc,cmax"), for tuning chooseBlocks; it is skipped without it.
// GEMM_SHAPE ("m,n,k"), GEMM_TRANS (nn, nt or tn) and GEMM_THREADS pick
// the call.
func BenchmarkBlocks(b *testing.B) {
	var bs blockSizes
	if n, _ := fmt.Sscanf(os.Getenv("GEMM_BLOCKS"), "%d,%d,%d,%d", &bs.mc, &bs.kc, &bs.nc, &bs.cmax); n < 3 {
		b.Skip("set GEMM_BLOCKS=mc,kc,nc")
	}
	var s shape
	if _, err := fmt.Sscanf(os.Getenv("GEMM_SHAPE"), "%d,%d,%d", &s.m, &s.n, &s.k); err != nil {
		s = shape{4096, 768, 3072}
	}
	threads := 1
	fmt.Sscanf(os.Getenv("GEMM_THREADS"), "%d", &threads)
	tr := os.Getenv("GEMM_TRANS") // nn (default), nt or tn
	e := newEngineBlocks(threads, bestKernel(), bs)
	defer e.Close()
	benchOne(b, e, tr == "tn", tr == "nt", s.m, s.n, s.k)
}

// BenchmarkPack measures packing one block as Sgemm does — A: an MC=126
// (AVX2) or 126-row (AVX-512) block, B: an NC=4032-column block — each
// KC=256 deep, for both storage orders, in GB/s of packed output. The
// source has a 3072-float row stride, as the 768×3072 weights do.
func BenchmarkPack(b *testing.B) {
	const kc, ld = 256, 3072
	src := make([]float32, 4096*ld)
	dst := make([]float32, 4096*kc)
	for _, c := range []struct {
		name     string
		a, trans bool
		width, n int
	}{
		{"A/mr=6", true, false, 6, 126}, {"A/mr=6/trans", true, true, 6, 126},
		{"A/mr=14", true, false, 14, 126}, {"A/mr=14/trans", true, true, 14, 126},
		{"B/nr=16", false, false, 16, 4032}, {"B/nr=16/trans", false, true, 16, 4032},
		{"B/nr=32", false, false, 32, 4032}, {"B/nr=32/trans", false, true, 32, 4032},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if c.a {
					packA(dst, c.trans, src, ld, 0, 0, c.n, kc, c.width)
				} else {
					packB(dst, c.trans, src, ld, 0, 0, kc, c.n, c.width)
				}
			}
			b.SetBytes(int64(c.n * kc * 4))
		})
	}
}

// stepShapes are the GEMMs of a `tiny` (d 128, ffn 352) and a `small`
// (d 512, ffn 1376) training step at 2048 tokens, as the model calls them.
var stepShapes = []Shape{
	{false, true, 2048, 128, 128}, {false, true, 2048, 352, 128}, {false, true, 2048, 128, 352},
	{false, false, 2048, 128, 128}, {false, false, 2048, 352, 128}, {false, false, 2048, 128, 352},
	{true, false, 128, 128, 2048}, {true, false, 352, 128, 2048}, {true, false, 128, 352, 2048},
	{false, true, 2048, 512, 512}, {false, true, 2048, 1376, 512}, {false, true, 2048, 512, 1376},
	{false, false, 2048, 512, 512}, {false, false, 2048, 1376, 512}, {false, false, 2048, 512, 1376},
	{true, false, 512, 512, 2048}, {true, false, 1376, 512, 2048}, {true, false, 512, 1376, 2048},
	{false, true, 2048, 4096, 512}, {false, false, 2048, 512, 4096}, {true, false, 4096, 512, 2048},
}

// BenchmarkOperands times the step shapes with A and B packed or read in
// place (LOOM_BENCH_THREADS threads, default 1; LOOM_BENCH_KERNEL names
// another float32 kernel, e.g. avx2), to set the auto rule.
func BenchmarkOperands(b *testing.B) {
	threads := 1
	if v := os.Getenv("LOOM_BENCH_THREADS"); v != "" {
		fmt.Sscan(v, &threads)
	}
	e := New(threads)
	if name := os.Getenv("LOOM_BENCH_KERNEL"); name != "" {
		for _, k := range kernelsFor(FP32) {
			if k.name == name {
				e.Close()
				e = newEngine(threads, k)
			}
		}
	}
	defer e.Close()
	for _, s := range stepShapes {
		for _, mode := range []struct{ a, b operand }{
			{operandPacked, operandPacked}, {operandInPlace, operandPacked}, {operandPacked, operandInPlace}, {operandInPlace, operandInPlace},
		} {
			if s.TransB && mode.b == operandInPlace {
				continue
			}
			p := e.def
			p.inA, p.inB = mode.a, mode.b
			e.setPlan(s, p)
			b.Run(fmt.Sprintf("%s/A=%v/B=%v", s, mode.a, mode.b), func(b *testing.B) {
				benchOne(b, e, s.TransA, s.TransB, s.M, s.N, s.K)
			})
		}
	}
}

// BenchmarkMicroKernelStrided is BenchmarkMicroKernel for the strided
// forms: A packed (rsa 1, csa MR), row-major in place (rsa = K, csa 1) and
// transposed in place (rsa 1, csa = 128), all hot in L1/L2; cpu-GFLOP/s is
// per CPU-second of the calling thread.
func BenchmarkMicroKernelStrided(b *testing.B) {
	for _, kern := range availableKernels() {
		if kern.strided == nil {
			continue
		}
		for _, lay := range []struct {
			name     string
			rsa, csa int
		}{{"packed", 1, kern.mr}, {"rows", 256, 1}, {"cols", 128, 1}} {
			b.Run(kern.name+"/"+lay.name, func(b *testing.B) {
				const k = 256
				rsa, csa := lay.rsa, lay.csa
				if lay.name == "cols" {
					rsa, csa = 1, 128
				}
				a := make([]float32, (kern.mr-1)*rsa+(k-1)*csa+1)
				bp := make([]float32, k*kern.nr)
				c := make([]float32, kern.mr*kern.nr)
				timeKernel(b, 2*float64(k*kern.mr*kern.nr), func() {
					kern.strided(k, &a[0], rsa, csa, &bp[0], kern.nr, &c[0], kern.nr, 1, 1)
				})
			})
		}
	}
}
