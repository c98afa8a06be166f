// Package train owns the training of one rank: RunRank is the one
// composition root that `loom run` and every worker use to build a rank
// from the job's plan (data, loader, model, ZeRO engine, resume, periodic
// checkpoints, the final model), and Trainer is its step loop, which turns
// micro-batches into optimizer steps and reports each step's statistics.
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
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/zero"
)

// Comms are a rank's process groups, as the plan names them; a group of
// one member is nil.
type Comms struct {
	// TP splits every layer (the model's all-reduces, all-gathers and
	// reduce-scatters); DP averages gradients and holds the ZeRO shards;
	// KV sums the gradients of replicated kv heads (n_kv_heads < tp).
	TP, DP, KV parallel.Comm
}

// Config is what a Trainer needs. Kernels, Loader and Spec are required.
type Config struct {
	Spec    api.JobSpec
	Kernels tensor.Kernels
	Loader  *data.Loader
	// Plan is the job's plan and Rank this trainer's rank in it; a nil
	// Plan means plan.New(Spec, 1): one rank.
	Plan  *plan.Plan
	Rank  int
	Comms Comms
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
	// CommSeconds is the time spent in collectives — data-parallel ones,
	// of which OverlapSeconds ran hidden behind the backward pass, and
	// tensor-parallel ones (TPCommSeconds, all on the compute path, so
	// exposed).
	CommSeconds    float64 `json:"comm_s"`
	OverlapSeconds float64 `json:"comm_overlap_s"`
	TPCommSeconds  float64 `json:"tp_comm_s,omitempty"`
	// CommBytes is what this rank sent in the step's collectives (see
	// zero.StepStats and parallel.BytesSent), TPCommBytes the part sent
	// on the tensor-parallel and kv groups.
	CommBytes   int64 `json:"comm_bytes"`
	TPCommBytes int64 `json:"tp_comm_bytes,omitempty"`
	// TP and KV count the model's tensor-parallel operations of the step
	// by kind (calls and elements), for tests against plan.TPComm.
	TP map[parallel.Op]parallel.OpCount `json:"-"`
	KV map[parallel.Op]parallel.OpCount `json:"-"`
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
	plan *plan.Plan
	rp   plan.RankPlan
	// Model runs the passes over the rank's local layout. Under ZeRO
	// stage 3 (with dp > 1) its Params and Grads are nil.
	Model   *model.Model
	engine  *zero.Engine
	sched   optim.Schedule
	loader  *data.Loader
	acts    *model.Acts
	inputs  []int32
	targets []int32
	scalar  []float32
	dp      parallel.Comm
	tp, kv  *parallel.Counter
	tpRaw   parallel.Comm
	step    int // optimizer steps taken
	accum   int
	perRank int // windows per dp rank per step
	micro   int
	seqLen  int
	ck      *saver        // nil: no periodic checkpoints
	delay   time.Duration // Config.TestStepDelay
	val     *data.Loader  // nil: no validation
}

