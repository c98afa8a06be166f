package model

import (
	"context"
	"fmt"
)

// A decoder block is two halves, each a column-parallel projection in and
// a row-parallel projection out (Megatron-LM):
//
//	attention: h = x + o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),  n = input_layernorm(x)
//	MLP:       y = h + down_proj(silu(gate_proj(m))·up_proj(m)),                   m = post_attention_layernorm(h)
//
// Under tensor parallelism each rank holds its heads and MLP features, so
// the row-parallel output is a partial sum: it is all-reduced over the
// group before the residual add (g in forward), and the input gradient of
// the column-parallel projections is all-reduced before the norm's
// backward (f in backward). With sequence parallelism the residual stream
// and the norms are sharded by rows: the norm output is all-gathered
// before the column-parallel projections and the row-parallel output
// reduce-scattered, and in backward the residual gradient is all-gathered
// and the input gradient reduce-scattered; the gathered norm output is
// not kept but gathered again for the weight gradients (Korthikanti et al.
// 2022, §4.2.2), so every saved row-wise tensor is ÷TP.
//
// Each backward half computes its input gradient first and its weight
// gradients after, so that a schedule can later run them separately.

func (m *Model) rows(n int, sp bool) int {
	if sp {
		return n / m.loc.TP
	}
	return n
}

// AttnForward runs the attention half of block layer: h (rows,d) = x +
// attn(input_layernorm(x)) for x (rows,d), saving what AttnBackward needs
// in s. h must not alias x.
func (m *Model) AttnForward(ctx context.Context, layer int, h, x []float32, s *BlockActs, scr *BlockScratch) error {
	if err := m.attnIn(ctx, layer, x, s, scr); err != nil {
		return err
	}
	return m.rowParallelOut(ctx, h, x, s.Att, m.blocks[layer].O, s.B*s.T, m.loc.QDim(), s.SP, scr, site{"attention output", layer})
}

// attnIn is AttnForward up to the attention output s.Att, before o_proj.
func (m *Model) attnIn(ctx context.Context, layer int, x []float32, s *BlockActs, scr *BlockScratch) error {
	c, k, w, lo := m.Config, m.k, m.blocks[layer], m.loc
	n, d, q, kv := s.B*s.T, c.Dim, lo.QDim(), lo.KVDim()
	rows := m.rows(n, s.SP)
	k.RMSNormForward(s.AttnIn, s.AttnRstd, x, w.AttnNorm, rows, d, float32(c.NormEps))
	in := s.AttnIn
	if s.SP {
		in = scr.Full[:n*d]
		if err := m.allGatherRows(ctx, in, s.AttnIn[:rows*d], site{"attention input", layer}); err != nil {
			return err
		}
	}
	k.Sgemm(false, true, n, q, d, 1, in, d, w.Q, d, 0, s.Q, q)
	k.Sgemm(false, true, n, kv, d, 1, in, d, w.K, d, 0, s.K, kv)
	k.Sgemm(false, true, n, kv, d, 1, in, d, w.V, d, 0, s.V, kv)
	k.RoPEForward(s.Q, m.cos, m.sin, s.B, s.T, lo.Heads, lo.HeadDim)
	k.RoPEForward(s.K, m.cos, m.sin, s.B, s.T, lo.KVHeads, lo.HeadDim)
	k.AttentionForward(s.Att, s.LSE, s.Q, s.K, s.V, s.B, s.T, lo.Heads, lo.KVHeads, lo.HeadDim)
	return nil
}

// MLPForward runs the MLP half of block layer: y (rows,d) = h +
// mlp(post_attention_layernorm(h)), saving what MLPBackward needs in s. y
// must not alias h.
func (m *Model) MLPForward(ctx context.Context, layer int, y, h []float32, s *BlockActs, scr *BlockScratch) error {
	if err := m.mlpIn(ctx, layer, h, s, scr); err != nil {
		return err
	}
	return m.rowParallelOut(ctx, y, h, s.Act, m.blocks[layer].Down, s.B*s.T, m.loc.FFN, s.SP, scr, site{"MLP output", layer})
}

