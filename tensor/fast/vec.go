package fast

import "math"

// Scalar building blocks shared by the pure-Go and assembly paths.

const (
	log2e  = 1.44269504088896341
	ln2Hi  = 0.693359375
	ln2Lo  = -2.12194440e-4
	expMax = 88.72283905206835   // exp overflows float32 above this
	expMin = -103.97207708399179 // exp underflows to 0 below this
)

// exp32 is e^x in float32 with ≈1 ulp error (Cephes expf): x = n·ln2 + r,
// |r| ≤ ln2/2, a degree-6 polynomial for e^r, then scaling by 2^n.
func exp32(x float32) float32 {
	switch {
	case x != x:
		return x
	case x > expMax:
		return float32(math.Inf(1))
	case x < expMin:
		return 0
	}
	n := float32(math.Floor(float64(x*log2e + 0.5)))
	r := x - n*ln2Hi
	r -= n * ln2Lo
	p := float32(1.9875691500e-4)
	p = p*r + 1.3981999507e-3
	p = p*r + 8.3334519073e-3
	p = p*r + 4.1665795894e-2
	p = p*r + 1.6666665459e-1
	p = p*r + 5.0000001201e-1
	p = p*r*r + r + 1
	ni := int32(n)
	if ni > 127 { // 2^128 overflows, p·2^127·2 may not
		return p * 2 * math.Float32frombits(uint32(ni-1+127)<<23)
	}
	if ni < -125 { // result is subnormal: scale in two steps
		p *= math.Float32frombits(uint32(ni+127+64) << 23)
		return p * math.Float32frombits(uint32(127-64)<<23)
	}
	return p * math.Float32frombits(uint32(ni+127)<<23)
}

// log32 is ln x in float32 for positive normal x, ≈1 ulp (Cephes logf):
// x = 2^e·f with f in [√½, √2), a degree-8 polynomial in f−1. Attention's
// log-sum-exp takes it once per row, where math.Log's float64 cost showed.
func log32(x float32) float32 {
	bits := math.Float32bits(x)
	e := int32(bits>>23) - 126 // x = 2^e · f, f in [0.5, 1)
	f := math.Float32frombits(bits&0x807fffff | 0x3f000000)
	if f < 0.707106781186547524 {
		e--
		f = f + f - 1
	} else {
		f--
	}
	z := f * f
	y := float32(7.0376836292e-2)
	y = y*f - 1.1514610310e-1
	y = y*f + 1.1676998740e-1
	y = y*f - 1.2420140846e-1
	y = y*f + 1.4249322787e-1
	y = y*f - 1.6668057665e-1
	y = y*f + 2.0000714765e-1
	y = y*f - 2.4999993993e-1
	y = y*f + 3.3333331174e-1
	y = y * f * z
	fe := float32(e)
	y += -2.12194440e-4 * fe
	y += -0.5 * z
	return f + y + 0.693359375*fe
}

