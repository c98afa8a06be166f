// Package gemm owns Loom's matrix multiply: a BLIS-style packed SGEMM with
// hand-written AVX-512, AVX2+FMA and AVX512-BF16 micro-kernels, pure-Go
// fallbacks, a bounded autotuner with an on-disk plan cache, bf16
// precision, and the float64 reference it is tested against.
//
// All matrices are row-major. Sgemm computes C = alpha·op(A)·op(B) + beta·C
// where op(X) = Xᵀ when the matching trans flag is set; A is m×k and B is
// k×n after op. Transposes are never materialized: packing reads the stored
// layout directly.
//
// Design (BLIS): for each NC-wide column block of B and KC-deep slice, B is
// packed into NR-column micro-panels; for each MC-row block of A, A is
// packed into MR-row micro-panels; a register-tiled micro-kernel then
// computes every MR×NR tile of C with its accumulators in registers. The
// accumulators start from zero or from C, so a later K slice continues the
// FMA chain of the one before, and alpha is applied by the last slice:
// every element is one chain over k in order, whatever the blocking (see
// Engine.Sgemm and docs/kernels.md). Edge tiles are zero-padded when packed
// and computed on a scratch tile whose valid part is copied to C.
//
//	kernel          tile   arithmetic                       selected when
//	avx512          14×32  fp32 FMA                         AVX512F (+VL)
//	avx2            6×16   fp32 FMA                         AVX2 and FMA
//	generic         4×4    fp32, pure Go                    otherwise, or -tags purego
//	amx             32×32  TDPBF16PS on bf16 tile rows      bf16, AMX-BF16 and Linux's tile state
//	avx512bf16      14×32  VDPBF16PS on bf16 pairs          bf16, AVX512-BF16 at ≥1.25× the FMA rate
//	avx512-bf16fma  14×32  fp32 FMA on bf16-rounded panels  bf16 otherwise, AVX-512
//	avx2-bf16fma    6×16   fp32 FMA on bf16-rounded panels  bf16 otherwise, AVX2
//	generic-bf16    4×4    VDPBF16PS's arithmetic, pure Go  bf16 without assembly
//
// Cache blocks come from cpu0's sysfs cache sizes (chooseBlocks): on a Zen 3
// core (32 KiB L1d, 512 KiB L2) the AVX2 kernel runs MC=126, KC=256,
// NC=4096; on Zen 5 (48 KiB, 1 MiB) the AVX-512 kernel runs MC=336, KC=192.
// With Options.Tune each large shape gets its own plan (tune.go).
//
// Threads: New starts threads-1 helper goroutines (a par.Pool, or the
// pool of Options.Pool shared with tensor/fast); each call splits C into
// a grid of at most `threads` blocks (rows in multiples of MR, columns in
// multiples of NR) chosen to minimize packing per worker (or the plan's
// grid), and each worker runs the loop nest above on its block with its own
// pack buffers, so workers never synchronize inside a call. Problems under
// ~4 MFLOP per thread use fewer threads. Steady-state calls do not
// allocate.
package gemm

import (
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/loomtrain/loom/tensor/internal/par"
)

// Engine multiplies matrices on a fixed pool of worker goroutines created by
// New. It is safe for concurrent use: calls to Sgemm on one Engine are
// serialized (each worker owns its pack buffers); use one Engine per
// goroutine to run multiplications in parallel.
type Engine struct {
	threads   int
	precision Precision
	kernels   []kernel // what this CPU and build run for the precision, best first
	def       plan     // the derived plan: best kernel, blocks from the cache sizes
	caches    cacheSizes

	mu      sync.Mutex // serializes Sgemm: the workers' buffers are shared state
	cur     plan       // the current call's plan (the jobs point at it)
	plans   map[Shape]plan
	tuner   *tuner    // nil when tuning is off
	workers []*worker // pack buffers of part i of a call (whichever thread runs it)
	pool    *par.Pool
	ownPool bool     // created by the engine, closed by Close
	parts   []job    // per-call partition, reused
	run     partTask // runs e.parts[i] on e.workers[i]
	closed  bool
	// timing makes run record each part's thread CPU time in partCPU
	// (the tuner's clock, timeJob).
	timing  bool
	partCPU []time.Duration
}

// partTask runs the parts of a call on the pool.
type partTask struct{ e *Engine }