// mlpIn is MLPForward up to the activation s.Act, before down_proj.
func (m *Model) mlpIn(ctx context.Context, layer int, h []float32, s *BlockActs, scr *BlockScratch) error {
	c, k, w, lo := m.Config, m.k, m.blocks[layer], m.loc
	n, d, ffn := s.B*s.T, c.Dim, lo.FFN
	rows := m.rows(n, s.SP)
	k.RMSNormForward(s.MLPIn, s.MLPRstd, h, w.MLPNorm, rows, d, float32(c.NormEps))
	in := s.MLPIn
	if s.SP {
		in = scr.Full[:n*d]
		if err := m.allGatherRows(ctx, in, s.MLPIn[:rows*d], site{"MLP input", layer}); err != nil {
			return err
		}
	}
	k.Sgemm(false, true, n, ffn, d, 1, in, d, w.Gate, d, 0, s.Gate, ffn)
	k.Sgemm(false, true, n, ffn, d, 1, in, d, w.Up, d, 0, s.Up, ffn)
	k.SwiGLUForward(s.Act[:n*ffn], s.Gate[:n*ffn], s.Up[:n*ffn])
	return nil
}

// rowParallelOut writes out (rows,d) = resid + a·Wᵀ for a (n,width) and W
// (d,width), summing the ranks' partial products (all-reduce, or
// reduce-scatter to the rank's rows under sequence parallelism). With one
// rank, and on the first rank of a group without sequence parallelism,
// the residual is added inside the GEMM.
func (m *Model) rowParallelOut(ctx context.Context, out, resid, a, w []float32, n, width int, sp bool, scr *BlockScratch, what site) error {
	d, k := m.Config.Dim, m.k
	rows := m.rows(n, sp)
	if m.tp == nil {
		copy(out[:n*d], resid[:n*d])
		k.Sgemm(false, true, n, d, width, 1, a, width, w, width, 1, out, d)
		return nil
	}
	if !sp {
		m.rowParallelPartial(out, resid, a, w, n, width)
		return m.allReduce(ctx, out[:n*d], what)
	}
	part := scr.DNorm[:n*d]
	k.Sgemm(false, true, n, d, width, 1, a, width, w, width, 0, part, d)
	if err := m.reduceScatterRows(ctx, out[:rows*d], part, what); err != nil {
		return err
	}
	addTo(out[:rows*d], resid[:rows*d])
	return nil
}

// rowParallelPartial writes this rank's partial sum of a row-parallel
// output to out (n,d): a·Wᵀ, plus resid on the group's first rank (as the
// GEMM's C), so that the all-reduce leaves resid + Σ partials in out with
// no pass of its own.
func (m *Model) rowParallelPartial(out, resid, a, w []float32, n, width int) {
	d := m.Config.Dim
	beta := float32(0)
	if m.loc.Rank == 0 {
		copy(out[:n*d], resid[:n*d])
		beta = 1
	}
	m.k.Sgemm(false, true, n, d, width, 1, a, width, w, width, beta, out, d)
}

// MLPBackward is the backward of MLPForward. dresid (rows,d) holds
// d(loss)/dy on entry and d(loss)/dh on return (updated in place, the
// residual stream's gradient). h is the input given to MLPForward.
// Parameter gradients accumulate into Grads.
func (m *Model) MLPBackward(ctx context.Context, layer int, dresid, h []float32, s *BlockActs, scr *BlockScratch) error {
	return m.mlpBackward(ctx, layer, dresid, h, s, scr, nil)
}

