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
	"github.com/loomtrain/loom/tensor"
)

// Config is what an Engine needs.
type Config struct {
	Plan    Plan
	Rank    int             // this rank's index in the plan (Group.Index())
	Group   *parallel.Group // the data-parallel group; nil when Plan.DP == 1
	Kernels tensor.Kernels
	Model   model.Config
	AdamW   optim.AdamWConfig
	Seed    uint64 // initial parameters, as model.Model.Init
	// BucketBytes is stage 0's all-reduce bucket size (0:
	// parallel.DefaultBucketBytes). Later stages reduce one unit at a time.
	BucketBytes int
}

// Engine runs one rank's part of a training step under a ZeRO stage: it
// owns the rank's parameter, gradient and optimizer-state buffers as the
// plan shards them, drives the model's backward (and, at stage 3, forward)
// passes through hooks that gather parameters and reduce gradients unit by
// unit, clips by the exact global norm and applies AdamW to the rank's shard.
//
//	stage 0: full buffers; gradients all-reduced in buckets during the
//	         last micro-batch's backward (parallel.BucketReducer).
//	stage 1: full parameters and gradients, AdamW state for the shard. During
//	         the last micro-batch's backward each finished unit is
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
// Collectives run in program order on one goroutine per step, so every rank
// issues them in the same order. An Engine is not safe for concurrent use.
type Engine struct {
	plan  Plan
	me    RankPlan
	g     *parallel.Group
	k     tensor.Kernels
	stage Stage
	tied  bool
	// Model is bound to this engine's buffers. At stage 3 its Params and
	// Grads are nil; use GatherParams for the full parameters.
	Model *model.Model

	params []float32 // stages 0–2: full (Size); stage 3: local shard
	grads  []float32 // stages 0–1: full; stages 2–3: local shard
	opts   []*optim.AdamW
	optOn  []Shard // the flat range each optimizer updates

	reducer *parallel.BucketReducer // stage 0 with dp > 1
	staging []float32               // stage 1
	gbufs   chan []float32          // stages 2–3: unit gradient buffers
	pbufs   chan []float32          // stage 3: gathered unit parameters

	// per step
	q        *queue
	reducing bool // stage 0: the reducer was started
	err      error
	pos      int             // stage 3: index of the next hook in uses
	uses     []int           // stage 3: units in the order the passes read them
	held     map[int]*gather // stage 3: units gathered or being gathered
	ubufs    map[int][]float32
	scalar   []float32
}

// gather is a unit's parameters being all-gathered into buf.
type gather struct {
	buf  []float32
	done chan error
}

