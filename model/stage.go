package model

import (
	"context"
	"fmt"
)

// A pipeline stage is a contiguous run of units — the embedding on the
// first stage, blocks [First, End), the head and loss on the last — and
// its passes are those of a whole model restricted to them: a forward per
// micro-batch, then a backward, optionally split into the input-gradient
// pass (what the previous stage waits for) and the weight-gradient pass
// (which nothing waits for, so a zero-bubble schedule runs it in what
// would be bubble).

// StageForward runs one micro-batch forward through the stage a covers:
// the embedding of tokens on the first stage (else the stage's input must
// be in a.Resid[0]), the blocks, and on the last stage the head and the
// loss against targets, whose value it returns (0 elsewhere) while
// replacing the logits by gradScale·d(loss)/d(logits), ready for the
// backward. The stage's output is a.Resid[a.End−a.First].
func (m *Model) StageForward(ctx context.Context, a *Acts, tokens, targets []int32, gradScale float32, h Hooks) (float64, error) {
	return m.stageForward(ctx, a, tokens, targets, gradScale, h, true)
}

// StageEval is StageForward for evaluation: on the last stage it returns
// the loss without touching the logits (no gradient), and calls no hooks.
// Every stage's output is left in a.Resid[a.End−a.First] as by
// StageForward.
func (m *Model) StageEval(ctx context.Context, a *Acts, tokens, targets []int32) (float64, error) {
	return m.stageForward(ctx, a, tokens, targets, 0, Hooks{}, false)
}

func (m *Model) stageForward(ctx context.Context, a *Acts, tokens, targets []int32, gradScale float32, h Hooks, train bool) (float64, error) {
	l := m.Layout
	if a.HasEmbed {
		u := l.EmbedUnit()
		if err := call(h.BeforeForward, u); err != nil {
			return 0, err
		}
		if err := m.EmbedForward(ctx, a, tokens); err != nil {
			return 0, fmt.Errorf("embed: %w", err)
		}
		if err := call(h.AfterForward, u); err != nil {
			return 0, err
		}
	}
	for i := a.First; i < a.End; i++ {
		u := l.BlockUnit(i)
		if err := call(h.BeforeForward, u); err != nil {
			return 0, err
		}
		if err := m.BlockForward(ctx, i, a.Resid[i-a.First+1], a.Resid[i-a.First], a.blockActs(i), a.Scratch); err != nil {
			return 0, err
		}
		if err := call(h.AfterForward, u); err != nil {
			return 0, err
		}
	}
	if !a.HasHead {
		return 0, nil
	}
	u := l.HeadUnit()
	if err := call(h.BeforeForward, u); err != nil {
		return 0, err
	}
	if err := m.HeadForward(ctx, a.Head, a.Resid[a.End-a.First], a.Scratch); err != nil {
		return 0, err
	}
	if err := call(h.AfterForward, u); err != nil {
		return 0, err
	}
	if !train {
		return m.HeadLoss(ctx, a.Head, targets)
	}
	return m.HeadLossGrad(ctx, a.Head, targets, gradScale)
}

// blockActs is where block i's activations are saved: its own, or with
// recomputation the one set the scratch holds.
func (a *Acts) blockActs(i int) *BlockActs {
	if a.Blocks == nil {
		return a.Scratch.Recompute
	}
	return a.Blocks[i-a.First]
}

// StageBackward runs one micro-batch backward through the stage after
// StageForward: on the last stage from the loss, elsewhere from the output
// gradient the caller put in a.DResid; it leaves the stage's input
// gradient in a.DResid. Unsplit, parameter gradients accumulate into
// Grads (the embedding's too). Split, it computes input gradients only —
// no parameter gradient is touched — and keeps what StageWeights needs
// (a must have been allocated with ActsOptions.Split). With
// recomputation each block's forward runs again first. tokens are the
// micro-batch's, for the embedding's gradient.
func (m *Model) StageBackward(ctx context.Context, a *Acts, tokens []int32, split bool, h Hooks) error {
	l := m.Layout
	if split && a.Grads == nil && a.End > a.First {
		return fmt.Errorf("model: split backward over activations allocated without ActsOptions.Split: %w", ErrInvalidConfig)
	}
	if a.HasHead {
		u := l.HeadUnit()
		if err := call(h.BeforeBackward, u); err != nil {
			return err
		}
		x := a.Resid[a.End-a.First]
		var err error
		if split {
			err = m.headBackwardInput(ctx, a.Head, a.DResid, x, a.Scratch, a.HeadNorm)
		} else {
			err = m.HeadBackward(ctx, a.Head, a.DResid, x, a.Scratch)
		}
		if err != nil {
			return err
		}
		if err := call(h.AfterBackward, u); err != nil {
			return err
		}
	}
	for i := a.End - 1; i >= a.First; i-- {
		u := l.BlockUnit(i)
		if err := call(h.BeforeBackward, u); err != nil {
			return err
		}
		x, s := a.Resid[i-a.First], a.blockActs(i)
		if a.Blocks == nil {
			// Recompute: the same inputs and kernels give the same bits.
			if err := m.BlockForward(ctx, i, a.Resid[i-a.First+1], x, s, a.Scratch); err != nil {
				return fmt.Errorf("recomputing: %w", err)
			}
		}
		var err error
		if split {
			err = m.BlockBackwardInput(ctx, i, a.DResid, x, s, a.Scratch, a.Grads[i-a.First])
		} else {
			err = m.BlockBackward(ctx, i, a.DResid, x, s, a.Scratch)
		}
		if err != nil {
			return err
		}
		if err := call(h.AfterBackward, u); err != nil {
			return err
		}
	}
	if !a.HasEmbed || split {
		return nil
	}
	u := l.EmbedUnit()
	if err := call(h.BeforeBackward, u); err != nil {
		return err
	}
	if err := m.EmbedBackward(ctx, a, tokens); err != nil {
		return err
	}
	return call(h.AfterBackward, u)
}

// StageWeights is the weight-gradient pass of a split backward: it
// accumulates the stage's parameter gradients (the head's, every block's
// from the last to the first, the embedding's) from what StageBackward
// kept. tokens are the micro-batch's.
func (m *Model) StageWeights(ctx context.Context, a *Acts, tokens []int32, h Hooks) error {
	l := m.Layout
	if a.Grads == nil && a.End > a.First {
		return fmt.Errorf("model: weight pass over activations allocated without ActsOptions.Split: %w", ErrInvalidConfig)
	}
	if a.HasHead {
		u := l.HeadUnit()
		if err := call(h.BeforeWeights, u); err != nil {
			return err
		}
		m.headWeights(a.Head, a.HeadNorm)
		if err := call(h.AfterWeights, u); err != nil {
			return err
		}
	}
	for i := a.End - 1; i >= a.First; i-- {
		u := l.BlockUnit(i)
		if err := call(h.BeforeWeights, u); err != nil {
			return err
		}
		if err := m.BlockWeights(ctx, i, a.Blocks[i-a.First], a.Scratch, a.Grads[i-a.First]); err != nil {
			return err
		}
		if err := call(h.AfterWeights, u); err != nil {
			return err
		}
	}
	if !a.HasEmbed {
		return nil
	}
	u := l.EmbedUnit()
	if err := call(h.BeforeWeights, u); err != nil {
		return err
	}
	if err := m.EmbedBackward(ctx, a, tokens); err != nil {
		return err
	}
	return call(h.AfterWeights, u)
}
