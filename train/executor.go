package train

import (
	"context"
	"fmt"
	"time"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/schedule"
	"github.com/loomtrain/loom/timeline"
	"github.com/loomtrain/loom/zero"
)

// executor runs one rank's list of the plan's schedule every step — a
// dispatch per action kind — over the rank's stages: it owns each stage's
// pool of activation slots (one per micro-batch the schedule keeps in
// flight there), hands activations and gradients to and from the
// neighbouring pipeline ranks (p2p) or between its own adjacent stages,
// and calls the ZeRO engine around every pass that reads a unit's
// parameters or writes its gradients. With pp = 1 and 1F1B it is the
// plain accumulation loop: F0 B0 F1 B1 … The executor is not safe for
// concurrent use.
type executor struct {
	sched  *schedule.Schedule
	list   []schedule.Action
	me     int // pipeline coordinate
	m      *model.Model
	eng    *zero.Engine
	net    *p2p // nil with pp 1
	stages map[int]*stageRun
	scr    *model.BlockScratch
	spare  []int32 // tokens or targets a stage loads and does not use
	// final[i]: action i is its stage's last gradient-writing pass of the
	// step; release[i]: the slots whose last action is action i.
	final   []bool
	release [][]int // micro-batch·stages + stage
	hooks   hookSet
	spans   []span // the compute loop's own, this step
	load    func(mb int, tokens, targets []int32) error
	// gradScale multiplies each micro-batch's loss gradient: 1/Accum.
	gradScale float32
	accum     float64 // the plan's Accum, which divides the step's loss sum
}

// stageRun is one stage's activation slots.
type stageRun struct {
	st    plan.Stage
	split bool
	slots []*slot
	free  []*slot
	live  map[int]*slot // by micro-batch
	peak  int           // most slots live at once this step
}

// slot is one micro-batch's activations through a stage and its tokens
// (first stage) and targets (last stage).
type slot struct {
	acts            *model.Acts
	tokens, targets []int32
}

// hookSet holds the model hooks of each kind of pass, built once.
type hookSet struct {
	f, bSplit model.Hooks
	b, w      [2]model.Hooks // by final
}

// stepStats is what the executor measured of a step.
type stepStats struct {
	loss          float64 // sum over the step's micro-batches on the last stage, 0 elsewhere
	compute, wait time.Duration
	sent          int64 // bytes to the neighbouring stages
	peakSlots     []int // per stage of the rank, in model order
	peakBytes     int64
}

// executorConfig is what newExecutor needs; setEngine must follow (the
// engine needs paramOrder first).
type executorConfig struct {
	plan  *plan.Plan
	rank  plan.RankPlan
	model *model.Model
	net   *p2p
	// load fills micro-batch mb's tokens and targets.
	load func(mb int, tokens, targets []int32) error
}

func newExecutor(c executorConfig) (*executor, error) {
	s := c.plan.Schedule
	me := c.rank.Coord.PP
	x := &executor{sched: s, list: s.Ranks[me], me: me, m: c.model, net: c.net, stages: map[int]*stageRun{},
		load: c.load, gradScale: 1 / float32(c.plan.Accum), accum: float64(c.plan.Accum)}
	B, T := c.plan.MicroBatch, c.plan.SeqLen
	x.scr = c.model.NewScratch(B, T, c.model.SequenceParallel())
	in := s.InFlight()
	n := B * T
	for _, st := range c.rank.Stages {
		sr := &stageRun{st: st, split: s.Split(st.Index, 0), live: map[int]*slot{}}
		for range in[st.Index] {
			a, err := c.model.NewStageActs(B, T, model.ActsOptions{First: st.First, End: st.End, Embed: st.Embed, Head: st.Head,
				Split: sr.split, Recompute: c.plan.Recompute, Scratch: x.scr})
			if err != nil {
				return nil, fmt.Errorf("stage %d: %w", st.Index, err)
			}
			sl := &slot{acts: a}
			if st.Embed {
				sl.tokens = make([]int32, n)
			}
			if st.Head {
				sl.targets = make([]int32, n)
			}
			sr.slots = append(sr.slots, sl)
		}
		sr.free = append([]*slot(nil), sr.slots...)
		x.stages[st.Index] = sr
		if st.Embed != st.Head && x.spare == nil {
			x.spare = make([]int32, n)
		}
	}
	S := s.Stages()
	x.final = make([]bool, len(x.list))
	x.release = make([][]int, len(x.list))
	lastGrad := map[int]int{}
	lastUse := map[int]int{}
	for i, a := range x.list {
		if a.Kind == schedule.W || a.Kind == schedule.B && !x.stages[a.Stage].split {
			lastGrad[a.Stage] = i
		}
		lastUse[a.MB*S+a.Stage] = i
	}
	for _, i := range lastGrad {
		x.final[i] = true
	}
	for k, i := range lastUse {
		x.release[i] = append(x.release[i], k)
	}
	return x, nil
}