// New builds a trainer with freshly initialised weights (seeded by
// train.seed) for rank cfg.Rank of the plan.
func New(cfg Config) (*Trainer, error) {
	if cfg.Kernels == nil || cfg.Loader == nil {
		return nil, errors.New("train: Config needs Kernels and Loader")
	}
	s := cfg.Spec
	p := cfg.Plan
	if p == nil {
		var err error
		if p, err = plan.New(s, 1); err != nil {
			return nil, err
		}
	}
	if cfg.Rank < 0 || cfg.Rank >= p.World() {
		return nil, fmt.Errorf("train: rank %d of a plan for %d ranks", cfg.Rank, p.World())
	}
	rp := p.Rank(cfg.Rank)
	c := cfg.Comms
	for _, g := range []struct {
		name string
		c    parallel.Comm
		want plan.Group
	}{{"tensor-parallel", c.TP, rp.TP}, {"data-parallel", c.DP, rp.DP}, {"kv-replica", c.KV, rp.KV}} {
		if n := g.want.Size(); (n > 1) != (g.c != nil) || (g.c != nil && (g.c.Size() != n || g.c.Index() != g.want.Index(cfg.Rank))) {
			return nil, fmt.Errorf("train: rank %d: the plan's %s group %s has %d members (this rank at %d), the communicator given: %v",
				cfg.Rank, g.name, g.want.Name, n, g.want.Index(cfg.Rank), commDesc(g.c))
		}
	}
	if fv := cfg.Loader.File().Meta().VocabSize; fv > s.Model.VocabSize {
		return nil, fmt.Errorf("model.vocab_size = %d is smaller than the vocabulary of %s (%d): set model.vocab_size ≥ %d",
			s.Model.VocabSize, cfg.Loader.File().Path(), fv, fv)
	}
	if lc := cfg.Loader.Config(); lc.SeqLen != s.Model.SeqLen {
		return nil, fmt.Errorf("train: loader windows of %d tokens, model.seq_len = %d", lc.SeqLen, s.Model.SeqLen)
	}
	t := &Trainer{spec: s, k: cfg.Kernels, plan: p, rp: rp, sched: schedule(s.Train), loader: cfg.Loader, val: cfg.Validation,
		scalar: make([]float32, 1), dp: c.DP, tpRaw: c.TP,
		accum: p.Accum, perRank: s.Train.GlobalBatch / p.Mesh.DP, micro: p.MicroBatch, seqLen: p.SeqLen, delay: cfg.TestStepDelay}
	mc := model.Comms{SequenceParallel: p.SequenceParallel}
	if c.TP != nil {
		t.tp = parallel.NewCounter(c.TP)
		mc.TP = t.tp
	}
	if c.KV != nil {
		t.kv = parallel.NewCounter(c.KV)
		mc.KV = t.kv
	}
	m, err := model.NewUnbound(rp.Layout, cfg.Kernels, mc)
	if err != nil {
		return nil, err
	}
	eng, err := zero.New(zero.Config{
		Partition: rp.Zero, DPIndex: rp.DPIndex, DP: c.DP, TP: c.TP, Model: m, Kernels: cfg.Kernels, Seed: s.Train.Seed, BucketBytes: cfg.BucketBytes,
		AdamW: optim.AdamWConfig{Beta1: s.Train.Beta1, Beta2: s.Train.Beta2, Eps: s.Train.Eps, WeightDecay: s.Train.WeightDecay},
	})
	if err != nil {
		return nil, err
	}
	t.Model, t.engine = m, eng
	if t.acts, err = m.NewActs(t.micro, t.seqLen); err != nil {
		return nil, err
	}
	n := t.micro * t.seqLen
	t.inputs, t.targets = make([]int32, n), make([]int32, n)
	return t, nil
}

func commDesc(c parallel.Comm) string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("group %q of %d members at index %d", c.Spec().Name, c.Size(), c.Index())
}

// Memory is this rank's counted memory (plan.Memory): the engine's
// parameter, gradient, optimizer, working and staging buffers plus the
// activations of one micro-batch and the token buffers. A worker exports
// each kind as the gauge loom_worker_memory_bytes{kind}.
func (t *Trainer) Memory() plan.Memory {
	m := t.engine.Memory()
	m.Activations = t.acts.Bytes() + 4*int64(len(t.inputs)+len(t.targets))
	return m
}

// Plan is the plan the trainer runs; RankPlan its rank's part.
func (t *Trainer) Plan() *plan.Plan { return t.plan }

// RankPlan is this trainer's rank of the plan.
func (t *Trainer) RankPlan() plan.RankPlan { return t.rp }

// Params returns the parameters of the rank's local layout: the model's
// own buffer, or under ZeRO stage 3 a new buffer gathered from the dp
// group (a collective: every rank must call it).
func (t *Trainer) Params(ctx context.Context) ([]float32, error) {
	if t.Model.Params != nil {
		return t.Model.Params, nil
	}
	p := make([]float32, t.Model.Layout.Size)
	return p, t.engine.GatherParams(ctx, p)
}

