package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/launch"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/schedule"
	"github.com/loomtrain/loom/train"
)

// stageCut is the blocks per stage of a plan.
func stageCut(p *plan.Plan) []int {
	var cut []int
	for _, st := range p.Stages {
		cut = append(cut, st.Blocks())
	}
	return cut
}

func cmdVerify(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "verify", "JOB.yaml [flags]\n\n"+
		"Proves the job's parallel layout computes what one worker computes: trains\n"+
		"--steps steps with the layout (world size > 1: one local worker process per\n"+
		"rank over real sockets, as `loom run` does) and, from the same initial weights\n"+
		"and data, with one worker, then prints a per-step table of the loss and the\n"+
		"gradient norm of both and their relative difference. Exits non-zero, naming\n"+
		"the first diverging step, when a step differs by more than --tolerance.\n"+
		"Checkpoints and final models of both runs go to a temporary directory.")
	steps := fs.Int("steps", 10, "optimizer steps to compare")
	tol := fs.Float64("tolerance", 1e-5, "largest relative difference of loss or grad norm allowed at any step")
	threads := fs.Int("threads", 0, "kernel threads of the one-worker run (0: all cores); each worker of the layout gets cores ÷ workers")
	logFormat := fs.String("log-format", "text", "output: text (a table), or json (one object per step, then a summary object)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("verify: need exactly one JOB.yaml")
	}
	if *steps < 1 || !(*tol > 0) {
		return fmt.Errorf("verify: --steps %d and --tolerance %g: both must be > 0", *steps, *tol)
	}
	if *logFormat != "text" && *logFormat != "json" {
		return fmt.Errorf("verify: --log-format %q: allowed: text, json", *logFormat)
	}
	spec, err := api.LoadSpec(pos[0])
	if err != nil {
		return err
	}
	if err := api.Supported(spec, pos[0]); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	tmp, err := os.MkdirTemp("", "loom-verify-")
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	defer os.RemoveAll(tmp)
	spec.Train.Steps = *steps
	spec.Train.WarmupSteps = min(spec.Train.WarmupSteps, *steps)
	spec.Checkpoint.Dir, spec.Checkpoint.Every = tmp, 0
	one := spec
	one.Name = spec.Name + "-one"
	// The reference: one worker, the plain accumulation loop (1F1B at pp 1).
	one.Parallel = api.ParallelSpec{DP: 1, TP: 1, PP: 1, Schedule: schedule.OneFOneB, VirtualStages: 1, Transport: spec.Parallel.Transport}
	layout := spec
	layout.Name = spec.Name + "-layout"
	p, err := plan.New(layout, layout.Parallel.WorldSize())
	if err != nil {
		return fmt.Errorf("verify: %s: %w", pos[0], err)
	}
	desc := fmt.Sprintf("%s, zero %d", p.Mesh, p.ZeroStage)
	if p.SequenceParallel {
		desc += ", sequence parallel"
	}
	if p.Mesh.PP > 1 {
		desc += fmt.Sprintf(", %s over %d stages %v, %d micro-batches", p.Schedule.Name, len(p.Stages), stageCut(p), p.Accum)
	}
	if p.Recompute {
		desc += ", recompute"
	}
	fmt.Fprintf(env.stderr, "loom verify: %d steps of %s with the layout %s, then with one worker\n", *steps, pos[0], desc)
	got, err := verifyRun(ctx, env, layout, *threads)
	if err != nil {
		return fmt.Errorf("verify: the layout %s: %w", desc, err)
	}
	want, err := verifyRun(ctx, env, one, *threads)
	if err != nil {
		return fmt.Errorf("verify: one worker: %w", err)
	}
	return verifyReport(env, desc, got, want, *tol, *logFormat == "json")
}

// stepRecord is one step's loss and gradient norm.
type stepRecord struct {
	Step     int     `json:"step"`
	Loss     float64 `json:"loss"`
	GradNorm float64 `json:"grad_norm"`
}