func (t partTask) Run(_, i int) {
	e := t.e
	if !e.timing {
		e.workers[i].run(&e.parts[i])
		return
	}
	c0, ok0 := threadCPU()
	e.workers[i].run(&e.parts[i])
	c1, ok1 := threadCPU()
	e.partCPU[i] = -1
	if ok0 && ok1 {
		e.partCPU[i] = c1 - c0
	}
}

// plan is how one call is computed: the micro-kernel, the cache blocks and
// the thread grid (tm×tn blocks of C; 0 picks the grid by packing cost).
// No choice here changes a result: every kernel of a precision does the
// same arithmetic per element and K slices continue each other's sums.
type plan struct {
	kern     kernel
	blocks   blockSizes
	tm, tn   int
	maxParts int // ≤ 0: the engine's threads
	// inA and inB say whether the micro-kernel reads A or B in place
	// (kernel.strided) instead of from packed panels: operand auto
	// decides per call (inPlace), the others fix it.
	inA, inB operand
}

// operand is how the micro-kernel reads one input: packed into panels,
// or in place through the strided kernel (which B allows only when it is
// not transposed: its rows must hold NR contiguous columns).
type operand int8

const (
	operandAuto    operand = iota // chosen per call by inPlace
	operandPacked                 // always packed
	operandInPlace                // in place where the kernel and layout allow
)

// String is "auto", "packed" or "in-place" (the Plan and cache spelling).
func (o operand) String() string {
	switch o {
	case operandPacked:
		return "packed"
	case operandInPlace:
		return "in-place"
	}
	return "auto"
}

func parseOperandMode(s string) (operand, bool) {
	switch s {
	case "", "auto":
		return operandAuto, true
	case "packed":
		return operandPacked, true
	case "in-place":
		return operandInPlace, true
	}
	return 0, false
}

// job is one worker's share of a call: a rectangular block of C.
type job struct {
	transA, transB bool
	m, n, k        int
	alpha          float32 // applied by the last K slice
	pre            float32 // C is first scaled by pre (1: untouched)
	load           bool    // the first K slice continues from C
	a              []float32
	lda            int
	b              []float32
	ldb            int
	c              []float32
	ldc            int
	plan           *plan
}

// worker owns the packing buffers for one thread.
type worker struct {
	apack []float32 // MC×KC, rows rounded up to MR (bf16 pairs use half)
	bpack []float32 // KC×NC, columns rounded up to NR
	edge  []float32 // one MR×NR tile for partial tiles
	bfull []float32 // runKInner: every K slice of an NC block of B, packed
}

// Options configure an Engine.
type Options struct {
	// Threads is the number of threads (≤ 0: runtime.NumCPU()).
	Threads int
	// Precision is what the multiply's inputs are rounded to: FP32 (none)
	// or BF16 (A and B rounded to bfloat16 while packed, products
	// accumulated in float32).
	Precision Precision
	// Tune, when non-nil, tunes the blocking of each large shape on its
	// first call, bounded in time, and caches the result on disk (see
	// TuneOptions). nil uses the blocking derived from the cache sizes.
	Tune *TuneOptions
	// Pool, when non-nil, runs the engine's parallel parts on threads
	// shared with other kernels (tensor/fast); Threads is then the pool's.
	// The engine must not be called while the pool runs another op. nil:
	// the engine starts a pool of its own, stopped by Close.
	Pool *par.Pool
}

// New returns an Engine with the given number of threads (≤ 0 means
// runtime.NumCPU()), the fastest float32 micro-kernel this CPU supports
// and cache blocks derived from its cache sizes. It panics if that kernel
// fails a one-tile self-check (see selfCheck).
func New(threads int) *Engine {
	e, err := NewWith(Options{Threads: threads})
	if err != nil {
		panic(err)
	}
	return e
}

// NewWith returns an Engine configured by o. It fails if a micro-kernel
// fails its self-check or o is invalid.
func NewWith(o Options) (*Engine, error) {
	ks := kernelsFor(o.Precision)
	if o.Precision == BF16 {
		ks = bf16Kernels()
	}
	if len(ks) == 0 {
		return nil, fmt.Errorf("gemm: precision %v: no kernel", o.Precision)
	}
	if err := selfCheck(ks[0]); err != nil {
		return nil, err
	}
	threads := o.Threads
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	if o.Pool != nil {
		threads = o.Pool.Threads()
	}
	cs := readCacheSizes()
	e := newEngineKernelsPool(threads, o.Precision, ks, cs, chooseBlocks(cs, ks[0], threads), o.Pool)
	if o.Tune != nil {
		t, err := newTuner(e, *o.Tune)
		if err != nil {
			e.Close()
			return nil, err
		}
		e.tuner = t
	}
	return e, nil
}