// New allocates the rank's buffers, initializes its parameters from Seed
// and binds a model to them.
func New(c Config) (*Engine, error) {
	p := c.Plan
	if c.Rank < 0 || c.Rank >= p.DP {
		return nil, fmt.Errorf("zero: rank %d of a plan for dp = %d: %w", c.Rank, p.DP, ErrInvalid)
	}
	if (c.Group == nil) != (p.DP == 1) || (c.Group != nil && (c.Group.Size() != p.DP || c.Group.Index() != c.Rank)) {
		return nil, fmt.Errorf("zero: plan for dp = %d, rank %d does not match the group: %w", p.DP, c.Rank, ErrInvalid)
	}
	e := &Engine{plan: p, me: p.Ranks[c.Rank], g: c.Group, k: c.Kernels, stage: p.Stage, tied: c.Model.TieEmbeddings, scalar: make([]float32, 2)}
	if p.DP == 1 {
		e.stage = Stage0
	}
	l, err := model.NewLayout(c.Model)
	if err != nil {
		return nil, err
	}
	if l.Size != p.Size {
		return nil, fmt.Errorf("zero: plan for %d elements, model has %d: %w", p.Size, l.Size, ErrInvalid)
	}
	segs := make([]optim.Segment, len(l.Views))
	for i, v := range l.Views {
		segs[i] = optim.Segment{Offset: v.Offset, Len: v.Len(), Decay: v.Decay}
	}
	addOpt := func(s Shard) error {
		if s.Len == 0 {
			return nil
		}
		o, err := optim.NewAdamW(c.Kernels, c.AdamW, segs, s.Offset, s.Len)
		if err != nil {
			return err
		}
		e.opts, e.optOn = append(e.opts, o), append(e.optOn, s)
		return nil
	}
	work := p.MaxPadded()
	nbuf := workingBuffers(e.tied)
	newPool := func() chan []float32 {
		ch := make(chan []float32, nbuf)
		for range nbuf {
			ch <- make([]float32, work)
		}
		return ch
	}
	if e.stage >= Stage2 {
		e.Model, err = model.NewUnbound(c.Model, c.Kernels)
	} else {
		e.Model, err = model.New(c.Model, c.Kernels)
	}
	if err != nil {
		return nil, err
	}
	switch e.stage {
	case Stage0:
		e.params, e.grads = e.Model.Params, e.Model.Grads
		if err := addOpt(Shard{0, p.Size}); err != nil {
			return nil, err
		}
		if e.g != nil {
			e.reducer = parallel.NewBucketReducer(e.g, e.grads, c.BucketBytes)
		}
	case Stage1, Stage2:
		e.params, e.grads = e.Model.Params, e.Model.Grads
		if e.stage == Stage1 {
			e.staging = make([]float32, work)
		} else {
			// Full parameters, but no full gradient buffer: units are bound
			// to working buffers for their backward.
			e.params, e.grads = make([]float32, p.Size), make([]float32, e.me.LocalLen)
			e.Model.Params = e.params
			for u, up := range p.Units {
				e.Model.BindParams(u, e.params[up.Offset:up.End()])
			}
			e.gbufs = newPool()
		}
		for _, s := range e.me.Slices {
			if err := addOpt(s); err != nil {
				return nil, err
			}
		}
	case Stage3:
		e.params, e.grads = make([]float32, e.me.LocalLen), make([]float32, e.me.LocalLen)
		e.gbufs, e.pbufs = newPool(), newPool()
		for _, s := range e.me.Slices {
			if err := addOpt(s); err != nil {
				return nil, err
			}
		}
		L := c.Model.NLayers
		for u := 0; u <= L+1; u++ {
			e.uses = append(e.uses, u)
		}
		for u := L + 1; u >= 0; u-- {
			e.uses = append(e.uses, u)
		}
	}
	e.initParams(c.Seed)
	return e, nil
}

// initParams sets the initial parameters: the full buffer, or at stage 3
// the rank's slices, each unit generated in a working buffer (every view
// draws from its own stream, so slices match the full initialization).
func (e *Engine) initParams(seed uint64) {
	if e.stage != Stage3 {
		e.Model.Init(seed)
		return
	}
	buf := <-e.pbufs
	for u, up := range e.plan.Units {
		model.InitParams(e.Model.Layout, seed, buf[:up.Len], up.Offset)
		s := e.me.Slices[u]
		copy(e.params[e.me.Local[u]:], buf[s.Offset-up.Offset:s.End()-up.Offset])
	}
	e.pbufs <- buf
}

// LoadParams sets the parameters from a full flat buffer (every rank
// passes the same one; each keeps what its stage keeps).
func (e *Engine) LoadParams(full []float32) error {
	if len(full) != e.plan.Size {
		return fmt.Errorf("zero: loading %d parameters into a model of %d: %w", len(full), e.plan.Size, ErrInvalid)
	}
	if e.stage != Stage3 {
		copy(e.params, full)
		return nil
	}
	for u, s := range e.me.Slices {
		copy(e.params[e.me.Local[u]:], full[s.Offset:s.End()])
	}
	return nil
}

// GatherParams writes the full parameters into dst (len Plan.Size). At
// stage 3 it is a collective: every rank must call it.
func (e *Engine) GatherParams(ctx context.Context, dst []float32) error {
	if len(dst) != e.plan.Size {
		return fmt.Errorf("zero: gathering %d parameters into %d: %w", e.plan.Size, len(dst), ErrInvalid)
	}
	if e.stage != Stage3 {
		copy(dst, e.params)
		return nil
	}
	buf := <-e.pbufs
	defer func() { e.pbufs <- buf }()
	for u, up := range e.plan.Units {
		if _, err := e.gatherUnit(ctx, u, buf); err != nil {
			return err
		}
		copy(dst[up.Offset:up.End()], buf[:up.Len])
	}
	return nil
}

// Memory is the bytes this rank's buffers hold (Plan.Memory, counted from
// the allocations).
func (e *Engine) Memory() Memory {
	n := func(b []float32) int64 { return 4 * int64(len(b)) }
	var m Memory
	m.Params, m.Grads = n(e.params), n(e.grads)
	for _, o := range e.opts {
		mm, v, _ := o.State()
		m.Optimizer += n(mm) + n(v)
	}
	m.Comm = n(e.staging)
	m.Working = int64(cap(e.gbufs)+cap(e.pbufs)) * 4 * int64(e.plan.MaxPadded())
	return m
}