// mlpBackward is MLPBackward, or with g its input-gradient half: the
// weight gradients' inputs are kept (dy in g.DY, the gate and up
// gradients in s.Gate and s.Up, the norm weight's gradient in g.MLPNorm)
// for mlpWeights, and no parameter gradient is touched.
func (m *Model) mlpBackward(ctx context.Context, layer int, dresid, h []float32, s *BlockActs, scr *BlockScratch, g *BlockGrad) error {
	c, k, w, gw, lo := m.Config, m.k, m.blocks[layer], m.gblocks[layer], m.loc
	n, d, ffn := s.B*s.T, c.Dim, lo.FFN
	rows := m.rows(n, s.SP)
	// Input gradient.
	dy, err := m.gatherGrad(ctx, dresid, n, s.SP, scr, site{"output gradient", layer})
	if err != nil {
		return err
	}
	k.Sgemm(false, false, n, ffn, d, 1, dy, d, w.Down, ffn, 0, scr.DGate, ffn) // dAct, kept in DGate
	if g == nil {
		k.Sgemm(true, false, d, ffn, n, 1, dy, d, s.Act, ffn, 1, gw.Down, ffn)
	} else {
		copy(g.DY[:n*d], dy[:n*d])
	}
	k.SwiGLUBackward(scr.DGate[:n*ffn], scr.DUp[:n*ffn], scr.DGate[:n*ffn], s.Gate[:n*ffn], s.Up[:n*ffn])
	k.Sgemm(false, false, n, d, ffn, 1, scr.DGate, ffn, w.Gate, d, 0, scr.DNorm, d)
	k.Sgemm(false, false, n, d, ffn, 1, scr.DUp, ffn, w.Up, d, 1, scr.DNorm, d)
	if g != nil {
		dnorm, err := m.reduceGrad(ctx, scr.DNorm[:n*d], s.SP, site{"input gradient", layer})
		if err != nil {
			return err
		}
		copy(s.Gate[:n*ffn], scr.DGate[:n*ffn])
		copy(s.Up[:n*ffn], scr.DUp[:n*ffn])
		clear(g.MLPNorm)
		return m.normBackward(ctx, dresid[:rows*d], g.MLPNorm, dnorm, h, w.MLPNorm, s.MLPRstd, rows, s.SP, scr, site{"norm weight gradient", layer})
	}
	// The column-parallel projections' weight gradients are computed while
	// their input gradient is reduced (overlap.go). Under sequence
	// parallelism the norm output is gathered again first: one collective
	// at a time on the group.
	in, err := m.regather(ctx, s.MLPIn, n, s.SP, scr, site{"input", layer})
	if err != nil {
		return err
	}
	p := m.startReduceGrad(ctx, scr.DNorm[:n*d], s.SP, site{"input gradient", layer})
	k.Sgemm(true, false, ffn, d, n, 1, scr.DGate, ffn, in, d, 1, gw.Gate, d)
	k.Sgemm(true, false, ffn, d, n, 1, scr.DUp, ffn, in, d, 1, gw.Up, d)
	dnorm, err := m.join(p)
	if err != nil {
		return err
	}
	return m.normBackward(ctx, dresid[:rows*d], gw.MLPNorm, dnorm, h, w.MLPNorm, s.MLPRstd, rows, s.SP, scr, site{"norm weight gradient", layer})
}

// mlpWeights is the weight-gradient half of a split MLP backward: the
// projections' gradients from what mlpBackward kept, and the norm
// weight's.
func (m *Model) mlpWeights(ctx context.Context, layer int, s *BlockActs, scr *BlockScratch, g *BlockGrad) error {
	c, k, gw, lo := m.Config, m.k, m.gblocks[layer], m.loc
	n, d, ffn := s.B*s.T, c.Dim, lo.FFN
	k.Sgemm(true, false, d, ffn, n, 1, g.DY, d, s.Act, ffn, 1, gw.Down, ffn)
	in, err := m.regather(ctx, s.MLPIn, n, s.SP, scr, site{"input", layer})
	if err != nil {
		return err
	}
	k.Sgemm(true, false, ffn, d, n, 1, s.Gate, ffn, in, d, 1, gw.Gate, d)
	k.Sgemm(true, false, ffn, d, n, 1, s.Up, ffn, in, d, 1, gw.Up, d)
	addTo(gw.MLPNorm, g.MLPNorm)
	return nil
}

// AttnBackward is the backward of AttnForward. dresid (rows,d) holds
// d(loss)/dh on entry and d(loss)/dx on return. x is the input given to
// AttnForward.
func (m *Model) AttnBackward(ctx context.Context, layer int, dresid, x []float32, s *BlockActs, scr *BlockScratch) error {
	return m.attnBackward(ctx, layer, dresid, x, s, scr, nil)
}