// newEngine is New with an explicit micro-kernel; tests use it to cover every
// kernel the CPU can run.
func newEngine(threads int, kern kernel) *Engine {
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	if err := selfCheck(kern); err != nil {
		panic(err)
	}
	cs := readCacheSizes()
	return newEngineKernels(threads, kern.precision, []kernel{kern}, cs, chooseBlocks(cs, kern, threads))
}

// newEngineBlocks is newEngine with explicit cache blocks, for tuning.
func newEngineBlocks(threads int, kern kernel, blocks blockSizes) *Engine {
	return newEngineKernels(threads, kern.precision, []kernel{kern}, readCacheSizes(), blocks)
}

func newEngineKernels(threads int, prec Precision, ks []kernel, cs cacheSizes, blocks blockSizes) *Engine {
	return newEngineKernelsPool(threads, prec, ks, cs, blocks, nil)
}

func newEngineKernelsPool(threads int, prec Precision, ks []kernel, cs cacheSizes, blocks blockSizes, pool *par.Pool) *Engine {
	e := &Engine{threads: threads, precision: prec, kernels: ks, caches: cs,
		def: plan{kern: ks[0], blocks: blocks}, plans: map[Shape]plan{}, pool: pool}
	if pool == nil {
		e.pool, e.ownPool = par.New(threads), true
	}
	e.workers = make([]*worker, threads)
	for i := range e.workers {
		e.workers[i] = &worker{}
		e.workers[i].grow(&e.def)
	}
	e.parts = make([]job, threads)
	e.partCPU = make([]time.Duration, threads)
	e.run = partTask{e}
	return e
}

// grow makes the worker's buffers large enough for p.
func (w *worker) grow(p *plan) {
	k, b := p.kern, p.blocks
	depth := max(roundUp(b.kc, 2), k.depth(b.kc)) // floats, or words of bf16 pairs (padded for AMX)
	if n := roundUp(b.mc, k.mr) * depth; len(w.apack) < n {
		w.apack = make([]float32, n)
	}
	if n := depth * roundUp(b.nc, k.nr); len(w.bpack) < n {
		w.bpack = make([]float32, n)
	}
	if n := k.mr * k.nr; len(w.edge) < n {
		w.edge = make([]float32, n)
	}
}

// Close stops the worker goroutines. The Engine must not be used afterwards.
func (e *Engine) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.closed = true
	if e.ownPool {
		e.pool.Close()
	}
}

// Threads reports the number of threads Sgemm uses for large problems.
func (e *Engine) Threads() int { return e.threads }

// Precision reports the precision the engine multiplies in.
func (e *Engine) Precision() Precision { return e.precision }

// Kernel names the default micro-kernel: "avx512", "avx2", "generic"
// (fp32); "amx" (TDPBF16PS), "avx512bf16" (VDPBF16PS), "generic-bf16",
// "avx512-bf16fma" or "avx2-bf16fma" (bf16).
func (e *Engine) Kernel() string { return e.def.kern.name }

// Blocks reports the default cache blocking (for logs and benchmarks).
func (e *Engine) Blocks() (mr, nr, mc, kc, nc int) {
	return e.def.kern.mr, e.def.kern.nr, e.def.blocks.mc, e.def.blocks.kc, e.def.blocks.nc
}

// Shape is one multiplication's transposes and sizes (after op).
type Shape struct {
	TransA, TransB bool
	M, N, K        int
}

// String is "nt 4096x768x3072" (trans flags, then M×N×K).
func (s Shape) String() string {
	tr := []byte("nn")
	if s.TransA {
		tr[0] = 't'
	}
	if s.TransB {
		tr[1] = 't'
	}
	return fmt.Sprintf("%s %dx%dx%d", tr, s.M, s.N, s.K)
}

// Plan describes how an Engine computes one shape, for logs and benchmarks.
type Plan struct {
	Kernel     string `json:"kernel"`
	MR         int    `json:"mr"`
	NR         int    `json:"nr"`
	MC         int    `json:"mc"`
	KC         int    `json:"kc"`
	NC         int    `json:"nc"`
	GridM      int    `json:"grid_m"` // thread grid over C (0: chosen per call)
	GridN      int    `json:"grid_n"`
	MaxThreads int    `json:"max_threads"` // 0: all of the engine's
	// A and B: "packed", "in-place" (read by the strided micro-kernel
	// without packing) or "auto" (chosen per call from the shape).
	A     string `json:"a"`
	B     string `json:"b"`
	Tuned bool   `json:"tuned"` // from the tuner (or its cache), not derived
}