// Plan returns the plan the engine runs.
func (e *Engine) Plan() Plan { return e.plan }

// Optimizers returns the AdamW optimizers and the flat range each updates
// (one per unit slice; one over everything at stage 0), for checkpoints.
func (e *Engine) Optimizers() ([]*optim.AdamW, []Shard) { return e.opts, e.optOn }

// BeginStep clears the gradients and starts the step's collectives queue;
// ctx bounds every collective of the step. FinishStep or Abort must follow.
func (e *Engine) BeginStep(ctx context.Context) {
	clear(e.grads)
	e.err = nil
	if e.g != nil && e.stage != Stage0 {
		e.q = newQueue(ctx, e.g, 4*len(e.plan.Units)+16)
	}
}

// ForwardBackward runs one micro-batch (see model.ForwardBackward); last
// marks the step's final micro-batch, whose backward finishes the gradients.
func (e *Engine) ForwardBackward(ctx context.Context, a *model.Acts, tokens, targets []int32, scale float32, last bool) (float64, error) {

	var h model.Hooks
	switch e.stage {
	case Stage0:
		if last && e.reducer != nil {
			e.reducer.Start(ctx)
			e.reducing = true
			h.AfterBackward = func(u int) { e.reducer.Ready(e.plan.Units[u].Offset, e.plan.Units[u].End()) }
		}
	case Stage1:
		if last && e.q != nil {
			h.AfterBackward = e.reduceFullUnit
		}
	case Stage2:
		h.BeforeBackward, h.AfterBackward = e.bindGrads, e.reduceUnitBuffer
	case Stage3:
		e.pos, e.held = 0, map[int]*gather{}
		h.BeforeForward, h.AfterForward = e.use, e.release
		h.AfterBackward = func(u int) {
			e.reduceUnitBuffer(u)
			e.release(u)
		}
		h.BeforeBackward = func(u int) {
			e.use(u)
			e.bindGrads(u)
		}
	}
	loss, err := e.Model.ForwardBackwardHooks(a, tokens, targets, scale, h)
	if err == nil {
		err = e.err
	}
	return loss, err
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
}

// StepStats describes a step's gradient exchange and update.
type StepStats struct {
	GradNorm float64 // global L2 norm before clipping
	// CommBytes is the payload this rank sent in the step's collectives,
	// counted per operation from its buffer length and algorithm: a ring
	// reduce-scatter or all-gather of m elements over n ranks sends every
	// segment but one, 4·m·(n−1)/n bytes; a ring all-reduce twice that
	// (see AllReduceSent for small buffers). Stage 0 counts its bucketed
	// gradient all-reduce as ring traffic over the whole buffer: buckets at
	// or below the group's SmallBytes actually go by recursive doubling,
	// which sends more at n > 2.
	CommBytes      int64
	CommSeconds    float64 // time inside collectives
	OverlapSeconds float64 // part of CommSeconds before the last backward ended
}

