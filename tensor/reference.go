package tensor

import "math"

// Reference is the plain, obviously correct implementation of Kernels: every
// fast kernel is tested against it. Reductions that decide correctness (norms,
// softmax, dot products in attention, losses) accumulate in float64; storage is
// float32. It is single-threaded, keeps no state, and is safe for concurrent use.
type Reference struct{}

var _ Kernels = Reference{}

// Sgemm implements Kernels.Sgemm with an i-k-j loop (axpy over rows of B) when
// B is not transposed and row-by-row dot products when it is.
func (Reference) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		crow := c[i*ldc : i*ldc+n]
		switch beta {
		case 0:
			clear(crow)
		case 1:
		default:
			for j := range crow {
				crow[j] *= beta
			}
		}
	}
	if alpha == 0 || k == 0 {
		return
	}
	for i := 0; i < m; i++ {
		crow := c[i*ldc : i*ldc+n]
		if !transB {
			for p := 0; p < k; p++ {
				var aip float32
				if transA {
					aip = a[p*lda+i]
				} else {
					aip = a[i*lda+p]
				}
				axpy(alpha*aip, b[p*ldb:p*ldb+n], crow)
			}
			continue
		}
		for j := 0; j < n; j++ {
			brow := b[j*ldb : j*ldb+k]
			var s float32
			if transA {
				for p, bv := range brow {
					s += a[p*lda+i] * bv
				}
			} else {
				s = dot32(a[i*lda:i*lda+k], brow)
			}
			crow[j] += alpha * s
		}
	}
}

// axpy: y += alpha·x, 4-way unrolled.
func axpy(alpha float32, x, y []float32) {
	n := len(y)
	x = x[:n]
	i := 0
	for ; i+4 <= n; i += 4 {
		y[i] += alpha * x[i]
		y[i+1] += alpha * x[i+1]
		y[i+2] += alpha * x[i+2]
		y[i+3] += alpha * x[i+3]
	}
	for ; i < n; i++ {
		y[i] += alpha * x[i]
	}
}

