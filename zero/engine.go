// Package zero owns the ZeRO engine: stages 0–3 of a rank's gradient
// exchange and update over the partition of the rank's local layout that
// the parallel plan (package plan) computes. It owns the rank's parameter,
// gradient and optimizer-state buffers as the partition shards them over
// the data-parallel group and binds the model to them; the trainer's
// executor, which decides the order of the passes (the pipeline schedule),
// calls it to gather a unit's parameters, release them, bind a unit's
// gradient buffer and reduce it, and to finish the step: the tied
// embedding's gradient summed over its pipeline stages, the exact global
// gradient norm (every parameter counted once across the dp, tp and pp
// groups), clipping, AdamW on the rank's shard.
package zero

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/optim"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/tensor"
)

// Stage is a ZeRO stage (plan.ZeroStage).
type Stage = plan.ZeroStage

// Stages.
const (
	Stage0 = plan.Zero0 // nothing sharded: plain data parallelism
	Stage1 = plan.Zero1 // optimizer state
	Stage2 = plan.Zero2 // optimizer state and gradients
	Stage3 = plan.Zero3 // optimizer state, gradients and parameters
)

// ErrInvalid is the class of errors about engine arguments.
var ErrInvalid = errors.New("invalid ZeRO engine configuration")

// Config is what an Engine needs.
type Config struct {
	// Partition is the ZeRO partition of the rank's local layout (from
	// the plan); DPIndex this rank's position in it.
	Partition *plan.Partition
	DPIndex   int
	// DP is the data-parallel group; nil when Partition.DP == 1.
	DP parallel.Comm
	// TP is the tensor-parallel group over which the gradient norm's
	// partial sums of split tensors are added; nil with one rank.
	TP parallel.Comm
	// Model is an unbound model (model.NewUnbound) over the partition's
	// layout, with its communication injected; the engine binds it.
	Model   *model.Model
	Kernels tensor.Kernels
	AdamW   optim.AdamWConfig
	Seed    uint64 // initial parameters, as model.Model.Init
	// BucketBytes is stage 0's all-reduce bucket size (0:
	// parallel.DefaultBucketBytes). Later stages reduce one unit at a time.
	BucketBytes int
	// PP is the pipeline group over which the stages' partial sums of
	// the gradient norm are added; nil with pp 1.
	PP parallel.Comm
	// Emb is the embedding group of a tied embedding split across
	// pipeline stages (the first stage's embedding and the last stage's
	// copy): the unit holding it has its gradient summed over Emb before
	// the norm. Nil otherwise.
	Emb parallel.Comm
	// ParamOrder (stage 3 only) lists the units whose parameters the
	// step's passes read, in the order they read them (a pass over
	// several units lists each): Gather checks it and prefetches the next.
	ParamOrder []int
}

// Engine runs one rank's part of a training step under a ZeRO stage: it
// owns the rank's parameter, gradient and optimizer-state buffers as the
// partition shards them; the executor calls Gather and Release around each
// pass that reads a unit's parameters (stage 3), BindGrads and ReduceGrads
// around each pass that writes a unit's gradients, and FinishStep, which
// clips by the exact global norm and applies AdamW to the rank's shard.
// Everything is over the rank's local layout: under tensor parallelism
// each dp group shards its tp rank's chunks, under pipeline parallelism
// its stages' units.
//
//	stage 0: full buffers; gradients all-reduced in buckets as each unit's
//	         last gradient pass of the step ends (parallel.BucketReducer).
//	stage 1: full parameters and gradients, AdamW state for the shard. As
//	         each unit's last gradient pass of the step ends it is
//	         reduce-scattered — the half of a ring all-reduce the shard's
//	         owner needs; the other half is replaced by all-gathering the
//	         updated parameters after AdamW. 2Ψ·(N−1)/N elements sent per rank.
//	stage 2: full parameters; gradients exist in full only one unit at a
//	         time, in a working buffer bound to the model for that unit's
//	         backward and reduce-scattered as soon as it finishes, then
//	         added into the rank's gradient shard. With k micro-batches this
//	         happens every micro-batch (so earlier micro-batches' gradients
//	         survive in the shard without a full buffer), sending
//	         (k+1)Ψ·(N−1)/N per step instead of 2Ψ·(N−1)/N.
//	stage 3: parameters sharded too. Before each unit's forward and backward
//	         its parameters are all-gathered into a working buffer, released
//	         after; the next unit's gather is enqueued before the current one
//	         computes. About 3Ψ·(N−1)/N per micro-batch (the head, used by
//	         forward and backward back to back, is gathered once).
//
// Data-parallel collectives run in program order on one goroutine per
// step, so every rank issues them in the same order; the model's
// tensor-parallel collectives run on the caller's goroutine, on another
// group. An Engine is not safe for concurrent use.
type Engine struct {
	part  *plan.Partition
	me    plan.DPShard
	g     parallel.Comm // dp
	tp    parallel.Comm
	pp    parallel.Comm
	emb   parallel.Comm
	tiedU int // the unit summed over emb, or -1
	k     tensor.Kernels
	stage Stage
	tied  bool
	// Model is bound to this engine's buffers. At stage 3 its Params and
	// Grads are nil; use GatherParams for the local layout's parameters.
	Model *model.Model

	params []float32 // stages 0–2: full local layout (Size); stage 3: local shard
	grads  []float32 // stages 0–1: full; stages 2–3: local shard
	opts   []*optim.AdamW
	optOn  []plan.Shard // the flat range each optimizer updates
	// counted[i] are the ranges (relative to optimizer i's) of chunks this
	// rank owns: the gradient norm sums them only, so a replicated chunk
	// counts once in the tensor-parallel group.
	counted [][]plan.Shard

	reducer *parallel.BucketReducer // stage 0 with dp > 1
	staging []float32               // stage 1
	gbufs   chan []float32          // stages 2–3: unit gradient buffers
	pbufs   chan []float32          // stage 3: gathered unit parameters
	// rowsUnit is the untied embedding's unit at stage 0 (-1: none),
	// exchanged by rows of rowLen (BucketReducer.ReadyRows): only the
	// rows some dp rank has non-zero, the others being zero everywhere.
	// Only stage 0 all-reduces through the BucketReducer; stages 1–3
	// reduce-scatter each unit densely (a shard's owner would need every
	// rank's row flags before the reduce-scatter, a round trip the
	// per-unit exchange does not have), so they keep the dense path.
	rowsUnit, rowLen int

	// per step
	q        *queue
	ctx      context.Context // the step's
	reducing bool            // stage 0: the reducer was started
	readyLo  int             // stage 0: the reducer has every unit from readyLo on
	early    map[int]bool    // stage 0: final units waiting for those above them
	pos      int             // stage 3: index of the next hook in uses
	uses     []int           // stage 3: units in the order the passes read them
	held     map[int]*gather // stage 3: units gathered or being gathered
	ubufs    map[int][]float32
	scalar   []float32
	tpNorm   time.Duration // time in the tp grad-norm all-reduce of the step
	// Stage 0: the step's loss as StepLoss last gave it (lossKnown), and
	// whether it went with the row-sparse bucket's flags (carried: carry
	// holds its mean over dp once the reducer's Wait returns).
	stepLoss           float32
	lossKnown, carried bool
	carry              []float32
}