// PlanFor reports how the engine computes s now.
func (e *Engine) PlanFor(s Shape) Plan {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, tuned := e.plans[s]
	if !tuned {
		p = e.def
	}
	return p.public(tuned)
}

func (p *plan) public(tuned bool) Plan {
	return Plan{Kernel: p.kern.name, MR: p.kern.mr, NR: p.kern.nr, MC: p.blocks.mc, KC: p.blocks.kc, NC: p.blocks.nc,
		GridM: p.tm, GridN: p.tn, MaxThreads: max(p.maxParts, 0), A: p.inA.String(), B: p.inB.String(), Tuned: tuned}
}

// setPlan installs p for s (tuning and tests), growing the buffers.
func (e *Engine) setPlan(s Shape, p plan) {
	for _, w := range e.workers {
		w.grow(&p)
	}
	e.plans[s] = p
}

// Sgemm computes C = alpha·op(A)·op(B) + beta·C for row-major matrices,
// where op(A) is m×k, op(B) is k×n and C is m×n. lda, ldb and ldc are the
// row strides of A, B and C as stored (A is stored k×m when transA is set).
// With beta == 0, C is overwritten and its old contents (even NaN) are never
// read. It panics if a slice is too short for its shape and stride.
//
// Each element is one float32 FMA chain over k in order, starting from
// beta·C (from C itself when beta is 1, from 0 when beta is 0) and scaled
// by alpha at the end; when alpha ≠ 1 and beta ∉ {0}, the chain starts from
// (beta/alpha)·C. So the result depends only on the inputs and the
// precision, never on the blocking, the kernel or the thread count.
func (e *Engine) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkArgs(transA, transB, m, n, k, a, lda, b, ldb, c, ldc)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		panic("gemm: Sgemm on a closed Engine")
	}
	s := Shape{transA, transB, m, n, k}
	p, ok := e.plans[s]
	if !ok && e.tuner != nil && e.tuner.wants(s) {
		e.tuner.tune(s) // installs a plan (or remembers that it could not)
		p, ok = e.plans[s]
	}
	if !ok {
		p = e.def
	}
	e.cur = p
	whole := job{transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, pre: 1,
		a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc, plan: &e.cur}
	switch {
	case beta == 0:
	case alpha == 1:
		whole.load, whole.pre = true, beta
	default:
		whole.load, whole.pre = true, float32(float64(beta)/float64(alpha))
	}
	e.runJob(&whole)
}

// runJob splits j over the workers, waits for them and returns the
// number of parts.
func (e *Engine) runJob(j *job) int {
	j.plan.resolveOperands(j)
	parts := e.partition(j)
	if parts == 1 {
		e.run.Run(0, 0)
		return 1
	}
	e.pool.Run(e.run, parts)
	return parts
}

// minFlopsPerThread keeps small problems on fewer threads: handing a job to
// another goroutine costs a few microseconds, about 0.5 MFLOP of work.
const minFlopsPerThread = 4 << 20

