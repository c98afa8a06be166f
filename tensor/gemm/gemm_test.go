package gemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

type shape struct{ m, n, k int }

// edgeShapes exercise partial tiles (1, 7, 17 … around MR/NR multiples),
// K slices past KC, M past MC and N past NC.
var edgeShapes = []shape{
	{1, 1, 1}, {1, 7, 3}, {7, 1, 5}, {7, 7, 7}, {17, 17, 17}, {14, 32, 8}, {6, 16, 4},
	{63, 65, 127}, {65, 63, 129}, {127, 129, 65}, {129, 127, 63}, {28, 64, 1},
	{15, 33, 300}, {400, 20, 70}, {13, 4200, 9}, {129, 129, 600},
}

// transformerShapes are small-token versions of Loom's matmuls: QKV/out
// projections (d×d), FFN up/down (d×ffn), with M = tokens.
var transformerShapes = []shape{
	{64, 512, 512}, {64, 1376, 512}, {64, 512, 1376}, {48, 768, 768}, {32, 3072, 768}, {32, 768, 3072},
}

type variant struct{ alpha, beta float32 }

var variants = []variant{{1, 0}, {1, 1}, {0.5, -2}, {-1.5, 0}}

// stored returns the stored (rows, cols) of an operand of logical shape
// r×c, transposed if trans.
func stored(r, c int, trans bool) (int, int) {
	if trans {
		return c, r
	}
	return r, c
}