// gather is a unit's parameters being all-gathered into buf.
type gather struct {
	buf  []float32
	done chan error
}

// New allocates the rank's buffers, initializes its parameters from Seed
// and binds the model to them.
func New(c Config) (*Engine, error) {
	p := c.Partition
	if p == nil || c.Model == nil || c.Kernels == nil {
		return nil, fmt.Errorf("zero: Config needs Partition, Model and Kernels: %w", ErrInvalid)
	}
	if c.DPIndex < 0 || c.DPIndex >= p.DP {
		return nil, fmt.Errorf("zero: dp index %d of a partition for dp = %d: %w", c.DPIndex, p.DP, ErrInvalid)
	}
	if (c.DP == nil) != (p.DP == 1) || (c.DP != nil && (c.DP.Size() != p.DP || c.DP.Index() != c.DPIndex)) {
		return nil, fmt.Errorf("zero: partition for dp = %d, index %d does not match the dp group: %w", p.DP, c.DPIndex, ErrInvalid)
	}
	if c.Model.Layout != p.Layout {
		return nil, fmt.Errorf("zero: the model's layout is not the partition's: %w", ErrInvalid)
	}
	if lo := p.Layout.Local(); (lo.TP > 1) != (c.TP != nil) {
		return nil, fmt.Errorf("zero: layout for tp = %d needs a tensor-parallel group exactly when tp > 1: %w", lo.TP, ErrInvalid)
	}
	if (c.Emb != nil) != (p.Layout.Config().TieEmbeddings && (p.Layout.EmbedUnit() < 0) != (p.Layout.HeadUnit() < 0)) {
		return nil, fmt.Errorf("zero: an embedding group is needed exactly when a tied embedding is split across pipeline stages: %w", ErrInvalid)
	}
	e := &Engine{part: p, me: p.Ranks[c.DPIndex], g: c.DP, tp: c.TP, pp: c.PP, emb: c.Emb, tiedU: -1, rowsUnit: -1, k: c.Kernels, stage: p.Stage,
		tied: p.Layout.Config().TieEmbeddings, scalar: make([]float32, 3), carry: make([]float32, 1), Model: c.Model}
	if c.Emb != nil {
		if e.tiedU = p.Layout.TiedUnit(); e.tiedU < 0 {
			e.tiedU = p.Layout.EmbedUnit()
		}
	}
	if p.DP == 1 {
		e.stage = Stage0
	}
	l := p.Layout
	segs := make([]optim.Segment, len(l.Views))
	for i, v := range l.Views {
		segs[i] = optim.Segment{Offset: v.Offset, Len: v.Len(), Decay: v.Decay}
	}
	addOpt := func(s plan.Shard) error {
		if s.Len == 0 {
			return nil
		}
		o, err := optim.NewAdamW(c.Kernels, c.AdamW, segs, s.Offset, s.Len)
		if err != nil {
			return err
		}
		var cnt []plan.Shard
		for _, v := range l.Views {
			lo, hi := max(v.Offset, s.Offset), min(v.End(), s.End())
			if lo < hi && v.Owner {
				if n := len(cnt); n > 0 && cnt[n-1].End() == lo-s.Offset {
					cnt[n-1].Len += hi - lo
				} else {
					cnt = append(cnt, plan.Shard{Offset: lo - s.Offset, Len: hi - lo})
				}
			}
		}
		e.opts, e.optOn, e.counted = append(e.opts, o), append(e.optOn, s), append(e.counted, cnt)
		return nil
	}
	work := p.MaxPadded()
	nbuf := plan.WorkingBuffers(e.tied)
	newPool := func() chan []float32 {
		ch := make(chan []float32, nbuf)
		for range nbuf {
			ch <- make([]float32, work)
		}
		return ch
	}
	switch e.stage {
	case Stage0:
		e.params, e.grads = make([]float32, p.Size), make([]float32, p.Size)
		e.Model.Bind(e.params, e.grads)
		if err := addOpt(plan.Shard{Offset: 0, Len: p.Size}); err != nil {
			return nil, err
		}
		if e.g != nil {
			e.reducer = parallel.NewBucketReducer(e.g, e.grads, c.BucketBytes)
			e.rowsUnit, e.rowLen = embeddingRows(p)
		}
	case Stage1:
		e.params, e.grads = make([]float32, p.Size), make([]float32, p.Size)
		e.Model.Bind(e.params, e.grads)
		e.staging = make([]float32, work)
	case Stage2:
		// Full parameters, but no full gradient buffer: units are bound
		// to working buffers for their backward.
		e.params, e.grads = make([]float32, p.Size), make([]float32, e.me.LocalLen)
		e.Model.Bind(e.params, nil)
		e.gbufs = newPool()
	case Stage3:
		e.params, e.grads = make([]float32, e.me.LocalLen), make([]float32, e.me.LocalLen)
		e.gbufs, e.pbufs = newPool(), newPool()
		if len(c.ParamOrder) == 0 {
			return nil, fmt.Errorf("zero: stage 3 needs the order in which the step's passes read the units (Config.ParamOrder): %w", ErrInvalid)
		}
		for _, u := range c.ParamOrder {
			if u < 0 || u >= len(p.Units) {
				return nil, fmt.Errorf("zero: ParamOrder names unit %d of %d: %w", u, len(p.Units), ErrInvalid)
			}
		}
		e.uses = c.ParamOrder
	}
	if e.stage != Stage0 {
		for _, s := range e.me.Slices {
			if err := addOpt(s); err != nil {
				return nil, err
			}
		}
	}
	e.initParams(c.Seed)
	return e, nil
}

