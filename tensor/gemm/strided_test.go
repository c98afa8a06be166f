package gemm

import (
	"math"
	"math/rand/v2"
	"testing"
)

// stridedLayouts are the ways the engine hands A to a strided kernel: a
// packed panel (rsa 1, csa MR), row-major in place (rsa lda, csa 1) and
// transposed in place (rsa 1, csa lda); B packed (ldb NR) or in place.
type stridedLayout struct {
	name            string
	aRowMajor, aPad bool // A stored mr×k (else k×mr); with an extra stride
	bPad            bool // B's row stride wider than NR
}

var stridedLayouts = []stridedLayout{
	{"packed", false, false, false},
	{"a-rows", true, false, false},
	{"a-rows-padded", true, true, true},
	{"a-cols-padded", false, true, true},
}

// TestStridedKernelsMatchPacked: every kernel with a strided form gives
// the same bits from operands in place as its packed form from the packed
// panels, for depths around the unroll, both load modes and several alphas,
// and it touches C only inside the tile.
func TestStridedKernelsMatchPacked(t *testing.T) {
	for _, kern := range availableKernels() {
		if kern.strided == nil {
			continue
		}
		for _, lay := range stridedLayouts {
			for _, k := range []int{0, 1, 2, 3, 4, 5, 8, 13, 64} {
				for _, load := range []int{0, 1} {
					for _, alpha := range []float32{1, -0.75} {
						checkStrided(t, kern, lay, k, load, alpha)
					}
				}
			}
		}
	}
}

func checkStrided(t *testing.T, kern kernel, lay stridedLayout, k, load int, alpha float32) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(k), uint64(load)))
	mr, nr, ldc := kern.mr, kern.nr, kern.nr+5
	kk := max(k, 1)
	// Packed panels: pa[p*mr+i], pb[p*nr+j].
	pa := randMatrix(rng, kk, mr, mr)
	pb := randMatrix(rng, kk, nr, nr)
	var a []float32
	rsa, csa := 1, mr
	switch {
	case lay.name == "packed":
		a = pa
	case lay.aRowMajor:
		lda := kk + 3
		a = make([]float32, mr*lda)
		for i := range a {
			a[i] = float32(math.NaN()) // padding must never be read into a result
		}
		for i := 0; i < mr; i++ {
			for p := 0; p < kk; p++ {
				a[i*lda+p] = pa[p*mr+i]
			}
		}
		rsa, csa = lda, 1
	default:
		lda := mr + 7
		a = make([]float32, kk*lda)
		for i := range a {
			a[i] = float32(math.NaN())
		}
		for p := 0; p < kk; p++ {
			copy(a[p*lda:], pa[p*mr:(p+1)*mr])
		}
		rsa, csa = 1, lda
	}
	b, ldb := pb, nr
	if lay.bPad {
		ldb = nr + 9
		b = make([]float32, kk*ldb)
		for i := range b {
			b[i] = float32(math.NaN())
		}
		for p := 0; p < kk; p++ {
			copy(b[p*ldb:], pb[p*nr:(p+1)*nr])
		}
	}
	c0 := randMatrix(rng, mr, nr, ldc)
	want := append([]float32(nil), c0...)
	got := append([]float32(nil), c0...)
	kern.full(k, &pa[0], &pb[0], &want[0], ldc, load, alpha)
	kern.strided(k, &a[0], rsa, csa, &b[0], ldb, &got[0], ldc, load, alpha)
	for x := range got {
		if math.Float32bits(got[x]) != math.Float32bits(want[x]) {
			t.Fatalf("%s %s k=%d load=%d alpha=%g: c[%d][%d] = %g, packed kernel %g", kern.name, lay.name, k, load, alpha, x/ldc, x%ldc, got[x], want[x])
		}
	}
}
