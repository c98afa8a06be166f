//go:build amd64 && !purego

package fast

import "golang.org/x/sys/cpu"

// useAVX2 selects the assembly loops (vec_amd64.s); without AVX2+FMA every
// primitive falls back to its pure-Go version.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// useAVX512 selects the AVX-512 row primitives (vec512_amd64.s), which
// take any length (a masked vector for the tail).
var useAVX512 = cpu.X86.HasAVX512F

//go:noescape
func expSubAVX512(dst, src *float32, n int, shift float32) float32

//go:noescape
func maxAVX512(x *float32, n int) float32

//go:noescape
func scaleAVX512(x *float32, n int, alpha float32)

//go:noescape
func dotAVX512(x, y *float32, n int) float32

//go:noescape
func dsRowAVX512(ds, p *float32, n int, d, scale float32)

//go:noescape
func expRowAVX512(row *float32, valid, n int, floor float32) (mx, sum float32)

// expRow is one softmax row: mx = max(floor, row[:valid]), row[:valid] =
// e^(row − mx) with sum Σ, row[valid:] = 0. valid ≥ 1.
func expRow(row []float32, valid int, floor float32) (mx, sum float32) {
	if useAVX512 {
		_ = row[valid-1]
		return expRowAVX512(&row[0], valid, len(row), floor)
	}
	return expRowGo(row, valid, floor)
}

//go:noescape
func expRowsAVX512(s *float32, ld, rows, n, v0 int, mx, sum *float32, findMax int)

// expRows is expRow for rows rows of s (row r at s[r·ld:], n wide) with
// valid = clamp(v0+r, 0, n) entries each, the running maxima mx (updated)
// as floors and the sums out in sum. A row with no valid entry is zeroed
// with sum 0 and its mx unchanged.
func expRows(s []float32, ld, rows, n, v0 int, mx, sum []float32) {
	if rows == 0 || n == 0 {
		return
	}
	_ = s[(rows-1)*ld+n-1]
	_, _ = mx[rows-1], sum[rows-1]
	if useAVX512 {
		expRowsAVX512(&s[0], ld, rows, n, v0, &mx[0], &sum[0], 1)
		return
	}
	expRowsGo(s, ld, rows, n, v0, mx, sum)
}

// expShiftRows is expRows with the shifts given (shift[r], not written)
// instead of the running maxima: attention's backward recomputes P =
// e^(S − lse) per row.
func expShiftRows(s []float32, ld, rows, n, v0 int, shift, sum []float32) {
	if rows == 0 || n == 0 {
		return
	}
	_ = s[(rows-1)*ld+n-1]
	_, _ = shift[rows-1], sum[rows-1]
	if useAVX512 {
		expRowsAVX512(&s[0], ld, rows, n, v0, &shift[0], &sum[0], 0)
		return
	}
	expShiftRowsGo(s, ld, rows, n, v0, shift, sum)
}

//go:noescape
func rmsScaleAVX512(out, x, w *float32, n int, rs float32)

//go:noescape
func rmsBackRowAVX512(dx, pw, dy, x, w *float32, n int, rs, c float32)

//go:noescape
func ropeRotateAVX512(x1, x2, c, s *float32, n int, sign float32)

//go:noescape
func ropeRotateHeadsAVX512(x *float32, heads, headDim int, c, s *float32, sign float32)

//go:noescape
func adamwAVX512(p, grad, m, v *float32, n int, c *adamConsts)

//go:noescape
func sumSqAVX512(x *float32, n int) float64

//go:noescape
func dot3AVX512(a, b, c *float32, n int) float64

func rmsScale(out, x, w []float32, rs float32) {
	n := len(out)
	if useAVX512 && n > 0 {
		x, w = x[:n], w[:n]
		rmsScaleAVX512(&out[0], &x[0], &w[0], n, rs)
		return
	}
	rmsScaleGo(out, x, w, rs)
}

func rmsBackRow(dx, pw, dy, x, w []float32, rs, c float32) {
	n := len(dx)
	if useAVX512 && n > 0 {
		pw, dy, x, w = pw[:n], dy[:n], x[:n], w[:n]
		rmsBackRowAVX512(&dx[0], &pw[0], &dy[0], &x[0], &w[0], n, rs, c)
		return
	}
	rmsBackRowGo(dx, pw, dy, x, w, rs, c)
}