// initParams sets the initial parameters: the full local buffer, or at
// stage 3 the rank's slices, each unit generated in a working buffer (every
// view draws from its own stream, so slices and tensor-parallel chunks
// match the whole model's initialization).
func (e *Engine) initParams(seed uint64) {
	if e.stage != Stage3 {
		model.InitParams(e.part.Layout, seed, e.params, 0)
		return
	}
	buf := <-e.pbufs
	for u, up := range e.part.Units {
		model.InitParams(e.part.Layout, seed, buf[:up.Len], up.Offset)
		s := e.me.Slices[u]
		copy(e.params[e.me.Local[u]:], buf[s.Offset-up.Offset:s.End()-up.Offset])
	}
	e.pbufs <- buf
}

// LoadParams sets the parameters from the whole model's flat buffer full,
// laid out by global (one rank's layout of the same config): every rank
// passes the same buffer and keeps the chunks its layout holds (its slices
// of them at stage 3).
func (e *Engine) LoadParams(global *model.Layout, full []float32) error {
	if len(full) != global.Size {
		return fmt.Errorf("zero: loading %d parameters into a model of %d: %w", len(full), global.Size, ErrInvalid)
	}
	l := e.part.Layout
	local := e.params
	if e.stage == Stage3 {
		local = make([]float32, l.Size)
	}
	for _, v := range l.Views {
		gv, ok := global.Lookup(v.Name)
		if !ok || gv.Len() != v.GlobalLen() {
			return fmt.Errorf("zero: loading %s: the source model has no tensor of %v: %w", v.Name, v.Global, ErrInvalid)
		}
		v.FromGlobal(local[v.Offset:v.End()], full[gv.Offset:gv.End()])
	}
	if e.stage == Stage3 {
		for u, s := range e.me.Slices {
			copy(e.params[e.me.Local[u]:], local[s.Offset:s.End()])
		}
	}
	return nil
}

// GatherParams writes the local layout's parameters into dst (len
// Partition.Size). At stage 3 it is a collective of the dp group: every
// rank of it must call it.
func (e *Engine) GatherParams(ctx context.Context, dst []float32) error {
	if len(dst) != e.part.Size {
		return fmt.Errorf("zero: gathering %d parameters into %d: %w", e.part.Size, len(dst), ErrInvalid)
	}
	if e.stage != Stage3 {
		copy(dst, e.params)
		return nil
	}
	buf := <-e.pbufs
	defer func() { e.pbufs <- buf }()
	for u, up := range e.part.Units {
		if _, err := e.gatherUnitFrom(ctx, e.g, u, buf); err != nil {
			return err
		}
		copy(dst[up.Offset:up.End()], buf[:up.Len])
	}
	return nil
}

