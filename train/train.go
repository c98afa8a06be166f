// Package train owns the training of one rank: RunRank is the one
// composition root that `loom run` and every worker use to build a rank
// from the job's plan (data, loader, model, ZeRO engine, resume, periodic
// checkpoints, the final model), and Trainer is its step loop: an
// executor runs the rank's list of the plan's pipeline schedule (a
// dispatch per action: forward, backward, weight gradients, sends and
// receives between pipeline stages; pp = 1 is a schedule too), the ZeRO
// engine finishes the step, and each step's statistics and timeline are
// reported.
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
	"github.com/loomtrain/loom/timeline"
	"github.com/loomtrain/loom/zero"
)

// Comms are a rank's process groups, as the plan names them; a group of
// one member is nil.
type Comms struct {
	// TP splits every layer (the model's all-reduces, all-gathers and
	// reduce-scatters); DP averages gradients and holds the ZeRO shards;
	// KV sums the gradients of replicated kv heads (n_kv_heads < tp); PP
	// carries activations and gradients between pipeline stages (Send
	// and Recv) and sums the loss and the gradient norm over them; Emb
	// sums a tied embedding's gradient over the first and last stages.
	TP, DP, KV, PP, Emb parallel.Comm
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
	// CommSeconds is the time spent in collectives, data-parallel and
	// tensor-parallel (TPCommSeconds); OverlapSeconds is the part of it
	// that ran hidden: data-parallel exchanges behind the backward pass,
	// and tensor-parallel ones behind compute (input-gradient reductions
	// behind weight-gradient GEMMs, one half-batch's forward all-reduce
	// behind the other half: TPOverlapSeconds, model.TakeTPOverlap). The
	// rest of the tensor-parallel time is on the compute path.
	CommSeconds      float64 `json:"comm_s"`
	OverlapSeconds   float64 `json:"comm_overlap_s"`
	TPCommSeconds    float64 `json:"tp_comm_s,omitempty"`
	TPOverlapSeconds float64 `json:"tp_comm_overlap_s,omitempty"`
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
	// ComputeSeconds is the time in forward, backward and weight passes;
	// PipelineWaitSeconds the time the schedule waited for activations or
	// gradients from a neighbouring stage (counted in CommSeconds, all
	// exposed); PipelineBytes what this rank sent to its neighbours.
	ComputeSeconds      float64 `json:"compute_s"`
	PipelineWaitSeconds float64 `json:"pp_wait_s,omitempty"`
	PipelineBytes       int64   `json:"pp_bytes,omitempty"`
	// PeakSlots counts, per stage of the rank (in model order), the most
	// micro-batches whose activations the stage held at once during the
	// step; PeakActivationBytes is those slots' bytes (with their token
	// buffers) plus the shared scratch.
	PeakSlots           []int `json:"peak_slots,omitempty"`
	PeakActivationBytes int64 `json:"peak_activation_bytes,omitempty"`
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
	exec    *executor
	net     *p2p
	sched   optim.Schedule
	loader  *data.Loader
	scalar  []float32
	dp, pp  parallel.Comm
	ppRaw   parallel.Comm
	tp, kv  *parallel.Counter
	tpRaw   parallel.Comm
	rec     *recorder
	last    *timeline.Timeline // the last step's
	step    int                // optimizer steps taken
	perRank int                // windows per dp rank per step
	micro   int
	seqLen  int
	data    time.Duration // loading during the step
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
	}{{"tensor-parallel", c.TP, rp.TP}, {"data-parallel", c.DP, rp.DP}, {"kv-replica", c.KV, rp.KV}, {"pipeline", c.PP, rp.PP}, {"embedding", c.Emb, rp.Emb}} {
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
	rec := &recorder{}
	t := &Trainer{spec: s, k: cfg.Kernels, plan: p, rp: rp, sched: lrSchedule(s.Train), loader: cfg.Loader, val: cfg.Validation,
		scalar: make([]float32, 1), dp: traced(c.DP, rec), pp: traced(c.PP, rec), ppRaw: c.PP, tpRaw: c.TP, rec: rec,
		perRank: s.Train.GlobalBatch / p.Mesh.DP, micro: p.MicroBatch, seqLen: p.SeqLen, delay: cfg.TestStepDelay}
	mc := model.Comms{SequenceParallel: p.SequenceParallel}
	if c.TP != nil {
		t.tp = parallel.NewCounter(traced(c.TP, rec))
		mc.TP = t.tp
	}
	if c.KV != nil {
		t.kv = parallel.NewCounter(traced(c.KV, rec))
		mc.KV = t.kv
	}
	m, err := model.NewUnbound(rp.Layout, cfg.Kernels, mc)
	if err != nil {
		return nil, err
	}
	if c.PP != nil {
		t.net = newP2P(c.PP, p.Schedule, rp.Coord.PP, rp.PP.Ranks, p.MessageFloats(cfg.Rank, p.MicroBatch, p.SeqLen)-tagFloats)
	}
	x, err := newExecutor(executorConfig{plan: p, rank: rp, model: m, net: t.net, load: t.fill})
	if err != nil {
		return nil, err
	}
	eng, err := zero.New(zero.Config{
		Partition: rp.Zero, DPIndex: rp.DPIndex, DP: t.dp, TP: c.TP, PP: t.pp, Emb: traced(c.Emb, rec), Model: m, Kernels: cfg.Kernels,
		Seed: s.Train.Seed, BucketBytes: cfg.BucketBytes, ParamOrder: paramOrder(p, rp),
		AdamW: optim.AdamWConfig{Beta1: s.Train.Beta1, Beta2: s.Train.Beta2, Eps: s.Train.Eps, WeightDecay: s.Train.WeightDecay},
	})
	if err != nil {
		return nil, err
	}
	x.setEngine(eng)
	t.Model, t.engine, t.exec = m, eng, x
	return t, nil
}