// WholeModel assembles the whole model (every tensor in full) from the
// ranks' chunks: the dp group gathers stage-3 shards, the tp group
// all-gathers the local layouts. A collective of both groups: every rank
// must call it; each gets the model.
func (t *Trainer) WholeModel(ctx context.Context) (*model.Model, error) {
	local, err := t.Params(ctx)
	if err != nil {
		return nil, err
	}
	m, err := model.New(t.plan.Model, t.k)
	if err != nil {
		return nil, err
	}
	tp := t.rp.TP.Size()
	size := t.Model.Layout.Size
	all := local
	if tp > 1 {
		// Every tp rank's local layout has the same size (the vocabulary
		// is padded), so one all-gather of tp equal shards moves them.
		all = make([]float32, tp*size)
		me := t.rp.TP.Index(t.rp.Rank)
		copy(all[me*size:], local)
		if err := t.tpRaw.AllGather(ctx, all); err != nil {
			return nil, fmt.Errorf("gathering the tensor-parallel chunks: %w", err)
		}
	}
	for r, l := range t.plan.Layouts {
		for _, v := range l.Views {
			gv, _ := m.Layout.Lookup(v.Name)
			v.ToGlobal(m.Params[gv.Offset:gv.End()], all[r*size+v.Offset:r*size+v.End()])
		}
	}
	return m, nil
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

// LoadWeights copies weights from a whole model of the same configuration
// (continued pretraining from --init); each rank keeps its chunks.
func (t *Trainer) LoadWeights(src *model.Model) error {
	if err := checkpoint.CompareConfigs(t.Model.Config, src.Config); err != nil {
		return err
	}
	return t.engine.LoadParams(src.Layout, src.Params)
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
		lo := t.rp.DPIndex*t.perRank + a*t.micro
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
	if t.dp != nil {
		t.scalar[0] = float32(loss)
		c := time.Now()
		if err := t.dp.AllReduce(ctx, t.scalar, parallel.Mean); err != nil {
			return Stats{}, fmt.Errorf("step %d: loss all-reduce: %w", t.step+1, err)
		}
		es.CommSeconds += time.Since(c).Seconds()
		es.CommBytes += parallel.BytesSent(t.dp, parallel.OpAllReduce, 1)
		loss = float64(t.scalar[0])
	}
	st := Stats{CommSeconds: es.CommSeconds, OverlapSeconds: es.OverlapSeconds, CommBytes: es.CommBytes}
	for _, c := range []struct {
		ctr *parallel.Counter
		dst *map[parallel.Op]parallel.OpCount
	}{{t.tp, &st.TP}, {t.kv, &st.KV}} {
		if c.ctr == nil {
			continue
		}
		*c.dst = c.ctr.Take()
		for _, oc := range *c.dst {
			st.TPCommSeconds += oc.Time.Seconds()
			st.TPCommBytes += oc.Sent
		}
	}
	st.CommSeconds += st.TPCommSeconds
	st.CommBytes += st.TPCommBytes
	t.step++
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return Stats{}, fmt.Errorf("step %d: loss is %v: lower train.lr (%g) or check the data", t.step, loss, t.spec.Train.LR)
	}
	d := time.Since(start)
	tokens := t.spec.Train.GlobalBatch * t.seqLen
	st.Step, st.Loss, st.LR, st.GradNorm, st.Tokens = t.step, loss, lr, es.GradNorm, tokens
	st.TokensPerSec, st.StepSeconds, st.DataSeconds = float64(tokens)/d.Seconds(), d.Seconds(), dataTime.Seconds()
	return st, nil
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
// each data-parallel rank evaluating its share (data.EvalSamples) in
// micro-batches, the mean taken over the data-parallel group, so every
// layout reports the same number. Every rank must call it. Under ZeRO
// stage 3 it evaluates the gathered whole model (WholeModel).
func (t *Trainer) Validate(ctx context.Context) (float64, error) {
	if t.val == nil {
		return 0, errors.New("train: no validation set (data.validation)")
	}
	m := t.Model
	if m.Params == nil {
		var err error
		if m, err = t.WholeModel(ctx); err != nil {
			return 0, fmt.Errorf("validation: %w", err)
		}
	}
	defer t.acts.SetShape(t.micro, t.seqLen)
	G, T := t.spec.Train.GlobalBatch, t.seqLen
	var sum float64
	n := 0
	for b := range t.spec.Train.EvalBatches {
		first, count := data.EvalSamples(b, t.rp.DPIndex, t.plan.Mesh.DP, G)
		for off := 0; off < count; off += t.micro {
			k := min(t.micro, count-off)
			in, tg := t.inputs[:k*T], t.targets[:k*T]
			if err := t.val.FillSamples(first+off, k, in, tg); err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
			acts := t.acts
			if m != t.Model {
				var err error
				if acts, err = m.NewActs(k, T); err != nil {
					return 0, fmt.Errorf("validation: %w", err)
				}
			} else if err := acts.SetShape(k, T); err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
			l, err := m.LossContext(ctx, acts, in, tg)
			if err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
			sum += l * float64(k)
			n += k
		}
	}
	loss := sum / float64(n)
	if t.dp != nil {
		t.scalar[0] = float32(loss)
		if err := t.dp.AllReduce(ctx, t.scalar, parallel.Mean); err != nil {
			return 0, fmt.Errorf("validation loss all-reduce: %w", err)
		}
		loss = float64(t.scalar[0])
	}
	return loss, nil
}
