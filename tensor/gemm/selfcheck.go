package gemm

import (
	"fmt"
	"math"
)

// selfCheck runs kern on one tile of small integers (exact in float32 and
// bf16) against a plain loop, starting from 0 over a NaN C and from C. New
// panics if it fails: an assembly kernel that could only be interpreted on
// the machine it was written on, and a wrong result, must never pass
// silently into training.
func selfCheck(kern kernel) error {
	const steps = 5 // one unrolled pass of 4 and one tail step
	mr, nr, ldc := kern.mr, kern.nr, kern.nr+3
	per := 1
	if kern.pairs() {
		per = 2
	}
	k := steps * per // logical depth
	av := func(i, p int) float32 { return float32((i*3+p)%7 - 3) }
	bv := func(p, j int) float32 { return float32((p*5+j)%5 - 2) }
	a := make([]float32, steps*mr)
	b := make([]float32, steps*nr)
	for s := 0; s < steps; s++ {
		for i := 0; i < mr; i++ {
			if per == 2 {
				a[s*mr+i] = math.Float32frombits(bf16Pair(av(i, 2*s), av(i, 2*s+1)))
			} else {
				a[s*mr+i] = av(i, s)
			}
		}
		for j := 0; j < nr; j++ {
			if per == 2 {
				b[s*nr+j] = math.Float32frombits(bf16Pair(bv(2*s, j), bv(2*s+1, j)))
			} else {
				b[s*nr+j] = bv(s, j)
			}
		}
	}
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
		kern.full(steps, &a[0], &b[0], &c[0], ldc, load, 2)
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
