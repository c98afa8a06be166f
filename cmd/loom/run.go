package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/internal/human"
	"github.com/loomtrain/loom/launch"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/train"
)

func cmdRun(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "run", "JOB.yaml [flags]\n\n"+
		"Trains the job the spec describes. World size 1 (dp·tp·pp = 1) runs in this\n"+
		"process; a larger world size starts an embedded etcd, a coordinator and one\n"+
		"local worker process per rank (threads per worker: cores ÷ workers unless\n"+
		"--threads is set). Prints live progress, saves the final model under\n"+
		"checkpoint.dir/NAME/final (a Hugging Face LLaMA directory) and a sample.")
	logFormat := fs.String("log-format", "text", "progress format: text, or json (one object per step)")
	threads := fs.Int("threads", 0, "kernel threads (0: all cores)")
	initDir := fs.String("init", "", "start from the weights of a Hugging Face LLaMA `DIR` (config.json + model.safetensors)")
	sampleTokens := fs.Int("sample-tokens", 200, "tokens of text to generate after training (0: none)")
	prompt := fs.String("prompt", "func ", "prompt of the final sample")
	resume := fs.String("resume", "", "continue from a checkpoint: `latest` (the newest complete one under checkpoint.dir/NAME; newer broken ones are skipped with a warning) or a step directory")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("run: need exactly one JOB.yaml")
	}
	if *logFormat != "text" && *logFormat != "json" {
		return fmt.Errorf("run: --log-format %q: allowed: text, json", *logFormat)
	}
	spec, err := api.LoadSpec(pos[0])
	if err != nil {
		return err
	}
	if _, err := plan.New(spec, spec.Parallel.WorldSize()); err != nil {
		return fmt.Errorf("run: %s: %w", pos[0], err)
	}
	if *initDir != "" && *resume != "" {
		return errors.New("run: --init and --resume exclude each other: --resume restores the weights and the optimizer")
	}
	if w := spec.Parallel.WorldSize(); w != 1 {
		if *initDir != "" {
			return errors.New("run: --init is supported only for world size 1 so far")
		}
		if *resume != "" {
			if err := checkResumable(env, spec, *resume); err != nil {
				return fmt.Errorf("run: --resume %s: %w", *resume, err)
			}
		}
		src, err := os.ReadFile(pos[0])
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		fmt.Fprintf(env.stderr, "loom: job %q: world size %d: starting embedded etcd, a coordinator and %d local workers\n", spec.Name, w, w)
		if err := launch.Local(ctx, spec, launch.Options{SpecYAML: src, Source: pos[0], ThreadsPerWorker: *threads,
			Progress: env.stdout, JSON: *logFormat == "json", WorkerOutput: env.stderr, Resume: *resume}); err != nil {
			return fmt.Errorf("run: %w", err)
		}
		dir := filepath.Join(spec.Checkpoint.Dir, spec.Name, "final")
		fmt.Fprintf(env.stderr, "loom: saved the final model to %s\n", dir)
		if *sampleTokens > 0 && *logFormat == "text" {
			k, closeK := newKernels(*threads)
			defer closeK()
			m, err := checkpoint.LoadModel(dir, k, 0)
			if err != nil {
				return fmt.Errorf("run: sample: %w", err)
			}
			return printSample(env, m, *prompt, *sampleTokens)
		}
		return nil
	}
	k, closeK := newKernels(*threads)
	defer closeK()
	src, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	prog, err := train.NewProgress(env.stdout, *logFormat, spec.Train.Steps, 2*time.Second)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	jobDir := checkpoint.JobDir(spec)
	res, runErr := train.RunRank(ctx, train.RankConfig{
		Spec: spec, Job: spec.Name, Generation: 1, Kernels: k, Log: env.stderr,
		Init: *initDir, Resume: *resume, SpecYAML: src,
		ReportCheckpoint: train.CommitLocal(jobDir, spec.Checkpoint.Keep, env.stderr),
	}, prog.Report)
	if runErr != nil {
		return fmt.Errorf("run: %w", runErr)
	}
	if *sampleTokens > 0 && *logFormat == "text" && res.Final != nil {
		return printSample(env, res.Final, *prompt, *sampleTokens)
	}
	return nil
}

// checkResumable resolves a --resume argument for a multi-worker run
// before starting it, so a missing checkpoint fails at once; the workers
// resolve it again (the same files give the same choice).
func checkResumable(env *cmdEnv, spec api.JobSpec, which string) error {
	ck, skipped, err := checkpoint.Resolve(checkpoint.JobDir(spec), which)
	warnSkipped(env, skipped)
	if err != nil {
		return err
	}
	if err := checkpoint.CompareConfigs(checkpoint.ModelConfig(spec.Model), ck.Manifest.Model.Config()); err != nil {
		return fmt.Errorf("%s: %w", ck.Dir, err)
	}
	fmt.Fprintf(env.stderr, "loom: resuming from %s (step %d, saved with %s)\n", ck.Dir, ck.Manifest.Step, ck.Manifest.Layout)
	return nil
}

// printSample prints a continuation of prompt by the trained model.
func printSample(env *cmdEnv, m *model.Model, prompt string, n int) error {
	text, err := sampleText(m, prompt, n, model.SampleOptions{Temperature: 0.8, TopK: 40, Seed: 1})
	if err != nil {
		return fmt.Errorf("run: sample: %w", err)
	}
	fmt.Fprintf(env.stdout, "\nsample (temperature 0.8, top-k 40):\n%s\n", text)
	return nil
}

func warnSkipped(env *cmdEnv, skipped []checkpoint.Skipped) {
	for _, s := range skipped {
		fmt.Fprintf(env.stderr, "loom: warning: skipping checkpoint %v\n", s.Err)
	}
}

// humanBytes renders n bytes with a binary suffix (human.Bytes).
func humanBytes(n int64) string { return human.Bytes(n) }
