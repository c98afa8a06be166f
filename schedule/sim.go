package schedule

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// Costs is the simulator's cost model, in any unit of time (seconds, or
// multiples of one forward): per stage the duration of a forward (F), of
// the input-gradient pass (B) and of the weight-gradient pass (W) — a
// backward that is not split costs B+W — and the latency of one message
// from its send to its arrival. A send does not occupy its rank.
type Costs struct {
	F, B, W []float64
	Comm    float64
}

// Uniform is the same cost for every one of stages stages.
func Uniform(stages int, f, b, w, comm float64) Costs {
	c := Costs{F: make([]float64, stages), B: make([]float64, stages), W: make([]float64, stages), Comm: comm}
	for i := range stages {
		c.F[i], c.B[i], c.W[i] = f, b, w
	}
	return c
}

// Span is one action as the simulator (or an executor's timeline) ran it.
type Span struct {
	Rank       int
	Index      int // position in the rank's list
	Action     Action
	Start, End float64
}

// Result is what a simulated schedule did.
type Result struct {
	// Makespan is when the last action ended (the first started at 0).
	Makespan float64
	// Busy is each rank's time in F, B and W; RankBubble its idle share
	// of the makespan, 1 − Busy/Makespan; Bubble the idle share of all
	// ranks together, 1 − ΣBusy/(PP·Makespan).
	Busy       []float64
	RankBubble []float64
	Bubble     float64
	// PeakInFlight is, per rank, the most micro-batch stage activations
	// it holds at once: from a stage's forward of a micro-batch until its
	// last backward pass of it (W when split, else B). It follows from
	// each rank's order alone, whatever the timing.
	PeakInFlight []int
	// PeakBuffered is, per rank, the most messages that had arrived
	// before their receive took them, under these costs.
	PeakBuffered []int
	// Spans lists every action with its simulated start and end, by rank
	// in list order.
	Spans [][]Span
}

// Error is a schedule that cannot run: a deadlock, a receive without its
// send, a backward before its forward. Grid is the whole rank × step grid
// of actions with the failing ones marked.
type Error struct {
	Reason string
	Marked []Pos
	Grid   string
}

// Pos is an action's place in a schedule: rank and index in its list.
type Pos struct{ Rank, Index int }

func (e *Error) Error() string { return "schedule: " + e.Reason + "\n" + e.Grid }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }

type key struct {
	stage int
	kind  Kind
	mb    int
}

func keyOf(a Action) key { return key{a.Stage, a.Kind, a.MB} }

// Check is Simulate with unit costs, for the errors only.
func Check(s *Schedule) error {
	_, err := Simulate(s, Uniform(s.Stages(), 1, 1, 1, 0))
	return err
}

// Simulate runs s under costs c: every rank executes its list in order,
// each action starting when the rank is free and what it depends on has
// happened — a forward after its input arrived (or, on the same rank, the
// previous stage's forward of the micro-batch), a backward after its
// stage's forward and its output gradient, a W after its B, a send after
// what it sends was computed, a receive once its send's message arrives.
// It returns an *Error when a rank's list is not a schedule of s's shape
// (every stage's F and B of every micro-batch exactly once, on the stage's
// rank, W at most once, every send received and every receive sent) or
// when the ranks deadlock, with the grid printed and the failing actions
// marked.
func Simulate(s *Schedule, c Costs) (*Result, error) {
	S := s.Stages()
	if len(c.F) != S || len(c.B) != S || len(c.W) != S {
		return nil, fmt.Errorf("schedule: costs for %d/%d/%d stages, the schedule has %d: %w", len(c.F), len(c.B), len(c.W), S, ErrInvalid)
	}
	if err := s.checkStatic(); err != nil {
		return nil, err
	}
	split := s.splits()
	dur := func(a Action) float64 {
		switch a.Kind {
		case F:
			return c.F[a.Stage]
		case B:
			if split[a.Stage*s.Micro+a.MB] {
				return c.B[a.Stage]
			}
			return c.B[a.Stage] + c.W[a.Stage]
		case W:
			return c.W[a.Stage]
		}
		return 0
	}
	P := s.PP
	res := &Result{Busy: make([]float64, P), RankBubble: make([]float64, P), PeakInFlight: make([]int, P),
		PeakBuffered: make([]int, P), Spans: make([][]Span, P)}
	pc := make([]int, P)
	free := make([]float64, P)
	done := newTable(s) // end time of every executed action
	for {
		progress, finished := false, true
		for r := range P {
			for pc[r] < len(s.Ranks[r]) {
				a := s.Ranks[r][pc[r]]
				ready, ok, why := s.ready(r, a, done, c.Comm)
				if why != "" {
					return nil, s.errorAt(why, Pos{r, pc[r]})
				}
				if !ok {
					break
				}
				start := math.Max(free[r], ready)
				end := start + dur(a)
				free[r] = end
				done.set(a, end)
				res.Spans[r] = append(res.Spans[r], Span{Rank: r, Index: pc[r], Action: a, Start: start, End: end})
				if a.Kind.Compute() {
					res.Busy[r] += end - start
				}
				res.Makespan = math.Max(res.Makespan, end)
				pc[r]++
				progress = true
			}
			if pc[r] < len(s.Ranks[r]) {
				finished = false
			}
		}
		if finished {
			break
		}
		if !progress {
			return nil, s.deadlock(pc)
		}
	}
	var busy float64
	for r := range P {
		busy += res.Busy[r]
		if res.Makespan > 0 {
			res.RankBubble[r] = 1 - res.Busy[r]/res.Makespan
		}
		res.PeakInFlight[r] = s.peakInFlight(r, split)
		res.PeakBuffered[r] = peakBuffered(res.Spans[r], done, c.Comm)
	}
	if res.Makespan > 0 {
		res.Bubble = 1 - busy/(float64(P)*res.Makespan)
	}
	return res, nil
}