// setEngine binds the ZeRO engine and builds the hooks that call it.
func (x *executor) setEngine(e *zero.Engine) {
	x.eng = e
	x.hooks.f = model.Hooks{BeforeForward: e.Gather, AfterForward: e.Release}
	x.hooks.bSplit = model.Hooks{BeforeBackward: e.Gather, AfterBackward: e.Release}
	for i, final := range []bool{false, true} {
		x.hooks.b[i] = model.Hooks{
			BeforeBackward: func(u int) error {
				if err := e.Gather(u); err != nil {
					return err
				}
				return e.BindGrads(u)
			},
			AfterBackward: func(u int) error {
				if err := e.ReduceGrads(u, final); err != nil {
					return err
				}
				return e.Release(u)
			},
		}
		x.hooks.w[i] = model.Hooks{BeforeWeights: e.BindGrads, AfterWeights: func(u int) error { return e.ReduceGrads(u, final) }}
	}
}

// paramOrder lists, for ZeRO stage 3, the units whose parameters each
// compute action of the rank's list reads, in order: a forward reads its
// stage's units first to last, a backward (whole or input pass) last to
// first — a whole backward's embedding pass too — and a weight pass none;
// a last stage's head reads its copy of a tied embedding right after
// itself (zero.Engine.Gather).
func paramOrder(p *plan.Plan, rp plan.RankPlan) []int {
	l := rp.Layout
	var out []int
	head := func() {
		out = append(out, l.HeadUnit())
		if t := l.TiedUnit(); t >= 0 {
			out = append(out, t)
		}
	}
	for _, a := range p.Schedule.Ranks[rp.Coord.PP] {
		st := p.Stages[a.Stage]
		split := p.Schedule.Split(a.Stage, a.MB)
		switch a.Kind {
		case schedule.F:
			if st.Embed {
				out = append(out, l.EmbedUnit())
			}
			for i := st.First; i < st.End; i++ {
				out = append(out, l.BlockUnit(i))
			}
			if st.Head {
				head()
			}
		case schedule.B:
			if st.Head {
				head()
			}
			for i := st.End - 1; i >= st.First; i-- {
				out = append(out, l.BlockUnit(i))
			}
			if st.Embed && !split {
				out = append(out, l.EmbedUnit())
			}
		}
	}
	return out
}

// take gives micro-batch mb a free slot of the stage.
func (sr *stageRun) take(mb int) (*slot, error) {
	if s, ok := sr.live[mb]; ok {
		return s, nil
	}
	if len(sr.free) == 0 {
		return nil, fmt.Errorf("stage %d: no free activation slot for micro-batch %d (the schedule keeps %d in flight): %w", sr.st.Index, mb, len(sr.slots), schedule.ErrInvalid)
	}
	s := sr.free[len(sr.free)-1]
	sr.free = sr.free[:len(sr.free)-1]
	sr.live[mb] = s
	sr.peak = max(sr.peak, len(sr.live))
	return s, nil
}

// get is micro-batch mb's slot, which an earlier action took.
func (sr *stageRun) get(mb int) (*slot, error) {
	s, ok := sr.live[mb]
	if !ok {
		return nil, fmt.Errorf("stage %d: micro-batch %d has no activations here (its forward has not run): %w", sr.st.Index, mb, schedule.ErrInvalid)
	}
	return s, nil
}

func (sr *stageRun) put(mb int) {
	if s, ok := sr.live[mb]; ok {
		delete(sr.live, mb)
		sr.free = append(sr.free, s)
	}
}

// evalSlots is one slot of each of the rank's stages, in model order, for
// a forward-only pass between steps (when no slot is live).
func (x *executor) evalSlots() []*slot {
	var out []*slot
	for _, stage := range x.sched.StagesOf(x.me) {
		out = append(out, x.stages[stage].slots[0])
	}
	return out
}

// reset returns every slot (after a failed step).
func (sr *stageRun) reset() {
	sr.live = map[int]*slot{}
	sr.free = append(sr.free[:0], sr.slots...)
}

// bytes is the memory of the slots, the shared scratch and the spare
// token buffer.
func (x *executor) bytes() int64 {
	n := x.scr.Bytes() + 4*int64(len(x.spare))
	for _, sr := range x.stages {
		for _, s := range sr.slots {
			n += s.acts.SlotBytes() + 4*int64(len(s.tokens)+len(s.targets))
		}
	}
	return n
}