// attnBackward is AttnBackward, or with g its input-gradient half: dh in
// g.DH, the query, key and value gradients in s.Q, s.K and s.V, the norm
// weight's gradient in g.AttnNorm, kept for attnWeights.
func (m *Model) attnBackward(ctx context.Context, layer int, dresid, x []float32, s *BlockActs, scr *BlockScratch, g *BlockGrad) error {
	c, k, w, gw, lo := m.Config, m.k, m.blocks[layer], m.gblocks[layer], m.loc
	n, d, q, kv := s.B*s.T, c.Dim, lo.QDim(), lo.KVDim()
	rows := m.rows(n, s.SP)
	dh, err := m.gatherGrad(ctx, dresid, n, s.SP, scr, site{"output gradient", layer})
	if err != nil {
		return err
	}
	k.Sgemm(false, false, n, q, d, 1, dh, d, w.O, q, 0, scr.DAtt, q)
	if g == nil {
		k.Sgemm(true, false, d, q, n, 1, dh, d, s.Att, q, 1, gw.O, q)
	} else {
		copy(g.DH[:n*d], dh[:n*d])
	}
	k.AttentionBackward(scr.DQ, scr.DK, scr.DV, scr.DAtt, s.Att, s.LSE, s.Q, s.K, s.V, s.B, s.T, lo.Heads, lo.KVHeads, lo.HeadDim)
	k.RoPEBackward(scr.DQ, m.cos, m.sin, s.B, s.T, lo.Heads, lo.HeadDim)
	k.RoPEBackward(scr.DK, m.cos, m.sin, s.B, s.T, lo.KVHeads, lo.HeadDim)
	k.Sgemm(false, false, n, d, q, 1, scr.DQ, q, w.Q, d, 0, scr.DNorm, d)
	k.Sgemm(false, false, n, d, kv, 1, scr.DK, kv, w.K, d, 1, scr.DNorm, d)
	k.Sgemm(false, false, n, d, kv, 1, scr.DV, kv, w.V, d, 1, scr.DNorm, d)
	if g != nil {
		dnorm, err := m.reduceGrad(ctx, scr.DNorm[:n*d], s.SP, site{"input gradient", layer})
		if err != nil {
			return err
		}
		copy(s.Q[:n*q], scr.DQ[:n*q])
		copy(s.K[:n*kv], scr.DK[:n*kv])
		copy(s.V[:n*kv], scr.DV[:n*kv])
		clear(g.AttnNorm)
		return m.normBackward(ctx, dresid[:rows*d], g.AttnNorm, dnorm, x, w.AttnNorm, s.AttnRstd, rows, s.SP, scr, site{"norm weight gradient", layer})
	}
	// As in mlpBackward: the weight gradients hide the input gradient's
	// reduction (the kv-replica sum inside runs on its own group).
	in, err := m.regather(ctx, s.AttnIn, n, s.SP, scr, site{"input", layer})
	if err != nil {
		return err
	}
	p := m.startReduceGrad(ctx, scr.DNorm[:n*d], s.SP, site{"input gradient", layer})
	werr := m.qkvWeightsFrom(ctx, layer, in, n, scr, scr.DQ, scr.DK, scr.DV)
	dnorm, err := m.join(p)
	if werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	return m.normBackward(ctx, dresid[:rows*d], gw.AttnNorm, dnorm, x, w.AttnNorm, s.AttnRstd, rows, s.SP, scr, site{"norm weight gradient", layer})
}

// attnWeights is the weight-gradient half of a split attention backward.
func (m *Model) attnWeights(ctx context.Context, layer int, s *BlockActs, scr *BlockScratch, g *BlockGrad) error {
	c, k, gw, lo := m.Config, m.k, m.gblocks[layer], m.loc
	n, d, q := s.B*s.T, c.Dim, lo.QDim()
	k.Sgemm(true, false, d, q, n, 1, g.DH, d, s.Att, q, 1, gw.O, q)
	if err := m.qkvWeights(ctx, layer, s, scr, s.Q, s.K, s.V); err != nil {
		return err
	}
	addTo(gw.AttnNorm, g.AttnNorm)
	return nil
}

// qkvWeights accumulates the query, key and value weight gradients from
// the projections' output gradients dq, dk, dv and the (re-gathered)
// attention input; copies of a replicated kv head sum theirs first.
func (m *Model) qkvWeights(ctx context.Context, layer int, s *BlockActs, scr *BlockScratch, dq, dk, dv []float32) error {
	in, err := m.regather(ctx, s.AttnIn, s.B*s.T, s.SP, scr, site{"input", layer})
	if err != nil {
		return err
	}
	return m.qkvWeightsFrom(ctx, layer, in, s.B*s.T, scr, dq, dk, dv)
}