// fill loads micro-batch mb of the current step for this rank's dp slice.
func (t *Trainer) fill(mb int, tokens, targets []int32) error {
	start := time.Now()
	lo := t.rp.DPIndex*t.perRank + mb*t.micro
	err := t.loader.FillStep(t.step, t.spec.Train.GlobalBatch, lo, lo+t.micro, tokens, targets)
	t.data += time.Since(start)
	return err
}

func commDesc(c parallel.Comm) string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("group %q of %d members at index %d", c.Spec().Name, c.Size(), c.Index())
}

// Memory is this rank's counted memory (plan.Memory): the engine's
// parameter, gradient, optimizer, working and staging buffers, the
// pipeline's message buffers (comm), and the activations of every
// micro-batch slot of the rank's stages with their token buffers and the
// shared scratch. A worker exports each kind as the gauge
// loom_worker_memory_bytes{kind}.
func (t *Trainer) Memory() plan.Memory {
	m := t.engine.Memory()
	m.Activations = t.exec.bytes()
	if t.net != nil {
		m.Comm += t.net.bytes()
	}
	return m
}

// LastTimeline is the last step's timeline (nil before the first step).
func (t *Trainer) LastTimeline() *timeline.Timeline { return t.last }

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
// all-gathers the local layouts, and with pp > 1 the pipeline group sums
// the stages' parts of the whole buffer (each stage fills only its
// tensors; a tied embedding comes from its owner, the first stage). A
// collective of all three groups: every rank must call it; each gets the
// model.
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
	for r := range tp {
		l := t.plan.Layouts[t.plan.PartIndex(t.rp.Coord.PP, r)]
		for _, v := range l.Views {
			if v.Replica == model.ReplicatedPP {
				continue
			}
			gv, _ := m.Layout.Lookup(v.Name)
			v.ToGlobal(m.Params[gv.Offset:gv.End()], all[r*size+v.Offset:r*size+v.End()])
		}
	}
	if t.pp != nil {
		if err := t.pp.AllReduce(ctx, m.Params, parallel.Sum); err != nil {
			return nil, fmt.Errorf("gathering the pipeline stages: %w", err)
		}
	}
	return m, nil
}

