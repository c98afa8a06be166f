package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/tensor/gemm"
	"github.com/loomtrain/loom/train"
)

// cmdBenchStep measures full training steps (forward, backward, clipping,
// AdamW) of a job's model and batch on this machine.
//
// FLOPs per token follow PaLM's appendix B: 6·N + 12·L·d·T, with N the
// matmul weights (LM head included, input embedding excluded), L layers,
// d = n_heads·head_dim and T = seq_len (model.Config.TrainFLOPsPerToken).
// MFU divides the achieved FLOP/s by the peak measured here and now with an
// FMA loop on the same number of threads (gemm.MeasurePeak), not a
// datasheet figure: the larger of a measurement before the steps and one
// after them. On a shared VM one 0.5 s reading can come out 10–15% low
// (another guest's burst, a clock dip), which would overstate the MFU by
// as much; the hardware's limit is the higher reading.
func cmdBenchStep(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "bench step", "JOB.yaml [flags]\n\n"+
		"Times training steps of the job's model and batch (world size 1) and prints\n"+
		"tokens/s, achieved TFLOP/s and MFU against the FMA peak measured on this machine\n"+
		"(the higher of a reading before and one after the steps).\n"+
		"FLOPs per token: 6·N + 12·n_layers·dim·seq_len (N: matmul weights incl. LM head).\n"+
		"--precision bf16 runs the GEMMs on bf16-rounded inputs (float32 accumulation and\n"+
		"master weights); its MFU is against the bf16 peak measured in the same run.\n"+
		"Uses the spec's data.path when it exists, else random tokens.")
	threads := fs.Int("threads", 0, "kernel threads (0: all cores)")
	steps := fs.Int("steps", 10, "timed steps")
	warmup := fs.Int("warmup", 2, "untimed steps first")
	logFormat := fs.String("log-format", "text", "text, or json (one object per measurement)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the timed steps to FILE (go tool pprof)")
	precFlag := fs.String("precision", "", "GEMM precision: fp32 or bf16 (default: the spec's train.precision)")
	breakdown := fs.Bool("breakdown", false, "also print the time per kernel op (GEMMs per shape) in the timed steps")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *steps < 1 || *warmup < 0 {
		fs.Usage()
		return errors.New("bench step: need one JOB.yaml, --steps ≥ 1, --warmup ≥ 0")
	}
	if *logFormat != "text" && *logFormat != "json" {
		return fmt.Errorf("bench step: --log-format %q: allowed: text, json", *logFormat)
	}
	spec, err := api.LoadSpec(pos[0])
	if err != nil {
		return err
	}
	spec.Parallel = api.DefaultSpec().Parallel
	spec.Train.Steps = *steps + *warmup
	spec.Train.MicroBatch = spec.Train.GlobalBatch
	nthreads := *threads
	if nthreads <= 0 {
		nthreads = runtime.NumCPU()
	}
	if *precFlag == "" {
		*precFlag = spec.Train.Precision
	}
	prec, err := gemm.ParsePrecision(*precFlag)
	if err != nil {
		return fmt.Errorf("bench step: --precision: %w", err)
	}
	// Measure the peak before the kernels' worker pool exists, so nothing
	// else competes for the cores while the FMA loop runs.
	peak := gemm.MeasurePeakPrecision(prec, nthreads, 500*time.Millisecond) * 1e9
	fk, err := newKernelsPrecision(nthreads, prec.String())
	if err != nil {
		return fmt.Errorf("bench step: %w", err)
	}
	defer fk.Close()
	var k tensor.Kernels = fk
	var timed *timedKernels
	if *breakdown {
		timed = newTimedKernels(fk)
		k = timed
	}

	path := spec.Data.SourceList()[0].Path // a blend is timed on its first source
	spec.Data.Path, spec.Data.Sources = path, nil
	if _, err := os.Stat(path); err != nil {
		path, err = randomTokens(env, spec)
		if err != nil {
			return fmt.Errorf("bench step: %w", err)
		}
		defer os.RemoveAll(filepath.Dir(path))
		spec.Data.Path = path
	}
	f, err := data.Open(path)
	if err != nil {
		return fmt.Errorf("bench step: %w", err)
	}
	defer f.Close()
	loader, err := data.NewLoader(f, data.LoaderConfig{SeqLen: spec.Model.SeqLen, Shuffle: true, Seed: 1})
	if err != nil {
		return fmt.Errorf("bench step: %w", err)
	}
	tr, err := train.New(train.Config{Spec: spec, Kernels: k, Loader: loader})
	if err != nil {
		return fmt.Errorf("bench step: %w", err)
	}
	var times, cpus []float64 // wall and process CPU seconds per timed step
	for i := 0; i < *steps+*warmup; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if i == *warmup && timed != nil {
			timed.reset()
		}
		if i == *warmup && *cpuProfile != "" { // profile the timed steps only
			stop, err := startCPUProfile(*cpuProfile)
			if err != nil {
				return fmt.Errorf("bench step: %w", err)
			}
			defer stop()
		}
		cpu0 := processCPU()
		st, err := tr.Step(ctx)
		if err != nil {
			return fmt.Errorf("bench step: %w", err)
		}
		if i >= *warmup {
			times = append(times, st.StepSeconds)
			cpus = append(cpus, processCPU()-cpu0)
		}
	}
	peakBefore := peak
	peakAfter := gemm.MeasurePeakPrecision(prec, nthreads, 500*time.Millisecond) * 1e9
	peak = max(peakBefore, peakAfter)
	eng := fk.GEMM()
	_, _, mc, kc, nc := eng.Blocks()
	sort.Float64s(times)
	sort.Float64s(cpus)
	med, medCPU := times[len(times)/2], cpus[len(cpus)/2]
	tokens := float64(spec.Train.GlobalBatch * spec.Model.SeqLen)
	tps := tokens / med
	cfg := checkpoint.ModelConfig(spec.Model)
	flops := cfg.TrainFLOPsPerToken(spec.Model.SeqLen) * tps
	if *logFormat == "json" {
		b, _ := json.Marshal(map[string]any{
			"job": spec.Name, "threads": nthreads, "tokens_per_sec": tps, "tflops": flops / 1e12,
			"mfu": flops / peak, "peak_tflops": peak / 1e12,
			"peak_tflops_before": peakBefore / 1e12, "peak_tflops_after": peakAfter / 1e12, "step_s_p50": med, "step_cpu_s_p50": medCPU,
			"flops_per_token": cfg.TrainFLOPsPerToken(spec.Model.SeqLen),
			"precision":       prec.String(), "kernel": eng.Kernel(), "mc": mc, "kc": kc, "nc": nc,
			"tuning": eng.TuneStatus(), "plans": eng.Plans(), "amx": gemm.AMXStatus(),
		})
		fmt.Fprintf(env.stdout, "%s\n", b)
		return nil
	}
	fmt.Fprintf(env.stdout, "%s: %d threads, %s GEMMs, %d tokens/step, median step %.1f ms: %.0f tokens/s, %.3f TFLOP/s, MFU %.1f%% of the measured %s peak %.0f GFLOP/s (before / after the steps: %.0f / %.0f; %.2f MFLOP/token)\n",
		spec.Name, nthreads, prec, int(tokens), med*1e3, tps, flops/1e12, 100*flops/peak, prec, peak/1e9, peakBefore/1e9, peakAfter/1e9, cfg.TrainFLOPsPerToken(spec.Model.SeqLen)/1e6)
	fmt.Fprintf(env.stdout, "CPU time per step (all threads) %.1f ms: %.0f%% of %d threads × the median step\n", medCPU*1e3, 100*medCPU/(med*float64(nthreads)), nthreads)
	fmt.Fprintf(env.stdout, "kernel %s, default blocks MC=%d KC=%d NC=%d; %s\n", eng.Kernel(), mc, kc, nc, eng.TuneStatus())
	if prec == gemm.BF16 {
		fmt.Fprintf(env.stdout, "%s\n", gemm.AMXStatus())
	}
	for _, sp := range eng.Plans() {
		fmt.Fprintf(env.stdout, "  %-22s %-15s MC=%-5d KC=%-4d NC=%-5d grid %s\n", sp.Shape, sp.Kernel, sp.MC, sp.KC, sp.NC, sp.Grid())
	}
	if timed != nil {
		var sum float64
		for _, t := range times {
			sum += t
		}
		timed.print(env.stdout, len(times), sum/float64(len(times)))
	}
	return nil
}

// randomTokens writes a token file of uniformly random byte tokens in a
// temporary directory, for benchmarking without a prepared corpus.
func randomTokens(env *cmdEnv, spec api.JobSpec) (string, error) {
	dir, err := os.MkdirTemp("", "loom-bench-")
	if err != nil {
		return "", err
	}
	n := (spec.Train.GlobalBatch*(spec.Train.Steps+1) + 1) * (spec.Model.SeqLen + 1)
	src := filepath.Join(dir, "random.txt")
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(32 + r.IntN(95))
	}
	if err := os.WriteFile(src, b, 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "random.bin")
	if _, _, err := data.Prep(context.Background(), data.PrepConfig{Inputs: []string{src}, Out: out, Workers: 1}); err != nil {
		return "", err
	}
	fmt.Fprintf(env.stderr, "bench step: %s not found; using %d random tokens\n", spec.Data.Path, n)
	return out, nil
}
