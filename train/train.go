// Package train owns the training loop of one rank: it turns a job spec, a
// model, a data loader and an optimizer into optimizer steps, and reports
// each step's statistics.
package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/optim"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/tensor"
)

// Config is what a Trainer needs. Kernels, Loader and Spec are required.
type Config struct {
	Spec    api.JobSpec
	Kernels tensor.Kernels
	Loader  *data.Loader
	// DP is the data-parallel group (its size must be parallel.dp); nil
	// for a single rank. Gradients are averaged over it in buckets that
	// overlap the backward pass.
	DP *parallel.Group
	// BucketBytes is the gradient bucket size (0: parallel.DefaultBucketBytes).
	BucketBytes int
}

// Stats describes one optimizer step.
type Stats struct {
	Step         int     `json:"step"` // 1-based number of the step just taken
	Loss         float64 `json:"loss"` // mean cross-entropy over the global batch
	LR           float64 `json:"lr"`
	GradNorm     float64 `json:"grad_norm"` // global norm before clipping
	Tokens       int     `json:"tokens"`    // tokens in the global batch
	TokensPerSec float64 `json:"tokens_per_sec"`
	StepSeconds  float64 `json:"step_s"`
	// CommSeconds is the time spent in data-parallel all-reduces, of which
	// OverlapSeconds ran hidden behind the backward pass.
	CommSeconds    float64 `json:"comm_s"`
	OverlapSeconds float64 `json:"comm_overlap_s"`
	CommBytes      int64   `json:"comm_bytes"`
}

// Trainer runs optimizer steps for one rank. It is not safe for concurrent
// use.
type Trainer struct {
	spec    api.JobSpec
	k       tensor.Kernels
	Model   *model.Model
	opt     *optim.AdamW
	sched   optim.Schedule
	loader  *data.Loader
	acts    *model.Acts
	inputs  []int32
	targets []int32
	scalar  []float32
	rank    int
	dpSize  int
	dp      *parallel.Group
	reducer *parallel.BucketReducer
	step    int // optimizer steps taken
	accum   int
	perRank int // windows per rank per step
	micro   int
	seqLen  int
}

// New builds a trainer with freshly initialised weights (seeded by
// train.seed).
func New(cfg Config) (*Trainer, error) {
	if cfg.Kernels == nil || cfg.Loader == nil {
		return nil, errors.New("train: Config needs Kernels and Loader")
	}
	s := cfg.Spec
	if err := s.Validate(); err != nil {
		return nil, err
	}
	dp, rank := 1, 0
	if cfg.DP != nil {
		dp, rank = cfg.DP.Size(), cfg.DP.Index()
	}
	if dp != s.Parallel.DP {
		return nil, fmt.Errorf("train: data-parallel group of %d ranks, but parallel.dp = %d", dp, s.Parallel.DP)
	}
	if fv := cfg.Loader.File().Meta().VocabSize; fv > s.Model.VocabSize {
		return nil, fmt.Errorf("model.vocab_size = %d is smaller than the vocabulary of %s (%d): set model.vocab_size ≥ %d",
			s.Model.VocabSize, cfg.Loader.File().Path(), fv, fv)
	}
	if lc := cfg.Loader.Config(); lc.SeqLen != s.Model.SeqLen {
		return nil, fmt.Errorf("train: loader windows of %d tokens, model.seq_len = %d", lc.SeqLen, s.Model.SeqLen)
	}
	m, err := model.New(checkpoint.ModelConfig(s.Model), cfg.Kernels)
	if err != nil {
		return nil, err
	}
	m.Init(s.Train.Seed)
	segs := make([]optim.Segment, len(m.Layout.Views))
	for i, v := range m.Layout.Views {
		segs[i] = optim.Segment{Offset: v.Offset, Len: v.Len(), Decay: v.Decay}
	}
	opt, err := optim.NewAdamW(cfg.Kernels, optim.AdamWConfig{
		Beta1: s.Train.Beta1, Beta2: s.Train.Beta2, Eps: s.Train.Eps, WeightDecay: s.Train.WeightDecay,
	}, segs, 0, m.Layout.Size)
	if err != nil {
		return nil, err
	}
	acts, err := m.NewActs(s.Train.MicroBatch, s.Model.SeqLen)
	if err != nil {
		return nil, err
	}
	n := s.Train.MicroBatch * s.Model.SeqLen
	t := &Trainer{
		spec: s, k: cfg.Kernels, Model: m, opt: opt, sched: schedule(s.Train), loader: cfg.Loader,
		acts: acts, inputs: make([]int32, n), targets: make([]int32, n), scalar: make([]float32, 1),
		rank: rank, dpSize: dp, dp: cfg.DP,
		accum: s.AccumulationSteps(), perRank: s.Train.GlobalBatch / dp, micro: s.Train.MicroBatch,
		seqLen: s.Model.SeqLen,
	}
	if cfg.DP != nil {
		t.reducer = parallel.NewBucketReducer(cfg.DP, m.Grads, cfg.BucketBytes)
	}
	return t, nil
}