// verifyRun trains spec and returns its steps: in this process for world
// size 1, else through launch.Local (worker processes, real sockets).
func verifyRun(ctx context.Context, env *cmdEnv, spec api.JobSpec, threads int) ([]stepRecord, error) {
	var out []stepRecord
	if spec.Parallel.WorldSize() == 1 {
		k, closeK, err := newTrainKernels(threads, spec)
		if err != nil {
			return nil, err
		}
		defer closeK()
		_, err = train.RunRank(ctx, train.RankConfig{Spec: spec, Job: spec.Name, Generation: 1, Kernels: k}, func(s train.Stats) {
			out = append(out, stepRecord{Step: s.Step, Loss: s.Loss, GradNorm: s.GradNorm})
		})
		return out, err
	}
	var progress, workers bytes.Buffer
	err := launch.Local(ctx, spec, launch.Options{Source: spec.Name, Progress: &progress, JSON: true, Info: io.Discard, WorkerOutput: &workers})
	if err != nil {
		// The workers' own words say why; they are quiet when all goes well.
		io.Copy(&prefixWriter{w: env.stderr, prefix: "  "}, &workers)
	}
	sc := bufio.NewScanner(&progress)
	for sc.Scan() {
		var r struct {
			Step *int `json:"step"`
			stepRecord
		}
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Step != nil {
			r.stepRecord.Step = *r.Step
			out = append(out, r.stepRecord)
		}
	}
	return out, err
}

// verifyReport prints both runs side by side and returns an error naming
// the first step whose loss or grad norm differs by more than tol.
func verifyReport(env *cmdEnv, desc string, got, want []stepRecord, tol float64, asJSON bool) error {
	rel := func(a, b float64) float64 {
		if a == b {
			return 0
		}
		return math.Abs(a-b) / math.Max(math.Abs(b), 1e-30)
	}
	first, worst := 0, 0.0
	var firstWhat string
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	if !asJSON {
		fmt.Fprintf(env.stdout, "layout: %s\n", desc)
		fmt.Fprintf(tw, "step\tloss (layout)\tloss (1 worker)\trel diff\tgrad norm (layout)\tgrad norm (1 worker)\trel diff\t\t\n")
	}
	n := max(len(got), len(want))
	for i := range n {
		if i >= len(got) || i >= len(want) {
			if first == 0 {
				first, firstWhat = i+1, fmt.Sprintf("only one run reached it (layout %d steps, one worker %d)", len(got), len(want))
			}
			continue
		}
		g, w := got[i], want[i]
		dl, dn := rel(g.Loss, w.Loss), rel(g.GradNorm, w.GradNorm)
		worst = math.Max(worst, math.Max(dl, dn))
		mark := ""
		if (dl > tol || dn > tol || g.Step != w.Step) && first == 0 {
			first, mark = g.Step, "← first divergence"
			firstWhat = fmt.Sprintf("loss differs by %.2g, grad norm by %.2g (relative; tolerance %g)", dl, dn, tol)
		}
		if asJSON {
			b, _ := json.Marshal(map[string]any{"step": g.Step, "loss": g.Loss, "loss_one_worker": w.Loss, "loss_rel_diff": dl,
				"grad_norm": g.GradNorm, "grad_norm_one_worker": w.GradNorm, "grad_norm_rel_diff": dn})
			fmt.Fprintf(env.stdout, "%s\n", b)
			continue
		}
		fmt.Fprintf(tw, "%d\t%.7f\t%.7f\t%.1e\t%.7f\t%.7f\t%.1e\t%s\t\n", g.Step, g.Loss, w.Loss, dl, g.GradNorm, w.GradNorm, dn, mark)
	}
	tw.Flush()
	if n == 0 {
		return errors.New("verify: neither run reported a step")
	}
	ok := first == 0
	if asJSON {
		b, _ := json.Marshal(map[string]any{"layout": desc, "steps": n, "max_rel_diff": worst, "tolerance": tol, "ok": ok, "first_diverging_step": first})
		fmt.Fprintf(env.stdout, "%s\n", b)
	}
	if !ok {
		return fmt.Errorf("verify: the layout %s diverges from one worker at step %d: %s", desc, first, firstWhat)
	}
	if !asJSON {
		fmt.Fprintf(env.stdout, "ok: the layout %s reproduces one worker over %d steps (largest relative difference %.1e ≤ %g)\n", desc, n, worst, tol)
	}
	return nil
}

// prefixWriter indents every line written to w.
type prefixWriter struct {
	w      io.Writer
	prefix string
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var sb strings.Builder
	for _, c := range string(b) {
		if !p.mid {
			sb.WriteString(p.prefix)
			p.mid = true
		}
		sb.WriteRune(c)
		if c == '\n' {
			p.mid = false
		}
	}
	if _, err := io.WriteString(p.w, sb.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}