// lrSchedule turns the spec's schedule into an optim.Schedule.
func lrSchedule(t api.TrainSpec) optim.Schedule {
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

// Step runs one optimizer step: the rank's list of the schedule over the
// step's micro-batches (its share of the step's windows), the gradient
// exchange, clipping and the AdamW update.
func (t *Trainer) Step(ctx context.Context) (Stats, error) {
	start := time.Now()
	t.rec.reset()
	t.data = 0
	t.engine.BeginStep(ctx)
	if t.delay > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(t.delay):
		}
	}
	xs, err := t.exec.run(ctx)
	if err != nil {
		t.engine.Abort()
		return Stats{}, fmt.Errorf("step %d: %w", t.step+1, err)
	}
	loss := xs.loss / float64(t.plan.Accum)
	lr := t.sched.LR(t.step)
	opt := time.Now()
	// The engine averages the loss over dp with the gradient exchange;
	// only the last pipeline stage has it, so the sum over pp that gives
	// it to every stage adds zeros to it (the same bits in either order).
	es, err := t.engine.FinishStep(ctx, lr, t.spec.Train.GradClip, loss)
	if err != nil {
		return Stats{}, fmt.Errorf("step %d: %w", t.step+1, err)
	}
	optEnd := time.Now()
	loss = es.Loss
	if t.pp != nil {
		t.scalar[0] = float32(loss)
		c := time.Now()
		if err := t.pp.AllReduce(ctx, t.scalar, parallel.Sum); err != nil {
			return Stats{}, fmt.Errorf("step %d: loss all-reduce over the pipeline stages: %w", t.step+1, err)
		}
		es.CommSeconds += time.Since(c).Seconds()
		es.CommBytes += parallel.BytesSent(t.pp, parallel.OpAllReduce, 1)
		loss = float64(t.scalar[0])
	}
	st := Stats{CommSeconds: es.CommSeconds + xs.wait.Seconds(), OverlapSeconds: es.OverlapSeconds, CommBytes: es.CommBytes + xs.sent,
		ComputeSeconds: xs.compute.Seconds(), PipelineWaitSeconds: xs.wait.Seconds(), PipelineBytes: xs.sent,
		PeakSlots: xs.peakSlots, PeakActivationBytes: xs.peakBytes}
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
	st.TPOverlapSeconds = t.Model.TakeTPOverlap().Seconds()
	st.OverlapSeconds += st.TPOverlapSeconds
	t.step++
	t.keepTimeline(opt, optEnd)
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return Stats{}, fmt.Errorf("step %d: loss is %v: lower train.lr (%g) or check the data", t.step, loss, t.spec.Train.LR)
	}
	d := time.Since(start)
	tokens := t.spec.Train.GlobalBatch * t.seqLen
	st.Step, st.Loss, st.LR, st.GradNorm, st.Tokens = t.step, loss, lr, es.GradNorm, tokens
	st.TokensPerSec, st.StepSeconds, st.DataSeconds = float64(tokens)/d.Seconds(), d.Seconds(), t.data.Seconds()
	return st, nil
}

