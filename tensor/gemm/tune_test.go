package gemm

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// runPlan computes one call under plan p on a fresh engine of the kernel's
// precision family.
func runPlan(t *testing.T, threads int, ks []kernel, p plan, tc *testCase) []float32 {
	t.Helper()
	e := newEngineKernels(threads, ks[0].precision, ks, readCacheSizes(), p.blocks)
	defer e.Close()
	s := Shape{tc.transA, tc.transB, tc.s.m, tc.s.n, tc.s.k}
	e.setPlan(s, p)
	got := append([]float32(nil), tc.c...)
	e.Sgemm(tc.transA, tc.transB, tc.s.m, tc.s.n, tc.s.k, tc.v.alpha, tc.a, tc.lda, tc.b, tc.ldb, tc.v.beta, got, tc.ldc)
	return got
}

// TestPlansNeverChangeResults: within a kernel family, every plan the tuner
// could pick — any kernel, MC, KC (so any number of K slices), NC and
// thread grid — gives the same bits as the derived plan, for every
// transpose and alpha/beta case. This is what lets tuning be on by default.
func TestPlansNeverChangeResults(t *testing.T) {
	shapes := []shape{{37, 45, 70}, {100, 9*32 + 5, 300}, {15, 33, 129}}
	if raceEnabled || testing.Short() {
		shapes = shapes[:1]
	}
	fams := map[string][]kernel{}
	for _, k := range availableKernels() {
		fams[k.family()] = append(fams[k.family()], k)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for fam, ks := range fams {
		cs := readCacheSizes()
		shapes, vs := shapes, variants
		if !slices.ContainsFunc(ks, func(k kernel) bool { return k.peak != nil }) {
			shapes, vs = shapes[:1], variants[:2] // pure Go only: slow
		}
		for _, s := range shapes {
			for _, tr := range transCases {
				for _, v := range vs {
					tc := newCase(rng, s, tr.transA, tr.transB, v, 1)
					ref := runPlan(t, 1, ks, plan{kern: ks[0], blocks: chooseBlocks(cs, ks[0], 1), inA: operandPacked, inB: operandPacked}, tc)
					for trial := range 8 {
						k := ks[rng.IntN(len(ks))]
						p := plan{kern: k, blocks: blockSizes{
							mc: k.mr * (1 + rng.IntN(8)), kc: 4 * (1 + rng.IntN(40)), nc: k.nr * (1 + rng.IntN(12)),
							cmax: []int{0, 2000}[rng.IntN(2)], cblock: []int{0, 600, 40000}[rng.IntN(3)]}}
						modes := []operand{operandAuto, operandPacked, operandInPlace}
						p.inA, p.inB = modes[rng.IntN(3)], modes[rng.IntN(3)]
						threads := 1 + rng.IntN(3)
						if rng.IntN(2) == 0 {
							p.tm = 1 + rng.IntN(threads)
							p.tn = threads / p.tm
						}
						got := runPlan(t, threads, ks, p, tc)
						for x := range ref {
							if math.Float32bits(got[x]) != math.Float32bits(ref[x]) {
								t.Fatalf("%s %v %s alpha=%g beta=%g trial %d: %s MC=%d KC=%d NC=%d grid %dx%d threads %d A %v B %v: C[%d] = %g, derived plan gives %g",
									fam, s, tr.name, v.alpha, v.beta, trial, k.name, p.blocks.mc, p.blocks.kc, p.blocks.nc, p.tm, p.tn, threads, p.inA, p.inB, x, got[x], ref[x])
							}
						}
					}
				}
			}
		}
		t.Logf("%s: kernels %d, every plan bit-identical", fam, len(ks))
	}
}

func tuneCase(t *testing.T, o TuneOptions) (*Engine, Shape, []float32) {
	t.Helper()
	e, err := NewWith(Options{Threads: 2, Tune: &o})
	if err != nil {
		t.Fatal(err)
	}
	s := Shape{false, true, 96, 200, 160}
	a, b, c := make([]float32, s.M*s.K), make([]float32, s.N*s.K), make([]float32, s.M*s.N)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range a {
		a[i] = float32(rng.NormFloat64())
	}
	for i := range b {
		b[i] = float32(rng.NormFloat64())
	}
	e.Sgemm(s.TransA, s.TransB, s.M, s.N, s.K, 1, a, s.K, b, s.K, 0, c, s.N)
	return e, s, c
}

// TestTuneCache: the first engine searches and writes the plan under the
// cache directory; a second engine reads it without searching; both give
// the derived plan's bits.
func TestTuneCache(t *testing.T) {
	dir := t.TempDir()
	o := TuneOptions{CacheDir: dir, PerShape: 100 * time.Millisecond, MinFLOPs: 1}
	e1, s, c1 := tuneCase(t, o)
	defer e1.Close()
	if p := e1.PlanFor(s); !p.Tuned {
		t.Fatalf("first engine: plan not tuned (%s)", e1.TuneStatus())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "tune-*.json"))
	if len(files) != 1 {
		t.Fatalf("cache files %v, want one", files)
	}
	b, _ := os.ReadFile(files[0])
	if !strings.Contains(string(b), `"fp32 nt 96x200x160"`) || !strings.Contains(string(b), `"loom"`) {
		t.Fatalf("cache file lacks the shape or the key:\n%s", b)
	}
	e2, _, c2 := tuneCase(t, o)
	defer e2.Close()
	if p := e2.PlanFor(s); !p.Tuned || e2.tuner.spent != 0 {
		t.Fatalf("second engine: tuned=%v, searched %v; want the cached plan, no search", p.Tuned, e2.tuner.spent)
	}
	if e1.PlanFor(s) != e2.PlanFor(s) {
		t.Fatalf("cached plan %+v differs from the searched %+v", e2.PlanFor(s), e1.PlanFor(s))
	}
	e3, _, c3 := tuneCase(t, TuneOptions{CacheDir: t.TempDir(), MinFLOPs: 1e18}) // too small to tune: derived
	defer e3.Close()
	for i := range c1 {
		if c1[i] != c3[i] || c2[i] != c3[i] {
			t.Fatalf("C[%d]: tuned %g / cached %g / derived %g differ", i, c1[i], c2[i], c3[i])
		}
	}
	// A damaged file is ignored (and replaced by the next search).
	if err := os.WriteFile(files[0], []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	e4, _, _ := tuneCase(t, o)
	defer e4.Close()
	if p := e4.PlanFor(s); !p.Tuned || e4.tuner.spent == 0 {
		t.Fatalf("damaged cache: tuned=%v searched %v; want a fresh search", p.Tuned, e4.tuner.spent)
	}
}

// TestTuneUnwritableFallsBack: when the cache directory cannot be created
// or written, tuning is off and the derived blocking is used.
func TestTuneUnwritableFallsBack(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e, s, _ := tuneCase(t, TuneOptions{CacheDir: filepath.Join(file, "sub"), MinFLOPs: 1})
	defer e.Close()
	if p := e.PlanFor(s); p.Tuned {
		t.Fatalf("plan tuned with an unwritable cache")
	}
	if st := e.TuneStatus(); !strings.Contains(st, "not writable") || !strings.Contains(st, "derived") {
		t.Fatalf("status %q does not say why tuning is off", st)
	}
}

// TestTuneBudget: once the budget is spent, further shapes keep the
// derived plan.
func TestTuneBudget(t *testing.T) {
	e, err := NewWith(Options{Threads: 1, Tune: &TuneOptions{CacheDir: t.TempDir(), Budget: time.Nanosecond, MinFLOPs: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ss := []Shape{{false, false, 64, 64, 64}, {false, false, 64, 96, 64}}
	plans, err := e.Tune(ss)
	if err != nil {
		t.Fatal(err)
	}
	if !plans[0].Tuned || plans[1].Tuned {
		t.Fatalf("plans tuned %v, %v; want the first only (the budget is spent by then)", plans[0].Tuned, plans[1].Tuned)
	}
	if _, err := New(1).Tune(ss); err == nil {
		t.Fatal("Tune on an engine without tuning: no error")
	}
}

func TestBF16Conversion(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80}, {-2, 0xc000}, {float32(math.Inf(1)), 0x7f80},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie: to even (down)
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie: to even (up)
		{math.Float32frombits(0x3f808001), 0x3f81}, // above the tie
		{math.Float32frombits(0x00400000), 0x0000}, // subnormal: zero
		{math.Float32frombits(0x80000001), 0x8000}, // negative subnormal: -0
		{math.Float32frombits(0x7f7fffff), 0x7f80}, // rounds up to +Inf
		{math.Float32frombits(0x7f800001), 0x7fc0}, // signalling NaN: quiet
	} {
		if got := ToBF16(c.in); got != c.want {
			t.Errorf("ToBF16(%g = %#08x) = %#04x, want %#04x", c.in, math.Float32bits(c.in), got, c.want)
		}
	}
	if got := FromBF16(0x4049); got != 3.140625 {
		t.Errorf("FromBF16(0x4049) = %g", got)
	}
}

// TestBF16EnginesAgree: the bf16 engine New picks for this CPU and every
// other bf16 kernel of its family give the same bits; all bf16 kernels are
// within bf16's bound of the float64 reference (TestSgemmMatchesReference
// covers them too, kernel by kernel).
func TestBF16EnginesAgree(t *testing.T) {
	e, err := NewWith(Options{Threads: 2, Precision: BF16})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	rng := rand.New(rand.NewPCG(9, 9))
	tc := newCase(rng, shape{70, 90, 130}, false, true, variant{1, 0}, 2)
	tc.check(t, e)
	fam := e.def.kern.family()
	ks := familyOf(kernelsFor(BF16), fam)
	ref := runPlan(t, 1, ks, e.def, tc)
	for _, k := range ks {
		got := runPlan(t, 2, ks, plan{kern: k, blocks: chooseBlocks(readCacheSizes(), k, 2)}, tc)
		for x := range ref {
			if math.Float32bits(got[x]) != math.Float32bits(ref[x]) {
				t.Fatalf("%s: C[%d] = %g, %s gives %g", k.name, x, got[x], e.def.kern.name, ref[x])
			}
		}
	}
	t.Logf("bf16 on this CPU: %s family %v (%d kernels agree)", e.Kernel(), fam, len(ks))
}

// TestTunedNoAllocs: with tuning on, calls after a shape's first (tuned or
// not) allocate nothing.
func TestTunedNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	e, err := NewWith(Options{Threads: 2, Tune: &TuneOptions{CacheDir: t.TempDir(), PerShape: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, s := range []Shape{{false, true, 40, 50, 60}, {false, true, 256, 256, 256}} { // below and above MinFLOPs
		a, b, c := make([]float32, s.M*s.K), make([]float32, s.N*s.K), make([]float32, s.M*s.N)
		e.Sgemm(false, true, s.M, s.N, s.K, 1, a, s.K, b, s.K, 0, c, s.N)
		if n := testing.AllocsPerRun(5, func() { e.Sgemm(false, true, s.M, s.N, s.K, 1, a, s.K, b, s.K, 0, c, s.N) }); n != 0 {
			t.Errorf("%v: %.1f allocations per call after the first", s, n)
		}
	}
}

// TestPickVerified: verify keeps the derived plan unless a candidate wins
// every round and by 2% in the median (a noisy candidate that is faster
// at best, or in most rounds, is not kept).
func TestPickVerified(t *testing.T) {
	for _, c := range []struct {
		name   string
		ratios [][]float64
		want   int
	}{
		{"clear win", [][]float64{nil, {0.90, 0.92, 0.91, 0.93, 0.90}}, 1},
		{"best round only", [][]float64{nil, {0.80, 1.05, 1.10, 1.02, 0.99}}, 0},
		{"loses one round", [][]float64{nil, {0.90, 0.91, 0.92, 1.01, 0.90}}, 0},
		{"under 2%", [][]float64{nil, {0.99, 0.985, 0.99, 0.97, 0.99}}, 0},
		{"lowest median of two", [][]float64{nil, {0.95, 0.96, 0.95, 0.97, 0.96}, {0.90, 0.91, 0.93, 0.92, 0.90}}, 2},
		{"no candidates", [][]float64{nil}, 0},
	} {
		if got := pickVerified(c.ratios); got != c.want {
			t.Errorf("%s: pickVerified = %d, want %d", c.name, got, c.want)
		}
	}
}
