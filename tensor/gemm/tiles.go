package gemm

import "fmt"

// Tiles multiplies small blocks on the calling goroutine with the fastest
// float32 micro-kernel that reads operands in place (kernel.strided), for
// fused kernels such as attention: no engine call, no lock, no threads,
// no packing of A, and B packed only when it must be (transposed) — once,
// by the caller, for as many products as reuse it. Only the partial edge
// panels (fewer than MR rows of A, NR columns of an in-place B) and tiles
// of C are copied, into the Tiles' own scratch.
//
// Every element is the same FMA chain as Engine.Sgemm's (from C or zero,
// one FMA per k in order, times alpha at the end), so a product gives the
// same bits through either. A Tiles is not safe for concurrent use; give
// each goroutine its own.
type Tiles struct {
	kern  kernel
	edgeA []float32 // one packed MR-row panel of A
	edgeB []float32 // one packed NR-column panel of B
	edgeC []float32 // one MR×NR tile of C
}

// NewTiles returns a Tiles on this CPU's best float32 kernel.
func NewTiles() *Tiles {
	for _, k := range kernelsFor(FP32) {
		if k.strided != nil {
			return newTiles(k)
		}
	}
	panic("gemm: no float32 kernel with a strided form") // generic always has one
}

func newTiles(k kernel) *Tiles {
	if err := selfCheck(k); err != nil {
		panic(err)
	}
	return &Tiles{kern: k, edgeC: make([]float32, k.mr*k.nr)}
}

// MR and NR are the micro-tile: blocks whose rows are a multiple of MR and
// columns a multiple of NR need no edge copies.
func (t *Tiles) MR() int { return t.kern.mr }

// NR is the micro-tile's width (see MR).
func (t *Tiles) NR() int { return t.kern.nr }

// Kernel names the micro-kernel ("avx512", "avx2", "generic").
func (t *Tiles) Kernel() string { return t.kern.name }

// PackedLen is the length of PackB's output for a k×n operand.
func (t *Tiles) PackedLen(k, n int) int { return k * roundUp(n, t.kern.nr) }

// PackB packs the k×n operand op(B) — B stored n×k (row stride ldb) when
// trans, else k×n — into NR-column panels of depth k, zero-padded to a
// multiple of NR columns. The columns from j0 (a multiple of NR) on start
// at dst[j0·k:], which MulPacked takes as its B.
func (t *Tiles) PackB(dst []float32, trans bool, b []float32, ldb, k, n int) {
	if k == 0 || n == 0 {
		return
	}
	br, bc := k, n
	if trans {
		br, bc = n, k
	}
	checkMat("b", b, br, bc, ldb, 1)
	if len(dst) < t.PackedLen(k, n) {
		panic(fmt.Sprintf("gemm: Tiles.PackB: dst has %d elements, need %d for %d×%d", len(dst), t.PackedLen(k, n), k, n))
	}
	packB(dst, trans, b, ldb, 0, 0, k, n, t.kern.nr)
}

// Mul computes C = alpha·(C0 + A·B) for an m×n block C (row stride ldc),
// where C0 is C when load and zero otherwise (C is then not read), A is
// m×k with element (i, p) at a[i·rsa + p·csa] (rsa = lda, csa = 1 for a
// row-major A; rsa = 1, csa = lda for a transposed one), and B is k×n,
// row-major with row stride ldb, read in place.
func (t *Tiles) Mul(m, n, k int, alpha float32, a []float32, rsa, csa int, b []float32, ldb int, load bool, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	checkMat("c", c, m, n, ldc, 1)
	if k == 0 {
		t.scale(m, n, alpha, load, c, ldc)
		return
	}
	checkMat("a", a, m, k, rsa, csa)
	checkMat("b", b, k, n, ldb, 1)
	t.mul(m, n, k, alpha, a, rsa, csa, b, ldb, false, load, c, ldc)
}