// partition splits the call into e.parts[:p] over a tm×tn grid of C blocks
// (tm·tn = p ≤ threads): the plan's grid when it has one that fits, else
// the one that minimizes each worker's packing traffic. Row splits are
// multiples of MR and column splits of NR so only the true matrix edge has
// partial tiles.
func (e *Engine) partition(j *job) int {
	pl := j.plan
	flops := 2 * float64(j.m) * float64(j.n) * float64(j.k)
	p := e.threads
	if pl.maxParts > 0 {
		p = min(p, pl.maxParts)
	}
	if lim := int(flops / minFlopsPerThread); lim < p {
		p = max(lim, 1)
	}
	mr, nr := pl.kern.mr, pl.kern.nr
	mTiles, nTiles := ceilDiv(j.m, mr), ceilDiv(j.n, nr)
	bestTm, bestTn, bestCost := 1, 1, -1.0
	if pl.tm > 0 && pl.tn > 0 && pl.tm*pl.tn <= p && pl.tm <= mTiles && pl.tn <= nTiles {
		bestTm, bestTn, bestCost = pl.tm, pl.tn, 0
	}
	for tm := 1; tm <= p && bestCost != 0; tm++ {
		if p%tm != 0 {
			continue
		}
		tn := p / tm
		if tm > mTiles || tn > nTiles {
			continue
		}
		mt := float64(ceilDiv(mTiles, tm) * mr)
		nt := float64(ceilDiv(nTiles, tn) * nr)
		// Per worker: B packed once per KC block, A once per NC block.
		ncBlocks := float64(ceilDiv(int(nt), pl.blocks.nc))
		cost := mt*float64(j.k)*ncBlocks + float64(j.k)*nt
		// Imbalance: the slowest worker gets the rounded-up share.
		cost += 2 * mt * nt * float64(j.k) / 64 // ≈ 64 FLOPs per packed element
		if bestCost < 0 || cost < bestCost {
			bestTm, bestTn, bestCost = tm, tn, cost
		}
	}
	if bestCost < 0 { // fewer tiles than threads: fall back to one worker
		bestTm, bestTn = 1, 1
	}
	i := 0
	mStep := ceilDiv(mTiles, bestTm) * mr
	nStep := ceilDiv(nTiles, bestTn) * nr
	for i0 := 0; i0 < j.m; i0 += mStep {
		for j0 := 0; j0 < j.n; j0 += nStep {
			part := *j
			part.m = min(mStep, j.m-i0)
			part.n = min(nStep, j.n-j0)
			if j.transA {
				part.a = j.a[i0:]
			} else {
				part.a = j.a[i0*j.lda:]
			}
			if j.transB {
				part.b = j.b[j0*j.ldb:]
			} else {
				part.b = j.b[j0:]
			}
			part.c = j.c[i0*j.ldc+j0:]
			e.parts[i] = part
			i++
		}
	}
	return i
}

// run computes one job serially with the BLIS loop nest: NC columns of B,
// KC-deep slices, MC rows of A, then NR×MR micro-tiles. The first K slice
// starts from C when the job loads it, every later one continues from the
// sums the previous slice stored, and only the last applies alpha.
func (w *worker) run(j *job) {
	kern, blocks := j.plan.kern, j.plan.blocks
	if j.pre != 1 {
		for i := 0; i < j.m; i++ {
			row := j.c[i*j.ldc : i*j.ldc+j.n]
			for x := range row {
				row[x] *= j.pre
			}
		}
	}
	// Equal blocks no larger than the cache blocks: 768 rows as 7×110
	// rather than 6×126 + 12 keeps the last block from paying a whole
	// B-panel sweep for two tiles, and K = 1376 as 6×232 avoids a short
	// final slice. KC stays a multiple of kern.kcStep (the ×4 unroll; for
	// AMX whole TDPBF16PS blocks), which never outgrows the pack buffers:
	// AMX panels are padded to 32 k values anyway.
	kc0 := roundUp(ceilDiv(j.k, ceilDiv(j.k, blocks.kc)), kern.kcStep())
	mc0 := roundUp(ceilDiv(j.m, ceilDiv(j.m, blocks.mc)), kern.mr)
	nc0 := roundUp(ceilDiv(j.n, ceilDiv(j.n, ncFor(blocks, kern, j.m, j.k, kc0))), kern.nr)
	if inA, inB := j.plan.inPlace(j); inA || inB {
		w.runInPlace(j, kc0, mc0, nc0, inA, inB)
		return
	}
	if kern.amx && blocks.cblock > 0 && j.k > kc0 && w.runKInner(j, kc0, mc0, nc0) {
		return
	}
	for jc := 0; jc < j.n; jc += nc0 {
		nc := min(nc0, j.n-jc)
		for pc := 0; pc < j.k; pc += kc0 {
			kc := min(kc0, j.k-pc)
			load := j.load || pc > 0
			alpha := float32(1)
			if pc+kc >= j.k {
				alpha = j.alpha
			}
			kern.packB(w.bpack, j.transB, j.b, j.ldb, pc, jc, kc, nc, kern.nr)
			for ic := 0; ic < j.m; ic += mc0 {
				mc := min(mc0, j.m-ic)
				kern.packA(w.apack, j.transA, j.a, j.lda, ic, pc, mc, kc, kern.mr)
				w.macro(&kern, w.bpack, mc, nc, kern.depth(kc), alpha, load, j.c[ic*j.ldc+jc:], j.ldc)
			}
		}
	}
}

// kInnerMinRows is the least MC runKInner runs with: it narrows NC until
// an MC×NC block of C of at least this many rows fits in cblock.
const kInnerMinRows = 256