// FinishStep completes the gradient exchange, clips the gradients to the
// global norm maxNorm (≤ 0: no clipping), applies AdamW with learning rate
// lr to this rank's shard and, at stages 1–2, all-gathers the updated
// parameters.
func (e *Engine) FinishStep(ctx context.Context, lr, maxNorm float64) (StepStats, error) {
	var st StepStats
	backwardEnd := time.Now()
	if e.reducing {
		e.reducing = false
		rs, err := e.reducer.Wait()
		st.CommBytes = 2 * ringSent(len(e.grads), e.plan.DP)
		st.CommSeconds, st.OverlapSeconds = rs.Comm.Seconds(), rs.Overlapped.Seconds()
		if err != nil {
			return st, fmt.Errorf("gradient all-reduce: %w", err)
		}
	}
	if e.stage == Stage0 {
		st.GradNorm = optim.ClipGradNorm(e.k, e.grads, maxNorm)
		return st, e.opts[0].Step(e.params, e.grads, lr)
	}
	defer e.Abort()
	if err := e.q.drain(); err != nil {
		return st, err
	}
	// The exact global norm: every rank's shard sum of squares, summed in
	// float32 as a (hi, lo) pair so the float64 partial sums keep ~48 bits.
	var ss float64
	for i := range e.opts {
		ss += e.k.SumSquares(e.gradOf(i))
	}
	e.scalar[0] = float32(ss)
	e.scalar[1] = float32(ss - float64(e.scalar[0]))
	if err := e.q.do(func(ctx context.Context, g *parallel.Group) error {
		return g.AllReduce(ctx, e.scalar, parallel.Sum)
	}, AllReduceSent(e.g, len(e.scalar)), nil); err != nil {
		return st, fmt.Errorf("grad-norm all-reduce: %w", err)
	}
	st.GradNorm = math.Sqrt(float64(e.scalar[0]) + float64(e.scalar[1]))
	if c := optim.ClipCoef(st.GradNorm, maxNorm); c < 1 {
		for i := range e.opts {
			e.k.Scale(e.gradOf(i), float32(c))
		}
	}
	for i, o := range e.opts {
		if err := o.Step(e.paramOf(i), e.gradOf(i), lr); err != nil {
			return st, err
		}
	}
	if e.stage == Stage1 || e.stage == Stage2 {
		buf := e.staging
		if e.stage == Stage2 {
			buf = <-e.gbufs
			defer func() { e.gbufs <- buf }()
		}
		for u := range e.plan.Units {
			u := u
			e.q.enqueue(func(ctx context.Context, g *parallel.Group) error {
				_, err := e.gatherUnitFull(ctx, g, u, buf)
				return err
			}, ringSent(e.plan.Units[u].Padded(e.plan.DP), e.plan.DP), nil)
		}
		if err := e.q.drain(); err != nil {
			return st, fmt.Errorf("parameter all-gather: %w", err)
		}
	}
	st.CommBytes, st.CommSeconds, st.OverlapSeconds = e.q.stats(backwardEnd)
	return st, nil
}

