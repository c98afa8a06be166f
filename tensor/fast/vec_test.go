package fast

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// vecLengths cover the vector widths (8, 16) and their tails.
var vecLengths = []int{1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257}

// guarded returns n random values inside sentinel padding, and a check
// that the padding is intact.
func guarded(rng *rand.Rand, n int, std float64) (x []float32, intact func() bool) {
	const pad = 19
	buf := make([]float32, n+2*pad)
	for i := range buf {
		buf[i] = float32(rng.NormFloat64() * std)
	}
	orig := slices.Clone(buf)
	x = buf[pad : pad+n]
	return x, func() bool {
		return slices.Equal(buf[:pad], orig[:pad]) && slices.Equal(buf[pad+n:], orig[pad+n:])
	}
}

// TestRowPrimitives: the dispatched primitives (AVX-512 where the CPU has
// it) agree with their Go forms — exactly for max and the elementwise
// ops, within float32 summation error for sums — and never write outside
// their slices.
func TestRowPrimitives(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, n := range vecLengths {
		x, okX := guarded(rng, n, 3)
		y, okY := guarded(rng, n, 1)
		if got, want := vmax(x), maxGo(x); got != want {
			t.Errorf("n=%d: vmax %g, Go %g", n, got, want)
		}
		if got, want := dot(x, y), dotGo(x, y); math.Abs(float64(got-want)) > 1e-5*float64(n) {
			t.Errorf("n=%d: dot %g, Go %g", n, got, want)
		}
		xs := slices.Clone(x)
		scale(x, 0.37)
		scaleGo(xs, 0.37)
		if !slices.Equal(x, xs) {
			t.Errorf("n=%d: scale differs from Go", n)
		}
		ds, dsG := slices.Clone(y), slices.Clone(y)
		dsRow(ds, x, 0.25, 0.125)
		dsRowGo(dsG, x, 0.25, 0.125)
		if !slices.Equal(ds, dsG) {
			t.Errorf("n=%d: dsRow differs from Go", n)
		}
		dst, okD := guarded(rng, n, 0)
		s := expSub(dst, x, 1.5)
		sg := float32(0)
		for i := range x {
			want := exp32(x[i] - 1.5)
			if d := math.Abs(float64(dst[i] - want)); d > 2e-7*float64(want) {
				t.Fatalf("n=%d: expSub[%d] = %g, exp32 %g", n, i, dst[i], want)
			}
			sg += want
		}
		if math.Abs(float64(s-sg)) > 1e-6*float64(sg)*math.Sqrt(float64(n)) {
			t.Errorf("n=%d: expSub sum %g, Go %g", n, s, sg)
		}
		for _, valid := range []int{1, (n + 1) / 2, n} {
			row, okR := guarded(rng, n, 2)
			rowG := slices.Clone(row)
			mx, sum := expRow(row, valid, -1)
			mxG, sumG := expRowGo(rowG, valid, -1)
			if mx != mxG || math.Abs(float64(sum-sumG)) > 1e-6*float64(sumG) {
				t.Errorf("n=%d valid=%d: expRow (%g, %g), Go (%g, %g)", n, valid, mx, sum, mxG, sumG)
			}
			for i := range row {
				if d := math.Abs(float64(row[i] - rowG[i])); d > 2e-7*float64(rowG[i]) || (i >= valid && row[i] != 0) {
					t.Fatalf("n=%d valid=%d: row[%d] = %g, Go %g", n, valid, i, row[i], rowG[i])
				}
			}
			if !okR() {
				t.Errorf("n=%d valid=%d: expRow wrote outside the row", n, valid)
			}
		}
		if !okX() || !okY() || !okD() {
			t.Errorf("n=%d: a primitive wrote outside its slice", n)
		}
	}
}

// TestExpRows: the tile form against expRowGo row by row, with causal
// valid counts that start below zero, cross the row width and exceed it.
func TestExpRows(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for _, n := range []int{1, 7, 16, 33, 64, 130} {
		for _, v0 := range []int{-5, 0, 1, n / 2, n + 3} {
			rows, ld := 9, n+3
			s, ok := guarded(rng, (rows-1)*ld+n, 2)
			sG := slices.Clone(s)
			mx, sum := make([]float32, rows), make([]float32, rows)
			for r := range mx {
				mx[r] = float32(rng.NormFloat64())
			}
			mxG, sumG := slices.Clone(mx), make([]float32, rows)
			expRows(s, ld, rows, n, v0, mx, sum)
			expRowsGo(sG, ld, rows, n, v0, mxG, sumG)
			for r := range rows {
				if mx[r] != mxG[r] || math.Abs(float64(sum[r]-sumG[r])) > 1e-6*float64(sumG[r]) {
					t.Fatalf("n=%d v0=%d row %d: (mx, sum) = (%g, %g), Go (%g, %g)", n, v0, r, mx[r], sum[r], mxG[r], sumG[r])
				}
			}
			for i := range s {
				if d := math.Abs(float64(s[i] - sG[i])); d > 2e-7*math.Abs(float64(sG[i])) {
					t.Fatalf("n=%d v0=%d: s[%d] = %g, Go %g", n, v0, i, s[i], sG[i])
				}
			}
			if !ok() {
				t.Errorf("n=%d v0=%d: expRows wrote outside the tile", n, v0)
			}
		}
	}
}