// ropeRotateHeads is ropeRotate for every head of one row: head h's
// halves row[h·headDim:][:headDim/2] and the half after it, all rotated by
// the angles c, s (headDim/2 each), in one call.
func ropeRotateHeads(row []float32, heads, headDim int, c, s []float32, sign float32) {
	half := headDim / 2
	if useAVX512 && heads > 0 && half > 0 {
		_ = row[heads*headDim-1]
		c, s = c[:half], s[:half]
		ropeRotateHeadsAVX512(&row[0], heads, headDim, &c[0], &s[0], sign)
		return
	}
	ropeRotateHeadsGo(row, heads, headDim, c, s, sign)
}

func ropeRotate(x1, x2, c, s []float32, sign float32) {
	n := len(x1)
	if useAVX512 && n > 0 {
		x2, c, s = x2[:n], c[:n], s[:n]
		ropeRotateAVX512(&x1[0], &x2[0], &c[0], &s[0], n, sign)
		return
	}
	ropeRotateGo(x1, x2, c, s, sign)
}

func adamw(p, g, m, v []float32, c *adamConsts) {
	n := len(p)
	if useAVX512 && n > 0 {
		g, m, v = g[:n], m[:n], v[:n]
		adamwAVX512(&p[0], &g[0], &m[0], &v[0], n, c)
		return
	}
	adamwGo(p, g, m, v, c)
}

func sumSq(x []float32) float64 {
	if useAVX512 && len(x) > 0 {
		return sumSqAVX512(&x[0], len(x))
	}
	return sumSqGo(x)
}

func dot3(a, b, c []float32) float64 {
	n := len(a)
	if useAVX512 && n > 0 {
		b, c = b[:n], c[:n]
		return dot3AVX512(&a[0], &b[0], &c[0], n)
	}
	return dot3Go(a, b, c)
}

func vmax(x []float32) float32 {
	if useAVX512 && len(x) > 0 {
		return maxAVX512(&x[0], len(x))
	}
	return maxGo(x)
}

func dot(x, y []float32) float32 {
	if useAVX512 && len(x) > 0 {
		y = y[:len(x)]
		return dotAVX512(&x[0], &y[0], len(x))
	}
	return dotGo(x, y)
}

func scale(x []float32, alpha float32) {
	if useAVX512 && len(x) > 0 {
		scaleAVX512(&x[0], len(x), alpha)
		return
	}
	scaleGo(x, alpha)
}

func dsRow(ds, p []float32, d, scale float32) {
	if useAVX512 && len(ds) > 0 {
		p = p[:len(ds)]
		dsRowAVX512(&ds[0], &p[0], len(ds), d, scale)
		return
	}
	dsRowGo(ds, p, d, scale)
}

//go:noescape
func expSubAVX2(dst, src *float32, n int, shift float32) float32

//go:noescape
func swigluFwdAVX2(out, gate, up *float32, n int)

//go:noescape
func swigluBwdAVX2(dgate, dup, dout, gate, up *float32, n int)

func expSub(dst, src []float32, shift float32) float32 {
	n := len(dst)
	src = src[:n]
	if useAVX512 && n > 0 {
		return expSubAVX512(&dst[0], &src[0], n, shift)
	}
	v := n &^ 7
	if !useAVX2 || v == 0 {
		return expSubGo(dst, src, shift)
	}
	s := expSubAVX2(&dst[0], &src[0], v, shift)
	if v < n {
		s += expSubGo(dst[v:], src[v:], shift)
	}
	return s
}

//go:noescape
func swigluFwdAVX512(out, gate, up *float32, n int)

//go:noescape
func swigluBwdAVX512(dgate, dup, dout, gate, up *float32, n int)

func swigluFwd(out, gate, up []float32) {
	n := len(out)
	gate, up = gate[:n], up[:n]
	if useAVX512 && n > 0 {
		swigluFwdAVX512(&out[0], &gate[0], &up[0], n)
		return
	}
	v := n &^ 7
	if useAVX2 && v > 0 {
		swigluFwdAVX2(&out[0], &gate[0], &up[0], v)
	} else {
		v = 0
	}
	swigluFwdGo(out[v:], gate[v:], up[v:])
}

func swigluBwd(dgate, dup, dout, gate, up []float32) {
	n := len(dout)
	dgate, dup, gate, up = dgate[:n], dup[:n], gate[:n], up[:n]
	if useAVX512 && n > 0 {
		swigluBwdAVX512(&dgate[0], &dup[0], &dout[0], &gate[0], &up[0], n)
		return
	}
	v := n &^ 7
	if useAVX2 && v > 0 {
		swigluBwdAVX2(&dgate[0], &dup[0], &dout[0], &gate[0], &up[0], v)
	} else {
		v = 0
	}
	swigluBwdGo(dgate[v:], dup[v:], dout[v:], gate[v:], up[v:])
}
