package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"text/tabwriter"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/schedule"
	"github.com/loomtrain/loom/timeline"
)

func cmdSchedule(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "schedule", "[JOB.yaml] [flags]\n\n"+
		"Prints a pipeline schedule without running anything: every rank's actions\n"+
		"(F3 forward, B3 backward — the input gradient only when a W3 follows —, W3\n"+
		"weight gradients, SEND_/RECV_ of activations (F) and gradients (B), each\n"+
		"prefixed with its stage) as a rank × step grid, the simulated rank × time\n"+
		"chart, and per rank its busy time, bubble, the most micro-batches whose\n"+
		"activations it holds at once and the receive buffers it needs under any\n"+
		"timing. The simulator proves the schedule deadlock-free first.\n"+
		"With JOB.yaml the shape comes from the job's plan (pp, parallel.schedule,\n"+
		"virtual_stages, micro-batches = global_batch ÷ (micro_batch × dp)) and the\n"+
		"costs from its stages' estimated FLOPs; flags override either.\n"+
		"--timeline FILE (a run's timeline.json, or one rank's Chrome trace) measures\n"+
		"that step instead: the bubble, each stage's mean F, B and W, and the\n"+
		"simulator's prediction for those durations beside it.")
	pp := fs.Int("pp", 0, "pipeline ranks (default: the job's, else 4)")
	micro := fs.Int("micro-batches", 0, "micro-batches per step (default: the job's, else 8)")
	name := fs.String("schedule", "", "schedule: gpipe, 1f1b, interleaved-1f1b or zb-h1 (default: the job's, else 1f1b)")
	virtual := fs.Int("virtual-stages", 0, "stages per rank, interleaved-1f1b only (default: the job's, else 1)")
	costF := fs.Float64("cost-f", 0, "duration of a stage's forward (default: the job's estimate, else 1)")
	costB := fs.Float64("cost-b", 0, "duration of a stage's input-gradient pass (a backward not split into B and W costs B+W) (default: the job's estimate, else 1)")
	costW := fs.Float64("cost-w", 0, "duration of a stage's weight-gradient pass (default: the job's estimate, else 1)")
	comm := fs.Float64("comm", 0, "latency of one message between ranks, in the same unit")
	format := fs.String("format", "text", "output: text, or json (the action lists and the simulated figures)")
	trace := fs.String("timeline", "", "a run's timeline (Chrome trace `FILE`, e.g. checkpoint.dir/NAME/timeline.json): measure its bubble and simulate its measured pass durations")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		fs.Usage()
		return errors.New("schedule: at most one JOB.yaml")
	}
	if *format != "text" && *format != "json" {
		return fmt.Errorf("schedule: --format %q: allowed: text, json", *format)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, f := range []struct {
		name string
		v    float64
	}{{"cost-f", *costF}, {"cost-b", *costB}, {"cost-w", *costW}} {
		if set[f.name] && (!(f.v > 0) || math.IsInf(f.v, 0)) {
			return fmt.Errorf("schedule: --%s %g: must be a positive number", f.name, f.v)
		}
	}
	if *comm < 0 || math.IsNaN(*comm) {
		return fmt.Errorf("schedule: --comm %g: must be ≥ 0", *comm)
	}
	shape := struct {
		name        string
		pp, v, m    int
		costs       *schedule.Costs
		costsSource string
	}{name: schedule.OneFOneB, pp: 4, v: 1, m: 8, costsSource: "F, B and W given"}
	if len(pos) == 1 {
		spec, err := api.LoadSpec(pos[0])
		if err != nil {
			return err
		}
		p, err := plan.New(spec, spec.Parallel.WorldSize())
		if err != nil {
			return fmt.Errorf("schedule: %s: %w", pos[0], err)
		}
		shape.name, shape.pp, shape.v, shape.m = p.Schedule.Name, p.Mesh.PP, p.Schedule.Virtual, p.Accum
		c := p.SimCosts()
		shape.costs, shape.costsSource = &c, fmt.Sprintf("the stages' estimated FLOPs (%s), in units of the first stage's forward", pos[0])
	}
	if set["schedule"] {
		shape.name = *name
	}
	if set["pp"] {
		shape.pp = *pp
	}
	if set["micro-batches"] {
		shape.m = *micro
	}
	if set["virtual-stages"] {
		shape.v = *virtual
	}
	s, err := schedule.For(shape.name, shape.pp, shape.v, shape.m)
	if err != nil {
		return err
	}
	costs := schedule.Uniform(s.Stages(), 1, 1, 1, *comm)
	if shape.costs != nil && len(shape.costs.F) == s.Stages() {
		unit := shape.costs.F[0]
		for i := range s.Stages() {
			costs.F[i], costs.B[i], costs.W[i] = shape.costs.F[i]/unit, shape.costs.B[i]/unit, shape.costs.W[i]/unit
		}
	} else {
		shape.costsSource = "F, B and W given (default 1)"
	}
	for i := range s.Stages() {
		if set["cost-f"] {
			costs.F[i] = *costF
		}
		if set["cost-b"] {
			costs.B[i] = *costB
		}
		if set["cost-w"] {
			costs.W[i] = *costW
		}
	}
	var measured *timeline.Stats
	if *trace != "" {
		b, err := os.ReadFile(*trace)
		if err != nil {
			return fmt.Errorf("schedule: --timeline: %w", err)
		}
		if measured, err = timeline.Analyze(b); err != nil {
			return fmt.Errorf("schedule: --timeline %s: %w", *trace, err)
		}
		for i := range s.Stages() {
			f, ok := measured.Mean["F"][i]
			if !ok {
				return fmt.Errorf("schedule: --timeline %s has no forward of stage %d: is it a run of this schedule (%s, pp %d, %d virtual stages)?", *trace, i, s.Name, s.PP, s.Virtual)
			}
			costs.F[i], costs.B[i], costs.W[i] = f.Seconds()*1e3, measured.Mean["B"][i].Seconds()*1e3, measured.Mean["W"][i].Seconds()*1e3
		}
		shape.costsSource = fmt.Sprintf("the mean passes measured in %s, in ms", *trace)
	}
	res, err := schedule.Simulate(s, costs)
	if err != nil {
		return err
	}
	buffers := make([]int, s.PP)
	for r := range s.PP {
		for src := range s.PP {
			buffers[r] += s.Buffers(r, src)
		}
	}
	if *format == "json" {
		type rankOut struct {
			Rank         int      `json:"rank"`
			Stages       []int    `json:"stages"`
			Actions      []string `json:"actions"`
			Busy         float64  `json:"busy"`
			Bubble       float64  `json:"bubble"`
			PeakInFlight int      `json:"peak_in_flight"`
			RecvBuffers  int      `json:"recv_buffers"`
		}
		out := struct {
			Schedule string    `json:"schedule"`
			PP       int       `json:"pp"`
			Virtual  int       `json:"virtual_stages"`
			Micro    int       `json:"micro_batches"`
			Makespan float64   `json:"makespan"`
			Bubble   float64   `json:"bubble"`
			Ranks    []rankOut `json:"ranks"`
		}{s.Name, s.PP, s.Virtual, s.Micro, res.Makespan, res.Bubble, nil}
		for r, as := range s.Ranks {
			ro := rankOut{Rank: r, Stages: s.StagesOf(r), Busy: res.Busy[r], Bubble: res.RankBubble[r], PeakInFlight: res.PeakInFlight[r], RecvBuffers: buffers[r]}
			for _, a := range as {
				ro.Actions = append(ro.Actions, a.String())
			}
			out.Ranks = append(out.Ranks, ro)
		}
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "%s\n", b)
		return nil
	}
	w := env.stdout
	fmt.Fprintf(w, "%s: %d ranks × %d stage(s) each, %d micro-batches; no deadlock (simulated)\n", s.Name, s.PP, s.Virtual, s.Micro)
	fmt.Fprintf(w, "costs per stage: %s", shape.costsSource)
	if s.Stages() <= 8 {
		fmt.Fprint(w, ":")
		for i := range s.Stages() {
			fmt.Fprintf(w, " [%d] F %.3g B %.3g W %.3g", i, costs.F[i], costs.B[i], costs.W[i])
		}
	}
	fmt.Fprintf(w, "; message latency %g\n\nactions, rank × step:\n%s\n", *comm, schedule.Grid(s, nil))
	fmt.Fprintf(w, "simulated, rank × time (one column per %s):\n%s\n", unitName(res), schedule.Timeline(s, res, 0))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "rank\tstages\tbusy\tbubble\tpeak in flight\treceive buffers\t")
	for r := range s.PP {
		fmt.Fprintf(tw, "%d\t%v\t%.4g\t%.1f%%\t%d\t%d\t\n", r, s.StagesOf(r), res.Busy[r], 100*res.RankBubble[r], res.PeakInFlight[r], buffers[r])
	}
	tw.Flush()
	fmt.Fprintf(w, "predicted bubble %.1f%%: %.4g of %d × %.4g rank-time units idle (peak in flight: micro-batches whose activations a rank holds at once; receive buffers: messages it may hold before their receive, under any timing)\n",
		100*res.Bubble, res.Bubble*float64(s.PP)*res.Makespan, s.PP, res.Makespan)
	if measured != nil {
		fmt.Fprintf(w, "measured bubble %.1f%% over %d ranks' compute span of %v (%+.1f points from the prediction for these durations)\n",
			100*measured.Bubble, measured.Ranks, measured.Span.Round(time.Microsecond), 100*(measured.Bubble-res.Bubble))
	}
	return nil
}

// unitName names the time unit of the chart Timeline(…, 0) prints.
func unitName(res *schedule.Result) string {
	unit := math.Inf(1)
	for _, spans := range res.Spans {
		for _, sp := range spans {
			if d := sp.End - sp.Start; sp.Action.Kind.Compute() && d > 0 {
				unit = math.Min(unit, d)
			}
		}
	}
	return fmt.Sprintf("%.3g time units, the shortest pass", unit)
}
