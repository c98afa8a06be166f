// Package optim owns the optimizer step over ranges of the flat parameter buffer: AdamW, the learning-rate schedule and global-norm gradient clipping.
package optim

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/loomtrain/loom/tensor"
)

// ErrInvalid is the class of configuration and argument errors in this package.
var ErrInvalid = errors.New("invalid optimizer setting")

// Segment is a range [Offset, Offset+Len) of the flat parameter buffer and
// whether weight decay applies to it (model.View.Decay).
type Segment struct {
	Offset, Len int
	Decay       bool
}

// AdamWConfig holds AdamW's hyperparameters other than the learning rate.
type AdamWConfig struct {
	Beta1, Beta2 float64 // moment decay rates, in [0, 1)
	Eps          float64 // added to sqrt(v̂), > 0
	WeightDecay  float64 // decoupled decay coefficient for Decay segments, >= 0
}

// DefaultAdamW is the usual LLM pretraining setting (betas 0.9/0.95, eps 1e-8,
// weight decay 0.1). PyTorch's own defaults differ (0.999, 0.01).
func DefaultAdamW() AdamWConfig {
	return AdamWConfig{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
}

// Validate reports every out-of-range field at once.
func (c AdamWConfig) Validate() error {
	var errs []error
	if !(c.Beta1 >= 0 && c.Beta1 < 1) {
		errs = append(errs, fmt.Errorf("optim: AdamW Beta1 = %v: must be in [0,1): %w", c.Beta1, ErrInvalid))
	}
	if !(c.Beta2 >= 0 && c.Beta2 < 1) {
		errs = append(errs, fmt.Errorf("optim: AdamW Beta2 = %v: must be in [0,1): %w", c.Beta2, ErrInvalid))
	}
	if !(c.Eps > 0) {
		errs = append(errs, fmt.Errorf("optim: AdamW Eps = %v: must be > 0: %w", c.Eps, ErrInvalid))
	}
	if !(c.WeightDecay >= 0) {
		errs = append(errs, fmt.Errorf("optim: AdamW WeightDecay = %v: must be >= 0: %w", c.WeightDecay, ErrInvalid))
	}
	return errors.Join(errs...)
}

// AdamW is torch.optim.AdamW over one shard [Offset, Offset+Len) of the flat
// parameter buffer: p *= 1 − lr·wd (Decay segments only); m, v updated with
// bias correction; p −= lr·m̂/(sqrt(v̂)+eps). Its moment buffers cover only
// the shard, so a ZeRO rank holds state for its own range. The shard may
// be the whole buffer. Not safe for concurrent use.
type AdamW struct {
	cfg    AdamWConfig
	k      tensor.Kernels
	offset int
	segs   []Segment // clipped to the shard, coalesced, offsets relative to the shard
	m, v   []float32
	step   int
}

// NewAdamW returns an optimizer for the shard [offset, offset+length). segs
// describe the decay flag of the whole flat buffer (or at least the shard);
// together they must cover every element of the shard exactly once.
func NewAdamW(k tensor.Kernels, cfg AdamWConfig, segs []Segment, offset, length int) (*AdamW, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("optim.NewAdamW: %w", err)
	}
	if offset < 0 || length < 0 {
		return nil, fmt.Errorf("optim.NewAdamW: shard [%d,+%d): %w", offset, length, ErrInvalid)
	}
	sorted := append([]Segment(nil), segs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Offset < sorted[j].Offset })
	var local []Segment
	next := offset // first shard element not yet covered
	end := offset + length
	for _, s := range sorted {
		lo, hi := max(s.Offset, offset), min(s.Offset+s.Len, end)
		if lo >= hi {
			continue
		}
		if lo != next {
			return nil, fmt.Errorf("optim.NewAdamW: segments leave [%d,%d) uncovered or overlap there: %w", min(lo, next), max(lo, next), ErrInvalid)
		}
		if n := len(local); n > 0 && local[n-1].Decay == s.Decay {
			local[n-1].Len += hi - lo
		} else {
			local = append(local, Segment{Offset: lo - offset, Len: hi - lo, Decay: s.Decay})
		}
		next = hi
	}
	if next != end {
		return nil, fmt.Errorf("optim.NewAdamW: segments leave [%d,%d) uncovered: %w", next, end, ErrInvalid)
	}
	return &AdamW{cfg: cfg, k: k, offset: offset, segs: local, m: make([]float32, length), v: make([]float32, length)}, nil
}

// Step applies one update with learning rate lr. params and grads are the
// shard's elements: params[i] is flat element Offset+i.
func (o *AdamW) Step(params, grads []float32, lr float64) error {
	return o.StepScaled(params, grads, lr, 1)
}

// StepScaled is Step with every gradient multiplied by gradScale first
// (global-norm clipping's factor from ClipCoef), bit for bit as scaling
// grads in place and then stepping would be, but in the update's own pass
// over the gradients; grads is not written.
func (o *AdamW) StepScaled(params, grads []float32, lr float64, gradScale float64) error {
	if len(params) != len(o.m) || len(grads) != len(o.m) {
		return fmt.Errorf("optim: AdamW step: params %d and grads %d elements for a shard of %d: %w", len(params), len(grads), len(o.m), ErrInvalid)
	}
	o.step++
	for _, s := range o.segs {
		h := tensor.AdamWHyper{LR: lr, Beta1: o.cfg.Beta1, Beta2: o.cfg.Beta2, Eps: o.cfg.Eps, Step: o.step}
		if gradScale != 1 {
			h.GradScale = float32(gradScale)
		}
		if s.Decay {
			h.WeightDecay = o.cfg.WeightDecay
		}
		r := s.Offset
		o.k.AdamW(params[r:r+s.Len], grads[r:r+s.Len], o.m[r:r+s.Len], o.v[r:r+s.Len], h)
	}
	return nil
}