// qkvWeightsFrom is qkvWeights over the attention input in (n rows of d),
// already gathered where sequence parallelism needs it.
func (m *Model) qkvWeightsFrom(ctx context.Context, layer int, in []float32, n int, scr *BlockScratch, dq, dk, dv []float32) error {
	c, k, gw, lo := m.Config, m.k, m.gblocks[layer], m.loc
	d, q, kv := c.Dim, lo.QDim(), lo.KVDim()
	k.Sgemm(true, false, q, d, n, 1, dq, q, in, d, 1, gw.Q, d)
	if m.kv == nil {
		k.Sgemm(true, false, kv, d, n, 1, dk, kv, in, d, 1, gw.K, d)
		k.Sgemm(true, false, kv, d, n, 1, dv, kv, in, d, 1, gw.V, d)
		return nil
	}
	// Each copy of a replicated kv head saw only its rank's query heads:
	// the micro-batch's gradient is the sum over the copies.
	gk, gv := scr.KVGrad[:kv*d], scr.KVGrad[kv*d:2*kv*d]
	k.Sgemm(true, false, kv, d, n, 1, dk, kv, in, d, 0, gk, d)
	k.Sgemm(true, false, kv, d, n, 1, dv, kv, in, d, 0, gv, d)
	if err := m.kv.AllReduce(ctx, scr.KVGrad[:2*kv*d], sumOp); err != nil {
		return fmt.Errorf("kv-replica all-reduce of block %d k/v gradients: %w", layer, err)
	}
	addTo(gw.K, gk)
	addTo(gw.V, gv)
	return nil
}

// BlockForward runs decoder block layer: y (rows,d) = x + attn(norm(x)),
// then y += mlp(norm(y)), saving what BlockBackward needs in s. y must not
// alias x: x is needed again by BlockBackward.
func (m *Model) BlockForward(ctx context.Context, layer int, y, x []float32, s *BlockActs, scr *BlockScratch) error {
	if m.tp != nil && !s.SP && s.B >= 2 {
		return m.blockForwardHalves(ctx, layer, y, x, s, scr)
	}
	if err := m.AttnForward(ctx, layer, s.H, x, s, scr); err != nil {
		return err
	}
	return m.MLPForward(ctx, layer, y, s.H, s, scr)
}

// blockForwardHalves is BlockForward under tensor parallelism (without
// sequence parallelism) as two halves of the batch's sequences, which
// are independent through a block: each half's row-parallel all-reduce
// runs while the other half computes (DeepSpeed's Domino, Wang et al.
// 2024), so only the last half's MLP output waits on the wire. The
// results are the same as one pass over the whole batch: every op is
// row-wise or per sequence.
func (m *Model) blockForwardHalves(ctx context.Context, layer int, y, x []float32, s *BlockActs, scr *BlockScratch) (err error) {
	d, w := m.Config.Dim, m.blocks[layer]
	b := s.B / 2
	half := [2]BlockActs{s.seqs(0, b, m.loc, d), s.seqs(b, s.B, m.loc, d)}
	off := [3]int{0, b * s.T * d, s.B * s.T * d}
	rows := func(t []float32, i int) []float32 { return t[off[i]:off[i+1]] }
	// One all-reduce in flight at a time: next joins it and starts buf's;
	// the last is joined on return, also after an error.
	var p pending
	var busy bool
	defer func() {
		if busy {
			if _, jerr := m.join(p); err == nil {
				err = jerr
			}
		}
	}()
	next := func(buf []float32, what site) error {
		if busy {
			busy = false
			if _, err := m.join(p); err != nil {
				return err
			}
		}
		p, busy = m.startAllReduce(ctx, buf, what), true
		return nil
	}
	for i := range half {
		a := &half[i]
		if err := m.attnIn(ctx, layer, rows(x, i), a, scr); err != nil {
			return err
		}
		m.rowParallelPartial(a.H, rows(x, i), a.Att, w.O, a.B*a.T, m.loc.QDim())
		if err := next(a.H, site{"attention output", layer}); err != nil {
			return err
		}
	}
	for i := range half {
		a := &half[i]
		if err := m.mlpIn(ctx, layer, a.H, a, scr); err != nil {
			return err
		}
		m.rowParallelPartial(rows(y, i), a.H, a.Act, w.Down, a.B*a.T, m.loc.FFN)
		if err := next(rows(y, i), site{"MLP output", layer}); err != nil {
			return err
		}
	}
	return nil
}