// ParamRanges are the local flat ranges whose parameters this rank holds:
// the whole layout at stages 0–2, its slices at stage 3.
func (e *Engine) ParamRanges() []plan.Shard {
	if e.stage != Stage3 {
		return []plan.Shard{{Offset: 0, Len: e.part.Size}}
	}
	return e.me.Slices
}

// Params returns the live parameters of local flat elements [flat,
// flat+n), which must lie inside one of ParamRanges.
func (e *Engine) Params(flat, n int) ([]float32, error) {
	if e.stage != Stage3 {
		if flat < 0 || flat+n > len(e.params) {
			return nil, fmt.Errorf("zero: parameters [%d,+%d) outside the layout of %d: %w", flat, n, len(e.params), ErrInvalid)
		}
		return e.params[flat : flat+n], nil
	}
	for u, s := range e.me.Slices {
		if s.Offset <= flat && flat+n <= s.End() {
			i := e.me.Local[u] + flat - s.Offset
			return e.params[i : i+n], nil
		}
	}
	return nil, fmt.Errorf("zero: parameters [%d,+%d) are not in this rank's stage-3 shard: %w", flat, n, ErrInvalid)
}

// Moments returns the live AdamW moments of local flat elements [flat,
// flat+n) and the optimizer holding them, which must lie inside one
// optimizer's range (see Optimizers).
func (e *Engine) Moments(flat, n int) (m, v []float32, o *optim.AdamW, err error) {
	for i, r := range e.optOn {
		if r.Offset <= flat && flat+n <= r.End() {
			mm, vv, _ := e.opts[i].State()
			a := flat - r.Offset
			return mm[a : a+n], vv[a : a+n], e.opts[i], nil
		}
	}
	return nil, nil, nil, fmt.Errorf("zero: no optimizer of this rank holds [%d,+%d): %w", flat, n, ErrInvalid)
}

// Memory is the bytes this rank's buffers hold (Partition.Memory, counted
// from the allocations).
func (e *Engine) Memory() plan.Memory {
	n := func(b []float32) int64 { return 4 * int64(len(b)) }
	var m plan.Memory
	m.Params, m.Grads = n(e.params), n(e.grads)
	for _, o := range e.opts {
		mm, v, _ := o.State()
		m.Optimizer += n(mm) + n(v)
	}
	m.Comm = n(e.staging)
	m.Working = int64(cap(e.gbufs)+cap(e.pbufs)) * 4 * int64(e.part.MaxPadded())
	return m
}

// Partition returns the partition the engine runs.
func (e *Engine) Partition() *plan.Partition { return e.part }

// Optimizers returns the AdamW optimizers and the flat range each updates
// (one per unit slice; one over everything at stage 0), for checkpoints.
func (e *Engine) Optimizers() ([]*optim.AdamW, []plan.Shard) { return e.opts, e.optOn }

// BeginStep clears the gradients and starts the step's collectives queue;
// ctx bounds every collective of the step. FinishStep or Abort must follow.
func (e *Engine) BeginStep(ctx context.Context) {
	clear(e.grads)
	e.ctx = ctx
	e.pos, e.held = 0, map[int]*gather{}
	e.readyLo, e.early = e.part.Size, map[int]bool{}
	e.lossKnown, e.carried = false, false
	if e.g != nil && e.stage != Stage0 {
		e.q = newQueue(ctx, e.g, 4*len(e.part.Units)+16)
	}
}

// Gather makes unit u's parameters available to the model before a pass
// reads them: at stage 3 it waits for (or starts) the unit's all-gather,
// binds the model to it and prefetches the next unit of ParamOrder; a
// no-op at stages 0–2, where every parameter is at hand.
func (e *Engine) Gather(u int) error {
	if e.stage != Stage3 {
		return nil
	}
	if err := e.use(u); err != nil {
		return err
	}
	// A last stage's head reads its copy of the tied embedding too.
	if t := e.part.Layout.TiedUnit(); t >= 0 && u == e.part.Layout.HeadUnit() {
		return e.use(t)
	}
	return nil
}

// Release ends a pass's use of unit u's parameters: at stage 3 its working
// buffer goes back to the pool unless the next pass reads u again (the
// head, from forward to backward) or u is the tied embedding, which the
// head reads too. A no-op at stages 0–2.
func (e *Engine) Release(u int) error {
	if e.stage != Stage3 {
		return nil
	}
	if t := e.part.Layout.TiedUnit(); t >= 0 && u == e.part.Layout.HeadUnit() {
		if err := e.release(t); err != nil {
			return err
		}
	}
	return e.release(u)
}

// BindGrads prepares unit u's gradients before a pass writes them: at
// stages 2–3 a cleared working buffer is bound to u (and, for a head that
// writes a tied embedding's gradient too, to that unit: see
// model.Layout.GradUnits). A no-op at stages 0–1, whose gradient buffer is
// full.
func (e *Engine) BindGrads(u int) error {
	if e.stage < Stage2 {
		return nil
	}
	return e.bindGrads(u)
}

