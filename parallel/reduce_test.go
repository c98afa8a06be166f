package parallel

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// reduceLengths covers empty, below, at and around every vector width and
// unroll factor of the assembly (8, 16, 32, 64 elements) and a long run.
var reduceLengths = []int{0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000, 4099}

// specialBuf returns n values mixing random normals with the cases where
// max and add are easy to get wrong: NaN on either side, ±0 against each
// other, ±Inf, equal values.
func specialBuf(rng *rand.Rand, n int, side int) []float32 {
	specials := []float32{float32(math.NaN()), 0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), 1, -1}
	b := randBuf(rng, n)
	for i := range b {
		if rng.IntN(4) == 0 {
			b[i] = specials[(i*3+side)%len(specials)]
		}
	}
	return b
}

// reduceImpl is one implementation of the three kernels.
type reduceImpl struct {
	name  string
	add   func(dst, src []float32)
	max   func(dst, src []float32)
	scale func(x []float32, n int)
}

// checkReduceImpl compares an implementation with the reference kernels
// bit for bit, on every length, at offsets 0 and 1 (unaligned vectors).
func checkReduceImpl(t *testing.T, impl reduceImpl) {
	t.Helper()
	rng := rand.New(rand.NewPCG(5, 9))
	for _, n := range reduceLengths {
		for _, off := range []int{0, 1} {
			a, b := specialBuf(rng, n+off, 0)[off:], specialBuf(rng, n+off, 1)[off:]
			got, want := slices.Clone(a), slices.Clone(a)
			impl.add(got, b)
			addToRef(want, b)
			if i := firstBitDiff(got, want); i >= 0 {
				t.Fatalf("%s add n=%d off=%d: [%d] = %v, want %v (%v + %v)", impl.name, n, off, i, got[i], want[i], a[i], b[i])
			}
			got, want = slices.Clone(a), slices.Clone(a)
			impl.max(got, b)
			maxToRef(want, b)
			if i := firstBitDiff(got, want); i >= 0 {
				t.Fatalf("%s max n=%d off=%d: [%d] = %v (bits %x), want %v (bits %x) (max of %v, %v)", impl.name, n, off, i,
					got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]), a[i], b[i])
			}
			for _, k := range []int{2, 3, 7} {
				got, want = slices.Clone(a), slices.Clone(a)
				impl.scale(got, k)
				for i := range want {
					want[i] /= float32(k)
				}
				if i := firstBitDiff(got, want); i >= 0 {
					t.Fatalf("%s scale n=%d /%d: [%d] = %v, want %v", impl.name, n, k, i, got[i], want[i])
				}
			}
			// The kernels stay within min(len(dst), len(src)).
			if n > 0 {
				long := slices.Clone(a)
				impl.add(long, b[:n-1])
				if math.Float32bits(long[n-1]) != math.Float32bits(a[n-1]) {
					t.Fatalf("%s add n=%d wrote past the shorter source", impl.name, n)
				}
			}
		}
	}
}

// firstBitDiff returns the first index where a and b differ in bits (any
// two NaNs are equal: payloads are not promised), or -1.
func firstBitDiff(a, b []float32) int {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) && !(a[i] != a[i] && b[i] != b[i]) {
			return i
		}
	}
	return -1
}

// TestReduceKernels checks the kernels the collectives use (assembly where
// the CPU has it, or the Go loops under -tags purego) and the Go loops
// themselves against the obviously correct ones.
func TestReduceKernels(t *testing.T) {
	checkReduceImpl(t, reduceImpl{"dispatch", addTo, maxTo, scale})
	checkReduceImpl(t, reduceImpl{"go", addToGo, maxToGo, func(x []float32, n int) { scaleGo(x, float32(n)) }})
}

func BenchmarkReduce(b *testing.B) {
	for _, n := range []int{1 << 10, 64 << 10} { // 4 KiB and 256 KiB of float32
		dst, src := make([]float32, n), make([]float32, n)
		for _, k := range []struct {
			name string
			f    func(dst, src []float32)
		}{{"add", addTo}, {"add-go", addToGo}, {"max", maxTo}, {"max-go", maxToGo}} {
			b.Run(fmt.Sprintf("%s/%dKiB", k.name, 4*n>>10), func(b *testing.B) {
				b.SetBytes(int64(4 * n))
				for range b.N {
					k.f(dst, src)
				}
			})
		}
	}
}
