package gemm

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestTilesMatchEngine: Tiles.Mul (B in place) and Tiles.MulPacked (B
// from PackB) give the same bits as Engine.Sgemm with the same kernel —
// starting from zero (beta 0) or from C (beta = alpha, so the engine's
// chain starts from C unscaled) — for every kernel with a strided form,
// both layouts of A, on edge shapes, and never write outside C's block.
func TestTilesMatchEngine(t *testing.T) {
	shapes := []shape{{1, 1, 1}, {1, 7, 3}, {7, 1, 5}, {14, 32, 8}, {6, 16, 4}, {17, 33, 9}, {63, 65, 32}, {70, 64, 64}, {65, 63, 0}}
	rng := rand.New(rand.NewPCG(11, 12))
	for _, kern := range kernelsFor(FP32) {
		if kern.strided == nil {
			continue
		}
		tl := newTiles(kern)
		e := newEngine(1, kern)
		for _, s := range shapes {
			for _, tr := range transCases {
				for _, v := range []variant{{1, 0}, {-0.5, 0}, {1, 1}, {0.75, 0.75}} {
					tc := newCase(rng, s, tr.transA, tr.transB, v, 2)
					want := append([]float32(nil), tc.c...)
					if s.k > 0 {
						e.Sgemm(tc.transA, tc.transB, s.m, s.n, s.k, v.alpha, tc.a, tc.lda, tc.b, tc.ldb, v.beta, want, tc.ldc)
					} else {
						scaleC(s.m, s.n, v.beta, want, tc.ldc)
					}
					got := append([]float32(nil), tc.c...)
					rsa, csa := tc.lda, 1
					if tc.transA {
						rsa, csa = 1, tc.lda
					}
					load := v.beta != 0
					if tc.transB {
						packed := make([]float32, tl.PackedLen(s.k, s.n))
						tl.PackB(packed, true, tc.b, tc.ldb, s.k, s.n)
						tl.MulPacked(s.m, s.n, s.k, v.alpha, tc.a, rsa, csa, packed, load, got, tc.ldc)
					} else {
						tl.Mul(s.m, s.n, s.k, v.alpha, tc.a, rsa, csa, tc.b, tc.ldb, load, got, tc.ldc)
					}
					for x := range got {
						if math.Float32bits(got[x]) != math.Float32bits(want[x]) && !(math.IsNaN(float64(got[x])) && math.IsNaN(float64(want[x]))) {
							t.Fatalf("%s %v %s alpha=%g load=%v: C[%d][%d] = %g, engine %g", kern.name, s, tr.name, v.alpha, load, x/tc.ldc, x%tc.ldc, got[x], want[x])
						}
					}
				}
			}
		}
		e.Close()
	}
}

// TestTilesPackedColumnBlocks: a block of columns from j0 (a multiple of
// NR) of a PackB result is the packed form of those columns.
func TestTilesPackedColumnBlocks(t *testing.T) {
	tl := NewTiles()
	nr := tl.NR()
	rng := rand.New(rand.NewPCG(3, 4))
	k, n, m := 13, 3*nr+5, 9
	b := randMatrix(rng, n, k, k) // stored n×k: op(B) = Bᵀ
	a := randMatrix(rng, m, k, k)
	packed := make([]float32, tl.PackedLen(k, n))
	tl.PackB(packed, true, b, k, k, n)
	full := make([]float32, m*n)
	tl.MulPacked(m, n, k, 1, a, k, 1, packed, false, full, n)
	j0 := 2 * nr
	part := make([]float32, m*(n-j0))
	tl.MulPacked(m, n-j0, k, 1, a, k, 1, packed[j0*k:], false, part, n-j0)
	for i := 0; i < m; i++ {
		for j := j0; j < n; j++ {
			if full[i*n+j] != part[i*(n-j0)+j-j0] {
				t.Fatalf("C[%d][%d]: whole %g, from column %d %g", i, j, full[i*n+j], j0, part[i*(n-j0)+j-j0])
			}
		}
	}
}

func TestTilesBadArgs(t *testing.T) {
	tl := NewTiles()
	a, b, c := make([]float32, 12), make([]float32, 12), make([]float32, 16)
	for _, bad := range []struct {
		want string
		f    func()
	}{
		{"a has 12 elements", func() { tl.Mul(4, 4, 4, 1, a, 4, 1, b, 4, false, c, 4) }},
		{"c has 16 elements", func() { tl.Mul(4, 4, 3, 1, a, 3, 1, b, 4, false, c, 5) }},
		{"strides 1, 1 overlap", func() { tl.Mul(2, 2, 2, 1, a, 1, 1, b, 2, false, c, 2) }},
		{"packed b has", func() { tl.MulPacked(2, 2, 3, 1, a, 3, 1, b[:2], false, c, 2) }},
	} {
		func() {
			defer func() {
				r := recover()
				if s, _ := r.(string); !strings.Contains(s, bad.want) {
					t.Errorf("panic %v, want one containing %q", r, bad.want)
				}
			}()
			bad.f()
		}()
	}
}

func TestTilesNoAllocs(t *testing.T) {
	tl := NewTiles()
	m, n, k := 2*tl.MR()+3, 2*tl.NR()+5, 17
	a, b, c := make([]float32, m*k), make([]float32, k*n), make([]float32, m*n)
	tl.Mul(m, n, k, 1, a, k, 1, b, n, false, c, n) // grows the edge buffers
	if allocs := testing.AllocsPerRun(10, func() { tl.Mul(m, n, k, 1, a, k, 1, b, n, true, c, n) }); allocs != 0 {
		t.Fatalf("Tiles.Mul allocates %.0f times per call", allocs)
	}
}
