package gemm

import (
	"math"
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

// TestAMXNative compares the AMX kernel with its Go model bit for bit on
// the hardware, where this machine has AMX and Linux grants the tile
// state; elsewhere it reports why it cannot run (the interpreter test,
// TestInterpAMX, checks the kernel's source there).
func TestAMXNative(t *testing.T) {
	if err := amxAvailable(); err != nil {
		t.Skipf("no AMX here: %v", err)
	}
	native := amxKernelForTest()
	rng := rand.New(rand.NewPCG(41, 42))
	for _, k := range []int{0, 16, 64, 160} {
		for _, load := range []int{0, 1} {
			for _, alpha := range []float32{1, 0.75} {
				a, b := make([]uint32, amxMR*max(k, 1)), make([]uint32, amxNR*max(k, 1))
				for i := range a {
					a[i] = bf16Pair(float32(rng.NormFloat64()), float32(rng.NormFloat64()))
				}
				for i := range b {
					b[i] = bf16Pair(float32(rng.NormFloat64()), float32(rng.NormFloat64()))
				}
				ldc := amxNR + 5
				c := make([]float32, amxMR*ldc)
				for i := range c {
					c[i] = float32(rng.NormFloat64())
				}
				want := append([]float32(nil), c...)
				ap, bp := wordPtr(a), wordPtr(b)
				kernelGenericAMX(k, ap, bp, &want[0], ldc, load, alpha)
				native.full(k, ap, bp, &c[0], ldc, load, alpha)
				for x := range c {
					if math.Float32bits(c[x]) != math.Float32bits(want[x]) {
						t.Fatalf("k=%d load=%d alpha=%g: C[%d][%d] = %g, Go model of TDPBF16PS %g", k, load, alpha, x/ldc, x%ldc, c[x], want[x])
					}
				}
			}
		}
	}
}