// MulPacked is Mul with B from PackB: b is the packed operand from the
// block's first column on (dst[j0·k:] of a PackB of depth k).
func (t *Tiles) MulPacked(m, n, k int, alpha float32, a []float32, rsa, csa int, b []float32, load bool, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	checkMat("c", c, m, n, ldc, 1)
	if k == 0 {
		t.scale(m, n, alpha, load, c, ldc)
		return
	}
	checkMat("a", a, m, k, rsa, csa)
	if need := t.PackedLen(k, n); len(b) < need {
		panic(fmt.Sprintf("gemm: Tiles.MulPacked: packed b has %d elements, need %d for %d×%d", len(b), need, k, n))
	}
	t.mul(m, n, k, alpha, a, rsa, csa, b, 0, true, load, c, ldc)
}

func (t *Tiles) mul(m, n, k int, alpha float32, a []float32, rsa, csa int, b []float32, ldb int, packed, load bool, c []float32, ldc int) {
	kern := &t.kern
	mr, nr := kern.mr, kern.nr
	ld := 0
	if load {
		ld = 1
	}
	mFull := m / mr * mr
	if mFull < m { // the partial A panel, zero-padded to MR rows
		if len(t.edgeA) < mr*k {
			t.edgeA = make([]float32, mr*k)
		}
		e := t.edgeA[:mr*k]
		clear(e)
		for i := mFull; i < m; i++ {
			row := a[i*rsa:]
			for p := 0; p < k; p++ {
				e[p*mr+i-mFull] = row[p*csa]
			}
		}
	}
	for jr := 0; jr < n; jr += nr {
		nrr := min(nr, n-jr)
		bp, bld := (*float32)(nil), nr
		switch {
		case packed:
			bp = &b[jr*k]
		case nrr == nr:
			bp, bld = &b[jr], ldb
		default: // the partial in-place B panel, zero-padded to NR columns
			if len(t.edgeB) < k*nr {
				t.edgeB = make([]float32, k*nr)
			}
			e := t.edgeB[:k*nr]
			for p := 0; p < k; p++ {
				copy(e[p*nr:p*nr+nrr], b[p*ldb+jr:p*ldb+jr+nrr])
				clear(e[p*nr+nrr : (p+1)*nr])
			}
			bp = &e[0]
		}
		for ir := 0; ir < m; ir += mr {
			ap, ars, acs := (*float32)(nil), rsa, csa
			if ir < mFull {
				ap = &a[ir*rsa]
			} else {
				ap, ars, acs = &t.edgeA[0], 1, mr
			}
			mrr := min(mr, m-ir)
			if mrr == mr && nrr == nr {
				cp := c[ir*ldc+jr : ir*ldc+jr+(mr-1)*ldc+nr] // bounds check for the kernel
				kern.strided(k, ap, ars, acs, bp, bld, &cp[0], ldc, ld, alpha)
				continue
			}
			edge := t.edgeC[:mr*nr]
			if load {
				for i := 0; i < mrr; i++ {
					copy(edge[i*nr:i*nr+nrr], c[(ir+i)*ldc+jr:])
				}
			}
			kern.strided(k, ap, ars, acs, bp, bld, &edge[0], nr, ld, alpha)
			for i := 0; i < mrr; i++ {
				copy(c[(ir+i)*ldc+jr:(ir+i)*ldc+jr+nrr], edge[i*nr:i*nr+nrr])
			}
		}
	}
}

// scale is the k = 0 product: C = alpha·C0.
func (t *Tiles) scale(m, n int, alpha float32, load bool, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if !load {
			clear(row)
			continue
		}
		for x := range row {
			row[x] *= alpha
		}
	}
}

// checkMat panics unless x holds an r×c matrix with element (i, j) at
// x[i·rs + j·cs] (strides ≥ 1, and the matrix's rows or columns not
// overlapping: one stride at least the extent of the other).
func checkMat(name string, x []float32, r, c, rs, cs int) {
	if rs < 1 || cs < 1 || (rs < c*cs && cs < r*rs) {
		panic(fmt.Sprintf("gemm: Tiles: %s strides %d, %d overlap for %d×%d", name, rs, cs, r, c))
	}
	if need := (r-1)*rs + (c-1)*cs + 1; len(x) < need {
		panic(fmt.Sprintf("gemm: Tiles: %s has %d elements, need %d for %d×%d with strides %d, %d", name, len(x), need, r, c, rs, cs))
	}
}
