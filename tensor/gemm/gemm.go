// Package gemm owns Loom's float32 matrix multiply: a BLIS-style packed
// SGEMM with hand-written AVX-512 and AVX2+FMA micro-kernels, a pure-Go
// fallback, and the float64 reference it is tested against.
//
// All matrices are row-major. Sgemm computes C = alpha·op(A)·op(B) + beta·C
// where op(X) = Xᵀ when the matching trans flag is set; A is m×k and B is
// k×n after op. Transposes are never materialized: packing reads the stored
// layout directly.
//
// Design (BLIS): for each NC-wide column block of B and KC-deep slice, B is
// packed into NR-column micro-panels; for each MC-row block of A, A is
// packed into MR-row micro-panels; a register-tiled micro-kernel then
// computes every MR×NR tile of C with its accumulators in registers,
// applying alpha and beta on the way out (later K slices accumulate with
// beta = 1). Edge tiles are zero-padded when packed and computed into a
// scratch tile whose valid part is merged into C.
//
//	kernel   tile    registers                      selected when
//	avx512   14×32   28 zmm acc + 2 B + 2 broadcast  AVX512F (+VL)
//	avx2     6×16    12 ymm acc + 2 B + 2 broadcast  AVX2 and FMA
//	generic  4×4     pure Go                         otherwise, or -tags purego
//
// Cache blocks come from cpu0's sysfs cache sizes (chooseBlocks): on a Zen 3
// core (32 KiB L1d, 512 KiB L2) the AVX2 kernel runs MC=126, KC=256,
// NC=4096; on Zen 5 (48 KiB, 1 MiB) the AVX-512 kernel runs MC=336, KC=192.
//
// Threads: New starts threads-1 worker goroutines; each call splits C into
// a grid of at most `threads` blocks (rows in multiples of MR, columns in
// multiples of NR) chosen to minimize packing per worker, and each worker
// runs the loop nest above on its block with its own pack buffers, so
// workers never synchronize inside a call. Problems under ~4 MFLOP per
// thread use fewer threads. Steady-state calls do not allocate.
package gemm

import (
	"fmt"
	"runtime"
	"sync"
)

// Engine multiplies matrices on a fixed pool of worker goroutines created by
// New. It is safe for concurrent use: calls to Sgemm on one Engine are
// serialized (each worker owns its pack buffers); use one Engine per
// goroutine to run multiplications in parallel.
type Engine struct {
	kern    kernel
	blocks  blockSizes
	threads int

	mu      sync.Mutex // serializes Sgemm: the workers' buffers are shared state
	workers []*worker
	jobs    []chan *job // one channel per worker but the first, which runs on the caller
	wg      sync.WaitGroup
	parts   []job // per-call partition, reused
	closed  bool
}

// job is one worker's share of a call: a rectangular block of C.
type job struct {
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	a              []float32
	lda            int
	b              []float32
	ldb            int
	c              []float32
	ldc            int
}

// worker owns the packing buffers for one thread.
type worker struct {
	kern   kernel
	blocks blockSizes
	apack  []float32 // MC×KC, rows rounded up to MR
	bpack  []float32 // KC×NC, columns rounded up to NR
	edge   []float32 // one MR×NR tile for partial tiles
}

// New returns an Engine with the given number of threads (≤ 0 means
// runtime.NumCPU()) and the fastest micro-kernel this CPU supports. It
// panics if that kernel fails a one-tile self-check (see selfCheck).
func New(threads int) *Engine {
	return newEngine(threads, bestKernel())
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
	return newEngineBlocks(threads, kern, chooseBlocks(readCacheSizes(), kern, threads))
}

// newEngineBlocks is newEngine with explicit cache blocks, for tuning.
func newEngineBlocks(threads int, kern kernel, blocks blockSizes) *Engine {
	e := &Engine{kern: kern, threads: threads, blocks: blocks}
	e.workers = make([]*worker, threads)
	for i := range e.workers {
		e.workers[i] = newWorker(kern, e.blocks)
	}
	e.parts = make([]job, threads)
	e.jobs = make([]chan *job, threads)
	for i := 1; i < threads; i++ {
		ch := make(chan *job)
		e.jobs[i] = ch
		go e.workers[i].loop(ch, &e.wg)
	}
	return e
}

func newWorker(kern kernel, b blockSizes) *worker {
	mcRound := roundUp(b.mc, kern.mr)
	ncRound := roundUp(b.nc, kern.nr)
	return &worker{
		kern:   kern,
		blocks: b,
		apack:  make([]float32, mcRound*b.kc),
		bpack:  make([]float32, b.kc*ncRound),
		edge:   make([]float32, kern.mr*kern.nr),
	}
}

