package fast

import (
	"math"
)

func roundUp(a, b int) int { return ceilDiv(a, b) * b }

// Fused causal attention, FlashAttention-2 style: the T×T score matrix is
// never materialized. Two implementations: the register-tiled kernels of
// attn512_amd64.s (runFused; head size 32 by default, see attnMode) and
// the tile path below, which runs everywhere else. In both, each task
// owns one (batch, head) — forward — or one (batch, kv head) — backward.
// The tile path walks blocks of attnRows query rows
// against blocks of attnCols key rows, with the score tile, the running
// row statistics and the output rows in the worker's cache.
//
// The tile products go straight to the micro-kernel (gemm.Tiles): Q, P,
// dO and dS are read in place by its broadcasts, V, K, dO and Q serve in
// place as the row-major B of P·V, dS·K, Pᵀ·dO and dSᵀ·Q, and only the
// transposed operands — Kᵀ for S = Q·Kᵀ and Vᵀ for dP = dO·Vᵀ — are packed,
// once per task for every block that reuses them. Query blocks are a
// multiple of the kernel's MR rows and key blocks of its NR columns, so
// only a sequence's last block has edge tiles.

// Blocks: a query block is attnRowTiles (forward) or 2·attnRowTiles
// (backward, where each block also updates dK and dV) micro-tile rows,
// and a key block is every causal key up to attnMaxCols: with T ≤ 512 each
// query block sees all its keys at once, so the forward needs no running
// rescale of O and no key block is revisited.
const (
	attnRowTiles    = 2
	attnBwdRowTiles = 4
	attnMaxCols     = 512
)

// attnBlocks returns the query block (rows) for the forward and backward
// and the key block (cols) for micro-tile mr×nr and sequence length T.
func attnBlocks(mr, nr, T int) (fwdRows, bwdRows, cols int) {
	return attnRowTiles * mr, attnBwdRowTiles * mr, min(roundUp(T, nr), roundUp(attnMaxCols, nr))
}

// attnMode picks the forward's kernel: attnAuto takes the register-tiled
// one (attn512_amd64.s) where it measured faster than the tile path — head
// size 32 on the Xeon VM (docs/kernels.md) — and the tile path elsewhere;
// attnTile and attnRegTiled force one (tests, benchmarks).
type attnMode int8

const (
	attnAuto attnMode = iota
	attnTile
	attnRegTiled
)

// attnFwdTask is one (batch, head) per index: for each query block, stream
// key blocks keeping a running max m and sum l per row; O accumulates in
// place in out and is divided by l at the end.
type attnFwdTask struct {
	out, lse, q, k, v                      []float32
	batch, seqLen, heads, kvHeads, headDim int
	mode                                   attnMode
}

func (t *attnFwdTask) run(w *worker, idx int) {
	if t.mode == attnRegTiled || t.mode == attnAuto && t.headDim == 32 {
		if f := fusedFwdKernel(t.seqLen, t.headDim, w.tiles.NR()); f != nil {
			t.runFused(w, idx, f)
			return
		}
	}
	T, D := t.seqLen, t.headDim
	ldq, ldk, qBase, kBase, sc, lse := t.head(idx)
	tl := w.tiles
	mr := tl.MR()
	br, _, bc := attnBlocks(mr, tl.NR(), T)

	nk := tl.PackedLen(D, T)
	buf := w.scratch(nk + br*bc + 4*br)
	kp := buf[:nk] // Kᵀ in NR-key panels
	s := buf[nk : nk+br*bc]
	stats := buf[nk+br*bc : nk+br*bc+4*br]
	m, l, mOld, sum := stats[:br], stats[br:2*br], stats[2*br:3*br], stats[3*br:]
	tl.PackB(kp, true, t.k[kBase:], ldk, D, T)
	negInf := float32(math.Inf(-1))

	for i0 := 0; i0 < T; i0 += br {
		rows := min(br, T-i0)
		qi := t.q[qBase+i0*ldq:]
		oi := t.out[qBase+i0*ldq:]
		for r := range rows {
			m[r], l[r] = negInf, 0
		}
		jEnd := i0 + rows // causal: keys [0, i0+rows)
		for j0 := 0; j0 < jEnd; j0 += bc {
			cols := min(bc, jEnd-j0)
			for r0 := 0; r0 < rows; r0 += mr { // S, each strip up to its last causal key
				if ext := causalExt(i0, r0, min(mr, rows-r0), j0, cols); ext > 0 {
					tl.MulPacked(min(mr, rows-r0), ext, D, sc, qi[r0*ldq:], ldq, 1, kp[j0*D:], false, s[r0*cols:], cols)
				}
			}
			copy(mOld, m[:rows])
			// Row r sees keys up to i0+r: i0+r−j0+1 of this block.
			expRows(s, cols, rows, cols, i0-j0+1, m, sum)
			for r := range rows {
				if i0+r < j0 { // no key of this block: row unchanged
					continue
				}
				if j0 == 0 {
					l[r] = sum[r]
					continue
				}
				alpha := exp32(mOld[r] - m[r])
				if alpha != 1 {
					scale(oi[r*ldq:r*ldq+D], alpha)
				}
				l[r] = l[r]*alpha + sum[r]
			}
			for r0 := 0; r0 < rows; r0 += mr { // O (+)= P·V over the strip's causal keys
				if ext := causalExt(i0, r0, min(mr, rows-r0), j0, cols); ext > 0 {
					tl.Mul(min(mr, rows-r0), D, ext, 1, s[r0*cols:], cols, 1, t.v[kBase+j0*ldk:], ldk, j0 > 0, oi[r0*ldq:], ldq)
				}
			}
		}
		for r := range rows {
			scale(oi[r*ldq:r*ldq+D], 1/l[r])
			lse[i0+r] = m[r] + log32(l[r]) // l ≥ 1: the row's largest term is e⁰
		}
	}
}

