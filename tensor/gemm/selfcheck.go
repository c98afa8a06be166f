package gemm

import (
	"fmt"
	"math"
)

// selfCheck runs kern on one tile of small integers (exact in float32 and
// bf16) against a plain loop, starting from 0 over a NaN C and from C. The
// operands are packed by the kernel's own packing, so every layout (float32
// panels, bf16 pairs, AMX tile rows) is checked with its kernel. New fails
// if it does not pass: an assembly kernel that could only be interpreted on
// the machine it was written on, and a wrong result, must never pass
// silently into training.
func selfCheck(kern kernel) error {
	const k = 10 // logical depth: two unrolled float32 passes and a tail; 5 bf16 pairs
	mr, nr, ldc := kern.mr, kern.nr, kern.nr+3
	av := func(i, p int) float32 { return float32((i*3+p)%7 - 3) }
	bv := func(p, j int) float32 { return float32((p*5+j)%5 - 2) }
	a := make([]float32, mr*k) // mr×k, row-major
	b := make([]float32, k*nr) // k×nr, row-major
	for i := 0; i < mr; i++ {
		for p := 0; p < k; p++ {
			a[i*k+p] = av(i, p)
		}
	}
	for p := 0; p < k; p++ {
		for j := 0; j < nr; j++ {
			b[p*nr+j] = bv(p, j)
		}
	}
	depth := kern.depth(k)
	words := max(roundUp(k, 2), depth)
	ap, bp := make([]float32, mr*words), make([]float32, nr*words)
	kern.packA(ap, false, a, k, 0, 0, mr, k, mr)
	kern.packB(bp, false, b, nr, 0, 0, k, nr, nr)
	c := make([]float32, mr*ldc)
	for _, load := range []int{0, 1} {
		for i := range c {
			if load == 0 {
				c[i] = float32(math.NaN())
			} else {
				c[i] = float32(i % 3)
			}
		}
		old := append([]float32(nil), c...)
		kern.full(depth, &ap[0], &bp[0], &c[0], ldc, load, 2)
		for i := 0; i < mr; i++ {
			for j := 0; j < ldc; j++ {
				want := old[i*ldc+j] // padding past NR is untouched
				if j < nr {
					var s float32
					if load != 0 {
						s = old[i*ldc+j]
					}
					for p := 0; p < k; p++ {
						s += av(i, p) * bv(p, j)
					}
					want = 2 * s
				}
				got := c[i*ldc+j]
				if got != want && !(math.IsNaN(float64(got)) && math.IsNaN(float64(want))) {
					return fmt.Errorf("gemm: %s micro-kernel self-check failed: load=%d C[%d][%d] = %g, want %g", kern.name, load, i, j, got, want)
				}
			}
		}
	}
	return nil
}
