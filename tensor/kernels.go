// Package tensor owns Loom's kernel boundary: the Kernels interface every numerical op goes through, and Reference, its plain-Go implementation.
package tensor

import "math"

// Kernels is the boundary between the model and the code that does arithmetic.
// The model only ever calls these methods, so a faster implementation (a tiled
// SGEMM, a fused attention kernel) can be swapped in without touching model/.
//
// Conventions shared by every method:
//   - all tensors are flat row-major float32 slices; shapes are given in the
//     comment as (dim0, dim1, ...) and the dims are explicit arguments;
//   - activation sequences are (batch, seqLen, ...), i.e. row r = b*seqLen + t;
//   - a backward method ACCUMULATES (+=) into parameter gradients (dw) and into
//     gradients documented as "+=" below; outputs documented as "=" are
//     overwritten;
//   - implementations must not retain slices after returning and must not
//     allocate per call in steady state.
type Kernels interface {
	// Sgemm computes C = alpha·op(A)·op(B) + beta·C on row-major matrices,
	// where op(X) is X or Xᵀ. op(A) is (m,k), op(B) is (k,n), C is (m,n).
	// A is stored (m,k) with row stride lda if !transA, else (k,m); B is stored
	// (k,n) with row stride ldb if !transB, else (n,k). When beta == 0, C is
	// not read (NaNs in C do not propagate), as in BLAS.
	Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)

	// RMSNormForward: out (rows,dim) = x·rsqrt(mean(x²)+eps)·w; saves rstd (rows).
	// x (rows,dim), w (dim). out may alias x.
	RMSNormForward(out, rstd, x, w []float32, rows, dim int, eps float32)
	// RMSNormBackward: dx (rows,dim) +=, dw (dim) +=, from dout (rows,dim),
	// the forward input x, w and the saved rstd (rows).
	RMSNormBackward(dx, dw, dout, x, w, rstd []float32, rows, dim int)

	// RoPEForward rotates x (batch,seqLen,heads,headDim) in place with the
	// Hugging Face rotate-half layout: for i < headDim/2, the pair
	// (x[i], x[i+headDim/2]) is rotated by the angle for (t, i).
	// cos, sin (≥seqLen, headDim/2) come from RoPETables.
	RoPEForward(x, cos, sin []float32, batch, seqLen, heads, headDim int)
	// RoPEBackward turns dout into dx in place (the inverse rotation), same layout.
	RoPEBackward(dx, cos, sin []float32, batch, seqLen, heads, headDim int)

	// SwiGLUForward: out (n) = silu(gate)·up, n = len(out).
	SwiGLUForward(out, gate, up []float32)
	// SwiGLUBackward: dgate (n) =, dup (n) = from dout (n) and the forward inputs.
	// dgate or dup may alias dout.
	SwiGLUBackward(dgate, dup, dout, gate, up []float32)

	// AttentionForward is causal grouped-query softmax attention with scale
	// 1/sqrt(headDim). q (batch,seqLen,heads,headDim); k, v
	// (batch,seqLen,kvHeads,headDim), query head h reads kv head
	// h/(heads/kvHeads). Writes out (batch,seqLen,heads,headDim) = and saves
	// lse (batch,heads,seqLen) =, the log-sum-exp of each row of scaled scores.
	// kvHeads must divide heads.
	AttentionForward(out, lse, q, k, v []float32, batch, seqLen, heads, kvHeads, headDim int)
	// AttentionBackward writes dq =, dk =, dv = (shapes of q, k, v) from
	// dout and the forward's q, k, v, out and lse.
	AttentionBackward(dq, dk, dv, dout, out, lse, q, k, v []float32, batch, seqLen, heads, kvHeads, headDim int)

	// CrossEntropy returns the mean over counted rows of -log softmax(logits)[target]
	// for logits (rows,vocab) and targets (rows). A negative target is ignored
	// (PyTorch's ignore_index) and is not counted. If dlogits is non-nil it is
	// set to gradScale·d(mean loss)/d(logits); dlogits may alias logits (the
	// logits are then overwritten). gradScale lets gradient accumulation
	// divide by the number of micro-batches. Returns 0 when no row counts.
	CrossEntropy(dlogits, logits []float32, targets []int32, rows, vocab int, gradScale float32) float64
	// RowMax writes to mx[r] the largest of the n entries of row r of s
	// (row r at s[r·ld:]), for rows rows. The pieces of a cross-entropy
	// whose vocabulary is split over ranks (the maxima and sums are
	// reduced over the ranks in between).
	RowMax(mx, s []float32, rows, n, ld int)
	// ExpShiftRows replaces the n entries of row r of s by exp(s − shift[r])
	// and writes their sum to sum[r], for rows rows.
	ExpShiftRows(sum, s, shift []float32, rows, n, ld int)

	// AdamW applies one torch.optim.AdamW step (single-tensor code path of
	// PyTorch 1.13+) to p, with gradient g and moments m, v, all of one
	// length, updated in place. h.Step is the 1-based step after increment.
	// With h.GradScale set the step uses g·GradScale (g is not written):
	// gradient clipping folded into the update pass.
	AdamW(p, g, m, v []float32, h AdamWHyper)

	// SumSquares returns Σ x² accumulated in float64 (for the global grad norm).
	SumSquares(x []float32) float64
	// Scale multiplies x in place by alpha (gradient clipping).
	Scale(x []float32, alpha float32)
}

// AdamWHyper holds the hyperparameters of one AdamW step. They are float64,
// like PyTorch's Python floats, so bias corrections are computed the same way.
type AdamWHyper struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
	Step                               int // 1-based count including this step
	// GradScale, when non-zero, multiplies each gradient element (in
	// float32, as Scale(g, GradScale) would round it) before the update,
	// without writing g: global-norm clipping's scale applied in the
	// optimizer's pass instead of a pass of its own over the gradients.
	// Zero means no scaling.
	GradScale float32
}

// RoPETables returns cos and sin tables (seqLen, headDim/2) for rotary
// embeddings with base theta. They are computed in float32 exactly as Hugging
// Face LlamaRotaryEmbedding does (inv_freq = 1/theta^(2i/headDim) in float32,
// angle = float32(t)·inv_freq in float32), so imported checkpoints see the
// same angles, including float32 rounding at long positions.
func RoPETables(seqLen, headDim int, theta float64) (cos, sin []float32) {
	half := headDim / 2
	cos = make([]float32, seqLen*half)
	sin = make([]float32, seqLen*half)
	for i := 0; i < half; i++ {
		exp := float32(2*i) / float32(headDim)
		invFreq := 1 / float32(math.Pow(theta, float64(exp)))
		for t := 0; t < seqLen; t++ {
			angle := float64(float32(t) * invFreq)
			cos[t*half+i] = float32(math.Cos(angle))
			sin[t*half+i] = float32(math.Sin(angle))
		}
	}
	return cos, sin
}
