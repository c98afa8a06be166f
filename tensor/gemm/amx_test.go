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
	for _, threads := range []int{1, 2, 3} {
		cs := readCacheSizes()
		bs := blockSizes{mc: 64, kc: 64, nc: 64}
		if threads == 3 { // K slices innermost (runKInner), 2 threads
			bs.cblock, threads = 2000, 2
		}
		e := newEngineKernels(threads, BF16, []kernel{genericAMXKernel}, cs, bs)
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

// TestPackAAMX: the assembly-backed AMX A packing (both storage orders)
// gives packAAMXGo's words, padding included, on edge shapes and values
// (subnormals, NaNs, ties), from offsets inside a larger matrix.
func TestPackAAMX(t *testing.T) {
	rng := rand.New(rand.NewPCG(51, 52))
	specials := []float32{0, float32(math.Copysign(0, -1)), 1e-40, -1e-40, float32(math.NaN()), float32(math.Inf(1)), 1 + 1.0/256, 1 + 3.0/256}
	for _, trans := range []bool{false, true} {
		for _, mc := range []int{1, 31, 32, 33, 48, 60, 300} {
			for _, kc := range []int{2, 3, 31, 32, 33, 64, 70, 128, 255} {
				const ic, pc = 3, 5
				rows, cols := ic+mc+2, pc+kc+3
				if trans {
					rows, cols = pc+kc+3, ic+mc+2
				}
				lda := cols + 1
				a := make([]float32, rows*lda)
				for i := range a {
					a[i] = float32(rng.NormFloat64())
					if rng.IntN(8) == 0 {
						a[i] = specials[rng.IntN(len(specials))]
					}
				}
				d := amxDepth(kc)
				n := roundUp(mc, amxMR) * d
				got, want := make([]uint32, n+7), make([]uint32, n+7)
				for i := range got {
					got[i], want[i] = 0xdeadbeef, 0xdeadbeef
				}
				packAAMX(got, trans, a, lda, ic, pc, mc, kc)
				packAAMXGo(want, trans, a, lda, ic, pc, mc, kc)
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("trans=%v mc=%d kc=%d: word %d = %#08x, Go packing %#08x", trans, mc, kc, i, got[i], want[i])
					}
				}
				if !useBF16Asm() || kc < 2 {
					continue
				}
				// The integer rounding where the CPU has VCVTNE2PS2BF16 too.
				for i := range got {
					got[i] = 0xdeadbeef
				}
				if trans {
					packAAMXColsWith(got, a, lda, ic, pc, mc, kc, false)
				} else {
					packAAMXRowsWith(got, a, lda, ic, pc, mc, kc, false)
				}
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("trans=%v mc=%d kc=%d, integer rounding: word %d = %#08x, Go packing %#08x", trans, mc, kc, i, got[i], want[i])
					}
				}
			}
		}
	}
}