// dot32 is a float32 dot product with four partial sums.
func dot32(x, y []float32) float32 {
	n := len(x)
	y = y[:n]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= n; i += 4 {
		s0 += x[i] * y[i]
		s1 += x[i+1] * y[i+1]
		s2 += x[i+2] * y[i+2]
		s3 += x[i+3] * y[i+3]
	}
	for ; i < n; i++ {
		s0 += x[i] * y[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// dot64 is a dot product accumulated in float64.
func dot64(x, y []float32) float64 {
	y = y[:len(x)]
	var s float64
	for i, xv := range x {
		s += float64(xv) * float64(y[i])
	}
	return s
}

// RMSNormForward implements Kernels.RMSNormForward.
func (Reference) RMSNormForward(out, rstd, x, w []float32, rows, dim int, eps float32) {
	w = w[:dim]
	for r := 0; r < rows; r++ {
		xr := x[r*dim : (r+1)*dim]
		rs := float32(1 / math.Sqrt(dot64(xr, xr)/float64(dim)+float64(eps)))
		rstd[r] = rs
		or := out[r*dim : (r+1)*dim]
		for j, xv := range xr {
			or[j] = xv * rs * w[j]
		}
	}
}

// RMSNormBackward implements Kernels.RMSNormBackward.
//
// With y_j = x_j·r·w_j and r = (mean(x²)+eps)^(-1/2):
// dx_j = r·w_j·dy_j − (r³/dim)·x_j·Σ_k dy_k·w_k·x_k and dw_j = Σ_rows dy_j·x_j·r.
func (Reference) RMSNormBackward(dx, dw, dout, x, w, rstd []float32, rows, dim int) {
	w = w[:dim]
	dw = dw[:dim]
	for r := 0; r < rows; r++ {
		xr := x[r*dim : (r+1)*dim]
		dy := dout[r*dim : (r+1)*dim]
		dxr := dx[r*dim : (r+1)*dim]
		rs := float64(rstd[r])
		var s float64
		for j, xv := range xr {
			s += float64(dy[j]) * float64(w[j]) * float64(xv)
		}
		c := rs * rs * rs * s / float64(dim)
		for j, xv := range xr {
			dxr[j] += float32(rs*float64(w[j])*float64(dy[j]) - c*float64(xv))
			dw[j] += float32(float64(dy[j]) * float64(xv) * rs)
		}
	}
}

// RoPEForward implements Kernels.RoPEForward.
func (Reference) RoPEForward(x, cos, sin []float32, batch, seqLen, heads, headDim int) {
	rope(x, cos, sin, batch, seqLen, heads, headDim, 1)
}

// RoPEBackward implements Kernels.RoPEBackward: the transpose of a rotation is
// the rotation by the opposite angle.
func (Reference) RoPEBackward(dx, cos, sin []float32, batch, seqLen, heads, headDim int) {
	rope(dx, cos, sin, batch, seqLen, heads, headDim, -1)
}

// rope rotates x in place by sign·angle.
func rope(x, cos, sin []float32, batch, seqLen, heads, headDim int, sign float32) {
	half := headDim / 2
	for b := 0; b < batch; b++ {
		for t := 0; t < seqLen; t++ {
			ct := cos[t*half : (t+1)*half]
			st := sin[t*half : (t+1)*half]
			for h := 0; h < heads; h++ {
				base := ((b*seqLen+t)*heads + h) * headDim
				x1 := x[base : base+half]
				x2 := x[base+half : base+headDim]
				for i := range x1 {
					c, s := ct[i], sign*st[i]
					u, w := x1[i], x2[i]
					x1[i] = u*c - w*s
					x2[i] = w*c + u*s
				}
			}
		}
	}
}

func sigmoid(x float32) float64 { return 1 / (1 + math.Exp(-float64(x))) }

// SwiGLUForward implements Kernels.SwiGLUForward.
func (Reference) SwiGLUForward(out, gate, up []float32) {
	gate = gate[:len(out)]
	up = up[:len(out)]
	for i, g := range gate {
		out[i] = float32(float64(g)*sigmoid(g)) * up[i]
	}
}

// SwiGLUBackward implements Kernels.SwiGLUBackward:
// d/dg silu(g) = σ(g)·(1 + g·(1−σ(g))).
func (Reference) SwiGLUBackward(dgate, dup, dout, gate, up []float32) {
	n := len(dout)
	gate, up, dgate, dup = gate[:n], up[:n], dgate[:n], dup[:n]
	for i, g := range gate {
		sg := sigmoid(g)
		d := float64(dout[i])
		silu := float64(g) * sg
		dg := d * float64(up[i]) * sg * (1 + float64(g)*(1-sg))
		dgate[i] = float32(dg)
		dup[i] = float32(d * silu)
	}
}

// AttentionForward implements Kernels.AttentionForward. It never materializes
// the score matrix: for each query row a first pass computes the log-sum-exp
// with an online maximum, a second pass accumulates the weighted values.
func (Reference) AttentionForward(out, lse, q, k, v []float32, batch, seqLen, heads, kvHeads, headDim int) {
	scale := 1 / math.Sqrt(float64(headDim))
	group := heads / kvHeads
	for b := 0; b < batch; b++ {
		for h := 0; h < heads; h++ {
			kh := h / group
			for i := 0; i < seqLen; i++ {
				qi := q[((b*seqLen+i)*heads+h)*headDim:][:headDim]
				mx, l := math.Inf(-1), 0.0
				for j := 0; j <= i; j++ {
					kj := k[((b*seqLen+j)*kvHeads+kh)*headDim:][:headDim]
					s := scale * dot64(qi, kj)
					if s > mx {
						l = l*math.Exp(mx-s) + 1
						mx = s
					} else {
						l += math.Exp(s - mx)
					}
				}
				ls := mx + math.Log(l)
				lse[(b*heads+h)*seqLen+i] = float32(ls)
				oi := out[((b*seqLen+i)*heads+h)*headDim:][:headDim]
				clear(oi)
				for j := 0; j <= i; j++ {
					kj := k[((b*seqLen+j)*kvHeads+kh)*headDim:][:headDim]
					vj := v[((b*seqLen+j)*kvHeads+kh)*headDim:][:headDim]
					p := float32(math.Exp(scale*dot64(qi, kj) - ls))
					axpy(p, vj, oi)
				}
			}
		}
	}
}

// AttentionBackward implements Kernels.AttentionBackward, recomputing the
// probabilities from the saved log-sum-exp:
// dS_ij = P_ij·(dout_i·v_j − dout_i·out_i); dq_i = scale·Σ_j dS_ij k_j;
// dk_j = scale·Σ_i dS_ij q_i; dv_j = Σ_i P_ij dout_i.
func (Reference) AttentionBackward(dq, dk, dv, dout, out, lse, q, k, v []float32, batch, seqLen, heads, kvHeads, headDim int) {
	scale := 1 / math.Sqrt(float64(headDim))
	group := heads / kvHeads
	clear(dq[:batch*seqLen*heads*headDim])
	clear(dk[:batch*seqLen*kvHeads*headDim])
	clear(dv[:batch*seqLen*kvHeads*headDim])
	for b := 0; b < batch; b++ {
		for h := 0; h < heads; h++ {
			kh := h / group
			for i := 0; i < seqLen; i++ {
				off := ((b*seqLen+i)*heads + h) * headDim
				qi, doi, oi, dqi := q[off:off+headDim], dout[off:off+headDim], out[off:off+headDim], dq[off:off+headDim]
				di := dot64(doi, oi)
				ls := float64(lse[(b*heads+h)*seqLen+i])
				for j := 0; j <= i; j++ {
					kvOff := ((b*seqLen+j)*kvHeads + kh) * headDim
					kj, vj := k[kvOff:kvOff+headDim], v[kvOff:kvOff+headDim]
					p := math.Exp(scale*dot64(qi, kj) - ls)
					ds := p * (dot64(doi, vj) - di)
					axpy(float32(scale*ds), kj, dqi)
					axpy(float32(scale*ds), qi, dk[kvOff:kvOff+headDim])
					axpy(float32(p), doi, dv[kvOff:kvOff+headDim])
				}
			}
		}
	}
}

// RowMax implements Kernels.RowMax.
func (Reference) RowMax(mx, s []float32, rows, n, ld int) {
	for r := range rows {
		best := float32(math.Inf(-1))
		for _, x := range s[r*ld : r*ld+n] {
			if x > best || x != x {
				best = x
			}
		}
		mx[r] = best
	}
}

// ExpShiftRows implements Kernels.ExpShiftRows, in float64.
func (Reference) ExpShiftRows(sum, s, shift []float32, rows, n, ld int) {
	for r := range rows {
		M := float64(shift[r])
		var t float64
		row := s[r*ld : r*ld+n]
		for j, x := range row {
			e := math.Exp(float64(x) - M)
			t += e
			row[j] = float32(e)
		}
		sum[r] = float32(t)
	}
}

// CrossEntropy implements Kernels.CrossEntropy.
func (Reference) CrossEntropy(dlogits, logits []float32, targets []int32, rows, vocab int, gradScale float32) float64 {
	counted := 0
	for _, t := range targets[:rows] {
		if t >= 0 {
			counted++
		}
	}
	if counted == 0 {
		if dlogits != nil {
			clear(dlogits[:rows*vocab])
		}
		return 0
	}
	g := float64(gradScale) / float64(counted)
	var loss float64
	for r := 0; r < rows; r++ {
		row := logits[r*vocab : (r+1)*vocab]
		t := int(targets[r])
		if t < 0 {
			if dlogits != nil {
				clear(dlogits[r*vocab : (r+1)*vocab])
			}
			continue
		}
		mx := float64(row[0])
		for _, x := range row {
			mx = math.Max(mx, float64(x))
		}
		var sum float64
		for _, x := range row {
			sum += math.Exp(float64(x) - mx)
		}
		ls := mx + math.Log(sum)
		loss += ls - float64(row[t])
		if dlogits == nil {
			continue
		}
		drow := dlogits[r*vocab : (r+1)*vocab]
		for j, x := range row {
			p := math.Exp(float64(x) - ls)
			if j == t {
				p -= 1
			}
			drow[j] = float32(g * p)
		}
	}
	return loss / float64(counted)
}

// AdamW implements Kernels.AdamW, mirroring torch.optim.AdamW's single-tensor
// path: p *= 1−lr·wd; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
// p −= lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps). Scalars are rounded to
// float32 where PyTorch's CPU kernels round them.
func (Reference) AdamW(p, g, m, v []float32, h AdamWHyper) {
	n := len(p)
	g, m, v = g[:n], m[:n], v[:n]
	decay := float32(1 - h.LR*h.WeightDecay)
	b1, omb1 := float32(h.Beta1), float32(1-h.Beta1)
	b2, omb2 := float32(h.Beta2), float32(1-h.Beta2)
	bc1 := 1 - math.Pow(h.Beta1, float64(h.Step))
	bc2 := 1 - math.Pow(h.Beta2, float64(h.Step))
	stepSize := float32(h.LR / bc1)
	bc2Sqrt := float32(math.Sqrt(bc2))
	eps := float32(h.Eps)
	for i, gi := range g {
		if h.GradScale != 0 {
			gi *= h.GradScale
		}
		pi := p[i] * decay
		mi := m[i]*b1 + gi*omb1
		vi := v[i]*b2 + omb2*gi*gi
		denom := float32(math.Sqrt(float64(vi)))/bc2Sqrt + eps
		p[i] = pi - stepSize*(mi/denom)
		m[i], v[i] = mi, vi
	}
}

// SumSquares implements Kernels.SumSquares.
func (Reference) SumSquares(x []float32) float64 { return dot64(x, x) }

// Scale implements Kernels.Scale.
func (Reference) Scale(x []float32, alpha float32) {
	for i := range x {
		x[i] *= alpha
	}
}
