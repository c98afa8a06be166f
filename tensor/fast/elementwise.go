package fast

import (
	"math"

	"github.com/loomtrain/loom/tensor"
)

// Fixed task sizes: they depend only on shapes, which keeps every reduction
// order (and so every result) independent of the thread count.
const (
	chunkElems = 1 << 14 // elementwise ops: 64 KiB of float32 per task
	normRows   = 16      // RMSNorm rows per task
	ropeRows   = 16      // RoPE (batch·seq) rows per task
)

// ---- RMSNorm ----

type rmsFwdTask struct {
	out, rstd, x, w []float32
	rows, dim       int
	eps             float32
}

func (t *rmsFwdTask) run(_ *worker, c int) {
	r0, r1 := c*normRows, min((c+1)*normRows, t.rows)
	d := t.dim
	for r := r0; r < r1; r++ {
		xr := t.x[r*d : (r+1)*d]
		rs := float32(1 / math.Sqrt(sumSq(xr)/float64(d)+float64(t.eps)))
		t.rstd[r] = rs
		rmsScale(t.out[r*d:(r+1)*d], xr, t.w[:d], rs)
	}
}

// RMSNormForward implements tensor.Kernels.RMSNormForward, parallel over rows.
func (k *Kernels) RMSNormForward(out, rstd, x, w []float32, rows, dim int, eps float32) {
	t := &k.rmsF
	*t = rmsFwdTask{out, rstd, x, w, rows, dim, eps}
	k.pool.run(t, ceilDiv(rows, normRows))
	*t = rmsFwdTask{}
}

// rmsBwdTask runs in two phases: per row chunk, dx and a partial dw into
// part[c]; then, per column chunk, dw += Σ_c part[c] in chunk order.
type rmsBwdTask struct {
	dx, dw, dout, x, w, rstd []float32
	rows, dim                int
	part                     []float32 // (chunks, dim)
	reduce                   bool
}

func (t *rmsBwdTask) run(_ *worker, c int) {
	d := t.dim
	if t.reduce {
		nc := ceilDiv(t.rows, normRows)
		j0, j1 := c*chunkElems, min((c+1)*chunkElems, d)
		dw := t.dw[j0:j1]
		for p := 0; p < nc; p++ {
			addTo(dw, t.part[p*d+j0:p*d+j1])
		}
		return
	}
	r0, r1 := c*normRows, min((c+1)*normRows, t.rows)
	pw := t.part[c*d : (c+1)*d]
	clear(pw)
	w := t.w[:d]
	for r := r0; r < r1; r++ {
		xr, dy := t.x[r*d:(r+1)*d], t.dout[r*d:(r+1)*d]
		rs := t.rstd[r]
		s := dot3(dy, w, xr)
		cc := float32(float64(rs) * float64(rs) * float64(rs) * s / float64(d))
		rmsBackRow(t.dx[r*d:(r+1)*d], pw, dy, xr, w, rs, cc)
	}
}

// RMSNormBackward implements tensor.Kernels.RMSNormBackward, parallel over
// row chunks with a per-chunk dw reduced in a fixed order.
func (k *Kernels) RMSNormBackward(dx, dw, dout, x, w, rstd []float32, rows, dim int) {
	nc := ceilDiv(rows, normRows)
	t := &k.rmsB
	*t = rmsBwdTask{dx, dw, dout, x, w, rstd, rows, dim, k.float32s(nc * dim), false}
	k.pool.run(t, nc)
	t.reduce = true
	k.pool.run(t, ceilDiv(dim, chunkElems))
	*t = rmsBwdTask{}
}

// ---- RoPE ----

type ropeTask struct {
	x, cos, sin                   []float32
	batch, seqLen, heads, headDim int
	sign                          float32
}

func (t *ropeTask) run(_ *worker, c int) {
	half := t.headDim / 2
	n := t.batch * t.seqLen
	for r := c * ropeRows; r < min((c+1)*ropeRows, n); r++ {
		tt := r % t.seqLen
		ct := t.cos[tt*half : (tt+1)*half]
		st := t.sin[tt*half : (tt+1)*half]
		ropeRotateHeads(t.x[r*t.heads*t.headDim:(r+1)*t.heads*t.headDim], t.heads, t.headDim, ct, st, t.sign)
	}
}

func (k *Kernels) rope(x, cos, sin []float32, batch, seqLen, heads, headDim int, sign float32) {
	t := &k.ropeT
	*t = ropeTask{x, cos, sin, batch, seqLen, heads, headDim, sign}
	k.pool.run(t, ceilDiv(batch*seqLen, ropeRows))
	*t = ropeTask{}
}

// RoPEForward implements tensor.Kernels.RoPEForward, parallel over positions.
func (k *Kernels) RoPEForward(x, cos, sin []float32, batch, seqLen, heads, headDim int) {
	k.rope(x, cos, sin, batch, seqLen, heads, headDim, 1)
}