// kInnerMaxWords caps runKInner's packed B (every K slice of an NC block:
// 16 MiB); a longer K runs its slices outermost instead.
const kInnerMaxWords = 1 << 22

// runKInner is run with the K slices innermost (blockSizes.cblock): per NC
// block, B is packed for every slice (into w.bfull), then each MC block
// of C takes its slices in order, so that block stays in L2 between them
// instead of the whole M×NC block going to L3 and back. NC is narrowed to
// at most cblock/kInnerMinRows columns and MC to what fits cblock. Every
// element still sums its K slices in order from the same slice bounds:
// the bits of run. It reports false, doing nothing, when that B would
// take more than kInnerMaxWords.
//
// Measured on a Sapphire-Rapids-class Xeon, one thread, the `small` bf16
// step (loom bench step, tuning off, three paired rounds): 960–999 ms
// with the slices outermost, 936–945 innermost.
func (w *worker) runKInner(j *job, kc0, mc0, nc0 int) bool {
	kern, blocks := j.plan.kern, j.plan.blocks
	mr, nr := kern.mr, kern.nr
	if maxNC := blocks.cblock / kInnerMinRows / nr * nr; nc0 > maxNC {
		nc0 = roundUp(ceilDiv(j.n, ceilDiv(j.n, max(maxNC, nr))), nr)
	}
	if fit := blocks.cblock / nc0 / mr * mr; mc0 > fit {
		mc0 = max(fit, mr)
		mc0 = roundUp(ceilDiv(j.m, ceilDiv(j.m, mc0)), mr)
	}
	slices := ceilDiv(j.k, kc0)
	sliceWords := kern.depth(kc0) * roundUp(nc0, nr)
	if n := slices * sliceWords; n > kInnerMaxWords {
		return false
	} else if len(w.bfull) < n {
		w.bfull = make([]float32, n)
	}
	for jc := 0; jc < j.n; jc += nc0 {
		nc := min(nc0, j.n-jc)
		for s := range slices {
			pc := s * kc0
			kern.packB(w.bfull[s*sliceWords:], j.transB, j.b, j.ldb, pc, jc, min(kc0, j.k-pc), nc, nr)
		}
		for ic := 0; ic < j.m; ic += mc0 {
			mc := min(mc0, j.m-ic)
			for s := range slices {
				pc := s * kc0
				kc := min(kc0, j.k-pc)
				alpha := float32(1)
				if pc+kc >= j.k {
					alpha = j.alpha
				}
				kern.packA(w.apack, j.transA, j.a, j.lda, ic, pc, mc, kc, mr)
				w.macro(&kern, w.bfull[s*sliceWords:], mc, nc, kern.depth(kc), alpha, j.load || pc > 0, j.c[ic*j.ldc+jc:], j.ldc)
			}
		}
	}
	return true
}

// inPlace resolves the plan's operand modes for job j: whether the
// micro-kernel reads A, and B, in place. Only float32 kernels have a
// strided form, and B qualifies only untransposed.
//
// Packing an operand is one pass over it that pays off through reuse: each
// packed element of A feeds N output columns, each of B M rows. Auto reads
// an operand in place when that reuse is at most the kernel's autoInPlace,
// where the pass costs more than the strided kernel's slower access saves.
// Measured on a Sapphire-Rapids-class Xeon, one thread, AVX-512: on
// operands hot in cache (`go test -bench Operands ./tensor/gemm`) the
// d = 128 shapes of `tiny` gain 5–25% in place (tn 128×128×2048: 103 →
// 130 GFLOP/s) and the d = 512 shapes of `small` lose up to 20%; but in a
// training step, where each GEMM reads operands another op just wrote,
// packing won every paired round even at `tiny` (step MFU 43–45% with
// auto at 384, 47–54% packed; `loom bench step`, tuning off), hence 0.
// AVX2 (LOOM_BENCH_KERNEL=avx2): in place lost 10–20% at every shape
// even hot (its 6×16 step has too few FMAs to hide the strided
// addressing), hence 0. Plans may still ask for in place explicitly.
//
// The auto choice is made once per call, on the whole call's shape
// (resolveOperands), before the call is split over threads: a worker's
// share of the columns reuses each element of A less than the call does,
// but deciding on the share would flip a call to in place only when
// threaded — tn 512×512×2048 at 2 threads split into two 256-column
// parts read its transposed A in place at 2 KiB strides and ran at 72
// GFLOP/s against 107 on one thread (Sapphire Rapids, `loom bench gemm`).
func (p *plan) inPlace(j *job) (inA, inB bool) {
	if p.kern.strided == nil {
		return false, false
	}
	reuse := p.kern.autoInPlace
	inA = p.inA == operandInPlace || p.inA == operandAuto && j.n <= reuse
	inB = !j.transB && (p.inB == operandInPlace || p.inB == operandAuto && j.m <= reuse)
	return inA, inB
}

