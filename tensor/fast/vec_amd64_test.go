//go:build amd64 && !purego

package fast

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAVX512MatchesAVX2: the 16-lane exp and SwiGLU loops give the 8-lane
// loops' bits element for element (the same operations), including the
// clamped range of the exponential.
func TestAVX512MatchesAVX2(t *testing.T) {
	if !useAVX512 || !useAVX2 {
		t.Skip("needs AVX-512 and AVX2")
	}
	rng := rand.New(rand.NewPCG(13, 14))
	for _, n := range []int{8, 16, 24, 64, 200} {
		x := randSlice(rng, n, 30)
		x[0], x[1] = -100, 95
		up, dout := randSlice(rng, n, 1), randSlice(rng, n, 1)
		a, b := make([]float32, n), make([]float32, n)
		expSubAVX512(&a[0], &x[0], n, 0.5)
		expSubAVX2(&b[0], &x[0], n, 0.5)
		for _, pair := range []struct {
			name string
			f512 func(out []float32)
			f2   func(out []float32)
		}{
			{"expSub", func(o []float32) { expSubAVX512(&o[0], &x[0], n, 0.5) }, func(o []float32) { expSubAVX2(&o[0], &x[0], n, 0.5) }},
			{"swigluFwd", func(o []float32) { swigluFwdAVX512(&o[0], &x[0], &up[0], n) }, func(o []float32) { swigluFwdAVX2(&o[0], &x[0], &up[0], n) }},
			{"swigluBwd dgate", func(o []float32) { d := slices.Clone(dout); swigluBwdAVX512(&o[0], &d[0], &dout[0], &x[0], &up[0], n) },
				func(o []float32) { d := slices.Clone(dout); swigluBwdAVX2(&o[0], &d[0], &dout[0], &x[0], &up[0], n) }},
			{"swigluBwd dup", func(o []float32) { d := slices.Clone(dout); swigluBwdAVX512(&d[0], &o[0], &dout[0], &x[0], &up[0], n) },
				func(o []float32) { d := slices.Clone(dout); swigluBwdAVX2(&d[0], &o[0], &dout[0], &x[0], &up[0], n) }},
		} {
			pair.f512(a)
			pair.f2(b)
			for i := range a {
				if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
					t.Fatalf("%s n=%d [%d] (x=%g): AVX-512 %g, AVX2 %g", pair.name, n, i, x[i], a[i], b[i])
				}
			}
		}
	}
}