// ReduceGrads is told that a pass finished writing unit u's gradients for
// a micro-batch; final says it was the step's last such pass for u. Stages
// 2–3 reduce-scatter u's working buffer (and a last stage's tied copy with
// the head) into the gradient shard every time; stage 1 reduce-scatters u
// when final; stage 0 hands u to the bucketed all-reduce when final.
func (e *Engine) ReduceGrads(u int, final bool) error {
	// A last stage's copy of a tied embedding is written by the head's
	// passes only: it is done when the head is (and lies after it).
	units := []int{u}
	if t := e.part.Layout.TiedUnit(); t >= 0 && u == e.part.Layout.HeadUnit() {
		units = []int{t, u}
	}
	for _, u := range units {
		switch e.stage {
		case Stage0:
			if final && e.reducer != nil {
				e.readyFinal(u)
			}
		case Stage1:
			if final && e.q != nil {
				if err := e.reduceFullUnit(u); err != nil {
					return err
				}
			}
		default:
			if err := e.reduceUnitBuffer(u); err != nil {
				return err
			}
		}
	}
	return nil
}

// readyFinal hands unit u to the stage-0 bucket reducer, which takes
// ranges in descending contiguous order: a unit that finishes before the
// ones above it waits for them (Wait covers whatever never continued).
func (e *Engine) readyFinal(u int) {
	if !e.reducing {
		e.reducer.Start(e.ctx)
		e.reducing = true
	}
	e.early[u] = true
	for {
		next := -1
		for w := range e.early {
			if e.part.Units[w].End() == e.readyLo {
				next = w
			}
		}
		if next < 0 {
			return
		}
		delete(e.early, next)
		up := e.part.Units[next]
		if next == e.rowsUnit {
			var mean []float32
			if e.lossKnown {
				// The loss's mean over dp goes with the rows' flags: no
				// all-reduce of its own after the last bucket.
				e.carry[0], e.carried, mean = e.stepLoss, true, e.carry
			}
			e.reducer.ReadyRowsWith(up.Offset, up.End(), e.rowLen, mean)
		} else {
			e.reducer.Ready(up.Offset, up.End())
		}
		e.readyLo = up.Offset
	}
}

// StepLoss tells the engine this rank's loss of the step — the value
// FinishStep will be given — as soon as it is known, before the step's
// last gradient pass ends: every forward pass of a step precedes the
// embedding's last backward, so a trainer may call it after each forward
// with the loss so far (the last call wins). At stage 0, with an untied
// embedding exchanged by rows, the loss's mean over dp then rides on that
// exchange's flag all-reduce instead of a round trip of its own after
// the last bucket (which, being after it, is exposed). Every dp rank must
// call it alike (they run the same schedule); elsewhere it changes nothing.
func (e *Engine) StepLoss(loss float64) {
	if !e.carried {
		e.stepLoss, e.lossKnown = float32(loss), true
	}
}

// embeddingRows finds the unit whose gradient is an embedding table's
// alone — untied, so that only the batch's tokens write rows of it — and
// its row length; -1 when there is none.
func embeddingRows(p *plan.Partition) (unit, rowLen int) {
	l := p.Layout
	u := l.EmbedUnit()
	if u < 0 || l.Config().TieEmbeddings {
		return -1, 0
	}
	up := p.Units[u]
	for _, v := range l.Views {
		if v.Offset == up.Offset && v.Len() == up.Len && len(v.Shape) == 2 {
			return u, v.Shape[1]
		}
	}
	return -1, 0
}

// Abort ends a step that failed before FinishStep.
func (e *Engine) Abort() {
	if e.reducing {
		e.reducer.Wait()
		e.reducing = false
	}
	if e.q != nil {
		e.q.close()
		e.q = nil
	}
	// Stage 3's working buffers held by an interrupted pass go back to
	// their pools so the next step starts with full pools.
	for u, gt := range e.held {
		if gt.done != nil {
			<-gt.done
		}
		delete(e.held, u)
		e.pbufs <- gt.buf
	}
	for u, buf := range e.ubufs {
		delete(e.ubufs, u)
		e.gbufs <- buf
	}
}

// StepStats describes a step's gradient exchange and update.
type StepStats struct {
	GradNorm float64 // global L2 norm before clipping
	// CommBytes is the payload this rank sent in the step's data-parallel
	// collectives and the gradient norm's all-reduces, counted per
	// operation from its buffer length and algorithm
	// (parallel.BytesSent; at stage 0 per gradient bucket, an untied
	// embedding by the rows exchanged).
	CommBytes      int64
	CommSeconds    float64 // time inside those collectives
	OverlapSeconds float64 // part of CommSeconds before the last backward ended
	// Loss is the step loss FinishStep was given, averaged over the dp
	// group (the given value with one dp rank).
	Loss float64
}