// resolveOperands fixes the plan's auto operand modes for the call j (the
// whole call, before partition), so every part of it reads A and B the
// same way, whatever the thread count.
func (p *plan) resolveOperands(j *job) {
	inA, inB := p.inPlace(j)
	p.inA, p.inB = operandPacked, operandPacked
	if inA {
		p.inA = operandInPlace
	}
	if inB {
		p.inB = operandInPlace
	}
}

// runInPlace is run for plans that read A or B (or both) in place: the
// operand is not packed, except a partial edge panel (fewer than MR rows
// of A or NR columns of B), which is packed at the start of its pack
// buffer so the kernel never reads past the matrix.
func (w *worker) runInPlace(j *job, kc0, mc0, nc0 int, inA, inB bool) {
	kern := j.plan.kern
	mr, nr := kern.mr, kern.nr
	for jc := 0; jc < j.n; jc += nc0 {
		nc := min(nc0, j.n-jc)
		for pc := 0; pc < j.k; pc += kc0 {
			kc := min(kc0, j.k-pc)
			load := j.load || pc > 0
			alpha := float32(1)
			if pc+kc >= j.k {
				alpha = j.alpha
			}
			switch {
			case !inB:
				kern.packB(w.bpack, j.transB, j.b, j.ldb, pc, jc, kc, nc, nr)
			case nc%nr != 0:
				kern.packB(w.bpack, j.transB, j.b, j.ldb, pc, jc+nc/nr*nr, kc, nc%nr, nr)
			}
			for ic := 0; ic < j.m; ic += mc0 {
				mc := min(mc0, j.m-ic)
				switch {
				case !inA:
					kern.packA(w.apack, j.transA, j.a, j.lda, ic, pc, mc, kc, mr)
				case mc%mr != 0:
					kern.packA(w.apack, j.transA, j.a, j.lda, ic+mc/mr*mr, pc, mc%mr, kc, mr)
				}
				w.macroInPlace(j, ic, pc, jc, mc, nc, kc, inA, inB, alpha, load)
			}
		}
	}
}

// macroInPlace is macro with A and B panels from the pack buffers or in
// place, for the block C[ic:ic+mc, jc:jc+nc] and the K slice [pc, pc+kc).
func (w *worker) macroInPlace(j *job, ic, pc, jc, mc, nc, kc int, inA, inB bool, alpha float32, load bool) {
	kern := &j.plan.kern
	mr, nr := kern.mr, kern.nr
	ld := 0
	if load {
		ld = 1
	}
	ldc := j.ldc
	c := j.c[ic*ldc+jc:]
	// A(i, p) of the stored matrix, relative to (ic, pc).
	aRS, aCS, aOrg := j.lda, 1, ic*j.lda+pc
	if j.transA {
		aRS, aCS, aOrg = 1, j.lda, pc*j.lda+ic
	}
	for jr := 0; jr < nc; jr += nr {
		nrr := min(nr, nc-jr)
		bp, ldb := (*float32)(nil), nr
		switch {
		case !inB:
			bp = &w.bpack[jr*kc]
		case nrr == nr:
			bp, ldb = &j.b[pc*j.ldb+jc+jr], j.ldb
		default:
			bp = &w.bpack[0] // the packed edge panel
		}
		for ir := 0; ir < mc; ir += mr {
			mrr := min(mr, mc-ir)
			ap, rsa, csa := (*float32)(nil), 1, mr
			switch {
			case !inA:
				ap = &w.apack[ir*kc]
			case mrr == mr:
				ap, rsa, csa = &j.a[aOrg+ir*aRS], aRS, aCS
			default:
				ap = &w.apack[0]
			}
			if mrr == mr && nrr == nr {
				cp := c[ir*ldc+jr : ir*ldc+jr+(mr-1)*ldc+nr] // bounds check for the kernel
				kern.strided(kc, ap, rsa, csa, bp, ldb, &cp[0], ldc, ld, alpha)
				continue
			}
			edge := w.edge[:mr*nr]
			if load {
				for i := 0; i < mrr; i++ {
					copy(edge[i*nr:i*nr+nrr], c[(ir+i)*ldc+jr:])
				}
			}
			kern.strided(kc, ap, rsa, csa, bp, ldb, &edge[0], nr, ld, alpha)
			for i := 0; i < mrr; i++ {
				copy(c[(ir+i)*ldc+jr:(ir+i)*ldc+jr+nrr], edge[i*nr:i*nr+nrr])
			}
		}
	}
}