func (w *worker) loop(ch <-chan *job, wg *sync.WaitGroup) {
	for j := range ch {
		w.run(j)
		wg.Done()
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
	for _, ch := range e.jobs[1:] {
		close(ch)
	}
}

// Threads reports the number of threads Sgemm uses for large problems.
func (e *Engine) Threads() int { return e.threads }

// Kernel names the micro-kernel in use: "avx512", "avx2" or "generic".
func (e *Engine) Kernel() string { return e.kern.name }

// Blocks reports the cache blocking in use (for logs and benchmarks).
func (e *Engine) Blocks() (mr, nr, mc, kc, nc int) {
	return e.kern.mr, e.kern.nr, e.blocks.mc, e.blocks.kc, e.blocks.nc
}

// Sgemm computes C = alpha·op(A)·op(B) + beta·C for row-major matrices,
// where op(A) is m×k, op(B) is k×n and C is m×n. lda, ldb and ldc are the
// row strides of A, B and C as stored (A is stored k×m when transA is set).
// With beta == 0, C is overwritten and its old contents (even NaN) are never
// read. It panics if a slice is too short for its shape and stride.
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
	whole := job{transA, transB, m, n, k, alpha, beta, a, lda, b, ldb, c, ldc}
	parts := e.partition(&whole)
	if parts == 1 {
		e.workers[0].run(&e.parts[0])
		return
	}
	e.wg.Add(parts - 1)
	for i := 1; i < parts; i++ {
		e.jobs[i] <- &e.parts[i]
	}
	e.workers[0].run(&e.parts[0])
	e.wg.Wait()
}

// minFlopsPerThread keeps small problems on fewer threads: handing a job to
// another goroutine costs a few microseconds, about 0.5 MFLOP of work.
const minFlopsPerThread = 4 << 20

// partition splits the call into e.parts[:p] over a tm×tn grid of C blocks
// (tm·tn = p ≤ threads) chosen to minimize each worker's packing traffic,
// and returns p. Row splits are multiples of MR and column splits of NR so
// only the true matrix edge has partial tiles.
func (e *Engine) partition(j *job) int {
	flops := 2 * float64(j.m) * float64(j.n) * float64(j.k)
	p := e.threads
	if lim := int(flops / minFlopsPerThread); lim < p {
		p = max(lim, 1)
	}
	mr, nr := e.kern.mr, e.kern.nr
	mTiles, nTiles := ceilDiv(j.m, mr), ceilDiv(j.n, nr)
	bestTm, bestTn, bestCost := 1, 1, -1.0
	for tm := 1; tm <= p; tm++ {
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
		ncBlocks := float64(ceilDiv(int(nt), e.blocks.nc))
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
// KC-deep slices, MC rows of A, then NR×MR micro-tiles.
func (w *worker) run(j *job) {
	// Equal blocks no larger than the cache blocks: 768 rows as 7×110
	// rather than 6×126 + 12 keeps the last block from paying a whole
	// B-panel sweep for two tiles, and K = 1376 as 6×232 avoids a short
	// final slice. KC stays a multiple of the kernels' ×4 unroll.
	kc0 := roundUp(ceilDiv(j.k, ceilDiv(j.k, w.blocks.kc)), 4)
	mc0 := roundUp(ceilDiv(j.m, ceilDiv(j.m, w.blocks.mc)), w.kern.mr)
	nc0 := roundUp(ceilDiv(j.n, ceilDiv(j.n, w.ncFor(j.m, j.k, kc0))), w.kern.nr)
	for jc := 0; jc < j.n; jc += nc0 {
		nc := min(nc0, j.n-jc)
		for pc := 0; pc < j.k; pc += kc0 {
			kc := min(kc0, j.k-pc)
			beta := j.beta
			if pc > 0 {
				beta = 1 // later K slices accumulate onto the first
			}
			packB(w.bpack, j.transB, j.b, j.ldb, pc, jc, kc, nc, w.kern.nr)
			for ic := 0; ic < j.m; ic += mc0 {
				mc := min(mc0, j.m-ic)
				packA(w.apack, j.transA, j.a, j.lda, ic, pc, mc, kc, w.kern.mr)
				w.macro(mc, nc, kc, j.alpha, beta, j.c[ic*j.ldc+jc:], j.ldc)
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
func (w *worker) ncFor(m, k, kc int) int {
	nc := w.blocks.nc
	if k <= kc || w.blocks.cmax <= 0 || m*nc <= w.blocks.cmax {
		return nc
	}
	return max(w.blocks.cmax/m/w.kern.nr*w.kern.nr, min(512, nc/4/w.kern.nr*w.kern.nr), w.kern.nr)
}

// macro multiplies the packed MC×KC block of A by the packed KC×NC block of
// B into C. The B micro-panel stays in L1 while A micro-panels stream from L2.
func (w *worker) macro(mc, nc, kc int, alpha, beta float32, c []float32, ldc int) {
	mr, nr := w.kern.mr, w.kern.nr
	full := w.kern.full
	for jr := 0; jr < nc; jr += nr {
		nrr := min(nr, nc-jr)
		bp := &w.bpack[jr*kc]
		for ir := 0; ir < mc; ir += mr {
			mrr := min(mr, mc-ir)
			ap := &w.apack[ir*kc]
			if mrr == mr && nrr == nr {
				cp := c[ir*ldc+jr : ir*ldc+jr+(mr-1)*ldc+nr] // bounds check for the kernel
				full(kc, ap, bp, &cp[0], ldc, alpha, beta)
				continue
			}
			// Partial tile: compute the whole padded tile into a scratch
			// tile, then merge only the valid part.
			full(kc, ap, bp, &w.edge[0], nr, alpha, 0)
			for i := 0; i < mrr; i++ {
				row := c[(ir+i)*ldc+jr : (ir+i)*ldc+jr+nrr]
				src := w.edge[i*nr : i*nr+nrr]
				if beta == 0 {
					copy(row, src)
				} else {
					for x := range row {
						row[x] = beta*row[x] + src[x]
					}
				}
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