// FinishStep completes the gradient exchange, clips the gradients to the
// global norm maxNorm (≤ 0: no clipping), applies AdamW with learning rate
// lr to this rank's shard and, at stages 1–2, all-gathers the updated
// parameters. loss is this rank's loss of the step; StepStats.Loss is its
// mean over the dp group, all-reduced where the ranks are in step anyway:
// at stage 0 right after the last gradient bucket, at stages 1–3 with the
// gradient norm's partial sums. (An all-reduce of its own after AdamW
// would be a second synchronization per step, where the faster rank waits
// out the difference of the ranks' update times as exposed communication.)
func (e *Engine) FinishStep(ctx context.Context, lr, maxNorm, loss float64) (StepStats, error) {
	st := StepStats{Loss: loss}
	e.scalar[2] = float32(loss)
	backwardEnd := time.Now()
	if e.reducer != nil && !e.reducing {
		e.reducer.Start(ctx) // no unit was final (an executor that never said): Wait reduces everything
		e.reducing = true
	}
	if e.reducing {
		e.reducing = false
		rs, err := e.reducer.Wait()
		st.CommBytes = rs.Sent
		st.CommSeconds, st.OverlapSeconds = rs.Comm.Seconds(), rs.Overlapped.Seconds()
		if err != nil {
			return st, fmt.Errorf("gradient all-reduce: %w", err)
		}
		if e.carried {
			if e.stepLoss != e.scalar[2] {
				return st, fmt.Errorf("zero: the loss given to StepLoss (%v) is not FinishStep's (%v): %w", e.stepLoss, e.scalar[2], ErrInvalid)
			}
			st.Loss = float64(e.carry[0])
		} else {
			start := time.Now()
			if err := e.g.AllReduce(ctx, e.scalar[2:], parallel.Mean); err != nil {
				return st, fmt.Errorf("loss all-reduce over dp: %w", err)
			}
			st.CommSeconds += time.Since(start).Seconds()
			st.CommBytes += parallel.BytesSent(e.g, parallel.OpAllReduce, 1)
			st.Loss = float64(e.scalar[2])
		}
	}
	if e.stage == Stage0 {
		if err := e.sumTied(ctx, &st); err != nil {
			return st, err
		}
		if e.tp == nil && e.pp == nil {
			st.GradNorm = math.Sqrt(e.k.SumSquares(e.grads))
		} else {
			// The dp group's gradients are already averaged: only the
			// tensor-parallel partial sums remain to be added.
			norm, err := e.globalNorm(ctx, true, &st)
			if err != nil {
				return st, err
			}
			st.GradNorm = norm
		}
		// Clipping's factor is applied inside AdamW's pass (one pass over
		// the gradients fewer, same bits as scaling them first).
		return st, e.opts[0].StepScaled(e.params, e.grads, lr, optim.ClipCoef(st.GradNorm, maxNorm))
	}
	defer e.Abort()
	if e.q != nil {
		if err := e.q.drain(); err != nil {
			return st, err
		}
	}
	if err := e.sumTied(ctx, &st); err != nil {
		return st, err
	}
	norm, err := e.globalNorm(ctx, false, &st)
	if err != nil {
		return st, err
	}
	st.GradNorm = norm
	clip := optim.ClipCoef(st.GradNorm, maxNorm) // applied inside AdamW's pass
	for i, o := range e.opts {
		if err := o.StepScaled(e.paramOf(i), e.gradOf(i), lr, clip); err != nil {
			return st, err
		}
	}
	if e.stage == Stage1 || e.stage == Stage2 {
		buf := e.staging
		if e.stage == Stage2 {
			buf = <-e.gbufs
			defer func() { e.gbufs <- buf }()
		}
		for u := range e.part.Units {
			e.q.enqueue(func(ctx context.Context, g parallel.Comm) error {
				_, err := e.gatherUnitFull(ctx, g, u, buf)
				return err
			}, parallel.BytesSent(e.g, parallel.OpAllGather, e.part.Units[u].Padded(e.part.DP)), nil)
		}
		if err := e.q.drain(); err != nil {
			return st, fmt.Errorf("parameter all-gather: %w", err)
		}
	}
	if e.q != nil {
		dpBytes, dpSecs, overlap := e.q.stats(backwardEnd)
		st.CommBytes += dpBytes
		st.CommSeconds += dpSecs
		st.OverlapSeconds += overlap
	}
	return st, nil
}

// sumTied adds the two pipeline stages' gradients of a tied embedding
// (Megatron's embedding group): the part of the unit this rank holds after
// the data-parallel exchange — all of it at stage 0, its slice at stage 1,
// its shard at stage 2 — is summed over the embedding group, whose two
// members hold the same part of the same partition.
func (e *Engine) sumTied(ctx context.Context, st *StepStats) error {
	if e.emb == nil {
		return nil
	}
	up, s := e.part.Units[e.tiedU], e.me.Slices[e.tiedU]
	var buf []float32
	switch {
	case e.stage == Stage0:
		buf = e.grads[up.Offset:up.End()]
	case e.stage == Stage1:
		buf = e.grads[s.Offset:s.End()]
	default:
		buf = e.grads[e.me.Local[e.tiedU] : e.me.Local[e.tiedU]+s.Len]
	}
	start := time.Now()
	if err := e.emb.AllReduce(ctx, buf, parallel.Sum); err != nil {
		return fmt.Errorf("tied embedding gradient all-reduce over the first and last pipeline stages: %w", err)
	}
	st.CommSeconds += time.Since(start).Seconds()
	st.CommBytes += parallel.BytesSent(e.emb, parallel.OpAllReduce, len(buf))
	return nil
}