func randMatrix(rng *rand.Rand, rows, cols, ld int) []float32 {
	x := make([]float32, max(rows*ld, 1))
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

// testCase is one multiplication with its inputs, the Reference result and
// a per-element magnitude bound Σ|alpha·a·b| + |beta·c| for the tolerance.
type testCase struct {
	s              shape
	transA, transB bool
	v              variant
	pad            int
	lda, ldb, ldc  int
	a, b, c        []float32
	want, bound    []float32
	wantBF16       []float32 // Reference on bf16-rounded A and B (lazily)
}

// bf16Want is the Reference result for A and B rounded to bf16, as the bf16
// kernels see them.
func (tc *testCase) bf16Want() []float32 {
	if tc.wantBF16 == nil {
		ra, rb := slices.Clone(tc.a), slices.Clone(tc.b)
		for i := range ra {
			ra[i] = RoundBF16(ra[i])
		}
		for i := range rb {
			rb[i] = RoundBF16(rb[i])
		}
		tc.wantBF16 = slices.Clone(tc.c)
		s := tc.s
		Reference(tc.transA, tc.transB, s.m, s.n, s.k, tc.v.alpha, ra, tc.lda, rb, tc.ldb, tc.v.beta, tc.wantBF16, tc.ldc)
	}
	return tc.wantBF16
}

func newCase(rng *rand.Rand, s shape, transA, transB bool, v variant, pad int) *testCase {
	ar, ac := stored(s.m, s.k, transA)
	br, bc := stored(s.k, s.n, transB)
	tc := &testCase{s: s, transA: transA, transB: transB, v: v, pad: pad, lda: ac + pad, ldb: bc + pad, ldc: s.n + pad}
	tc.a = randMatrix(rng, ar, ac, tc.lda)
	tc.b = randMatrix(rng, br, bc, tc.ldb)
	tc.c = randMatrix(rng, s.m, s.n, tc.ldc)
	if v.beta == 0 {
		for i := range tc.c {
			tc.c[i] = float32(math.NaN()) // must be overwritten, never read
		}
	}
	tc.want = append([]float32(nil), tc.c...)
	Reference(transA, transB, s.m, s.n, s.k, v.alpha, tc.a, tc.lda, tc.b, tc.ldb, v.beta, tc.want, tc.ldc)
	absA, absB := make([]float32, len(tc.a)), make([]float32, len(tc.b))
	for i := range tc.a {
		absA[i] = float32(math.Abs(float64(tc.a[i])))
	}
	for i := range tc.b {
		absB[i] = float32(math.Abs(float64(tc.b[i])))
	}
	tc.bound = make([]float32, len(tc.c))
	Reference(transA, transB, s.m, s.n, s.k, float32(math.Abs(float64(v.alpha))), absA, tc.lda, absB, tc.ldb, 0, tc.bound, tc.ldc)
	return tc
}

// check runs the case on e and reports the worst element error relative to
// the magnitude bound, and any write into the padding between rows.
func (tc *testCase) check(t *testing.T, e *Engine) {
	t.Helper()
	s, v := tc.s, tc.v
	got := append([]float32(nil), tc.c...)
	e.Sgemm(tc.transA, tc.transB, s.m, s.n, s.k, v.alpha, tc.a, tc.lda, tc.b, tc.ldb, v.beta, got, tc.ldc)
	tol := 2e-6 * (1 + float64(s.k)/64)
	want := tc.want
	if e.Precision() == BF16 {
		// Against the float64 reference on the original inputs, within
		// bf16's bound: each rounded input is off by ≤ 2⁻⁸ relative (8
		// significant bits), so each product by ≤ 2⁻⁷(1+2⁻⁹), plus
		// float32 accumulation.
		tc.compare(t, e, got, tc.want, 0x1p-7*(1+0x1p-9)+tol, "float64 reference, bf16 bound")
		want = tc.bf16Want() // and tightly against the rounded inputs
	}
	tc.compare(t, e, got, want, tol, "float64 reference")
}

// compare reports the worst element error of got relative to the magnitude
// bound, and any write into the padding between rows.
func (tc *testCase) compare(t *testing.T, e *Engine, got, want []float32, tol float64, what string) {
	t.Helper()
	s, v := tc.s, tc.v
	worst, wi, wj := 0.0, -1, -1
	for i := 0; i < s.m; i++ {
		for j := 0; j < s.n; j++ {
			x := i*tc.ldc + j
			scale := float64(tc.bound[x]) + 1e-30
			if v.beta != 0 {
				scale += math.Abs(float64(v.beta) * float64(tc.c[x]))
			}
			d := math.Abs(float64(got[x])-float64(want[x])) / scale
			if math.IsNaN(float64(got[x])) {
				d = math.Inf(1)
			}
			if d > worst {
				worst, wi, wj = d, i, j
			}
		}
	}
	if worst > tol {
		t.Fatalf("%s threads=%d m=%d n=%d k=%d transA=%v transB=%v alpha=%g beta=%g pad=%d: vs %s: worst relative error %.3g at C[%d][%d] (got %g want %g), tolerance %.3g",
			e.Kernel(), e.Threads(), s.m, s.n, s.k, tc.transA, tc.transB, v.alpha, v.beta, tc.pad, what, worst, wi, wj, got[wi*tc.ldc+wj], want[wi*tc.ldc+wj], tol)
	}
	for i := 0; i < s.m; i++ {
		for j := s.n; j < tc.ldc && i*tc.ldc+j < len(tc.c); j++ {
			x := i*tc.ldc + j
			if math.Float32bits(got[x]) != math.Float32bits(tc.c[x]) {
				t.Fatalf("%s m=%d n=%d k=%d: wrote into padding C[%d][%d]", e.Kernel(), s.m, s.n, s.k, i, j)
			}
		}
	}
}

var transCases = []struct {
	name           string
	transA, transB bool
}{{"nn", false, false}, {"tn", true, false}, {"nt", false, true}, {"tt", true, true}}

func TestSgemmMatchesReference(t *testing.T) {
	shapes := append(append([]shape(nil), edgeShapes...), transformerShapes...)
	threadCounts := []int{1, 3} // serial, and an uneven split
	if raceEnabled || testing.Short() {
		shapes = []shape{{1, 1, 1}, {7, 17, 5}, {17, 33, 29}, {15, 40, 300}}
		threadCounts = []int{1, 2}
	}
	// Every kernel this CPU runs, at several thread counts, on the same
	// cases: the Reference result is computed once per case.
	var engines, portable []*Engine
	for _, kern := range availableKernels() {
		for _, threads := range threadCounts {
			e := newEngine(threads, kern)
			engines = append(engines, e)
			if kern.name == "generic-bf16" || len(kernelsFor(kern.precision)) > 1 && strings.HasPrefix(kern.name, "generic") {
				portable = append(portable, e) // slow: the big shapes are left to assembly
			}
		}
	}
	defer func() {
		for _, e := range engines {
			e.Close()
		}
	}()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, s := range shapes {
		t.Run(fmt.Sprintf("%dx%dx%d", s.m, s.n, s.k), func(t *testing.T) {
			vs := variants
			if s.m*s.n*s.k > 1<<24 {
				vs = vs[:2] // big shapes: overwrite and accumulate only
			}
			for _, tr := range transCases {
				for vi, v := range vs {
					pad := 0
					if vi%2 == 1 {
						pad = 3 // leading dimensions wider than the rows
					}
					tc := newCase(rng, s, tr.transA, tr.transB, v, pad)
					for _, e := range engines {
						if s.m*s.n*s.k <= 1<<20 || !slices.Contains(portable, e) {
							tc.check(t, e)
						}
					}
				}
			}
		})
	}
}

// TestKernelsAvailable reports which micro-kernels were covered on this CPU,
// so a run on a machine without AVX-512 cannot pass silently for it.
func TestKernelsAvailable(t *testing.T) {
	var names []string
	for _, k := range availableKernels() {
		names = append(names, k.name)
	}
	t.Logf("kernels tested on this CPU: %v (best: %s)", names, New(1).Kernel())
	for _, want := range []string{"generic", "generic-bf16"} {
		if !slices.Contains(names, want) {
			t.Fatalf("%s kernel missing from %v", want, names)
		}
	}
}

func TestMicroKernelDirect(t *testing.T) {
	// Each float32 kernel against a plain loop on one tile, for several
	// depths around the ×4 unroll, with a C stride wider than NR, starting
	// from 0 and from C.
	for _, kern := range kernelsFor(FP32) {
		for _, k := range []int{1, 2, 3, 4, 5, 8, 13} {
			for _, load := range []int{0, 1} {
				rng := rand.New(rand.NewPCG(uint64(k), 7))
				mr, nr, ldc := kern.mr, kern.nr, kern.nr+5
				a := randMatrix(rng, k, mr, mr)
				b := randMatrix(rng, k, nr, nr)
				c := randMatrix(rng, mr, nr, ldc)
				want := append([]float32(nil), c...)
				for i := 0; i < mr; i++ {
					for j := 0; j < nr; j++ {
						var s float64
						if load != 0 {
							s = float64(c[i*ldc+j])
						}
						for p := 0; p < k; p++ {
							s += float64(a[p*mr+i]) * float64(b[p*nr+j])
						}
						want[i*ldc+j] = float32(1.5 * s)
					}
				}
				kern.full(k, &a[0], &b[0], &c[0], ldc, load, 1.5)
				for x := range c {
					if d := math.Abs(float64(c[x] - want[x])); d > 1e-4*(1+math.Abs(float64(want[x]))) {
						t.Fatalf("%s k=%d load=%d: c[%d]=%g want %g", kern.name, k, load, x, c[x], want[x])
					}
				}
			}
		}
	}
}

func TestZeroSizes(t *testing.T) {
	e := New(2)
	defer e.Close()
	c := []float32{float32(math.NaN()), 2, 3, 4}
	e.Sgemm(false, false, 2, 2, 0, 1, nil, 1, nil, 2, 0, c, 2) // k = 0, beta = 0: C = 0
	for i, v := range c {
		if v != 0 {
			t.Fatalf("k=0 beta=0: c[%d]=%g, want 0", i, v)
		}
	}
	c = []float32{1, 2, 3, 4}
	e.Sgemm(false, false, 2, 2, 0, 1, nil, 1, nil, 2, 2, c, 2)
	if c[3] != 8 {
		t.Fatalf("k=0 beta=2: c[3]=%g, want 8", c[3])
	}
	e.Sgemm(false, false, 0, 5, 5, 1, nil, 5, make([]float32, 25), 5, 0, nil, 5) // m = 0: no-op
}

func TestPanicsOnShortSlice(t *testing.T) {
	e := New(1)
	defer e.Close()
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for a short C")
		}
	}()
	e.Sgemm(false, false, 4, 4, 4, 1, make([]float32, 16), 4, make([]float32, 16), 4, 0, make([]float32, 15), 4)
}