// run executes the rank's list for one step.
func (x *executor) run(ctx context.Context) (stepStats, error) {
	var st stepStats
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	x.spans = x.spans[:0]
	for _, sr := range x.stages {
		sr.peak = 0
	}
	if x.net != nil {
		x.net.start(ctx)
	}
	S := x.sched.Stages()
	for i, a := range x.list {
		start := time.Now()
		err := x.do(ctx, i, a, &st)
		end := time.Now()
		switch {
		case a.Kind.Compute():
			x.spans = append(x.spans, actionSpan(timeline.Compute, a, start, end))
			st.compute += end.Sub(start)
		case a.Kind == schedule.RecvF || a.Kind == schedule.RecvB:
			x.spans = append(x.spans, actionSpan(timeline.Wait, a, start, end))
			st.wait += end.Sub(start)
		}
		if err != nil {
			cancel()
			x.abort()
			return st, fmt.Errorf("%v (step %d of rank %d's schedule): %w", a, i, x.me, err)
		}
		for _, k := range x.release[i] {
			x.stages[k%S].put(k / S)
		}
	}
	if x.net != nil {
		sent, _, err := x.net.finish(ctx)
		st.sent = sent
		if err != nil {
			x.abort()
			return st, err
		}
	}
	st.peakBytes = x.scr.Bytes() + 4*int64(len(x.spare))
	for _, stage := range x.sched.StagesOf(x.me) {
		sr := x.stages[stage]
		st.peakSlots = append(st.peakSlots, sr.peak)
		if len(sr.slots) > 0 {
			s := sr.slots[0]
			st.peakBytes += int64(sr.peak) * (s.acts.SlotBytes() + 4*int64(len(s.tokens)+len(s.targets)))
		}
	}
	return st, nil
}

// abort drops the step's slots and waits for its transfers to stop.
func (x *executor) abort() {
	for _, sr := range x.stages {
		sr.reset()
	}
	if x.net != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		x.net.finish(ctx) // the step's context is cancelled: the transfers end
	}
}

// do runs action i, a.
func (x *executor) do(ctx context.Context, i int, a schedule.Action, st *stepStats) error {
	sr := x.stages[a.Stage]
	if sr == nil {
		return fmt.Errorf("stage %d does not run on pipeline rank %d: %w", a.Stage, x.me, schedule.ErrInvalid)
	}
	switch a.Kind {
	case schedule.RecvF:
		s, err := sr.take(a.MB)
		if err != nil {
			return err
		}
		return x.net.take(ctx, a, s.acts.Resid[0])
	case schedule.F:
		s, err := sr.take(a.MB)
		if err != nil {
			return err
		}
		if sr.st.Embed || sr.st.Head {
			tok, tgt := s.tokens, s.targets
			if tok == nil {
				tok = x.spare
			}
			if tgt == nil {
				tgt = x.spare
			}
			if err := x.load(a.MB, tok, tgt); err != nil {
				return err
			}
		}
		if prev := x.stages[a.Stage-1]; a.Stage > 0 && prev != nil {
			p, err := prev.get(a.MB)
			if err != nil {
				return err
			}
			copy(s.acts.Resid[0], p.acts.Resid[len(p.acts.Resid)-1])
		}
		loss, err := x.m.StageForward(ctx, s.acts, s.tokens, s.targets, x.gradScale, x.hooks.f)
		st.loss += loss
		if err == nil && x.eng != nil {
			// The loss so far, as the trainer will hand it to FinishStep:
			// the last forward's call is the step's loss, in time for it
			// to ride on the embedding's exchange (zero.Engine.StepLoss).
			x.eng.StepLoss(st.loss / x.accum)
		}
		return err
	case schedule.SendF:
		s, err := sr.get(a.MB)
		if err != nil {
			return err
		}
		return x.net.post(ctx, a, s.acts.Resid[len(s.acts.Resid)-1])
	case schedule.RecvB:
		s, err := sr.get(a.MB)
		if err != nil {
			return err
		}
		return x.net.take(ctx, a, s.acts.DResid)
	case schedule.B:
		s, err := sr.get(a.MB)
		if err != nil {
			return err
		}
		h := x.hooks.bSplit
		if !sr.split {
			h = x.hooks.b[b2i(x.final[i])]
		}
		if err := x.m.StageBackward(ctx, s.acts, s.tokens, sr.split, h); err != nil {
			return err
		}
		if prev := x.stages[a.Stage-1]; a.Stage > 0 && prev != nil {
			p, err := prev.get(a.MB)
			if err != nil {
				return err
			}
			copy(p.acts.DResid, s.acts.DResid)
		}
		return nil
	case schedule.SendB:
		s, err := sr.get(a.MB)
		if err != nil {
			return err
		}
		return x.net.post(ctx, a, s.acts.DResid)
	case schedule.W:
		s, err := sr.get(a.MB)
		if err != nil {
			return err
		}
		return x.m.StageWeights(ctx, s.acts, s.tokens, x.hooks.w[b2i(x.final[i])])
	}
	return fmt.Errorf("unknown action kind %v: %w", a.Kind, schedule.ErrInvalid)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