// causalExt is how many keys of the block from key j0 (cols wide) the
// query strip of rows r0 … r0+n−1 of the block from query i0 sees: up to
// and including the last row's own key. ≤ 0: none.
func causalExt(i0, r0, n, j0, cols int) int { return min(cols, i0+r0+n-j0) }

// head locates task idx's (batch, head): the row strides of Q (and out)
// and of K (and V), where its first rows start, the softmax scale, and its
// rows' log-sum-exp.
func (t *attnFwdTask) head(idx int) (ldq, ldk, qBase, kBase int, sc float32, lse []float32) {
	b, h := idx/t.heads, idx%t.heads
	T, D := t.seqLen, t.headDim
	kh := h / (t.heads / t.kvHeads)
	ldq, ldk = t.heads*D, t.kvHeads*D
	qBase = (b*T*t.heads + h) * D
	kBase = (b*T*t.kvHeads + kh) * D
	sc = float32(1 / math.Sqrt(float64(D)))
	return ldq, ldk, qBase, kBase, sc, t.lse[(b*t.heads+h)*T : (b*t.heads+h+1)*T]
}

// runFused is run for the register-tiled kernel f (attn512_amd64.s): Kᵀ
// packed once per (batch, head) in the micro-kernel's 32-key panels, then one call per four
// query rows over all their causal keys, S kept in registers.
func (t *attnFwdTask) runFused(w *worker, idx int, f func(q *float32, ldq int, kt, v *float32, ldv int, o *float32, nblk, v0 int, scale float32, ml *float32)) {
	T, D := t.seqLen, t.headDim
	ldq, ldk, qBase, kBase, sc, lse := t.head(idx)
	// The kernel reads rows [0, T) of K and V and four rows of Q and out
	// from each i0: check the last of each once.
	_ = t.k[kBase+(T-1)*ldk+D-1]
	_ = t.v[kBase+(T-1)*ldk+D-1]
	_ = t.q[qBase+(T-1)*ldq+D-1]
	_ = t.out[qBase+(T-1)*ldq+D-1]

	tl := w.tiles
	nk := tl.PackedLen(D, T)
	buf := w.scratch(nk + 8)
	kt, ml := buf[:nk], buf[nk:nk+8]
	tl.PackB(kt, true, t.k[kBase:], ldk, D, T) // Kᵀ in 32-key panels
	for i0 := 0; i0 < T; i0 += 4 {
		last := i0 &^ 15 // the block holding keys i0 … i0+3
		f(&t.q[qBase+i0*ldq], ldq, &kt[0], &t.v[kBase], ldk, &t.out[qBase+i0*ldq], last/16+1, i0-last+1, sc, &ml[0])
		for r := range 4 {
			lse[i0+r] = ml[r] + log32(ml[4+r]) // l ≥ 1: the row's largest term is e⁰
		}
	}
}

// AttentionForward implements tensor.Kernels.AttentionForward, parallel
// over (batch, head).
func (k *Kernels) AttentionForward(out, lse, q, kk, v []float32, batch, seqLen, heads, kvHeads, headDim int) {
	t := &k.attF
	*t = attnFwdTask{out, lse, q, kk, v, batch, seqLen, heads, kvHeads, headDim, k.attnMode}
	k.pool.run(t, batch*heads)
	*t = attnFwdTask{}
}

// attnBwdTask is one (batch, kv head) per index, so that the dk and dv rows
// it accumulates belong to it alone. For every query head of the group and
// every query block, and each key block of its causal range, it recomputes
// P = exp(S − lse) and accumulates dV += Pᵀ dO, dS = P∘(dO Vᵀ − D),
// dQ += scale·dS K, dK += scale·dSᵀ Q, with D_i = dO_i·O_i. Every
// accumulation runs in a fixed order.
type attnBwdTask struct {
	dq, dk, dv, dout, out, lse, q, k, v    []float32
	batch, seqLen, heads, kvHeads, headDim int
	mode                                   attnMode
}

