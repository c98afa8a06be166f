//go:build amd64 && !purego

package gemm

import (
	"fmt"
	"testing"
)

// BenchmarkAMXColumn times the AMX column kernel as the macro-kernel runs
// it: MC=672 rows of packed A (21 row blocks) against one B panel, depth
// 192 k-pairs (KC 384), into a 2048-float-wide C, starting from zero or
// from C, over n columns of B panels (A hot in L2, each B panel in L1).
func BenchmarkAMXColumn(b *testing.B) {
	if err := amxAvailable(); err != nil {
		b.Skip(err)
	}
	const mb, depth, ldc, cols = 21, 192, 2048, 16
	a := make([]uint32, mb*amxMR*depth)
	bp := make([]uint32, cols*amxNR*depth)
	c := make([]float32, mb*amxMR*ldc)
	for _, load := range []int{0, 1} {
		b.Run(fmt.Sprintf("load=%d", load), func(b *testing.B) {
			flops := 2 * 2 * float64(mb*amxMR*amxNR*depth*cols)
			timeKernel(b, flops, func() {
				for j := range cols {
					kernelAMXColumn(mb, depth, wordPtr(a), wordPtr(bp[j*amxNR*depth:]), &c[j*amxNR], ldc, load, 1)
				}
			})
		})
	}
}
