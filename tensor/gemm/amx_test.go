package gemm

import (
	"math/rand/v2"
	"testing"
)

// TestAMXLayoutsEndToEnd runs the engine on the AMX family's Go model
// kernel (the AMX packing, the padded depth, 32×32 edge tiles, K slices
// and threads) on edge shapes and every transpose case, against the
// float64 reference within bf16's bound: the packing the AMX kernel
// reads, checked on any machine.
func TestAMXLayoutsEndToEnd(t *testing.T) {
	if err := selfCheck(genericAMXKernel); err != nil {
		t.Fatal(err)
	}
	shapes := []shape{{1, 1, 1}, {7, 33, 5}, {33, 31, 33}, {65, 64, 70}, {40, 70, 300}}
	if testing.Short() || raceEnabled {
		shapes = shapes[:3]
	}
	rng := rand.New(rand.NewPCG(31, 32))
	for _, threads := range []int{1, 2} {
		cs := readCacheSizes()
		e := newEngineKernels(threads, BF16, []kernel{genericAMXKernel}, cs, blockSizes{mc: 64, kc: 64, nc: 64})
		for _, s := range shapes {
			for _, tr := range transCases {
				for _, v := range variants {
					newCase(rng, s, tr.transA, tr.transB, v, 1).check(t, e)
				}
			}
		}
		e.Close()
	}
}
