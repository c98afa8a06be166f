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
	"github.com/loomtrain/loom/zero"
)

// Config is what a Trainer needs. Kernels, Loader and Spec are required.
type Config struct {
	Spec    api.JobSpec
	Kernels tensor.Kernels
	Loader  *data.Loader
	// DP is the data-parallel group (its size must be parallel.dp); nil
	// for a single rank. Gradients are averaged over it during the
	// backward pass; parallel.zero picks what its ranks shard (see
	// zero.Engine).
	DP *parallel.Group
	// BucketBytes is the stage-0 gradient bucket size (0:
	// parallel.DefaultBucketBytes).
	BucketBytes int
	// Validation is the held-out data train.eval_every evaluates on
	// (data.Dataset.Validation); nil: no validation.
	Validation *data.Loader
	// TestStepDelay is a test hook: every step sleeps this long, counted
	// as compute, to make a deliberately slow rank (the dashboard's
	// straggler test sets it through LOOM_TEST_SLOW_RANK). Zero otherwise.
	TestStepDelay time.Duration
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
	// CommSeconds is the time spent in data-parallel collectives, of which
	// OverlapSeconds ran hidden behind the backward pass.
	CommSeconds    float64 `json:"comm_s"`
	OverlapSeconds float64 `json:"comm_overlap_s"`
	// CommBytes is what this rank sent in the step's collectives (see
	// zero.StepStats).
	CommBytes int64 `json:"comm_bytes"`
	// DataSeconds is the part of StepSeconds spent filling batches from
	// the data loader.
	DataSeconds float64 `json:"data_s"`
	// CheckpointSeconds is how long the step loop was blocked after this
	// step to snapshot a checkpoint (0: none was due).
	CheckpointSeconds float64 `json:"ckpt_s,omitempty"`
	// ValLoss is the mean validation loss after this step when a
	// validation pass was due (train.eval_every), else 0.
	ValLoss float64 `json:"val_loss,omitempty"`
}

// Trainer runs optimizer steps for one rank. It is not safe for concurrent
// use.
type Trainer struct {
	spec api.JobSpec
	k    tensor.Kernels
	// Model runs the passes. Under ZeRO stage 3 (with dp > 1) its Params
	// and Grads are nil: use Params for the full weights.
	Model   *model.Model
	engine  *zero.Engine
	sched   optim.Schedule
	loader  *data.Loader
	acts    *model.Acts
	inputs  []int32
	targets []int32
	scalar  []float32
	rank    int
	dpSize  int
	dp      *parallel.Group
	step    int // optimizer steps taken
	accum   int
	perRank int // windows per rank per step
	micro   int
	seqLen  int
	ck      *saver         // nil: no periodic checkpoints
	views   map[string]int // parameter view by name, for checkpoints
	delay   time.Duration  // Config.TestStepDelay
	val     *data.Loader   // nil: no validation
	evalM   *model.Model   // ZeRO-3: the gathered weights for validation
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
	mc := checkpoint.ModelConfig(s.Model)
	layout, err := model.NewLayout(mc)
	if err != nil {
		return nil, err
	}
	plan, err := zero.NewPlan(layout, dp, zero.Stage(s.Parallel.Zero), 0)
	if err != nil {
		return nil, err
	}
	var g *parallel.Group
	if dp > 1 {
		g = cfg.DP
	}
	eng, err := zero.New(zero.Config{
		Plan: plan, Rank: rank, Group: g, Kernels: cfg.Kernels, Model: mc, Seed: s.Train.Seed, BucketBytes: cfg.BucketBytes,
		AdamW: optim.AdamWConfig{Beta1: s.Train.Beta1, Beta2: s.Train.Beta2, Eps: s.Train.Eps, WeightDecay: s.Train.WeightDecay},
	})
	if err != nil {
		return nil, err
	}
	m := eng.Model
	acts, err := m.NewActs(s.Train.MicroBatch, s.Model.SeqLen)
	if err != nil {
		return nil, err
	}
	n := s.Train.MicroBatch * s.Model.SeqLen
	t := &Trainer{
		spec: s, k: cfg.Kernels, Model: m, engine: eng, sched: schedule(s.Train), loader: cfg.Loader, val: cfg.Validation,
		acts: acts, inputs: make([]int32, n), targets: make([]int32, n), scalar: make([]float32, 1),
		rank: rank, dpSize: dp, dp: cfg.DP,
		accum: s.AccumulationSteps(), perRank: s.Train.GlobalBatch / dp, micro: s.Train.MicroBatch,
		seqLen: s.Model.SeqLen, delay: cfg.TestStepDelay,
	}
	return t, nil
}

// Memory is this rank's counted memory (zero.Memory): the engine's
// parameter, gradient, optimizer, working and staging buffers plus the
// activations of one micro-batch. A worker exports each kind as the gauge
// loom_worker_memory_bytes{kind} (zero.Memory.Kinds).
func (t *Trainer) Memory() zero.Memory {
	m := t.engine.Memory()
	m.Activations = zero.ActivationBytes(t.Model.Config, t.micro, t.seqLen)
	return m
}

// Plan is the ZeRO plan the trainer runs.
func (t *Trainer) Plan() zero.Plan { return t.engine.Plan() }

// Params returns the full parameters: the model's own buffer, or under
// ZeRO stage 3 a new buffer gathered from every rank (a collective: every
// rank must call it).
func (t *Trainer) Params(ctx context.Context) ([]float32, error) {
	if t.Model.Params != nil {
		return t.Model.Params, nil
	}
	p := make([]float32, t.Model.Layout.Size)
	return p, t.engine.GatherParams(ctx, p)
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
	return t.engine.LoadParams(src.Params)
}