// TestConcurrentUse runs Sgemm from several goroutines on one Engine; run
// under -race it checks that calls are serialized.
func TestConcurrentUse(t *testing.T) {
	e := New(2)
	defer e.Close()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			for i := 0; i < 3; i++ {
				newCase(rng, shape{37, 45, 70}, g%2 == 1, i%2 == 1, variant{1, 0}, 0).check(t, e)
			}
		}()
	}
	wg.Wait()
}

func TestNoAllocsSteadyState(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	e := New(2)
	defer e.Close()
	m, n, k := 200, 300, 100
	a, b, c := make([]float32, m*k), make([]float32, k*n), make([]float32, m*n)
	allocs := testing.AllocsPerRun(5, func() {
		e.Sgemm(false, true, m, n, k, 1, a, k, b, k, 0, c, n)
	})
	if allocs != 0 {
		t.Fatalf("Sgemm allocated %.1f times per call, want 0", allocs)
	}
}

func TestMeasurePeak(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("timing test")
	}
	for _, kern := range availableKernels() {
		g := measurePeak(kern, 1, 20*time.Millisecond)
		t.Logf("%s FMA peak, 1 thread: %.1f GFLOP/s", kern.name, g)
		if kern.peak != nil && g <= 0 {
			t.Fatalf("%s: peak %g GFLOP/s", kern.name, g)
		}
	}
}