// TestElementwiseExact: the dispatched RMSNorm, RoPE and AdamW primitives
// give the Go forms' bits (they round the same operations in the same
// order), and the float64 reductions agree within float64 rounding; none
// writes outside its slices.
func TestElementwiseExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	same := func(name string, n int, got, want []float32) {
		t.Helper()
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("n=%d %s[%d] = %g, Go %g", n, name, i, got[i], want[i])
			}
		}
	}
	for _, n := range vecLengths {
		x, okX := guarded(rng, n, 2)
		w, okW := guarded(rng, n, 1)
		dy, okDy := guarded(rng, n, 1)

		out, okO := guarded(rng, n, 0)
		outG := slices.Clone(out)
		rmsScale(out, x, w, 0.7)
		rmsScaleGo(outG, x, w, 0.7)
		same("rmsScale", n, out, outG)

		dx, okDx := guarded(rng, n, 1)
		pw, okP := guarded(rng, n, 1)
		dxG, pwG := slices.Clone(dx), slices.Clone(pw)
		rmsBackRow(dx, pw, dy, x, w, 0.7, 0.3)
		rmsBackRowGo(dxG, pwG, dy, x, w, 0.7, 0.3)
		same("rmsBackRow dx", n, dx, dxG)
		same("rmsBackRow pw", n, pw, pwG)

		for _, sign := range []float32{1, -1} {
			x1, x2 := slices.Clone(x), slices.Clone(dy)
			x1G, x2G := slices.Clone(x), slices.Clone(dy)
			ropeRotate(x1, x2, w, dy, sign)
			ropeRotateGo(x1G, x2G, w, dy, sign)
			same("rope x1", n, x1, x1G)
			same("rope x2", n, x2, x2G)
		}

		c := adamConsts{decay: 0.999, b1: 0.9, omb1: 0.1, b2: 0.95, omb2: 0.05, stepSize: 1e-3, bc2Sqrt: 0.3, eps: 1e-8, gscale: 0.37}
		p, okPp := guarded(rng, n, 1)
		m, okM := guarded(rng, n, 0.1)
		v, okV := guarded(rng, n, 0.1)
		for i := range v {
			v[i] *= v[i]
		}
		pG, mG, vG := slices.Clone(p), slices.Clone(m), slices.Clone(v)
		adamw(p, dy, m, v, &c)
		adamwGo(pG, dy, mG, vG, &c)
		same("adamw p", n, p, pG)
		same("adamw m", n, m, mG)
		same("adamw v", n, v, vG)

		if got, want := sumSq(x), sumSqGo(x); math.Abs(got-want) > 1e-13*want {
			t.Errorf("n=%d: sumSq %g, Go %g", n, got, want)
		}
		var mag float64
		for i := range x {
			mag += math.Abs(float64(x[i]) * float64(w[i]) * float64(dy[i]))
		}
		if got, want := dot3(x, w, dy), dot3Go(x, w, dy); math.Abs(got-want) > 1e-13*mag {
			t.Errorf("n=%d: dot3 %g, Go %g", n, got, want)
		}
		for _, ok := range []func() bool{okX, okW, okDy, okO, okDx, okP, okPp, okM, okV} {
			if !ok() {
				t.Fatalf("n=%d: a primitive wrote outside its slice", n)
			}
		}
	}
}

// TestRopeRotateHeads: one call for a row's heads gives ropeRotateGo's
// bits per head, at half sizes around the vector width and its tails, and
// writes nothing past the row.
func TestRopeRotateHeads(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	for _, heads := range []int{1, 2, 3, 8} {
		for _, hd := range []int{2, 3, 6, 14, 31, 32, 34, 48, 64, 66, 130} {
			half := hd / 2
			c, _ := guarded(rng, half, 1)
			s, _ := guarded(rng, half, 1)
			for _, sign := range []float32{1, -1} {
				row, intact := guarded(rng, heads*hd, 1)
				want := slices.Clone(row)
				for h := range heads {
					b := h * hd
					ropeRotateGo(want[b:b+half], want[b+half:b+hd], c, s, sign)
				}
				ropeRotateHeads(row, heads, hd, c, s, sign)
				if !slices.Equal(row, want) {
					t.Errorf("heads %d headDim %d sign %g: differs from ropeRotateGo per head", heads, hd, sign)
				}
				if !intact() {
					t.Errorf("heads %d headDim %d sign %g: wrote outside the row", heads, hd, sign)
				}
			}
		}
	}
}