// globalNorm is the L2 norm of every gradient element counted once: this
// rank's owned chunks' sum of squares (in float64), summed in float32 as a
// (hi, lo) pair so the float64 partial sums keep ~48 bits, over the dp
// group (unless dpDone: its gradients are already averaged), then the tp
// group, then the pp group. Every rank of both gets the same bits, so replicated chunks
// are clipped alike.
func (e *Engine) globalNorm(ctx context.Context, dpDone bool, st *StepStats) (float64, error) {
	var ss float64
	for i := range e.opts {
		g := e.gradOf(i)
		for _, r := range e.counted[i] {
			ss += e.k.SumSquares(g[r.Offset:r.End()])
		}
	}
	e.scalar[0] = float32(ss)
	e.scalar[1] = float32(ss - float64(e.scalar[0]))
	norm := e.scalar[:2]
	if !dpDone && e.g != nil && e.q != nil {
		// The step's loss rides along (e.scalar[2], see FinishStep),
		// summed and then divided as parallel.Mean divides.
		if err := e.q.do(func(ctx context.Context, g parallel.Comm) error {
			return g.AllReduce(ctx, e.scalar, parallel.Sum)
		}, parallel.BytesSent(e.g, parallel.OpAllReduce, len(e.scalar)), nil); err != nil {
			return 0, fmt.Errorf("grad-norm all-reduce over dp: %w", err)
		}
		e.scalar[2] /= float32(e.g.Size())
		st.Loss = float64(e.scalar[2])
	}
	for _, g := range []struct {
		c    parallel.Comm
		name string
	}{{e.tp, "tp"}, {e.pp, "pp"}} {
		if g.c == nil {
			continue
		}
		start := time.Now()
		if err := g.c.AllReduce(ctx, norm, parallel.Sum); err != nil {
			return 0, fmt.Errorf("grad-norm all-reduce over %s: %w", g.name, err)
		}
		st.CommSeconds += time.Since(start).Seconds()
		st.CommBytes += parallel.BytesSent(g.c, parallel.OpAllReduce, len(norm))
	}
	return math.Sqrt(float64(norm[0]) + float64(norm[1])), nil
}

// paramOf and gradOf are optimizer i's parameter and gradient slices.
func (e *Engine) paramOf(i int) []float32 {
	if e.stage == Stage3 {
		return e.params[e.localOf(i) : e.localOf(i)+e.optOn[i].Len]
	}
	return e.params[e.optOn[i].Offset:e.optOn[i].End()]
}

func (e *Engine) gradOf(i int) []float32 {
	if e.stage >= Stage2 {
		return e.grads[e.localOf(i) : e.localOf(i)+e.optOn[i].Len]
	}
	return e.grads[e.optOn[i].Offset:e.optOn[i].End()]
}

// localOf is where optimizer i's slice lives in the local shard buffers.
func (e *Engine) localOf(i int) int {
	for u, s := range e.me.Slices {
		if s == e.optOn[i] && s.Len > 0 {
			return e.me.Local[u]
		}
	}
	panic("zero: optimizer range is not a slice of the partition")
}

// reduceFullUnit (stage 1, last micro-batch) reduce-scatters unit u of the
// full gradient buffer through the staging buffer; this rank's slice of
// the full buffer then holds the mean gradient.
func (e *Engine) reduceFullUnit(u int) error {
	up, s, r := e.part.Units[u], e.me.Slices[u], e.me.Index
	n := up.Padded(e.part.DP)
	e.q.enqueue(func(ctx context.Context, g parallel.Comm) error {
		buf := e.staging[:n]
		copy(buf, e.grads[up.Offset:up.End()])
		clear(buf[up.Len:])
		if _, err := g.ReduceScatter(ctx, buf, parallel.Mean); err != nil {
			return err
		}
		copy(e.grads[s.Offset:s.End()], buf[r*up.Chunk:r*up.Chunk+s.Len])
		return nil
	}, parallel.BytesSent(e.g, parallel.OpReduceScatter, n), nil)
	return nil
}

// bindGrads (stages 2–3, before a pass writes unit u's gradients) binds a
// cleared working buffer as u's gradient. With tied embeddings the head's
// passes also accumulate into the tied weight's unit, which is bound then
// too.
func (e *Engine) bindGrads(u int) error {
	if e.ubufs == nil {
		e.ubufs = map[int][]float32{}
	}
	bind := func(u int) {
		if _, ok := e.ubufs[u]; ok {
			return
		}
		buf := <-e.gbufs
		clear(buf[:e.part.Units[u].Padded(e.part.DP)])
		e.ubufs[u] = buf
		e.Model.BindGrads(u, buf)
	}
	for _, g := range e.part.Layout.GradUnits(u) {
		bind(g)
	}
	return nil
}

