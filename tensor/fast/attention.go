package fast

import (
	"math"
)

// Attention tiles: a block of attnBr query rows against a block of attnBc
// key rows. The scores of one tile pair live in worker scratch; the T×T
// matrix is never materialized. Tile products run on the worker's
// single-threaded SGEMM engine straight from the strided (batch, seq, head,
// headDim) layout, so nothing is transposed or copied.
const (
	attnBr = 64
	attnBc = 64
)

// attnFwdTask is one (batch, head) per index, FlashAttention-2 style: for
// each query block, stream key blocks keeping a running max m and sum l per
// row; O accumulates in place in out and is divided by l at the end.
type attnFwdTask struct {
	out, lse, q, k, v                      []float32
	batch, seqLen, heads, kvHeads, headDim int
}

func (t *attnFwdTask) run(w *worker, idx int) {
	b, h := idx/t.heads, idx%t.heads
	T, D := t.seqLen, t.headDim
	kh := h / (t.heads / t.kvHeads)
	ldq, ldk := t.heads*D, t.kvHeads*D
	qBase := (b*T*t.heads + h) * D
	kBase := (b*T*t.kvHeads + kh) * D
	sc := float32(1 / math.Sqrt(float64(D)))
	lse := t.lse[(b*t.heads+h)*T : (b*t.heads+h+1)*T]

	buf := w.scratch(attnBr*attnBc + 2*attnBr)
	s := buf[:attnBr*attnBc]
	m := buf[attnBr*attnBc : attnBr*attnBc+attnBr]
	l := buf[attnBr*attnBc+attnBr : attnBr*attnBc+2*attnBr]
	negInf := float32(math.Inf(-1))

	for i0 := 0; i0 < T; i0 += attnBr {
		br := min(attnBr, T-i0)
		qi := t.q[qBase+i0*ldq:]
		oi := t.out[qBase+i0*ldq:]
		for r := range br {
			m[r], l[r] = negInf, 0
		}
		jEnd := i0 + br // causal: keys [0, i0+br)
		for j0 := 0; j0 < jEnd; j0 += attnBc {
			bc := min(attnBc, jEnd-j0)
			w.eng.Sgemm(false, true, br, bc, D, sc, qi, ldq, t.k[kBase+j0*ldk:], ldk, 0, s, bc)
			for r := range br {
				row := s[r*bc : (r+1)*bc]
				valid := min(max(i0+r-j0+1, 0), bc)
				clear(row[valid:])
				if valid == 0 {
					continue
				}
				mx := max(vmax(row[:valid]), m[r])
				sum := expSub(row[:valid], row[:valid], mx)
				if j0 > 0 {
					alpha := exp32(m[r] - mx)
					if alpha != 1 {
						scale(oi[r*ldq:r*ldq+D], alpha)
					}
					l[r] = l[r]*alpha + sum
				} else {
					l[r] = sum
				}
				m[r] = mx
			}
			beta := float32(1)
			if j0 == 0 {
				beta = 0
			}
			w.eng.Sgemm(false, false, br, D, bc, 1, s, bc, t.v[kBase+j0*ldk:], ldk, beta, oi, ldq)
		}
		for r := range br {
			scale(oi[r*ldq:r*ldq+D], 1/l[r])
			lse[i0+r] = m[r] + float32(math.Log(float64(l[r])))
		}
	}
}

// AttentionForward implements tensor.Kernels.AttentionForward, parallel
// over (batch, head).
func (k *Kernels) AttentionForward(out, lse, q, kk, v []float32, batch, seqLen, heads, kvHeads, headDim int) {
	t := &k.attF
	*t = attnFwdTask{out, lse, q, kk, v, batch, seqLen, heads, kvHeads, headDim}
	k.pool.run(t, batch*heads)
	*t = attnFwdTask{}
}

// attnBwdTask is one (batch, kv head) per index, so that the dk and dv rows
// it accumulates belong to it alone. For every key block and every query
// head of the group it recomputes P = exp(S − lse) per tile and accumulates
// dV += Pᵀ dO, dS = P∘(dO Vᵀ − D), dQ += scale·dS K, dK += scale·dSᵀ Q, with
// D_i = dO_i·O_i. Every accumulation runs in a fixed order.
type attnBwdTask struct {
	dq, dk, dv, dout, out, lse, q, k, v    []float32
	batch, seqLen, heads, kvHeads, headDim int
}