// Step runs one optimizer step: the rank's share of the step's windows in
// micro-batches, gradient exchange, clipping and the AdamW update.
func (t *Trainer) Step(ctx context.Context) (Stats, error) {
	start := time.Now()
	t.engine.BeginStep(ctx)
	var loss float64
	var dataTime time.Duration
	scale := float32(1) / float32(t.accum)
	if t.delay > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(t.delay):
		}
	}
	for a := 0; a < t.accum; a++ {
		lo := t.rank*t.perRank + a*t.micro
		fill := time.Now()
		if err := t.loader.FillStep(t.step, t.spec.Train.GlobalBatch, lo, lo+t.micro, t.inputs, t.targets); err != nil {
			t.engine.Abort()
			return Stats{}, fmt.Errorf("step %d: %w", t.step+1, err)
		}
		dataTime += time.Since(fill)
		l, err := t.engine.ForwardBackward(ctx, t.acts, t.inputs, t.targets, scale, a == t.accum-1)
		if err != nil {
			t.engine.Abort()
			return Stats{}, fmt.Errorf("step %d: %w", t.step+1, err)
		}
		loss += l / float64(t.accum)
	}
	lr := t.sched.LR(t.step)
	es, err := t.engine.FinishStep(ctx, lr, t.spec.Train.GradClip)
	if err != nil {
		return Stats{}, fmt.Errorf("step %d: %w", t.step+1, err)
	}
	if t.dp != nil && t.dpSize > 1 {
		t.scalar[0] = float32(loss)
		c := time.Now()
		if err := t.dp.AllReduce(ctx, t.scalar, parallel.Mean); err != nil {
			return Stats{}, fmt.Errorf("step %d: loss all-reduce: %w", t.step+1, err)
		}
		es.CommSeconds += time.Since(c).Seconds()
		es.CommBytes += zero.AllReduceSent(t.dp, 1)
		loss = float64(t.scalar[0])
	}
	norm := es.GradNorm
	t.step++
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return Stats{}, fmt.Errorf("step %d: loss is %v: lower train.lr (%g) or check the data", t.step, loss, t.spec.Train.LR)
	}
	d := time.Since(start)
	tokens := t.spec.Train.GlobalBatch * t.seqLen
	return Stats{
		Step: t.step, Loss: loss, LR: lr, GradNorm: norm, Tokens: tokens,
		TokensPerSec: float64(tokens) / d.Seconds(), StepSeconds: d.Seconds(),
		CommSeconds: es.CommSeconds, OverlapSeconds: es.OverlapSeconds, CommBytes: es.CommBytes,
		DataSeconds: dataTime.Seconds(),
	}, nil
}

// Run takes steps until train.steps, calling report after each; it stops
// early when ctx is done. With checkpoints enabled it saves after every
// checkpoint.every steps and, before returning, waits for the last save.
func (t *Trainer) Run(ctx context.Context, report func(Stats)) error {
	for t.step < t.spec.Train.Steps {
		if err := ctx.Err(); err != nil {
			return errors.Join(fmt.Errorf("stopped after step %d: %w", t.step, err), t.ck.wait())
		}
		st, err := t.Step(ctx)
		if err != nil {
			return errors.Join(err, t.ck.wait())
		}
		if e := t.spec.Train.EvalEvery; t.val != nil && e > 0 && (t.step%e == 0 || t.step == t.spec.Train.Steps) {
			if st.ValLoss, err = t.Validate(ctx); err != nil {
				return errors.Join(err, t.ck.wait())
			}
		}
		if t.ck != nil && t.step%t.ck.cfg.Every == 0 {
			d, err := t.ck.save(ctx, t)
			if err != nil {
				return err
			}
			st.CheckpointSeconds = d.Seconds()
		}
		report(st)
	}
	return t.ck.wait()
}

// Validate returns the mean loss over one validation pass: the first
// train.eval_batches × train.global_batch windows of the validation set,
// each rank evaluating its share (data.EvalSamples) in micro-batches, the
// mean taken over the data-parallel group. Every rank must call it. Under
// ZeRO stage 3 it gathers the full weights first.
func (t *Trainer) Validate(ctx context.Context) (float64, error) {
	if t.val == nil {
		return 0, errors.New("train: no validation set (data.validation)")
	}
	m := t.Model
	if m.Params == nil {
		p, err := t.Params(ctx)
		if err != nil {
			return 0, fmt.Errorf("validation: %w", err)
		}
		if t.evalM == nil {
			if t.evalM, err = model.New(t.Model.Config, t.k); err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
		}
		copy(t.evalM.Params, p)
		m = t.evalM
	}
	defer t.acts.SetShape(t.micro, t.seqLen)
	G, T := t.spec.Train.GlobalBatch, t.seqLen
	var sum float64
	n := 0
	for b := range t.spec.Train.EvalBatches {
		first, count := data.EvalSamples(b, t.rank, t.dpSize, G)
		for off := 0; off < count; off += t.micro {
			if err := ctx.Err(); err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
			k := min(t.micro, count-off)
			in, tg := t.inputs[:k*T], t.targets[:k*T]
			if err := t.val.FillSamples(first+off, k, in, tg); err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
			if err := t.acts.SetShape(k, T); err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
			l, err := m.Loss(t.acts, in, tg)
			if err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
			sum += l * float64(k)
			n += k
		}
	}
	loss := sum / float64(n)
	if t.dp != nil && t.dpSize > 1 {
		t.scalar[0] = float32(loss)
		if err := t.dp.AllReduce(ctx, t.scalar, parallel.Mean); err != nil {
			return 0, fmt.Errorf("validation loss all-reduce: %w", err)
		}
		loss = float64(t.scalar[0])
	}
	return loss, nil
}
