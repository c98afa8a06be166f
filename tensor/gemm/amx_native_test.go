//go:build amd64 && !purego

package gemm

import (
	"math"
	"slices"
	"testing"
)

// TestAMXNative runs the AMX kernel on the hardware, where this machine
// has AMX and Linux grants the tile state (elsewhere TestInterpAMX checks
// the kernel's source in the interpreter). TDPBF16PS does not round the
// way Intel's pseudo-code (and kernelGenericAMX) does — on a Sapphire
// Rapids-class Xeon about 44% of these cases' elements differ from it by
// an ulp or so (see docs/kernels.md) — so the hardware is held to what the engine needs
// instead: the float64 sums of the bf16 products within bf16's bound
// (exactly for small integers), the same bits for the same inputs on a
// second call, and a column of row blocks (kernelAMXColumn, one
// LDTILECFG) giving each block the bits of the one-block kernel that edge
// tiles use.
func TestAMXNative(t *testing.T) {
	if err := amxAvailable(); err != nil {
		t.Skipf("no AMX here: %v", err)
	}
	same, total := 0, 0
	for idx, tc := range amxNativeCases() {
		d := newAMXData(uint64(1000+idx), tc)
		run := func() []float32 {
			c := slices.Clone(d.c)
			a, b := append(slices.Clone(d.a), 0), append(slices.Clone(d.b), 0)
			kernelAMXColumn(tc.mb, tc.k, wordPtr(a), wordPtr(b), &c[0], tc.ldc, int(loadArg(tc.load)), tc.alpha)
			return c
		}
		got := run()
		if tc.data != "tiny" {
			if err := referenceAMX(got, tc, d); err != nil {
				t.Fatalf("%v: %v", tc, err)
			}
		}
		if err := compareBits(run(), got, tc.ldc); err != nil {
			t.Fatalf("%v: a second call differs: %v", tc, err)
		}
		one := slices.Clone(d.c)
		for r := range tc.mb {
			a := append(slices.Clone(d.a[r*amxMR*tc.k:]), 0)
			b := append(slices.Clone(d.b), 0)
			kernelAMX(tc.k, wordPtr(a), wordPtr(b), &one[r*amxMR*tc.ldc], tc.ldc, int(loadArg(tc.load)), tc.alpha)
		}
		if err := compareBits(got, one, tc.ldc); err != nil {
			t.Fatalf("%v: the column kernel differs from the one-block kernel: %v", tc, err)
		}
		model := modelAMX(tc, d)
		for i := range tc.mb * amxMR {
			for j := range amxNR {
				x := i*tc.ldc + j
				total++
				if math.Float32bits(got[x]) == math.Float32bits(model[x]) {
					same++
				}
			}
		}
	}
	t.Logf("hardware TDPBF16PS: %d of %d elements equal the Go model (Intel's pseudo-code) bit for bit", same, total)
}

// amxNativeCases are TestAMXNative's calls: the interpreter's cases and
// deeper ones.
func amxNativeCases() []amxCase {
	cs := amxCases()
	for _, data := range []string{"ints", "floats", "tiny"} {
		for _, k := range []int{160, 512} {
			cs = append(cs, amxCase{k, 3, 0.75, true, amxNR + 5, data}, amxCase{k, 1, 1, false, amxNR, data})
		}
	}
	return cs
}