// ncFor is the NC block for an m×·×k job: the cache block, lowered when K
// takes several KC slices and the m×NC block of C would not stay in the
// worker's share of L3 between them (4096×3072×768 on Zen 3, one thread:
// NC 1024 rather than 3072 keeps the three K passes over C out of DRAM, at
// the cost of packing A three times). NC stays ≥ min(512, NC/4) so A's
// repacking stays small next to the multiply.
func ncFor(b blockSizes, kern kernel, m, k, kc int) int {
	nc := b.nc
	if k <= kc || b.cmax <= 0 || m*nc <= b.cmax {
		return nc
	}
	return max(b.cmax/m/kern.nr*kern.nr, min(512, nc/4/kern.nr*kern.nr), kern.nr)
}

// macro multiplies the packed MC×KC block of A by the packed KC×NC block of
// B into C; depth is the kernel's k argument for the slice. The B
// micro-panel stays in L1 while A micro-panels stream from L2.
func (w *worker) macro(kern *kernel, bpack []float32, mc, nc, depth int, alpha float32, load bool, c []float32, ldc int) {
	mr, nr := kern.mr, kern.nr
	full := kern.full
	ld := 0
	if load {
		ld = 1
	}
	// A panel of depth d is MR·d words (float32s, or bf16 pairs), so the
	// panel holding row ir starts at ir·d; likewise B's at jr·d.
	for jr := 0; jr < nc; jr += nr {
		nrr := min(nr, nc-jr)
		bp := &bpack[jr*depth]
		ir0 := 0
		if mb := mc / mr; kern.column != nil && nrr == nr && mb > 0 {
			// The whole row blocks of this column of tiles in one call.
			cp := c[jr : jr+(mb*mr-1)*ldc+nr] // bounds check for the kernel
			ap := w.apack[:mb*mr*depth]
			kern.column(mb, depth, &ap[0], bp, &cp[0], ldc, ld, alpha)
			ir0 = mb * mr
		}
		for ir := ir0; ir < mc; ir += mr {
			mrr := min(mr, mc-ir)
			ap := &w.apack[ir*depth]
			if mrr == mr && nrr == nr {
				cp := c[ir*ldc+jr : ir*ldc+jr+(mr-1)*ldc+nr] // bounds check for the kernel
				full(depth, ap, bp, &cp[0], ldc, ld, alpha)
				continue
			}
			// Partial tile: run the whole padded tile on a scratch tile
			// holding C's valid part, then copy only that part back.
			edge := w.edge[:mr*nr]
			if load {
				for i := 0; i < mrr; i++ {
					copy(edge[i*nr:i*nr+nrr], c[(ir+i)*ldc+jr:])
				}
			}
			full(depth, ap, bp, &edge[0], nr, ld, alpha)
			for i := 0; i < mrr; i++ {
				copy(c[(ir+i)*ldc+jr:(ir+i)*ldc+jr+nrr], edge[i*nr:i*nr+nrr])
			}
		}
	}
}

// scaleC sets C = beta·C (C = 0 when beta == 0, ignoring NaNs in C).
func scaleC(m, n int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
		} else if beta != 1 {
			for x := range row {
				row[x] *= beta
			}
		}
	}
}

func checkArgs(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	if m < 0 || n < 0 || k < 0 {
		panic(fmt.Sprintf("gemm: negative dimension m=%d n=%d k=%d", m, n, k))
	}
	check := func(name string, rows, cols, ld, have int) {
		if ld < max(cols, 1) {
			panic(fmt.Sprintf("gemm: ld%s=%d is less than the stored width %d", name, ld, cols))
		}
		if rows > 0 && cols > 0 && have < (rows-1)*ld+cols {
			panic(fmt.Sprintf("gemm: %s has %d elements, need %d for %d×%d with stride %d", name, have, (rows-1)*ld+cols, rows, cols, ld))
		}
	}
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	check("a", ar, ac, lda, len(a))
	check("b", br, bc, ldb, len(b))
	check("c", m, n, ldc, len(c))
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
func roundUp(a, b int) int { return ceilDiv(a, b) * b }