// RoPEBackward implements tensor.Kernels.RoPEBackward (rotation by −angle).
func (k *Kernels) RoPEBackward(dx, cos, sin []float32, batch, seqLen, heads, headDim int) {
	k.rope(dx, cos, sin, batch, seqLen, heads, headDim, -1)
}

// ---- SwiGLU ----

type swigluFwdTask struct{ out, gate, up []float32 }

func (t *swigluFwdTask) run(_ *worker, c int) {
	i0, i1 := c*chunkElems, min((c+1)*chunkElems, len(t.out))
	swigluFwd(t.out[i0:i1], t.gate[i0:i1], t.up[i0:i1])
}

// SwiGLUForward implements tensor.Kernels.SwiGLUForward.
func (k *Kernels) SwiGLUForward(out, gate, up []float32) {
	t := &k.swiF
	*t = swigluFwdTask{out, gate[:len(out)], up[:len(out)]}
	k.pool.run(t, ceilDiv(len(out), chunkElems))
	*t = swigluFwdTask{}
}

type swigluBwdTask struct{ dgate, dup, dout, gate, up []float32 }

func (t *swigluBwdTask) run(_ *worker, c int) {
	i0, i1 := c*chunkElems, min((c+1)*chunkElems, len(t.dout))
	swigluBwd(t.dgate[i0:i1], t.dup[i0:i1], t.dout[i0:i1], t.gate[i0:i1], t.up[i0:i1])
}

// SwiGLUBackward implements tensor.Kernels.SwiGLUBackward.
func (k *Kernels) SwiGLUBackward(dgate, dup, dout, gate, up []float32) {
	n := len(dout)
	t := &k.swiB
	*t = swigluBwdTask{dgate[:n], dup[:n], dout, gate[:n], up[:n]}
	k.pool.run(t, ceilDiv(n, chunkElems))
	*t = swigluBwdTask{}
}

// ---- AdamW ----

type adamTask struct {
	p, g, m, v []float32
	c          adamConsts
}

// adamConsts are the float32 scalars of one AdamW step, rounded as the
// reference (and PyTorch's CPU kernel) rounds them.
type adamConsts struct {
	decay, b1, omb1, b2, omb2, stepSize, bc2Sqrt, eps float32
	gscale                                            float32 // the gradient's scale (1: none)
}

func (t *adamTask) run(_ *worker, c int) {
	i0, i1 := c*chunkElems, min((c+1)*chunkElems, len(t.p))
	adamw(t.p[i0:i1], t.g[i0:i1], t.m[i0:i1], t.v[i0:i1], &t.c)
}

// AdamW implements tensor.Kernels.AdamW, parallel over chunks, with
// h.GradScale applied to the gradient as it is read (one pass over p, g,
// m and v, g unwritten).
func (k *Kernels) AdamW(p, g, m, v []float32, h tensor.AdamWHyper) {
	n := len(p)
	bc1 := 1 - math.Pow(h.Beta1, float64(h.Step))
	bc2 := 1 - math.Pow(h.Beta2, float64(h.Step))
	c := adamConsts{
		decay: float32(1 - h.LR*h.WeightDecay),
		b1:    float32(h.Beta1), omb1: float32(1 - h.Beta1),
		b2: float32(h.Beta2), omb2: float32(1 - h.Beta2),
		stepSize: float32(h.LR / bc1),
		bc2Sqrt:  float32(math.Sqrt(bc2)),
		eps:      float32(h.Eps),
		gscale:   1,
	}
	if h.GradScale != 0 {
		c.gscale = h.GradScale
	}
	t := &k.adam
	*t = adamTask{p, g[:n], m[:n], v[:n], c}
	k.pool.run(t, ceilDiv(n, chunkElems))
	*t = adamTask{}
}

// ---- SumSquares, Scale ----

type sumSqTask struct {
	x    []float32
	part []float64
}

func (t *sumSqTask) run(_ *worker, c int) {
	i0, i1 := c*chunkElems, min((c+1)*chunkElems, len(t.x))
	t.part[c] = sumSq(t.x[i0:i1])
}

// SumSquares implements tensor.Kernels.SumSquares: float64 partial sums per
// fixed chunk, added in chunk order.
func (k *Kernels) SumSquares(x []float32) float64 {
	nc := ceilDiv(len(x), chunkElems)
	t := &k.ssq
	*t = sumSqTask{x, k.float64s(nc)}
	k.pool.run(t, nc)
	var s float64
	for _, p := range t.part {
		s += p
	}
	*t = sumSqTask{}
	return s
}

type scaleTask struct {
	x     []float32
	alpha float32
}

func (t *scaleTask) run(_ *worker, c int) {
	i0, i1 := c*chunkElems, min((c+1)*chunkElems, len(t.x))
	scale(t.x[i0:i1], t.alpha)
}

// Scale implements tensor.Kernels.Scale.
func (k *Kernels) Scale(x []float32, alpha float32) {
	t := &k.scal
	*t = scaleTask{x, alpha}
	k.pool.run(t, ceilDiv(len(x), chunkElems))
	*t = scaleTask{}
}
