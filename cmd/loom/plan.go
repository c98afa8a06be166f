package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/plan"
)

func cmdPlan(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "plan", "JOB.yaml [flags]\n\n"+
		"Lists the layouts of the job's model on --workers workers — dp × tp × pp,\n"+
		"ZeRO stage, sequence parallelism, micro-batch — with the predicted memory of\n"+
		"the largest rank (parameters, gradients, AdamW moments, ZeRO working buffers,\n"+
		"collective and pipeline message buffers, activations of the micro-batches the\n"+
		"pipeline schedule keeps in flight, a runtime allowance), the bytes each rank\n"+
		"sends per step and the predicted pipeline bubble (the job's parallel.schedule,\n"+
		"stage costs estimated in FLOPs; `loom schedule` shows where it is), marks\n"+
		"those that fit in --memory-per-worker, the one Loom recommends (*) and the\n"+
		"spec's own (=). --show-ranks prints the spec's plan: its stages, every\n"+
		"rank's coordinates and groups, each (pp, tp) rank's local layout and its\n"+
		"ZeRO partition.")
	workers := fs.Int("workers", 0, "number of workers (0: the spec's dp·tp·pp)")
	memFlag := fs.String("memory-per-worker", "", "memory of one worker, in bytes or with a unit (16GiB, 512MiB, 8GB); default: this machine's MemTotal")
	showRanks := fs.Bool("show-ranks", false, "also print the spec's plan rank by rank: coordinates, groups, local layouts, ZeRO shards")
	all := fs.Bool("all", false, "list layouts that do not fit too")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("plan: need exactly one JOB.yaml")
	}
	spec, err := api.LoadSpec(pos[0])
	if err != nil {
		return err
	}
	if *workers < 0 {
		return fmt.Errorf("plan: --workers %d: must be ≥ 1 (or 0 for the spec's %d)", *workers, spec.Parallel.WorldSize())
	}
	n := *workers
	if n == 0 {
		n = spec.Parallel.WorldSize()
	}
	var budget int64
	if *memFlag != "" {
		if budget, err = parseBytes(*memFlag); err != nil {
			return fmt.Errorf("plan: --memory-per-worker: %w", err)
		}
	} else {
		budget = memTotal()
	}
	cands, err := plan.Candidates(spec, n, budget)
	if err != nil {
		return fmt.Errorf("plan: %s with --workers %d: %w", pos[0], n, err)
	}
	best := plan.Recommend(cands)
	out := env.stdout
	mc := plan.ModelConfig(spec.Model)
	fmt.Fprintf(out, "%s: %d parameters (Ψ), %d workers, global batch %d × %d tokens, float32; memory per worker %s\n",
		pos[0], mc.NumParams(), n, spec.Train.GlobalBatch, spec.Model.SeqLen, budgetString(budget))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tdp\ttp\tpp\tzero\tsp\tmicro\tparams\tgrads\toptimizer\tworking\tcomm\tactivations\truntime\ttotal\tsent/step\tbubble\tfits\t")
	shown := 0
	for i, c := range cands {
		if !c.Fits && !*all {
			continue
		}
		shown++
		mark := ""
		if i == best {
			mark = "*"
		}
		p := c.Spec.Parallel
		if p.DP == spec.Parallel.DP && p.TP == spec.Parallel.TP && p.PP == spec.Parallel.PP && p.Zero == spec.Parallel.Zero && c.Spec.Train.MicroBatch == spec.Train.MicroBatch &&
			(p.SequenceParallel == spec.Parallel.SequenceParallel || p.TP == 1) && n == spec.Parallel.WorldSize() {
			mark += "="
		}
		m := c.Memory
		sp := "-"
		if p.TP > 1 {
			sp = map[bool]string{false: "off", true: "on"}[p.SequenceParallel]
		}
		verdict := "yes"
		if !c.Fits {
			verdict = "no"
		}
		bubble := "-"
		if p.PP > 1 {
			bubble = fmt.Sprintf("%.1f%%", 100*c.Bubble)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", mark, p.DP, p.TP, p.PP, p.Zero, sp, c.Spec.Train.MicroBatch,
			mib(m.Params), mib(m.Grads), mib(m.Optimizer), mib(m.Working), mib(m.Comm), mib(m.Activations), mib(m.Runtime), mib(m.Total()),
			mib(c.Comm.Total()), bubble, verdict)
	}
	tw.Flush()
	fmt.Fprintf(out, "(MiB per worker, the largest rank; working = ZeRO-2/3 unit buffers; activations = the micro-batches in flight; sent/step = MiB each rank sends per step, ring algorithms; bubble = idle share of a pipelined step under the %s schedule)\n", spec.Parallel.Schedule)
	if best >= 0 {
		c := cands[best]
		p := c.Spec.Parallel
		fmt.Fprintf(out, "recommended (*): dp %d, tp %d, pp %d, zero %d, micro_batch %d%s — the smallest tp, then the smallest pp, then the lowest ZeRO stage, then the smallest bubble and the largest micro-batch that fits\n",
			p.DP, p.TP, p.PP, p.Zero, c.Spec.Train.MicroBatch, spSuffix(p.SequenceParallel && p.TP > 1))
	} else {
		small := cands[0]
		for _, c := range cands {
			if c.Memory.Total() < small.Memory.Total() {
				small = c
			}
		}
		p := small.Spec.Parallel
		fmt.Fprintf(out, "no layout fits; the smallest needs %s (dp %d, tp %d, pp %d, zero %d, micro_batch %d)\n",
			plan.MiB(small.Memory.Total()), p.DP, p.TP, p.PP, p.Zero, small.Spec.Train.MicroBatch)
	}
	if shown == 0 && best < 0 {
		fmt.Fprintln(out, "(pass --all to list the layouts that do not fit)")
	}
	if *showRanks {
		pl, err := plan.New(spec, spec.Parallel.WorldSize())
		if err != nil {
			return fmt.Errorf("plan: %w", err)
		}
		fmt.Fprint(out, "\n"+pl.String())
	}
	if best < 0 {
		// Said last, as the error: a script must not take the table for a plan.
		return fmt.Errorf("plan: no layout of %d workers fits in %s per worker: add workers, shorten the micro-batch or shrink the model", n, plan.MiB(budget))
	}
	return nil
}

func spSuffix(sp bool) string {
	if sp {
		return ", sequence_parallel"
	}
	return ""
}

func budgetString(b int64) string {
	if b <= 0 {
		return "unknown (pass --memory-per-worker)"
	}
	return plan.MiB(b)
}

func mib(n int64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<20)) }

// parseBytes parses "123", "123B", "16GiB", "512MiB", "8GB", "1.5TiB".
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{
		{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
		{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1},
	}
	num, mult := strings.TrimSpace(s), 1.0
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || !(v > 0) || v*mult > 1<<62 {
		return 0, fmt.Errorf("%q: want a positive size in bytes, optionally with a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)", s)
	}
	return int64(v * mult), nil
}

// memTotal is this machine's MemTotal from /proc/meminfo, or 0.
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if n, _ := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); n == 1 {
			return kb << 10
		}
	}
	return 0
}