// BlockBackward is the backward of BlockForward. dresid (rows,d) holds
// d(loss)/dy on entry and d(loss)/dx on return (updated in place, the
// residual stream's gradient). x is the block input given to BlockForward.
// Parameter gradients accumulate into Grads.
func (m *Model) BlockBackward(ctx context.Context, layer int, dresid, x []float32, s *BlockActs, scr *BlockScratch) error {
	if err := m.MLPBackward(ctx, layer, dresid, s.H, s, scr); err != nil {
		return err
	}
	return m.AttnBackward(ctx, layer, dresid, x, s, scr)
}

// BlockBackwardInput is the input-gradient half of BlockBackward (the B of
// a zero-bubble schedule): dresid becomes d(loss)/dx as BlockBackward
// leaves it, no parameter gradient is touched, and what BlockWeights needs
// is kept in g and in s (whose Q, K, V, Gate and Up then hold gradients).
func (m *Model) BlockBackwardInput(ctx context.Context, layer int, dresid, x []float32, s *BlockActs, scr *BlockScratch, g *BlockGrad) error {
	if err := m.mlpBackward(ctx, layer, dresid, s.H, s, scr, g); err != nil {
		return err
	}
	return m.attnBackward(ctx, layer, dresid, x, s, scr, g)
}

// BlockWeights is the weight-gradient half (the W): it accumulates block
// layer's parameter gradients from what BlockBackwardInput kept.
func (m *Model) BlockWeights(ctx context.Context, layer int, s *BlockActs, scr *BlockScratch, g *BlockGrad) error {
	if err := m.mlpWeights(ctx, layer, s, scr, g); err != nil {
		return err
	}
	return m.attnWeights(ctx, layer, s, scr, g)
}

// gatherGrad returns the residual-stream gradient for all n rows: dresid
// itself, or under sequence parallelism every rank's rows gathered into
// scr.Full.
func (m *Model) gatherGrad(ctx context.Context, dresid []float32, n int, sp bool, scr *BlockScratch, what site) ([]float32, error) {
	d := m.Config.Dim
	if !sp {
		return dresid[:n*d], nil
	}
	full := scr.Full[:n*d]
	return full, m.allGatherRows(ctx, full, dresid[:n/m.loc.TP*d], what)
}

// reduceGrad sums the partial input gradient (n,d) over the group and
// returns this rank's rows of it: all of them, or its shard under sequence
// parallelism.
func (m *Model) reduceGrad(ctx context.Context, partial []float32, sp bool, what site) ([]float32, error) {
	if m.tp == nil {
		return partial, nil
	}
	if sp {
		shard, err := m.tp.ReduceScatter(ctx, partial, sumOp)
		if err != nil {
			return nil, fmt.Errorf("tensor-parallel reduce-scatter of %s: %w", what, err)
		}
		return shard, nil
	}
	return partial, m.allReduce(ctx, partial, what)
}

// regather returns a saved norm output for all n rows: saved itself, or
// under sequence parallelism gathered again into scr.Full.
func (m *Model) regather(ctx context.Context, saved []float32, n int, sp bool, scr *BlockScratch, what site) ([]float32, error) {
	d := m.Config.Dim
	if !sp {
		return saved, nil
	}
	full := scr.Full[:n*d]
	return full, m.allGatherRows(ctx, full, saved[:n/m.loc.TP*d], what)
}

// normBackward runs an RMSNorm backward over the rank's rows: dx += and
// the weight gradient dw +=. Under sequence parallelism each rank saw only
// its rows, so the weight gradient's partial sum is summed over the group
// first.
func (m *Model) normBackward(ctx context.Context, dx, dw, dout, x, w, rstd []float32, rows int, sp bool, scr *BlockScratch, what site) error {
	d := m.Config.Dim
	if !sp {
		m.k.RMSNormBackward(dx, dw, dout, x, w, rstd, rows, d)
		return nil
	}
	part := scr.NormGrad[:d]
	clear(part)
	m.k.RMSNormBackward(dx, part, dout, x, w, rstd, rows, d)
	if err := m.allReduce(ctx, part, what); err != nil {
		return err
	}
	addTo(dw, part)
	return nil
}

// site names where a communication happens, formatted only on error.
type site struct {
	what  string
	layer int // -1: not in a block
}

func (s site) String() string {
	if s.layer < 0 {
		return s.what
	}
	return fmt.Sprintf("block %d %s", s.layer, s.what)
}

// addTo sets dst[i] += src[i].
func addTo(dst, src []float32) {
	src = src[:len(dst)]
	for i, v := range src {
		dst[i] += v
	}
}
