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
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/launch"
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
	overwrite := fs.Bool("overwrite", false, "start afresh although checkpoint.dir/NAME holds another run's checkpoints: move that directory aside (to NAME.replaced-TIME) first")
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
	if err := api.Supported(spec, pos[0]); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if w := spec.Parallel.WorldSize(); w != 1 {
		if *initDir != "" {
			return errors.New("run: --init is supported only for world size 1 so far")
		}
		var from *checkpoint.Checkpoint
		if *resume != "" {
			if from, err = checkResumable(env, spec, *resume); err != nil {
				return fmt.Errorf("run: --resume %s: %w", *resume, err)
			}
		}
		runID, err := claimCheckpoints(env, "run", pos[0], spec, from, *overwrite)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		src, err := os.ReadFile(pos[0])
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		fmt.Fprintf(env.stderr, "loom: job %q: world size %d: starting embedded etcd, a coordinator and %d local workers\n", spec.Name, w, w)
		if err := launch.Local(ctx, spec, launch.Options{SpecYAML: src, Source: pos[0], ThreadsPerWorker: *threads,
			Progress: env.stdout, JSON: *logFormat == "json", Info: env.stderr, WorkerOutput: env.stderr, Resume: *resume, RunID: runID}); err != nil {
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
			tok, err := modelTokenizer(env, dir, "", m.Config.VocabSize)
			if err != nil {
				return fmt.Errorf("run: sample: %w", err)
			}
			return printSampleWith(env, m, tok, *prompt, *sampleTokens)
		}
		return nil
	}
	k, closeK := newKernels(*threads)
	defer closeK()

	ds, err := data.OpenDataset(spec.Data, spec.Model.SeqLen)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer ds.Close()
	loader := ds.Train
	tr, err := train.New(train.Config{Spec: spec, Kernels: k, Loader: loader, Validation: ds.Validation})
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if *initDir != "" && *resume != "" {
		return errors.New("run: --init and --resume exclude each other: --resume restores the weights and the optimizer")
	}
	var from *checkpoint.Checkpoint
	if *resume != "" {
		if from, err = resumeTrainer(env, tr, spec, *resume); err != nil {
			return fmt.Errorf("run: --resume %s: %w", *resume, err)
		}
	}
	runID, err := claimCheckpoints(env, "run", pos[0], spec, from, *overwrite)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	var ck ckTotals
	if spec.Checkpoint.Every > 0 {
		src, err := os.ReadFile(pos[0])
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		jobDir := checkpoint.JobDir(spec)
		if err := tr.EnableCheckpoints(train.CheckpointConfig{JobDir: jobDir, Every: spec.Checkpoint.Every, SpecYAML: src,
			Report: train.CommitLocal(jobDir, spec.Checkpoint.Keep, runID, env.stderr)}); err != nil {
			return fmt.Errorf("run: %w", err)
		}
	}
	if *initDir != "" {
		src, err := checkpoint.LoadModel(*initDir, k, spec.Model.SeqLen)
		if err != nil {
			return fmt.Errorf("run: --init: %w", err)
		}
		if err := tr.LoadWeights(src); err != nil {
			return fmt.Errorf("run: --init %s: %w", *initDir, err)
		}
	}
	cfg := tr.Model.Config
	fmt.Fprintf(env.stderr, "loom: job %q: %s parameters (d %d, %d layers, %d/%d heads, ffn %d, vocab %d), %d tokens per step, %d steps, %d windows of %d tokens in %s\n",
		spec.Name, humanCount(int64(cfg.NumParams())), cfg.Dim, cfg.NLayers, cfg.NHeads, cfg.NKVHeads, cfg.FFNHidden, cfg.VocabSize,
		spec.Train.GlobalBatch*spec.Model.SeqLen, spec.Train.Steps, loader.NumWindows(), spec.Model.SeqLen, dataDesc(spec.Data))
	prog, err := train.NewProgress(env.stdout, *logFormat, spec.Train.Steps, 2*time.Second)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	runErr := tr.Run(ctx, func(s train.Stats) {
		ck.add(s)
		prog.Report(s)
	})
	if spec.Checkpoint.Every > 0 {
		b, secs := tr.SaveStats()
		ck.print(env, b, secs)
	}
	if tr.StepsDone() == 0 {
		return fmt.Errorf("run: %w", runErr)
	}
	dir := filepath.Join(spec.Checkpoint.Dir, spec.Name, "final")
	if err := checkpoint.SaveModel(dir, tr.Model, &spec); err != nil {
		return fmt.Errorf("run: %w", errors.Join(runErr, err))
	}
	fmt.Fprintf(env.stderr, "loom: saved the model after step %d to %s\n", tr.StepsDone(), dir)
	if runErr != nil {
		return fmt.Errorf("run: %w", runErr)
	}
	if *sampleTokens > 0 && *logFormat == "text" {
		return printSampleWith(env, tr.Model, dataTokenizer(ds.Train), *prompt, *sampleTokens)
	}
	return nil
}