func (t *attnBwdTask) run(w *worker, idx int) {
	if t.mode == attnRegTiled || t.mode == attnAuto && t.headDim == 32 {
		if f := fusedBwdKernel(t.seqLen, t.headDim, w.tiles.NR()); f != nil {
			t.runFused(w, idx, f)
			return
		}
	}
	b, kh := idx/t.kvHeads, idx%t.kvHeads
	T, D := t.seqLen, t.headDim
	group := t.heads / t.kvHeads
	ldq, ldk := t.heads*D, t.kvHeads*D
	kBase := (b*T*t.kvHeads + kh) * D
	sc := float32(1 / math.Sqrt(float64(D)))
	tl := w.tiles
	mr := tl.MR()
	_, br, bc := attnBlocks(mr, tl.NR(), T)

	nk := tl.PackedLen(D, T)
	buf := w.scratch(2*nk + 2*br*bc + group*T + br)
	kp := buf[:nk]       // Kᵀ in NR-key panels
	vp := buf[nk : 2*nk] // Vᵀ likewise
	p := buf[2*nk : 2*nk+br*bc]
	dp := buf[2*nk+br*bc : 2*nk+2*br*bc]
	dd := buf[2*nk+2*br*bc : 2*nk+2*br*bc+group*T] // D per (head in group, t)
	sums := buf[2*nk+2*br*bc+group*T:]             // P's row sums (unused)
	tl.PackB(kp, true, t.k[kBase:], ldk, D, T)
	tl.PackB(vp, true, t.v[kBase:], ldk, D, T)

	// With one key block (T ≤ bc) a key strip's first product — head 0 of
	// the group, the query block that holds the strip's keys — stores dK
	// and dV rather than adding to them, which saves a pass that clears
	// them (their rows are strided: a write and a read of every line).
	single := T <= bc
	if !single {
		for t0 := 0; t0 < T; t0++ {
			clear(t.dk[kBase+t0*ldk : kBase+t0*ldk+D])
			clear(t.dv[kBase+t0*ldk : kBase+t0*ldk+D])
		}
	}
	for g := range group {
		h := kh*group + g
		qBase := (b*T*t.heads + h) * D
		for t0 := 0; t0 < T; t0++ {
			o := qBase + t0*ldq
			dd[g*T+t0] = dot(t.dout[o:o+D], t.out[o:o+D])
		}
	}
	for g := range group {
		h := kh*group + g
		qBase := (b*T*t.heads + h) * D
		lse := t.lse[(b*t.heads+h)*T : (b*t.heads+h+1)*T]
		for i0 := 0; i0 < T; i0 += br {
			rows := min(br, T-i0)
			qi, doi, dqi := t.q[qBase+i0*ldq:], t.dout[qBase+i0*ldq:], t.dq[qBase+i0*ldq:]
			jEnd := i0 + rows // causal: keys [0, i0+rows)
			for j0 := 0; j0 < jEnd; j0 += bc {
				cols := min(bc, jEnd-j0)
				kj := t.k[kBase+j0*ldk:]
				dkj, dvj := t.dk[kBase+j0*ldk:], t.dv[kBase+j0*ldk:]
				// Query strips stop at their last causal key and key strips
				// start at their first causal query: only the diagonal
				// block's upper triangle, whose P and dS are 0, is skipped.
				for r0 := 0; r0 < rows; r0 += mr { // S
					if ext := causalExt(i0, r0, min(mr, rows-r0), j0, cols); ext > 0 {
						tl.MulPacked(min(mr, rows-r0), ext, D, sc, qi[r0*ldq:], ldq, 1, kp[j0*D:], false, p[r0*cols:], cols)
					}
				}
				expShiftRows(p, cols, rows, cols, i0-j0+1, lse[i0:], sums) // P = e^(S − lse), causal, 0 past it

				for c0 := 0; c0 < cols; c0 += mr { // dV += Pᵀ dO
					q0 := max(0, j0+c0-i0) // the first query row that sees key c0
					first := single && g == 0 && c0 >= i0
					tl.Mul(min(mr, cols-c0), D, rows-q0, 1, p[q0*cols+c0:], 1, cols, doi[q0*ldq:], ldq, !first, dvj[c0*ldk:], ldk)
				}
				for r0 := 0; r0 < rows; r0 += mr { // dP = dO Vᵀ, dS = P∘(dP − D)·scale
					mrr := min(mr, rows-r0)
					ext := max(causalExt(i0, r0, mrr, j0, cols), 0)
					if ext > 0 {
						tl.MulPacked(mrr, ext, D, 1, doi[r0*ldq:], ldq, 1, vp[j0*D:], false, dp[r0*cols:], cols)
					}
					for r := r0; r < r0+mrr; r++ { // past the diagonal P is 0, so dS is too
						dsRow(dp[r*cols:r*cols+ext], p[r*cols:r*cols+ext], dd[g*T+i0+r], sc)
						if j0%mr != 0 {
							// The key strips of dK read this row up to the end of
							// the strip holding its last key, past ext. (With j0 a
							// multiple of MR, as i0 and r0 are, ext is a strip's end.)
							clear(dp[r*cols+ext : (r+1)*cols])
						}
					}
				}
				for r0 := 0; r0 < rows; r0 += mr { // dQ (+)= dS K
					if ext := causalExt(i0, r0, min(mr, rows-r0), j0, cols); ext > 0 {
						tl.Mul(min(mr, rows-r0), D, ext, 1, dp[r0*cols:], cols, 1, kj, ldk, j0 > 0, dqi[r0*ldq:], ldq)
					}
				}
				for c0 := 0; c0 < cols; c0 += mr { // dK += dSᵀ Q
					q0 := max(0, j0+c0-i0)
					first := single && g == 0 && c0 >= i0
					tl.Mul(min(mr, cols-c0), D, rows-q0, 1, dp[q0*cols+c0:], 1, cols, qi[q0*ldq:], ldq, !first, dkj[c0*ldk:], ldk)
				}
			}
		}
	}
}