// expSub sets dst[i] = e^(src[i]−shift) and returns Σ dst.
func expSubGo(dst, src []float32, shift float32) float32 {
	src = src[:len(dst)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(dst); i += 4 {
		e0, e1, e2, e3 := exp32(src[i]-shift), exp32(src[i+1]-shift), exp32(src[i+2]-shift), exp32(src[i+3]-shift)
		dst[i], dst[i+1], dst[i+2], dst[i+3] = e0, e1, e2, e3
		s0 += e0
		s1 += e1
		s2 += e2
		s3 += e3
	}
	for ; i < len(dst); i++ {
		e := exp32(src[i] - shift)
		dst[i] = e
		s0 += e
	}
	return (s0 + s1) + (s2 + s3)
}

// expRowGo is expRow's portable form.
func expRowGo(row []float32, valid int, floor float32) (mx, sum float32) {
	mx = max(vmax(row[:valid]), floor)
	sum = expSub(row[:valid], row[:valid], mx)
	clear(row[valid:])
	return mx, sum
}

// expRowsGo is expRows's portable form.
func expRowsGo(s []float32, ld, rows, n, v0 int, mx, sum []float32) {
	for r := range rows {
		row := s[r*ld : r*ld+n]
		valid := min(max(v0+r, 0), n)
		if valid == 0 {
			clear(row)
			sum[r] = 0
			continue
		}
		mx[r], sum[r] = expRowGo(row, valid, mx[r])
	}
}

// expShiftRowsGo is expShiftRows's portable form.
func expShiftRowsGo(s []float32, ld, rows, n, v0 int, shift, sum []float32) {
	for r := range rows {
		row := s[r*ld : r*ld+n]
		valid := min(max(v0+r, 0), n)
		sum[r] = 0
		if valid > 0 {
			sum[r] = expSub(row[:valid], row[:valid], shift[r])
		}
		clear(row[valid:])
	}
}

func maxGo(x []float32) float32 {
	m := float32(math.Inf(-1))
	for _, v := range x {
		if v > m {
			m = v
		}
	}
	return m
}

// sumSqGo is Σ x² accumulated in float64.
func sumSqGo(x []float32) float64 {
	var s0, s1 float64
	i := 0
	for ; i+2 <= len(x); i += 2 {
		a, b := float64(x[i]), float64(x[i+1])
		s0 += a * a
		s1 += b * b
	}
	for ; i < len(x); i++ {
		a := float64(x[i])
		s0 += a * a
	}
	return s0 + s1
}

// dotGo is a float32 dot product with four partial sums.
func dotGo(x, y []float32) float32 {
	y = y[:len(x)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(x); i += 4 {
		s0 += x[i] * y[i]
		s1 += x[i+1] * y[i+1]
		s2 += x[i+2] * y[i+2]
		s3 += x[i+3] * y[i+3]
	}
	for ; i < len(x); i++ {
		s0 += x[i] * y[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// dot3Go is Σ a·b·c accumulated in float64.
func dot3Go(a, b, c []float32) float64 {
	b, c = b[:len(a)], c[:len(a)]
	var s float64
	for i, av := range a {
		s += float64(av) * float64(b[i]) * float64(c[i])
	}
	return s
}

// rmsScaleGo: out = x·rs·w. out may alias x.
func rmsScaleGo(out, x, w []float32, rs float32) {
	x, w = x[:len(out)], w[:len(out)]
	for i := range out {
		out[i] = float32(x[i]*rs) * w[i] // float32(): no fused multiply-add (the assembly rounds each product)
	}
}

// rmsBackRowGo: dx += rs·w·dy − c·x; pw += dy·x·rs.
func rmsBackRowGo(dx, pw, dy, x, w []float32, rs, c float32) {
	n := len(dx)
	pw, dy, x, w = pw[:n], dy[:n], x[:n], w[:n]
	for j := range dx {
		dx[j] += float32(float32(rs*w[j])*dy[j]) - float32(c*x[j])
		pw[j] += float32(float32(dy[j]*x[j]) * rs)
	}
}

// addToGo: dst += src.
func addToGo(dst, src []float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += src[i]
	}
}

// scaleGo: x *= alpha.
func scaleGo(x []float32, alpha float32) {
	for i := range x {
		x[i] *= alpha
	}
}

// dsRowGo: ds = scale·p∘(ds − d), in place over ds.
func dsRowGo(ds, p []float32, d, scale float32) {
	p = p[:len(ds)]
	for i := range ds {
		ds[i] = scale * p[i] * (ds[i] - d)
	}
}

// ropeRotateHeadsGo is ropeRotateHeads's portable form: ropeRotateGo per
// head.
func ropeRotateHeadsGo(row []float32, heads, headDim int, c, s []float32, sign float32) {
	half := headDim / 2
	for h := range heads {
		base := h * headDim
		ropeRotateGo(row[base:base+half], row[base+half:base+headDim], c[:half], s[:half], sign)
	}
}

// ropeRotateGo rotates the pairs (x1[i], x2[i]) by sign·angle(i).
func ropeRotateGo(x1, x2, c, s []float32, sign float32) {
	n := len(x1)
	x2, c, s = x2[:n], c[:n], s[:n]
	for i := range x1 {
		ci, si := c[i], sign*s[i]
		u, w := x1[i], x2[i]
		x1[i] = float32(u*ci) - float32(w*si)
		x2[i] = float32(w*ci) + float32(u*si)
	}
}

func swigluFwdGo(out, gate, up []float32) {
	gate, up = gate[:len(out)], up[:len(out)]
	for i, g := range gate {
		sg := 1 / (1 + exp32(-g))
		out[i] = g * sg * up[i]
	}
}

func swigluBwdGo(dgate, dup, dout, gate, up []float32) {
	n := len(dout)
	dgate, dup, gate, up = dgate[:n], dup[:n], gate[:n], up[:n]
	for i, g := range gate {
		sg := 1 / (1 + exp32(-g))
		d, u := dout[i], up[i]
		dgate[i] = d * u * sg * (1 + g*(1-sg))
		dup[i] = d * g * sg
	}
}

func adamwGo(p, g, m, v []float32, c *adamConsts) {
	n := len(p)
	g, m, v = g[:n], m[:n], v[:n]
	for i, gi := range g {
		gi *= c.gscale // ×1 when unscaled: the same bits
		pi := p[i] * c.decay
		mi := float32(m[i]*c.b1) + float32(gi*c.omb1)
		vi := float32(v[i]*c.b2) + float32(float32(c.omb2*gi)*gi)
		denom := float32(math.Sqrt(float64(vi)))/c.bc2Sqrt + c.eps
		p[i] = pi - float32(c.stepSize*(mi/denom))
		m[i], v[i] = mi, vi
	}
}

// Kernels with no assembly yet run their Go versions on every platform.

func addTo(dst, src []float32) { addToGo(dst, src) }