// reduceUnitBuffer (stages 2–3, after unit u's backward) reduce-scatters
// u's working gradient buffer, adds this rank's part into its gradient
// shard and returns the buffer to the pool.
func (e *Engine) reduceUnitBuffer(u int) error {
	buf, ok := e.ubufs[u]
	if !ok {
		return fmt.Errorf("zero: unit %s reduced without a bound gradient buffer (BindGrads first): %w", e.part.Units[u].Name, ErrInvalid)
	}
	delete(e.ubufs, u)
	up, s, r := e.part.Units[u], e.me.Slices[u], e.me.Index
	n := up.Padded(e.part.DP)
	dst := e.grads[e.me.Local[u] : e.me.Local[u]+s.Len]
	e.q.enqueue(func(ctx context.Context, g parallel.Comm) error {
		if _, err := g.ReduceScatter(ctx, buf[:n], parallel.Mean); err != nil {
			return err
		}
		for i, v := range buf[r*up.Chunk : r*up.Chunk+s.Len] {
			dst[i] += v
		}
		return nil
	}, parallel.BytesSent(e.g, parallel.OpReduceScatter, n), func() { e.gbufs <- buf })
	return nil
}

// use (stage 3, before a unit's forward or backward) makes sure unit u's
// parameters are gathered and bound, then prefetches the next unit the
// passes will read.
func (e *Engine) use(u int) error {
	if e.pos >= len(e.uses) || e.uses[e.pos] != u {
		if e.pos >= len(e.uses) {
			return fmt.Errorf("zero: unit %d gathered after the %d uses of ParamOrder: %w", u, len(e.uses), ErrInvalid)
		}
		return fmt.Errorf("zero: hook for unit %d at position %d, expected %d: %w", u, e.pos, e.uses[e.pos], ErrInvalid)
	}
	e.pos++
	gt := e.startGather(u, true)
	if gt.done != nil {
		err := <-gt.done
		gt.done = nil
		if err != nil {
			return fmt.Errorf("gather unit %s: %w", e.part.Units[u].Name, err)
		}
		e.Model.BindParams(u, gt.buf)
	}
	for _, next := range e.uses[e.pos:] {
		if next != u {
			if _, ok := e.held[next]; !ok {
				e.startGather(next, false)
			}
			break
		}
	}
	return nil
}

// startGather enqueues the all-gather of unit u unless it is held; with
// block false it gives up when no working buffer is free.
func (e *Engine) startGather(u int, block bool) *gather {
	if gt, ok := e.held[u]; ok {
		return gt
	}
	var buf []float32
	if block {
		buf = <-e.pbufs
	} else {
		select {
		case buf = <-e.pbufs:
		default:
			return nil
		}
	}
	gt := &gather{buf: buf, done: make(chan error, 1)}
	e.held[u] = gt
	e.q.enqueue(func(ctx context.Context, g parallel.Comm) error {
		_, err := e.gatherUnitFrom(ctx, g, u, buf)
		return err
	}, parallel.BytesSent(e.g, parallel.OpAllGather, e.part.Units[u].Padded(e.part.DP)), nil, gt.done)
	return gt
}

// release (stage 3, after a unit's pass) returns u's parameter buffer
// unless the passes read u next (the head, from forward to backward) or it
// is the tied embedding before its backward.
func (e *Engine) release(u int) error {
	if e.pos < len(e.uses) && e.uses[e.pos] == u {
		return nil
	}
	if e.tied && u == e.part.Layout.EmbedUnit() && e.pos < len(e.uses) {
		return nil
	}
	gt := e.held[u]
	delete(e.held, u)
	e.pbufs <- gt.buf
	return nil
}

// gatherUnitFrom copies this rank's slice of unit u from the local shard into
// its place in buf and all-gathers the unit's padded buffer.
func (e *Engine) gatherUnitFrom(ctx context.Context, g parallel.Comm, u int, buf []float32) ([]float32, error) {
	if g == nil {
		return nil, errors.New("zero: no dp group")
	}
	up, s, r := e.part.Units[u], e.me.Slices[u], e.me.Index
	n := up.Padded(e.part.DP)
	copy(buf[r*up.Chunk:r*up.Chunk+s.Len], e.params[e.me.Local[u]:e.me.Local[u]+s.Len])
	if err := g.AllGather(ctx, buf[:n]); err != nil {
		return nil, err
	}
	return buf[:up.Len], nil
}

// gatherUnitFull (stages 1–2) all-gathers unit u of the full parameter
// buffer: every rank's updated slice ends up in every rank's buffer.
func (e *Engine) gatherUnitFull(ctx context.Context, g parallel.Comm, u int, buf []float32) ([]float32, error) {
	up, s, r := e.part.Units[u], e.me.Slices[u], e.me.Index
	n := up.Padded(e.part.DP)
	copy(buf[r*up.Chunk:r*up.Chunk+s.Len], e.params[s.Offset:s.End()])
	if err := g.AllGather(ctx, buf[:n]); err != nil {
		return nil, err
	}
	copy(e.params[up.Offset:up.End()], buf[:up.Len])
	return buf[:up.Len], nil
}