// checkResumable resolves a --resume argument for a multi-worker run
// before starting it, so a missing checkpoint fails at once; the workers
// resolve it again (the same files give the same choice).
func checkResumable(env *cmdEnv, spec api.JobSpec, which string) (*checkpoint.Checkpoint, error) {
	ck, skipped, err := checkpoint.Resolve(checkpoint.JobDir(spec), which)
	warnSkipped(env, skipped)
	if err != nil {
		return nil, err
	}
	if err := checkpoint.CompareConfigs(checkpoint.ModelConfig(spec.Model), ck.Manifest.Model.Config()); err != nil {
		return nil, fmt.Errorf("%s: %w", ck.Dir, err)
	}
	fmt.Fprintf(env.stderr, "loom: resuming from %s (step %d, saved with %s)\n", ck.Dir, ck.Manifest.Step, ck.Manifest.Layout)
	return ck, nil
}

// resumeTrainer resolves which ("latest" or a step directory) under the
// job's checkpoint directory and restores tr from it.
func resumeTrainer(env *cmdEnv, tr *train.Trainer, spec api.JobSpec, which string) (*checkpoint.Checkpoint, error) {
	start := time.Now()
	ck, skipped, err := checkpoint.Resolve(checkpoint.JobDir(spec), which)
	warnSkipped(env, skipped)
	if err != nil {
		return nil, err
	}
	if err := tr.Restore(ck); err != nil {
		return nil, err
	}
	for _, n := range checkpoint.CompareState(spec, ck.State) {
		fmt.Fprintf(env.stderr, "loom: warning: %s\n", n)
	}
	fmt.Fprintf(env.stderr, "loom: resumed from %s (step %d, saved with %s, %s) in %v\n",
		ck.Dir, ck.Manifest.Step, ck.Manifest.Layout, humanBytes(ck.Manifest.Bytes), time.Since(start).Round(time.Millisecond))
	return ck, nil
}

// claimCheckpoints returns the run id a job starts under and keeps a fresh
// run from writing where another run's checkpoints are. Resumed from ck,
// the run continues ck's run. Fresh, it gets a new id, and the job's
// checkpoint directory must hold no step directories — unless overwrite,
// which moves that directory aside first (nothing is deleted).
func claimCheckpoints(env *cmdEnv, cmd, specPath string, spec api.JobSpec, ck *checkpoint.Checkpoint, overwrite bool) (string, error) {
	if ck != nil {
		if overwrite {
			return "", errors.New("--overwrite and --resume exclude each other: --resume continues the run whose checkpoints are there, --overwrite moves them aside to start afresh")
		}
		return ck.Manifest.Run, nil
	}
	jobDir := checkpoint.JobDir(spec)
	err := checkpoint.CheckFresh(jobDir)
	if errors.Is(err, checkpoint.ErrOtherRun) && overwrite {
		moved, merr := checkpoint.MoveAside(jobDir, time.Now())
		if merr != nil {
			return "", merr
		}
		fmt.Fprintf(env.stderr, "loom: --overwrite: moved the other run's %s aside to %s\n", jobDir, moved)
		err = nil
	}
	if errors.Is(err, checkpoint.ErrOtherRun) {
		return "", fmt.Errorf("%w: a fresh run of job %q would write its checkpoints among them; either\n"+
			"  continue that run:         loom %s %s --resume latest\n"+
			"  or start afresh beside it: loom %s %s --overwrite   (moves %s aside to %s.replaced-TIME)\n"+
			"  or change the spec's name or checkpoint.dir", err, spec.Name, cmd, specPath, cmd, specPath, jobDir, filepath.Base(jobDir))
	}
	if err != nil {
		return "", err
	}
	return checkpoint.NewRunID(time.Now()), nil
}

func warnSkipped(env *cmdEnv, skipped []checkpoint.Skipped) {
	for _, s := range skipped {
		fmt.Fprintf(env.stderr, "loom: warning: skipping checkpoint %v\n", s.Err)
	}
}

// ckTotals adds up the step loop's checkpoint stalls.
type ckTotals struct {
	saves          int
	blocked, steps float64
}

func (c *ckTotals) add(s train.Stats) {
	c.steps += s.StepSeconds
	if s.CheckpointSeconds > 0 {
		c.saves++
		c.blocked += s.CheckpointSeconds
	}
}

func (c *ckTotals) print(env *cmdEnv, bytes int64, writeSecs float64) {
	if c.saves == 0 {
		return
	}
	rate := 0.0
	if writeSecs > 0 {
		rate = float64(bytes) / 1e6 / writeSecs
	}
	fmt.Fprintf(env.stderr, "loom: checkpoints: %d saved, %s written in the background at %.0f MB/s; the step loop was blocked %.1f ms per save (%.2f%% of step time)\n",
		c.saves, humanBytes(bytes), rate, 1e3*c.blocked/float64(c.saves), 100*c.blocked/max(c.steps, 1e-9))
}

// humanBytes renders n bytes with a binary suffix.
func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// humanCount renders n with a k/M/G suffix.
func humanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fG", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
