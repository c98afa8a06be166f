package model

import (
	"context"
	"fmt"
	"math"

	"github.com/loomtrain/loom/parallel"
)

const sumOp = parallel.Sum

// The embedding and the LM head are vocabulary-parallel: each rank holds
// the contiguous rows [VocabStart, VocabStart+Vocab) of both (the same rows
// when tied). The vocabulary is padded to Vocab·TP rows; padded rows are
// never looked up, their logits are left out of every max, sum and sample,
// and their gradients are zero, so the padding cannot change the loss
// (NVIDIA/Megatron-LM#1754 is what happens otherwise).

// EmbedForward writes the embedding of tokens (a.B·a.T) to a.Resid[0]:
// each rank looks up the tokens of its vocabulary range (zeros for the
// others) and the rows are summed over the group — reduce-scattered to the
// rank's shard under sequence parallelism. Tokens must be in range (see
// CheckTokens).
func (m *Model) EmbedForward(ctx context.Context, a *Acts, tokens []int32) error {
	d := m.Config.Dim
	x := a.Resid[0]
	if m.tp == nil {
		for r, tok := range tokens {
			copy(x[r*d:(r+1)*d], m.embed[int(tok)*d:(int(tok)+1)*d])
		}
		return nil
	}
	n := len(tokens)
	var part []float32
	if a.SP {
		part = a.Scratch.DNorm[:n*d]
	} else {
		part = x[:n*d]
	}
	v0, v1 := m.loc.VocabStart, m.loc.VocabStart+m.loc.VocabValid(m.Config.VocabSize)
	for r, tok := range tokens {
		row := part[r*d : (r+1)*d]
		if t := int(tok); t >= v0 && t < v1 {
			copy(row, m.embed[(t-v0)*d:(t-v0+1)*d])
		} else {
			clear(row)
		}
	}
	if a.SP {
		return m.reduceScatterRows(ctx, x[:a.Rows()*d], part, site{"the embedding", -1})
	}
	return m.allReduce(ctx, part, site{"the embedding", -1})
}

// EmbedBackward accumulates grad(embed_tokens)[tokens[r]] += dx[r] for the
// rank's vocabulary range from dx = a.DResid (gathered from every rank
// first under sequence parallelism).
func (m *Model) EmbedBackward(ctx context.Context, a *Acts, tokens []int32) error {
	d := m.Config.Dim
	dx, err := m.gatherGrad(ctx, a.DResid, len(tokens), a.SP, a.Scratch, site{"the embedding gradient", -1})
	if err != nil {
		return err
	}
	v0, v1 := m.loc.VocabStart, m.loc.VocabStart+m.loc.VocabValid(m.Config.VocabSize)
	for r, tok := range tokens {
		t := int(tok)
		if t < v0 || t >= v1 {
			continue
		}
		g := m.gembed[(t-v0)*d : (t-v0+1)*d]
		for j, v := range dx[r*d : (r+1)*d] {
			g[j] += v
		}
	}
	return nil
}

// HeadForward: h.Logits (n,Vocab) = lm_head(model.norm(x)) for x (rows,d),
// the rank's vocabulary range of the logits (all of them on one rank).
// Under sequence parallelism the normed rows are gathered first.
func (m *Model) HeadForward(ctx context.Context, h *HeadActs, x []float32, scr *BlockScratch) error {
	c := m.Config
	n, d, V := h.B*h.T, c.Dim, m.loc.Vocab
	rows := m.rows(n, h.SP)
	m.k.RMSNormForward(h.Norm, h.Rstd, x, m.head.Norm, rows, d, float32(c.NormEps))
	if h.SP {
		if err := m.allGatherRows(ctx, h.NormFull[:n*d], h.Norm[:rows*d], site{"the head input", -1}); err != nil {
			return err
		}
	}
	m.k.Sgemm(false, true, n, V, d, 1, h.NormFull, d, m.head.Out, d, 0, h.Logits, V)
	return nil
}

// HeadLoss returns the mean cross-entropy of h.Logits against targets (B·T;
// negative targets are ignored) without touching the logits.
func (m *Model) HeadLoss(ctx context.Context, h *HeadActs, targets []int32) (float64, error) {
	if m.tp == nil {
		return m.k.CrossEntropy(nil, h.Logits, targets, h.B*h.T, m.Config.VocabSize, 1), nil
	}
	return m.vocabParallelCE(ctx, h, targets, 1, false)
}

// HeadLossGrad returns the mean cross-entropy like HeadLoss and replaces
// h.Logits by gradScale·d(loss)/d(logits), ready for HeadBackward. With
// gradient accumulation over k micro-batches, gradScale = 1/k.
func (m *Model) HeadLossGrad(ctx context.Context, h *HeadActs, targets []int32, gradScale float32) (float64, error) {
	if m.tp == nil {
		return m.k.CrossEntropy(h.Logits, h.Logits, targets, h.B*h.T, m.Config.VocabSize, gradScale), nil
	}
	return m.vocabParallelCE(ctx, h, targets, gradScale, true)
}

