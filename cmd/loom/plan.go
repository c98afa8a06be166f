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
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/zero"
)

func cmdPlan(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "plan", "JOB.yaml [flags]\n\n"+
		"Prints each worker's memory estimate under every ZeRO stage — model states\n"+
		"(parameters, gradients, AdamW moments), stage-2/3 working buffers, collective\n"+
		"staging, activations of one micro-batch and a runtime allowance — and says\n"+
		"which stages fit in --memory-per-worker. The spec's own stage is marked *.")
	workers := fs.Int("workers", 0, "number of workers (0: the spec's dp·tp·pp)")
	memFlag := fs.String("memory-per-worker", "", "memory of one worker, in bytes or with a unit (16GiB, 512MiB, 8GB); default: this machine's MemTotal")
	shards := fs.Bool("shards", false, "also print the spec stage's shard table (every rank's slice of every tensor)")
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
	p := spec.Parallel
	if *workers < 0 {
		return fmt.Errorf("plan: --workers %d: must be ≥ 1 (or 0 for the spec's %d)", *workers, p.WorldSize())
	}
	dp := p.DP
	if *workers > 0 {
		if *workers%(p.TP*p.PP) != 0 {
			return fmt.Errorf("plan: --workers %d: must be a multiple of parallel.tp·parallel.pp = %d", *workers, p.TP*p.PP)
		}
		dp = *workers / (p.TP * p.PP)
	}
	if dp != p.DP {
		// The batch must still split over the new data-parallel size.
		s := spec
		s.Parallel.DP = dp
		if err := s.Validate(); err != nil {
			return fmt.Errorf("plan: %s with --workers %d (parallel.dp = %d): %w", pos[0], *workers, dp, err)
		}
	}
	var budget int64
	if *memFlag != "" {
		if budget, err = parseBytes(*memFlag); err != nil {
			return fmt.Errorf("plan: --memory-per-worker: %w", err)
		}
	} else {
		budget = memTotal()
	}
	mc := checkpoint.ModelConfig(spec.Model)
	l, err := model.NewLayout(mc)
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	out := env.stdout
	fmt.Fprintf(out, "%s: %d parameters (Ψ), dp %d, micro-batch %d × %d tokens, float32\n", pos[0], l.Size, dp, spec.Train.MicroBatch, spec.Model.SeqLen)
	if p.TP*p.PP > 1 {
		fmt.Fprintf(out, "note: tp=%d pp=%d are not modelled; estimates assume each worker holds the whole model\n", p.TP, p.PP)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\tparams\tgrads\toptimizer\tworking\tcomm\tactivations\truntime\ttotal\tfits\t")
	var fit []string
	for s := zero.Stage0; s <= zero.Stage3; s++ {
		m, err := zero.Estimate(mc, dp, s, spec.Train.MicroBatch, spec.Model.SeqLen)
		if err != nil {
			return fmt.Errorf("plan: %w", err)
		}
		mark := ""
		if int(s) == p.Zero {
			mark = "*"
		}
		verdict := "?"
		if budget > 0 {
			verdict = "no"
			if m.Total() <= budget {
				verdict = "yes"
				fit = append(fit, strconv.Itoa(int(s)))
			}
		}
		fmt.Fprintf(tw, "%s%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", mark, s, mib(m.Params), mib(m.Grads), mib(m.Optimizer),
			mib(m.Working), mib(m.Comm), mib(m.Activations), mib(m.Runtime), mib(m.Total()), verdict)
	}
	tw.Flush()
	fmt.Fprintln(out, "(MiB per worker; working = stage-2/3 per-unit buffers: gathered parameters and unit gradients)")
	if dp == 1 {
		fmt.Fprintln(out, "with one data-parallel rank there is nothing to shard: every stage runs as stage 0")
	}
	switch {
	case budget <= 0:
		fmt.Fprintln(out, "memory per worker unknown: pass --memory-per-worker")
	case len(fit) == 0:
		// Said last, as the error: a script must not take this for a plan.
	default:
		fmt.Fprintf(out, "fits in %s per worker: stage %s\n", zero.MiB(budget), strings.Join(fit, ", "))
	}
	if *shards {
		plan, err := zero.NewPlan(l, dp, zero.Stage(p.Zero), 0)
		if err != nil {
			return fmt.Errorf("plan: %w", err)
		}
		fmt.Fprint(out, plan.String())
	}
	if budget > 0 && len(fit) == 0 {
		return fmt.Errorf("plan: no stage fits in %s per worker: add workers, shorten the micro-batch or shrink the model", zero.MiB(budget))
	}
	return nil
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
