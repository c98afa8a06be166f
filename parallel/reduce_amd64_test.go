//go:build amd64 && !purego

package parallel

import "testing"

// TestReduceAssembly runs each assembly variant the CPU supports, whatever
// the dispatch would pick, against the reference kernels.
func TestReduceAssembly(t *testing.T) {
	wrap := func(width int, add, max func(dst, src *float32, n int), scl func(x *float32, n int, d float32)) reduceImpl {
		vec := func(f func(dst, src *float32, n int), tail func(dst, src []float32)) func(dst, src []float32) {
			return func(dst, src []float32) {
				n := min(len(dst), len(src))
				v := n / width * width
				if v > 0 {
					f(&dst[0], &src[0], v)
				}
				tail(dst[v:n], src[v:n])
			}
		}
		return reduceImpl{
			add: vec(add, addToGo),
			max: vec(max, maxToGo),
			scale: func(x []float32, n int) {
				v := len(x) / width * width
				if v > 0 {
					scl(&x[0], v, float32(n))
				}
				scaleGo(x[v:], float32(n))
			},
		}
	}
	ran := 0
	if hasAVX2() {
		impl := wrap(8, addAVX2, maxAVX2, scaleAVX2)
		impl.name = "avx2"
		checkReduceImpl(t, impl)
		ran++
	}
	if hasAVX512() {
		impl := wrap(16, addAVX512, maxAVX512, scaleAVX512)
		impl.name = "avx512"
		checkReduceImpl(t, impl)
		ran++
	}
	t.Logf("checked %d assembly variants (avx2 %v, avx512 %v)", ran, hasAVX2(), hasAVX512())
}
