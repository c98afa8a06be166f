package model

import (
	"context"
	"fmt"
)

// CheckTokens reports the first token id outside [0, VocabSize) and, for
// targets (which may be nil), the first one >= VocabSize (negative targets are
// ignored by the loss), and whether their length is B·T.
func (m *Model) CheckTokens(B, T int, tokens, targets []int32) error {
	if len(tokens) != B*T || (targets != nil && len(targets) != B*T) {
		return fmt.Errorf("model: got %d tokens and %d targets for batch shape (%d,%d): %w", len(tokens), len(targets), B, T, ErrInput)
	}
	V := int32(m.Config.VocabSize)
	for i, t := range tokens {
		if t < 0 || t >= V {
			return fmt.Errorf("model: token %d at position %d not in [0,%d): %w", t, i, V, ErrInput)
		}
	}
	for i, t := range targets {
		if t >= V {
			return fmt.Errorf("model: target %d at position %d not below VocabSize %d: %w", t, i, V, ErrInput)
		}
	}
	return nil
}

// Hooks are called around each unit's passes, with the unit's index in
// Layout.Units. For a whole model (ForwardBackwardHooks) the order is: the
// embedding, each block and the head forward; the loss; then the head,
// each block from the last to the first and the embedding backward; a
// pipeline stage (StageForward, StageBackward, StageWeights) calls them
// for its own units in the same order. AfterBackward(u) of an unsplit
// backward means unit u's gradient is final for this micro-batch. A split
// backward reads parameters in its input-gradient pass (Before/After
// Backward, which then writes no parameter gradient) and writes every
// gradient in its weight pass (Before/AfterWeights, which reads no
// parameter), after which the gradient is final. ZeRO stage 3 gathers a
// unit's parameters in BeforeForward and BeforeBackward and releases them
// after; stages 2 and 3 bind a gradient buffer before a unit's gradients
// are written and reduce it after. With tied embeddings the head's passes
// also read the tied weight's parameters and accumulate into its gradient
// (Layout.GradUnits): on one stage the embedding must stay bound from its
// forward to its backward; a last stage's copy ("tied") is final with the
// head. Nil hooks are skipped; a hook's error ends the pass and is
// returned.
type Hooks struct {
	BeforeForward, AfterForward, BeforeBackward, AfterBackward func(unit int) error
	BeforeWeights, AfterWeights                                func(unit int) error
}

func call(f func(int) error, u int) error {
	if f == nil {
		return nil
	}
	return f(u)
}

// ForwardBackward runs one training micro-batch on one rank: tokens and
// targets are (a.B, a.T) row-major. It returns the mean loss and
// accumulates gradScale·d(loss)/d(params) into Grads.
func (m *Model) ForwardBackward(a *Acts, tokens, targets []int32, gradScale float32) (float64, error) {
	return m.ForwardBackwardHooks(context.Background(), a, tokens, targets, gradScale, Hooks{})
}

// ForwardBackwardHooks is ForwardBackward with hooks around every unit's
// forward and backward pass (see Hooks); ctx bounds the tensor-parallel
// communication. a must cover the whole model (NewActs).
func (m *Model) ForwardBackwardHooks(ctx context.Context, a *Acts, tokens, targets []int32, gradScale float32, h Hooks) (float64, error) {
	if err := m.CheckTokens(a.B, a.T, tokens, targets); err != nil {
		return 0, fmt.Errorf("model.ForwardBackward: %w", err)
	}
	if !a.HasEmbed || !a.HasHead || a.First != 0 || a.End != m.Config.NLayers {
		return 0, fmt.Errorf("model.ForwardBackward: activations of blocks [%d,%d) are not the whole model's: %w", a.First, a.End, ErrInvalidConfig)
	}
	loss, err := m.StageForward(ctx, a, tokens, targets, gradScale, h)
	if err != nil {
		return 0, err
	}
	return loss, m.StageBackward(ctx, a, tokens, false, h)
}

// forward runs the embedding, every block and the head forward.
func (m *Model) forward(ctx context.Context, a *Acts, tokens []int32) error {
	if err := m.EmbedForward(ctx, a, tokens); err != nil {
		return err
	}
	for i := range m.Config.NLayers {
		if err := m.BlockForward(ctx, i, a.Resid[i+1], a.Resid[i], a.Blocks[i], a.Scratch); err != nil {
			return err
		}
	}
	return m.HeadForward(ctx, a.Head, a.Resid[m.Config.NLayers], a.Scratch)
}

// Loss is the forward-only mean cross-entropy, for evaluation on one rank.
func (m *Model) Loss(a *Acts, tokens, targets []int32) (float64, error) {
	return m.LossContext(context.Background(), a, tokens, targets)
}

// LossContext is Loss for a model of any layout: every tensor-parallel
// rank calls it with the same batch and gets the same loss.
func (m *Model) LossContext(ctx context.Context, a *Acts, tokens, targets []int32) (float64, error) {
	if err := m.CheckTokens(a.B, a.T, tokens, targets); err != nil {
		return 0, fmt.Errorf("model.Loss: %w", err)
	}
	if err := m.forward(ctx, a, tokens); err != nil {
		return 0, fmt.Errorf("model.Loss: %w", err)
	}
	return m.HeadLoss(ctx, a.Head, targets)
}

// Logits runs the forward pass on one rank and returns the logits
// (a.B, a.T, VocabSize), a view into a that the next pass overwrites.
func (m *Model) Logits(a *Acts, tokens []int32) ([]float32, error) {
	return m.LogitsContext(context.Background(), a, tokens)
}

// LogitsContext is Logits for a model of any layout; a tensor-parallel
// rank gets its vocabulary range, (a.B, a.T, Local().Vocab), whose rows
// past the global vocabulary are padding.
func (m *Model) LogitsContext(ctx context.Context, a *Acts, tokens []int32) ([]float32, error) {
	if err := m.CheckTokens(a.B, a.T, tokens, nil); err != nil {
		return nil, fmt.Errorf("model.Logits: %w", err)
	}
	if err := m.forward(ctx, a, tokens); err != nil {
		return nil, fmt.Errorf("model.Logits: %w", err)
	}
	return a.Head.Logits[:a.B*a.T*m.loc.Vocab], nil
}