// paramOf and gradOf are optimizer i's parameter and gradient slices.
func (e *Engine) paramOf(i int) []float32 {
	if e.stage == Stage3 {
		return e.params[e.me.Local[i] : e.me.Local[i]+e.optOn[i].Len]
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
	panic("zero: optimizer range is not a slice of the plan")
}

// AllReduceSent is the bytes this member of g sends in an all-reduce of n
// float32 elements, following the group's choice of algorithm (ring above
// SmallBytes under Auto, else recursive doubling).
func AllReduceSent(g *parallel.Group, n int) int64 {
	size, me := g.Size(), g.Index()
	if size <= 1 || n == 0 {
		return 0
	}
	spec := g.Spec()
	small := spec.SmallBytes
	if small == 0 {
		small = parallel.DefaultSmallBytes
	}
	if spec.AllReduce == parallel.Ring || (spec.AllReduce == parallel.Auto && 4*n > small) {
		return 2 * ringSent(n, size)
	}
	p, rounds := 1, 0
	for p*2 <= size {
		p, rounds = p*2, rounds+1
	}
	switch {
	case me >= p:
		return 4 * int64(n)
	case me < size-p:
		return 4 * int64(n) * int64(rounds+1)
	}
	return 4 * int64(n) * int64(rounds)
}

// ringSent is the bytes one rank sends in a ring reduce-scatter or
// all-gather of n elements over dp ranks, in dp equal padded segments.
func ringSent(n, dp int) int64 {
	if dp <= 1 {
		return 0
	}
	return 4 * int64(n) * int64(dp-1) / int64(dp)
}

// reduceFullUnit (stage 1, last micro-batch) reduce-scatters unit u of the
// full gradient buffer through the staging buffer; this rank's slice of
// the full buffer then holds the mean gradient.
func (e *Engine) reduceFullUnit(u int) {
	up, s, r := e.plan.Units[u], e.me.Slices[u], e.me.Rank
	n := up.Padded(e.plan.DP)
	e.q.enqueue(func(ctx context.Context, g *parallel.Group) error {
		buf := e.staging[:n]
		copy(buf, e.grads[up.Offset:up.End()])
		clear(buf[up.Len:])
		if _, err := g.ReduceScatter(ctx, buf, parallel.Mean); err != nil {
			return err
		}
		copy(e.grads[s.Offset:s.End()], buf[r*up.Chunk:r*up.Chunk+s.Len])
		return nil
	}, ringSent(n, e.plan.DP), nil)
}

// bindGrads (stages 2–3, before unit u's backward) binds a cleared working
// buffer as u's gradient. With tied embeddings the head's backward also
// accumulates into the embedding, so the embedding is bound then too.
func (e *Engine) bindGrads(u int) {
	if e.ubufs == nil {
		e.ubufs = map[int][]float32{}
	}
	bind := func(u int) {
		if _, ok := e.ubufs[u]; ok {
			return
		}
		buf := <-e.gbufs
		clear(buf[:e.plan.Units[u].Padded(e.plan.DP)])
		e.ubufs[u] = buf
		e.Model.BindGrads(u, buf)
	}
	if e.tied && u == len(e.plan.Units)-1 {
		bind(0)
	}
	bind(u)
}

// reduceUnitBuffer (stages 2–3, after unit u's backward) reduce-scatters
// u's working gradient buffer, adds this rank's part into its gradient
// shard and returns the buffer to the pool.
func (e *Engine) reduceUnitBuffer(u int) {
	buf := e.ubufs[u]
	delete(e.ubufs, u)
	up, s, r := e.plan.Units[u], e.me.Slices[u], e.me.Rank
	n := up.Padded(e.plan.DP)
	dst := e.grads[e.me.Local[u] : e.me.Local[u]+s.Len]
	e.q.enqueue(func(ctx context.Context, g *parallel.Group) error {
		if _, err := g.ReduceScatter(ctx, buf[:n], parallel.Mean); err != nil {
			return err
		}
		for i, v := range buf[r*up.Chunk : r*up.Chunk+s.Len] {
			dst[i] += v
		}
		return nil
	}, ringSent(n, e.plan.DP), func() { e.gbufs <- buf })
}

// use (stage 3, before a unit's forward or backward) makes sure unit u's
// parameters are gathered and bound, then prefetches the next unit the
// passes will read.
func (e *Engine) use(u int) {
	if e.uses[e.pos] != u {
		panic(fmt.Sprintf("zero: hook for unit %d at position %d, expected %d", u, e.pos, e.uses[e.pos]))
	}
	e.pos++
	gt := e.startGather(u, true)
	if gt.done != nil {
		if err := <-gt.done; err != nil && e.err == nil {
			e.err = fmt.Errorf("gather unit %s: %w", e.plan.Units[u].Name, err)
		}
		gt.done = nil
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
	e.q.enqueue(func(ctx context.Context, g *parallel.Group) error {
		_, err := e.gatherUnitFrom(ctx, g, u, buf)
		return err
	}, ringSent(e.plan.Units[u].Padded(e.plan.DP), e.plan.DP), nil, gt.done)
	return gt
}

// release (stage 3, after a unit's pass) returns u's parameter buffer
// unless the passes read u next (the head, from forward to backward) or it
// is the tied embedding before its backward.
func (e *Engine) release(u int) {
	if e.pos < len(e.uses) && e.uses[e.pos] == u {
		return
	}
	if e.tied && u == 0 && e.pos < len(e.uses) {
		return
	}
	gt := e.held[u]
	delete(e.held, u)
	e.pbufs <- gt.buf
}

// gatherUnit all-gathers unit u's parameters from the ranks' shards into
// buf[:Len] (stage 3), on the calling goroutine.
func (e *Engine) gatherUnit(ctx context.Context, u int, buf []float32) ([]float32, error) {
	if e.g == nil {
		return nil, errors.New("zero: no group")
	}
	return e.gatherUnitFrom(ctx, e.g, u, buf)
}

// gatherUnitFrom copies this rank's slice of unit u from the local shard into
// its place in buf and all-gathers the unit's padded buffer.
func (e *Engine) gatherUnitFrom(ctx context.Context, g *parallel.Group, u int, buf []float32) ([]float32, error) {
	up, s, r := e.plan.Units[u], e.me.Slices[u], e.me.Rank
	n := up.Padded(e.plan.DP)
	copy(buf[r*up.Chunk:r*up.Chunk+s.Len], e.params[e.me.Local[u]:e.me.Local[u]+s.Len])
	if err := g.AllGather(ctx, buf[:n]); err != nil {
		return nil, err
	}
	return buf[:up.Len], nil
}

// gatherUnitFull (stages 1–2) all-gathers unit u of the full parameter
// buffer: every rank's updated slice ends up in every rank's buffer.
func (e *Engine) gatherUnitFull(ctx context.Context, g *parallel.Group, u int, buf []float32) ([]float32, error) {
	up, s, r := e.plan.Units[u], e.me.Slices[u], e.me.Rank
	n := up.Padded(e.plan.DP)
	copy(buf[r*up.Chunk:r*up.Chunk+s.Len], e.params[s.Offset:s.End()])
	if err := g.AllGather(ctx, buf[:n]); err != nil {
		return nil, err
	}
	copy(e.params[up.Offset:up.End()], buf[:up.Len])
	return buf[:up.Len], nil
}