func (t *attnBwdTask) run(w *worker, idx int) {
	b, kh := idx/t.kvHeads, idx%t.kvHeads
	T, D := t.seqLen, t.headDim
	group := t.heads / t.kvHeads
	ldq, ldk := t.heads*D, t.kvHeads*D
	kBase := (b*T*t.kvHeads + kh) * D
	sc := float32(1 / math.Sqrt(float64(D)))

	buf := w.scratch(2*attnBr*attnBc + group*T)
	p := buf[:attnBr*attnBc]
	dp := buf[attnBr*attnBc : 2*attnBr*attnBc]
	dd := buf[2*attnBr*attnBc : 2*attnBr*attnBc+group*T] // D per (head in group, t)

	for t0 := 0; t0 < T; t0++ {
		clear(t.dk[kBase+t0*ldk : kBase+t0*ldk+D])
		clear(t.dv[kBase+t0*ldk : kBase+t0*ldk+D])
	}
	for g := range group {
		h := kh*group + g
		qBase := (b*T*t.heads + h) * D
		for t0 := 0; t0 < T; t0++ {
			o := qBase + t0*ldq
			clear(t.dq[o : o+D])
			dd[g*T+t0] = dot(t.dout[o:o+D], t.out[o:o+D])
		}
	}
	for j0 := 0; j0 < T; j0 += attnBc {
		bc := min(attnBc, T-j0)
		kj, vj := t.k[kBase+j0*ldk:], t.v[kBase+j0*ldk:]
		dkj, dvj := t.dk[kBase+j0*ldk:], t.dv[kBase+j0*ldk:]
		for g := range group {
			h := kh*group + g
			qBase := (b*T*t.heads + h) * D
			lse := t.lse[(b*t.heads+h)*T : (b*t.heads+h+1)*T]
			for i0 := j0 / attnBr * attnBr; i0 < T; i0 += attnBr {
				br := min(attnBr, T-i0)
				if i0+br <= j0 {
					continue
				}
				qi, doi, dqi := t.q[qBase+i0*ldq:], t.dout[qBase+i0*ldq:], t.dq[qBase+i0*ldq:]
				w.eng.Sgemm(false, true, br, bc, D, sc, qi, ldq, kj, ldk, 0, p, bc)
				for r := range br {
					row := p[r*bc : (r+1)*bc]
					valid := min(max(i0+r-j0+1, 0), bc)
					expSub(row[:valid], row[:valid], lse[i0+r])
					clear(row[valid:])
				}
				w.eng.Sgemm(true, false, bc, D, br, 1, p, bc, doi, ldq, 1, dvj, ldk)
				w.eng.Sgemm(false, true, br, bc, D, 1, doi, ldq, vj, ldk, 0, dp, bc)
				for r := range br {
					dsRow(dp[r*bc:(r+1)*bc], p[r*bc:(r+1)*bc], dd[g*T+i0+r], sc)
				}
				w.eng.Sgemm(false, false, br, D, bc, 1, dp, bc, kj, ldk, 1, dqi, ldq)
				w.eng.Sgemm(true, false, bc, D, br, 1, dp, bc, qi, ldq, 1, dkj, ldk)
			}
		}
	}
}

// dsRow: ds = scale·p∘(ds − d), in place over ds.
func dsRow(ds, p []float32, d, scale float32) {
	p = p[:len(ds)]
	for i := range ds {
		ds[i] = scale * p[i] * (ds[i] - d)
	}
}

// AttentionBackward implements tensor.Kernels.AttentionBackward, parallel
// over (batch, kv head).
func (k *Kernels) AttentionBackward(dq, dk, dv, dout, out, lse, q, kk, v []float32, batch, seqLen, heads, kvHeads, headDim int) {
	t := &k.attB
	*t = attnBwdTask{dq, dk, dv, dout, out, lse, q, kk, v, batch, seqLen, heads, kvHeads, headDim}
	k.pool.run(t, batch*kvHeads)
	*t = attnBwdTask{}
}