// ready says when action a of rank r may start: ok false while something
// it waits for has not happened yet; why non-empty when it never can,
// because what it needs belongs before it on the same rank.
func (s *Schedule) ready(r int, a Action, done *table, comm float64) (t float64, ok bool, why string) {
	last := s.Stages() - 1
	local := func(k key, what string) (float64, bool, string) {
		e, ok := done.get(Action{k.stage, k.kind, k.mb})
		if !ok {
			return 0, false, fmt.Sprintf("rank %d runs %v before %s %v on the same rank", r, a, what, Action{k.stage, k.kind, k.mb})
		}
		return e, true, ""
	}
	switch a.Kind {
	case F:
		if a.Stage == 0 {
			return 0, true, ""
		}
		if s.RankOf(a.Stage-1) == r {
			return local(key{a.Stage - 1, F, a.MB}, "the previous stage's forward")
		}
		return local(key{a.Stage, RecvF, a.MB}, "receiving its input")
	case B:
		t, ok, why := local(key{a.Stage, F, a.MB}, "its forward")
		if !ok {
			return t, ok, why
		}
		if a.Stage == last {
			return t, true, ""
		}
		k := key{a.Stage, RecvB, a.MB}
		what := "receiving its output gradient"
		if s.RankOf(a.Stage+1) == r {
			k, what = key{a.Stage + 1, B, a.MB}, "the next stage's backward"
		}
		t2, ok, why := local(k, what)
		return math.Max(t, t2), ok, why
	case W:
		return local(key{a.Stage, B, a.MB}, "its input-gradient pass")
	case SendF:
		return local(key{a.Stage, F, a.MB}, "the forward it sends")
	case SendB:
		return local(key{a.Stage, B, a.MB}, "the backward it sends")
	case RecvF, RecvB:
		e, ok := done.get(Match(a))
		if !ok {
			return 0, false, ""
		}
		return e + comm, true, ""
	}
	return 0, false, fmt.Sprintf("rank %d: unknown action %v", r, a)
}

// checkStatic checks that every rank's list is a schedule of s's shape.
func (s *Schedule) checkStatic() error {
	S, M := s.Stages(), s.Micro
	if len(s.Ranks) != s.PP {
		return &Error{Reason: fmt.Sprintf("%d rank lists for pp %d", len(s.Ranks), s.PP), Grid: Grid(s, nil)}
	}
	seen := map[key]Pos{}
	for r, as := range s.Ranks {
		for i, a := range as {
			p := Pos{r, i}
			switch {
			case a.Kind >= numKinds:
				return s.errorAt(fmt.Sprintf("rank %d: unknown action kind %d", r, a.Kind), p)
			case a.Stage < 0 || a.Stage >= S:
				return s.errorAt(fmt.Sprintf("rank %d: %v names stage %d of %d", r, a, a.Stage, S), p)
			case s.RankOf(a.Stage) != r:
				return s.errorAt(fmt.Sprintf("rank %d: %v belongs to rank %d (stage %d)", r, a, s.RankOf(a.Stage), a.Stage), p)
			case a.MB < 0 || a.MB >= M:
				return s.errorAt(fmt.Sprintf("rank %d: %v names micro-batch %d of %d", r, a, a.MB, M), p)
			}
			if q, dup := seen[keyOf(a)]; dup {
				return s.errorAt(fmt.Sprintf("%v appears twice (rank %d step %d and rank %d step %d)", a, q.Rank, q.Index, r, i), q, p)
			}
			seen[keyOf(a)] = p
			if a.Kind.Comm() {
				if _, pr := s.Peer(a); pr < 0 {
					return s.errorAt(fmt.Sprintf("rank %d: %v has no peer stage", r, a), p)
				} else if pr == r {
					return s.errorAt(fmt.Sprintf("rank %d: %v talks to its own rank (adjacent stages on one rank pass buffers directly)", r, a), p)
				}
			}
		}
	}
	for st := range S {
		for mb := range M {
			for _, k := range []Kind{F, B} {
				if _, ok := seen[key{st, k, mb}]; !ok {
					return &Error{Reason: fmt.Sprintf("rank %d never runs %v", s.RankOf(st), Action{st, k, mb}), Grid: Grid(s, nil)}
				}
			}
		}
	}
	for k, p := range seen {
		if !k.kind.Comm() {
			continue
		}
		m := keyOf(Match(Action{k.stage, k.kind, k.mb}))
		if _, ok := seen[m]; !ok {
			return s.errorAt(fmt.Sprintf("%v has no matching %v on rank %d", Action{k.stage, k.kind, k.mb}, Action{m.stage, m.kind, m.mb}, s.RankOf(m.stage)), p)
		}
	}
	// Every transfer the compute needs must be in the lists.
	last := S - 1
	for k := range seen {
		r := s.RankOf(k.stage)
		var need key
		switch {
		case k.kind == F && k.stage > 0 && s.RankOf(k.stage-1) != r:
			need = key{k.stage, RecvF, k.mb}
		case k.kind == B && k.stage < last && s.RankOf(k.stage+1) != r:
			need = key{k.stage, RecvB, k.mb}
		default:
			continue
		}
		if _, ok := seen[need]; !ok {
			return s.errorAt(fmt.Sprintf("rank %d runs %v without %v", r, Action{k.stage, k.kind, k.mb}, Action{need.stage, need.kind, need.mb}), seen[k])
		}
	}
	return nil
}