// vocabParallelCE is the cross-entropy over logits split by vocabulary
// range: per row, the ranks' maxima are max-reduced, then their sums of
// exp(logit − max) and the target's logit (held by one rank, zero on the
// others) are sum-reduced in one buffer — two all-reduces of n and 2n
// floats, so no rank holds a full (n,V) row. With grad, the logits are
// replaced in place by gradScale·(softmax − onehot)/counted.
func (m *Model) vocabParallelCE(ctx context.Context, h *HeadActs, targets []int32, gradScale float32, grad bool) (float64, error) {
	n, Vl := h.B*h.T, m.loc.Vocab
	valid := m.loc.VocabValid(m.Config.VocabSize)
	v0 := m.loc.VocabStart
	mx, se, tl := h.Stats[:n], h.Stats[n:2*n], h.Stats[2*n:3*n]
	counted := 0
	for r := range n {
		if targets[r] >= 0 {
			counted++
		}
	}
	m.k.RowMax(mx, h.Logits, n, valid, Vl)
	if err := m.tp.AllReduce(ctx, mx, parallel.Max); err != nil {
		return 0, fmt.Errorf("vocabulary-parallel cross-entropy: max all-reduce: %w", err)
	}
	for r := range n {
		tl[r] = 0
		if t := int(targets[r]) - v0; t >= 0 && t < valid {
			tl[r] = h.Logits[r*Vl+t]
		}
	}
	if grad {
		// The exponentials replace the logits, kept for the gradient below.
		m.k.ExpShiftRows(se, h.Logits, mx, n, valid, Vl)
	} else {
		for r := range n {
			M := float64(mx[r])
			var sum float64
			for _, x := range h.Logits[r*Vl : r*Vl+valid] {
				sum += math.Exp(float64(x) - M)
			}
			se[r] = float32(sum)
		}
	}
	if err := m.tp.AllReduce(ctx, h.Stats[n:3*n], sumOp); err != nil {
		return 0, fmt.Errorf("vocabulary-parallel cross-entropy: sum all-reduce: %w", err)
	}
	if counted == 0 {
		if grad {
			clear(h.Logits[:n*Vl])
		}
		return 0, nil
	}
	var loss float64
	g := float64(gradScale) / float64(counted)
	for r := range n {
		t := int(targets[r])
		if t >= 0 {
			loss += math.Log(float64(se[r])) + float64(mx[r]) - float64(tl[r])
		}
		if !grad {
			continue
		}
		row := h.Logits[r*Vl : (r+1)*Vl]
		if t < 0 {
			clear(row)
			continue
		}
		inv := g / float64(se[r])
		for j := range valid {
			row[j] = float32(float64(row[j]) * inv)
		}
		if lt := t - v0; lt >= 0 && lt < valid {
			row[lt] -= float32(g)
		}
		clear(row[valid:])
	}
	return loss / float64(counted), nil
}

// HeadBackward writes dx (rows,d) = d(loss)/dx from the logit gradient left
// in h.Logits by HeadLossGrad, and accumulates the norm and lm_head (or
// tied embedding) gradients. x is the head input given to HeadForward.
func (m *Model) HeadBackward(ctx context.Context, h *HeadActs, dx, x []float32, scr *BlockScratch) error {
	c, k := m.Config, m.k
	n, d, V := h.B*h.T, c.Dim, m.loc.Vocab
	rows := m.rows(n, h.SP)
	k.Sgemm(false, false, n, d, V, 1, h.Logits, V, m.head.Out, d, 0, h.DNorm, d)
	// The head's weight gradient hides the input gradient's reduction
	// (overlap.go).
	p := m.startReduceGrad(ctx, h.DNorm[:n*d], h.SP, site{"the head input gradient", -1})
	k.Sgemm(true, false, V, d, n, 1, h.Logits, V, h.NormFull, d, 1, m.ghead.Out, d)
	dnorm, err := m.join(p)
	if err != nil {
		return err
	}
	clear(dx[:rows*d])
	return m.normBackward(ctx, dx[:rows*d], m.ghead.Norm, dnorm, x, m.head.Norm, h.Rstd, rows, h.SP, scr, site{"the final norm weight gradient", -1})
}

// headBackwardInput is the input-gradient half of HeadBackward: dx as
// HeadBackward leaves it and the final norm weight's gradient in
// normGrad (d); the lm_head (or tied embedding) gradient is left to
// headWeights, which reads the logit gradient still in h.Logits and the
// saved norm output.
func (m *Model) headBackwardInput(ctx context.Context, h *HeadActs, dx, x []float32, scr *BlockScratch, normGrad []float32) error {
	c, k := m.Config, m.k
	n, d, V := h.B*h.T, c.Dim, m.loc.Vocab
	rows := m.rows(n, h.SP)
	k.Sgemm(false, false, n, d, V, 1, h.Logits, V, m.head.Out, d, 0, h.DNorm, d)
	dnorm, err := m.reduceGrad(ctx, h.DNorm[:n*d], h.SP, site{"the head input gradient", -1})
	if err != nil {
		return err
	}
	clear(dx[:rows*d])
	clear(normGrad)
	return m.normBackward(ctx, dx[:rows*d], normGrad, dnorm, x, m.head.Norm, h.Rstd, rows, h.SP, scr, site{"the final norm weight gradient", -1})
}

// headWeights is the weight-gradient half of HeadBackward.
func (m *Model) headWeights(h *HeadActs, normGrad []float32) {
	n, d, V := h.B*h.T, m.Config.Dim, m.loc.Vocab
	m.k.Sgemm(true, false, V, d, n, 1, h.Logits, V, h.NormFull, d, 1, m.ghead.Out, d)
	addTo(m.ghead.Norm, normGrad)
}
