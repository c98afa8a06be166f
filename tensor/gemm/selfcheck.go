package gemm

import (
	"fmt"
	"math"
)

// selfCheck runs kern on one tile of small integers (exact in float32)
// against a plain loop, with beta = 0 over NaN and with beta = 1. New
// panics if it fails: the AVX-512 kernel could not be run on the machine it
// was written on, and a wrong result must never pass silently into training.
func selfCheck(kern kernel) error {
	const k = 5 // one unrolled pass of 4 and one tail step
	mr, nr, ldc := kern.mr, kern.nr, kern.nr+3
	a := make([]float32, k*mr)
	b := make([]float32, k*nr)
	for i := range a {
		a[i] = float32(i%7 - 3)
	}
	for i := range b {
		b[i] = float32(i%5 - 2)
	}
	c := make([]float32, mr*ldc)
	for _, beta := range []float32{0, 1} {
		for i := range c {
			if beta == 0 {
				c[i] = float32(math.NaN())
			} else {
				c[i] = float32(i % 3)
			}
		}
		old := append([]float32(nil), c...)
		kern.full(k, &a[0], &b[0], &c[0], ldc, 2, beta)
		for i := 0; i < mr; i++ {
			for j := 0; j < ldc; j++ {
				want := old[i*ldc+j] // padding past NR is untouched
				if j < nr {
					var s float32
					for p := 0; p < k; p++ {
						s += a[p*mr+i] * b[p*nr+j]
					}
					want = 2 * s
					if beta != 0 {
						want += beta * old[i*ldc+j]
					}
				}
				got := c[i*ldc+j]
				if got != want && !(math.IsNaN(float64(got)) && math.IsNaN(float64(want))) {
					return fmt.Errorf("gemm: %s micro-kernel self-check failed: beta=%g C[%d][%d] = %g, want %g", kern.name, beta, i, j, got, want)
				}
			}
		}
	}
	return nil
}