func (s *Schedule) errorAt(reason string, ps ...Pos) *Error {
	return &Error{Reason: reason, Marked: ps, Grid: Grid(s, ps)}
}

// deadlock explains why no rank can move: each waiting rank, its action
// and what that action waits for.
func (s *Schedule) deadlock(pc []int) *Error {
	var lines []string
	var marks []Pos
	for r := range s.PP {
		if pc[r] >= len(s.Ranks[r]) {
			continue
		}
		a := s.Ranks[r][pc[r]]
		marks = append(marks, Pos{r, pc[r]})
		m := Match(a)
		mr := s.RankOf(m.Stage)
		where := "never reached"
		if i := slices.Index(s.Ranks[mr], m); i >= 0 {
			where = fmt.Sprintf("step %d of rank %d, which waits at step %d", i, mr, pc[mr])
		}
		lines = append(lines, fmt.Sprintf("rank %d waits at step %d, %v, for %v (%s)", r, pc[r], a, m, where))
	}
	return &Error{Reason: "deadlock: " + strings.Join(lines, "; "), Marked: marks, Grid: Grid(s, marks)}
}

// peakInFlight counts, along rank r's list, the stage activations held
// from each forward to the last backward pass of it.
func (s *Schedule) peakInFlight(r int, split []bool) int {
	live, peak := 0, 0
	for _, a := range s.Ranks[r] {
		switch {
		case a.Kind == F:
			live++
			peak = max(peak, live)
		case a.Kind == W, a.Kind == B && !split[a.Stage*s.Micro+a.MB]:
			live--
		}
	}
	return peak
}

// peakBuffered is the most messages a rank held between their arrival and
// the receive that took them.
func peakBuffered(spans []Span, done *table, comm float64) int {
	type ev struct {
		t float64
		d int
	}
	var evs []ev
	for _, sp := range spans {
		if sp.Action.Kind != RecvF && sp.Action.Kind != RecvB {
			continue
		}
		sent, _ := done.get(Match(sp.Action))
		arrive := sent + comm
		if arrive < sp.Start {
			evs = append(evs, ev{arrive, 1}, ev{sp.Start, -1})
		}
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].t != evs[j].t {
			return evs[i].t < evs[j].t
		}
		return evs[i].d < evs[j].d
	})
	n, peak := 0, 0
	for _, e := range evs {
		n += e.d
		peak = max(peak, n)
	}
	return peak
}

// splits marks, by stage·Micro + micro-batch, the backwards split into B
// and W.
func (s *Schedule) splits() []bool {
	split := make([]bool, s.Stages()*s.Micro)
	for _, as := range s.Ranks {
		for _, a := range as {
			if a.Kind == W {
				split[a.Stage*s.Micro+a.MB] = true
			}
		}
	}
	return split
}

// table holds a time per (stage, kind, micro-batch) of a checked
// schedule; NaN is unset.
type table struct {
	stages, micro int
	t             []float64
}

func newTable(s *Schedule) *table {
	tb := &table{stages: s.Stages(), micro: s.Micro, t: make([]float64, int(numKinds)*s.Stages()*s.Micro)}
	for i := range tb.t {
		tb.t[i] = math.NaN()
	}
	return tb
}

func (tb *table) at(a Action) int { return (int(a.Kind)*tb.stages+a.Stage)*tb.micro + a.MB }

func (tb *table) set(a Action, t float64) { tb.t[tb.at(a)] = t }

// get returns the time of a, false when unset or a lies outside the shape
// (a match past the first or last stage).
func (tb *table) get(a Action) (float64, bool) {
	if a.Stage < 0 || a.Stage >= tb.stages || a.MB < 0 || a.MB >= tb.micro || a.Kind >= numKinds {
		return 0, false
	}
	t := tb.t[tb.at(a)]
	return t, !math.IsNaN(t)
}
