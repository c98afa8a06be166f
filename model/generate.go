package model

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// SampleOptions controls token sampling.
type SampleOptions struct {
	Temperature float64 // 0 means greedy (argmax); otherwise logits are divided by it
	TopK        int     // sample among the TopK most likely tokens; 0 means all
	Seed        uint64  // seed of the sampler's PCG stream
}

// Sampler draws token ids from logits. It is deterministic for a given Seed
// and not safe for concurrent use.
type Sampler struct {
	opt   SampleOptions
	rng   *rand.Rand
	order []int32   // token ids, sorted by logit for top-k
	probs []float64 // unnormalized probabilities of the candidates
}

// NewSampler returns a sampler for a vocabulary of the given size.
func NewSampler(vocab int, opt SampleOptions) *Sampler {
	return &Sampler{opt: opt, rng: rand.New(rand.NewPCG(opt.Seed, 0x10057)), order: make([]int32, vocab), probs: make([]float64, vocab)}
}

// Sample returns a token id drawn from logits (VocabSize).
func (s *Sampler) Sample(logits []float32) int32 {
	if s.opt.Temperature <= 0 {
		best := 0
		for i, v := range logits {
			if v > logits[best] {
				best = i
			}
		}
		return int32(best)
	}
	cand := s.order[:len(logits)]
	for i := range cand {
		cand[i] = int32(i)
	}
	if k := s.opt.TopK; k > 0 && k < len(cand) {
		// Highest logit first; ties broken by lower id so results are reproducible.
		slices.SortFunc(cand, func(a, b int32) int {
			if c := cmp.Compare(logits[b], logits[a]); c != 0 {
				return c
			}
			return cmp.Compare(a, b)
		})
		cand = cand[:k]
	}
	mx := math.Inf(-1)
	for _, id := range cand {
		mx = math.Max(mx, float64(logits[id]))
	}
	var sum float64
	for i, id := range cand {
		s.probs[i] = math.Exp((float64(logits[id]) - mx) / s.opt.Temperature)
		sum += s.probs[i]
	}
	u := s.rng.Float64() * sum
	for i, id := range cand {
		u -= s.probs[i]
		if u < 0 {
			return id
		}
	}
	return cand[len(cand)-1]
}

// Generate extends prompt by up to maxNew sampled tokens on one rank and
// returns only the new ones; see GenerateContext.
func (m *Model) Generate(prompt []int32, maxNew int, opt SampleOptions, stop ...int32) ([]int32, error) {
	return m.GenerateContext(context.Background(), prompt, maxNew, opt, stop...)
}

// GenerateContext extends prompt by up to maxNew sampled tokens and
// returns only the new ones. Each token recomputes the full forward pass
// over the last SeqLen tokens of the context (no KV cache); buffers are
// allocated once per call. Generation stops early after a token listed in
// stop. Under tensor parallelism every rank of the group calls it with the
// same arguments: the last position's logits are all-gathered from the
// vocabulary ranges (padding dropped), so every rank samples the same
// tokens.
func (m *Model) GenerateContext(ctx context.Context, prompt []int32, maxNew int, opt SampleOptions, stop ...int32) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("model.Generate: empty prompt: %w", ErrInput)
	}
	if err := m.CheckTokens(1, len(prompt), prompt, nil); err != nil {
		return nil, fmt.Errorf("model.Generate: prompt: %w", err)
	}
	a, err := m.NewEvalActs(1, m.Config.SeqLen)
	if err != nil {
		return nil, fmt.Errorf("model.Generate: %w", err)
	}
	V, Vl := m.Config.VocabSize, m.loc.Vocab
	smp := NewSampler(V, opt)
	var full []float32
	if m.tp != nil {
		full = make([]float32, Vl*m.loc.TP)
	}
	ctxTokens := append(make([]int32, 0, len(prompt)+maxNew), prompt...)
	for range maxNew {
		window := ctxTokens[max(0, len(ctxTokens)-m.Config.SeqLen):]
		if err := a.SetShape(1, len(window)); err != nil {
			return nil, fmt.Errorf("model.Generate: %w", err)
		}
		logits, err := m.LogitsContext(ctx, a, window)
		if err != nil {
			return nil, fmt.Errorf("model.Generate: %w", err)
		}
		last := logits[(len(window)-1)*Vl : len(window)*Vl]
		if m.tp != nil {
			copy(full[m.loc.Rank*Vl:], last)
			if err := m.tp.AllGather(ctx, full); err != nil {
				return nil, fmt.Errorf("model.Generate: gathering the logits: %w", err)
			}
			last = full
		}
		next := smp.Sample(last[:V])
		ctxTokens = append(ctxTokens, next)
		if slices.Contains(stop, next) {
			break
		}
	}
	return ctxTokens[len(prompt):], nil
}