// Shard returns the flat range [offset, offset+length) the optimizer updates.
func (o *AdamW) Shard() (offset, length int) { return o.offset, len(o.m) }

// State returns the moment buffers (aliases, not copies) and the number of
// steps taken, for checkpointing.
func (o *AdamW) State() (m, v []float32, step int) { return o.m, o.v, o.step }

// SetState restores moments and the step count saved by State.
func (o *AdamW) SetState(m, v []float32, step int) error {
	if len(m) != len(o.m) || len(v) != len(o.v) || step < 0 {
		return fmt.Errorf("optim: AdamW restore: %d/%d moments and step %d for a shard of %d: %w", len(m), len(v), step, len(o.m), ErrInvalid)
	}
	copy(o.m, m)
	copy(o.v, v)
	o.step = step
	return nil
}

// Decay is the shape of a schedule after warm-up.
type Decay int

// Decay shapes.
const (
	Cosine   Decay = iota // half a cosine from MaxLR to MinLR
	Linear                // a straight line from MaxLR to MinLR
	Constant              // MaxLR throughout (MinLR is ignored)
)

// Schedule is linear warm-up then a decay (cosine by default). With s the 0-based index of
// the optimizer step (the PyTorch LambdaLR convention: the lr used by the
// s-th call to optimizer.step()):
//
//	s < WarmupSteps:               MaxLR·(s+1)/WarmupSteps
//	WarmupSteps <= s < TotalSteps: MinLR + ½(MaxLR−MinLR)(1+cos(π·(s−WarmupSteps)/(TotalSteps−WarmupSteps)))
//	s >= TotalSteps:               MinLR
//
// Linear replaces the cosine by MaxLR − (MaxLR−MinLR)·progress; Constant
// keeps MaxLR after warm-up.
type Schedule struct {
	MaxLR, MinLR float64
	WarmupSteps  int
	TotalSteps   int
	Decay        Decay
}

// Validate reports every inconsistent field at once.
func (s Schedule) Validate() error {
	var errs []error
	if !(s.MaxLR > 0) || math.IsInf(s.MaxLR, 0) {
		errs = append(errs, fmt.Errorf("optim: schedule MaxLR = %v: must be finite and > 0: %w", s.MaxLR, ErrInvalid))
	}
	if !(s.MinLR >= 0 && s.MinLR <= s.MaxLR) {
		errs = append(errs, fmt.Errorf("optim: schedule MinLR = %v: must be in [0, MaxLR=%v]: %w", s.MinLR, s.MaxLR, ErrInvalid))
	}
	if s.WarmupSteps < 0 {
		errs = append(errs, fmt.Errorf("optim: schedule WarmupSteps = %d: must be >= 0: %w", s.WarmupSteps, ErrInvalid))
	}
	if s.TotalSteps < s.WarmupSteps {
		errs = append(errs, fmt.Errorf("optim: schedule TotalSteps = %d: must be >= WarmupSteps (%d): %w", s.TotalSteps, s.WarmupSteps, ErrInvalid))
	}
	return errors.Join(errs...)
}

// LR returns the learning rate of 0-based step s.
func (s Schedule) LR(step int) float64 {
	switch {
	case step < s.WarmupSteps:
		return s.MaxLR * float64(step+1) / float64(s.WarmupSteps)
	case s.Decay == Constant:
		return s.MaxLR
	case step >= s.TotalSteps:
		return s.MinLR
	}
	progress := float64(step-s.WarmupSteps) / float64(s.TotalSteps-s.WarmupSteps)
	if s.Decay == Linear {
		return s.MaxLR - (s.MaxLR-s.MinLR)*progress
	}
	return s.MinLR + 0.5*(s.MaxLR-s.MinLR)*(1+math.Cos(math.Pi*progress))
}

// ClipCoef is torch.nn.utils.clip_grad_norm_'s factor for a global gradient
// norm: maxNorm/(norm+1e-6), clamped to at most 1. Gradients are scaled only
// when it is below 1. A non-positive maxNorm disables clipping (returns 1).
// Distributed callers sum tensor.Kernels.SumSquares over their shards,
// all-reduce, take the square root, and scale their shard by this factor.
func ClipCoef(norm, maxNorm float64) float64 {
	if maxNorm <= 0 {
		return 1
	}
	return min(maxNorm/(norm+1e-6), 1)
}

// ClipGradNorm clips grads (the whole gradient) to global L2 norm maxNorm
// with PyTorch's clip_grad_norm_ semantics and returns the norm before
// clipping.
func ClipGradNorm(k tensor.Kernels, grads []float32, maxNorm float64) float64 {
	norm := math.Sqrt(k.SumSquares(grads))
	if c := ClipCoef(norm, maxNorm); c < 1 {
		k.Scale(grads, float32(c))
	}
	return norm
}