// runFused is run for the register-tiled backward f (attn512_amd64.s):
// Kᵀ and Vᵀ packed once per (batch, kv head), then one call per four query
// rows of each head of the group over all their causal keys; dQ is
// written by the call, dK and dV accumulate in place in a fixed order.
func (t *attnBwdTask) runFused(w *worker, idx int, f func(q, dout, dq *float32, ldq int, kt, vt, k, dk, dv *float32, ldk int, lse, dd *float32, nblk, v0 int, scale float32)) {
	b, kh := idx/t.kvHeads, idx%t.kvHeads
	T, D := t.seqLen, t.headDim
	group := t.heads / t.kvHeads
	ldq, ldk := t.heads*D, t.kvHeads*D
	kBase := (b*T*t.kvHeads + kh) * D
	sc := float32(1 / math.Sqrt(float64(D)))
	tl := w.tiles
	// The kernel touches rows [0, T) of K, dK and dV and four rows of Q,
	// dO and dQ from each i0: check the last of each once.
	last := kBase + (T-1)*ldk + D - 1
	_, _, _ = t.k[last], t.dk[last], t.dv[last]

	nk := tl.PackedLen(D, T)
	buf := w.scratch(2*nk + group*T)
	kp, vp, dd := buf[:nk], buf[nk:2*nk], buf[2*nk:2*nk+group*T]
	tl.PackB(kp, true, t.k[kBase:], ldk, D, T)
	tl.PackB(vp, true, t.v[kBase:], ldk, D, T)
	for t0 := range T {
		clear(t.dk[kBase+t0*ldk : kBase+t0*ldk+D])
		clear(t.dv[kBase+t0*ldk : kBase+t0*ldk+D])
	}
	for g := range group {
		h := kh*group + g
		qBase := (b*T*t.heads + h) * D
		lq := qBase + (T-1)*ldq + D - 1
		_, _, _ = t.q[lq], t.dout[lq], t.dq[lq]
		for t0 := range T {
			o := qBase + t0*ldq
			dd[g*T+t0] = dot(t.dout[o:o+D], t.out[o:o+D])
		}
		lse := t.lse[(b*t.heads+h)*T : (b*t.heads+h+1)*T]
		for i0 := 0; i0 < T; i0 += 4 {
			blk := i0 &^ 15 // the block holding keys i0 … i0+3
			o := qBase + i0*ldq
			f(&t.q[o], &t.dout[o], &t.dq[o], ldq, &kp[0], &vp[0], &t.k[kBase], &t.dk[kBase], &t.dv[kBase], ldk,
				&lse[i0], &dd[g*T+i0], blk/16+1, i0-blk+1, sc)
		}
	}
}

// AttentionBackward implements tensor.Kernels.AttentionBackward, parallel
// over (batch, kv head).
func (k *Kernels) AttentionBackward(dq, dk, dv, dout, out, lse, q, kk, v []float32, batch, seqLen, heads, kvHeads, headDim int) {
	t := &k.attB
	*t = attnBwdTask{dq, dk, dv, dout, out, lse, q, kk, v, batch, seqLen, heads, kvHeads, headDim, k.attnMode}
	k.pool.run(t, batch*kvHeads)
	*t = attnBwdTask{}
}