func TestChooseBlocks(t *testing.T) {
	zen3 := cacheSizes{l1: 32 << 10, l2: 512 << 10, l3: 32 << 20}
	b := chooseBlocks(zen3, kernel{mr: 6, nr: 16}, 2)
	if b != (blockSizes{mc: 126, kc: 256, nc: 4096, cmax: 2 << 20}) {
		t.Fatalf("Zen 3 AVX2 blocks = %+v", b)
	}
	zen5 := cacheSizes{l1: 48 << 10, l2: 1 << 20, l3: 32 << 20}
	b = chooseBlocks(zen5, kernel{mr: 14, nr: 32}, 2)
	if b != (blockSizes{mc: 336, kc: 192, nc: 4096, cmax: 2 << 20}) {
		t.Fatalf("Zen 5 AVX-512 blocks = %+v", b)
	}
}

// TestPartition checks the thread grid: M is split for forward shapes (tall
// C), N for weight gradients (short, wide C with a long K), and small
// problems stay on one thread.
func TestPartition(t *testing.T) {
	e := newEngineBlocks(2, kernel{name: "test", mr: 6, nr: 16, full: kernelGeneric}, blockSizes{mc: 126, kc: 256, nc: 4096})
	defer e.Close()
	for _, tc := range []struct {
		m, n, k        int
		wantM, wantN   int
		wantParts      int
		transA, transB bool
	}{
		{4096, 768, 3072, 2052, 768, 2, false, false}, // 342 tiles of MR=6
		{768, 3072, 4096, 768, 1536, 2, true, false},
		{16, 16, 16, 16, 16, 1, false, false},
		{5, 4096, 512, 5, 2048, 2, false, true},
	} {
		ar, ac := stored(tc.m, tc.k, tc.transA)
		br, bc := stored(tc.k, tc.n, tc.transB)
		j := job{transA: tc.transA, transB: tc.transB, m: tc.m, n: tc.n, k: tc.k, alpha: 1, pre: 1, plan: &e.def,
			a: make([]float32, ar*ac), lda: ac, b: make([]float32, br*bc), ldb: bc, c: make([]float32, tc.m*tc.n), ldc: tc.n}
		p := e.partition(&j)
		if p != tc.wantParts || e.parts[0].m != tc.wantM || e.parts[0].n != tc.wantN {
			t.Errorf("%dx%dx%d: %d parts, first %dx%d; want %d parts, first %dx%d",
				tc.m, tc.n, tc.k, p, e.parts[0].m, e.parts[0].n, tc.wantParts, tc.wantM, tc.wantN)
		}
	}
}