// keepTimeline makes the step just taken the last timeline.
func (t *Trainer) keepTimeline(opt, optEnd time.Time) {
	spans := append(append([]span(nil), t.exec.spans...), t.rec.take()...)
	if t.net != nil {
		spans = append(spans, t.net.takeSpans()...)
	}
	spans = append(spans, span{Name: "optimizer step", Cat: timeline.Optimizer, Kind: timeline.Optimizer, Stage: -1, Micro: -1, Start: opt, End: optEnd})
	t.last = &timeline.Timeline{Rank: t.rp.Rank, Coord: t.rp.Coord, Step: t.step, Events: spans}
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
// layout reports the same number. Every rank must call it. Pipelined,
// each micro-batch goes forward through the stages in turn (the pipeline
// group's messages in order, no overlap: validation is rare) and the last
// stage's loss is summed over the group. Under ZeRO stage 3 it evaluates
// the gathered whole model (WholeModel).
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
	G, T := t.spec.Train.GlobalBatch, t.seqLen
	stages := t.exec.evalSlots()
	in, tg := make([]int32, t.micro*T), make([]int32, t.micro*T)
	var whole *model.Acts
	defer func() {
		for _, s := range stages {
			s.acts.SetShape(t.micro, t.seqLen)
		}
	}()
	var sum float64
	n := 0
	for b := range t.spec.Train.EvalBatches {
		first, count := data.EvalSamples(b, t.rp.DPIndex, t.plan.Mesh.DP, G)
		for off := 0; off < count; off += t.micro {
			k := min(t.micro, count-off)
			if err := t.val.FillSamples(first+off, k, in[:k*T], tg[:k*T]); err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
			var l float64
			var err error
			if m != t.Model {
				if whole == nil || whole.B != k {
					if whole, err = m.NewActs(k, T); err != nil {
						return 0, fmt.Errorf("validation: %w", err)
					}
				}
				l, err = m.LossContext(ctx, whole, in[:k*T], tg[:k*T])
			} else {
				l, err = t.evalPipelined(ctx, stages, k, in[:k*T], tg[:k*T])
			}
			if err != nil {
				return 0, fmt.Errorf("validation: %w", err)
			}
			sum += l * float64(k)
			n += k
		}
	}
	loss := sum / float64(n)
	for _, g := range []struct {
		c  parallel.Comm
		op parallel.ReduceOp
	}{{t.pp, parallel.Sum}, {t.dp, parallel.Mean}} {
		if g.c == nil {
			continue
		}
		t.scalar[0] = float32(loss)
		if err := g.c.AllReduce(ctx, t.scalar, g.op); err != nil {
			return 0, fmt.Errorf("validation loss all-reduce: %w", err)
		}
		loss = float64(t.scalar[0])
	}
	return loss, nil
}

// evalPipelined runs one validation micro-batch of k sequences forward
// through this rank's stages, receiving each stage's input from the
// previous rank and sending its output on, and returns the loss on the
// last stage (0 elsewhere).
func (t *Trainer) evalPipelined(ctx context.Context, stages []*slot, k int, tokens, targets []int32) (float64, error) {
	var loss float64
	ranks := t.rp.PP.Ranks
	me := t.rp.Coord.PP
	for i, s := range stages {
		st := t.rp.Stages[i]
		if err := s.acts.SetShape(k, t.seqLen); err != nil {
			return 0, err
		}
		if st.Index > 0 {
			if prev := t.plan.Stages[st.Index-1]; prev.Rank != me {
				if err := t.ppRaw.Recv(ctx, ranks[prev.Rank], s.acts.Resid[0][:s.acts.Rows()*t.plan.Model.Dim]); err != nil {
					return 0, fmt.Errorf("stage %d input from rank %d: %w", st.Index, ranks[prev.Rank], err)
				}
			} else {
				p := stages[i-1].acts
				copy(s.acts.Resid[0], p.Resid[len(p.Resid)-1])
			}
		}
		l, err := t.Model.StageEval(ctx, s.acts, tokens, targets)
		if err != nil {
			return 0, err
		}
		loss += l
		if st.Index < len(t.plan.Stages)-1 {
			if next := t.plan.Stages[st.Index+1]; next.Rank != me {
				out := s.acts.Resid[len(s.acts.Resid)-1]
				if err := t.ppRaw.Send(ctx, ranks[next.Rank], out[:s.acts.Rows()*t.plan.Model.Dim]); err != nil {
					return 0, fmt.Errorf("stage %d output to rank %d: %w", st.Index, ranks[next.Rank], err)
				}
			}
		}
	}
	return loss, nil
}