// schedule turns the spec's schedule into an optim.Schedule.
func schedule(t api.TrainSpec) optim.Schedule {
	s := optim.Schedule{MaxLR: t.LR, MinLR: t.MinLR, WarmupSteps: min(t.WarmupSteps, t.Steps), TotalSteps: t.Steps}
	switch t.Schedule {
	case "constant":
		s.Decay = optim.Constant
	case "linear":
		s.Decay = optim.Linear
	}
	return s
}

// StepsDone is the number of optimizer steps taken.
func (t *Trainer) StepsDone() int { return t.step }

// LoadWeights copies weights from another model of the same configuration
// (continued pretraining from --init).
func (t *Trainer) LoadWeights(src *model.Model) error {
	if err := checkpoint.CompareConfigs(t.Model.Config, src.Config); err != nil {
		return err
	}
	copy(t.Model.Params, src.Params)
	return nil
}

// Step runs one optimizer step: the rank's share of the step's windows in
// micro-batches, gradient exchange, clipping and the AdamW update.
func (t *Trainer) Step(ctx context.Context) (Stats, error) {
	start := time.Now()
	t.Model.ZeroGrads()
	var loss float64
	scale := float32(1) / float32(t.accum)
	var ready func(lo, hi int)
	for a := 0; a < t.accum; a++ {
		lo := t.rank*t.perRank + a*t.micro
		if err := t.loader.FillStep(t.step, t.spec.Train.GlobalBatch, lo, lo+t.micro, t.inputs, t.targets); err != nil {
			return Stats{}, fmt.Errorf("step %d: %w", t.step+1, err)
		}
		if t.reducer != nil && a == t.accum-1 {
			// Only the last micro-batch's backward finishes the gradients.
			t.reducer.Start(ctx)
			ready = t.reducer.Ready
		}
		l, err := t.Model.ForwardBackwardNotify(t.acts, t.inputs, t.targets, scale, ready)
		if err != nil {
			if t.reducer != nil && ready != nil {
				t.reducer.Wait()
			}
			return Stats{}, fmt.Errorf("step %d: %w", t.step+1, err)
		}
		loss += l / float64(t.accum)
	}
	var rs parallel.ReduceStats
	if t.reducer != nil {
		var err error
		if rs, err = t.reducer.Wait(); err != nil {
			return Stats{}, fmt.Errorf("step %d: gradient all-reduce: %w", t.step+1, err)
		}
		t.scalar[0] = float32(loss)
		c := time.Now()
		if err := t.dp.AllReduce(ctx, t.scalar, parallel.Mean); err != nil {
			return Stats{}, fmt.Errorf("step %d: loss all-reduce: %w", t.step+1, err)
		}
		rs.Comm += time.Since(c)
		rs.Bytes += 4
		loss = float64(t.scalar[0])
	}
	norm := optim.ClipGradNorm(t.k, t.Model.Grads, t.spec.Train.GradClip)
	lr := t.sched.LR(t.step)
	if err := t.opt.Step(t.Model.Params, t.Model.Grads, lr); err != nil {
		return Stats{}, err
	}
	t.step++
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return Stats{}, fmt.Errorf("step %d: loss is %v: lower train.lr (%g) or check the data", t.step, loss, t.spec.Train.LR)
	}
	d := time.Since(start)
	tokens := t.spec.Train.GlobalBatch * t.seqLen
	return Stats{
		Step: t.step, Loss: loss, LR: lr, GradNorm: norm, Tokens: tokens,
		TokensPerSec: float64(tokens) / d.Seconds(), StepSeconds: d.Seconds(),
		CommSeconds: rs.Comm.Seconds(), OverlapSeconds: rs.Overlapped.Seconds(), CommBytes: rs.Bytes,
	}, nil
}

// Run takes steps until train.steps, calling report after each; it stops
// early when ctx is done.
func (t *Trainer) Run(ctx context.Context, report func(Stats)) error {
	for t.step < t.spec.Train.Steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("stopped after step %d: %w", t.step, err)
		}
		st, err := t.Step(ctx)
		if err != nil {
			return err
		}
		report(st)
	}
	return nil
}