func TestSelfCheck(t *testing.T) {
	for _, kern := range append(availableKernels(), genericAMXKernel) {
		if err := selfCheck(kern); err != nil {
			t.Error(err)
		}
	}
	wrong := kernel{name: "wrong", mr: 6, nr: 16, full: kernelGeneric} // a 4×4 kernel posing as 6×16
	if selfCheck(wrong) == nil {
		t.Error("self-check passed a wrong kernel")
	}
}

// TestSmallBlocks runs every kernel with tiny cache blocks so a small case
// crosses several NC, KC and MC blocks, with cmax low enough that run lowers
// NC to keep C's block small (ncFor) and the K slices accumulate onto it.
func TestSmallBlocks(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, kern := range availableKernels() {
		for _, cmax := range []int{0, 40 * 64} {
			e := newEngineBlocks(2, kern, blockSizes{mc: 2 * kern.mr, kc: 16, nc: 8 * kern.nr, cmax: cmax})
			if nc := ncFor(e.def.blocks, kern, 100, 70, 16); (cmax != 0) != (nc < 8*kern.nr) {
				t.Fatalf("%s cmax=%d: ncFor = %d", kern.name, cmax, nc)
			}
			for _, tr := range transCases {
				for _, v := range variants[:3] {
					newCase(rng, shape{100, 9*kern.nr + 5, 70}, tr.transA, tr.transB, v, 1).check(t, e)
				}
			}
			e.Close()
		}
	}
}

// TestOperandChoiceIgnoresThreads checks that the auto operand mode (read
// A or B in place, or pack it) is decided on the whole call: a call whose
// columns reuse A too often for in place stays packed when two threads
// split its columns into shares that, alone, would qualify.
func TestOperandChoiceIgnoresThreads(t *testing.T) {
	kern := genericKernel
	kern.autoInPlace = 384
	for _, tc := range []struct {
		transA, transB bool
		m, n, k        int
		wantA, wantB   bool
	}{
		{true, false, 512, 512, 2048, false, false}, // small's tn d×d: split into 256-column parts
		{false, false, 2048, 128, 512, true, false}, // tiny-like: N ≤ 384 either way
		{false, true, 256, 2048, 64, false, false},  // B transposed: never in place
		{false, false, 256, 2048, 64, false, true},  // M ≤ 384: B in place
	} {
		for _, threads := range []int{1, 2} {
			e := newEngineBlocks(threads, kern, blockSizes{mc: 64, kc: 64, nc: 4096})
			ar, ac := stored(tc.m, tc.k, tc.transA)
			br, bc := stored(tc.k, tc.n, tc.transB)
			e.cur = e.def
			j := job{transA: tc.transA, transB: tc.transB, m: tc.m, n: tc.n, k: tc.k, alpha: 1, pre: 1, plan: &e.cur,
				a: make([]float32, ar*ac), lda: ac, b: make([]float32, br*bc), ldb: bc, c: make([]float32, tc.m*tc.n), ldc: tc.n}
			j.plan.resolveOperands(&j)
			parts := e.partition(&j)
			for i := range parts {
				inA, inB := e.parts[i].plan.inPlace(&e.parts[i])
				if inA != tc.wantA || inB != tc.wantB {
					t.Errorf("%v, %d threads, part %d (%dx%d): in place A %v B %v, want %v %v",
						Shape{tc.transA, tc.transB, tc.m, tc.n, tc.k}, threads, i, e.parts[i].m, e.parts[i].n, inA, inB, tc.wantA, tc.wantB)
				}
			}
			e.Close()
		}
	}
}
