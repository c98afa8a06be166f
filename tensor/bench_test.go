package tensor

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkReferenceSgemm reports the reference GEMM's speed on the three
// shapes a training step uses (forward A·Bᵀ, input grad A·B, weight grad Aᵀ·B),
// as the baseline for tensor/gemm.
func BenchmarkReferenceSgemm(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	const n = 256
	a, bm, c := randSlice(rng, n*n, 1), randSlice(rng, n*n, 1), make([]float32, n*n)
	var k Reference
	for _, tc := range []struct{ ta, tb bool }{{false, true}, {false, false}, {true, false}} {
		b.Run(fmt.Sprintf("tA=%v,tB=%v,n=%d", tc.ta, tc.tb, n), func(b *testing.B) {
			for b.Loop() {
				k.Sgemm(tc.ta, tc.tb, n, n, n, 1, a, n, bm, n, 0, c, n)
			}
			b.ReportMetric(2*n*n*n*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
