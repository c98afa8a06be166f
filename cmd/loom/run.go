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
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/timeline"
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
	httpAddr := fs.String("http", "127.0.0.1:0", "with world size > 1: serve the coordinator's dashboard and /metrics on `ADDR` (the URL is printed; \"\": off)")
	maxRestarts := fs.Int("max-restarts", -1, "with world size > 1: generations that may end early (a worker lost, failed or hung) before the run fails; a worker process that exits is replaced meanwhile (default: the spec's elastic.max_restarts)")
	bindCores := fs.Bool("bind-cores", false, "with world size > 1: bind each local worker to --threads CPUs of its own, physical cores first (as DeepSpeed's --bind_cores_to_rank), when they all fit; otherwise workers float")
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
	if _, err := plan.New(spec, spec.Parallel.WorldSize()); err != nil {
		return fmt.Errorf("run: %s: %w", pos[0], err)
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
			Progress: env.stdout, JSON: *logFormat == "json", Info: env.stderr, WorkerOutput: env.stderr, Resume: *resume, RunID: runID,
			HTTPAddr: *httpAddr, MaxRestarts: *maxRestarts, BindCores: *bindCores}); err != nil {
			return fmt.Errorf("run: %w", err)
		}
		dir := filepath.Join(spec.Checkpoint.Dir, spec.Name, "final")
		fmt.Fprintf(env.stderr, "loom: saved the final model to %s\n", dir)
		if path, err := timeline.SaveMerged(checkpoint.JobDir(spec), w); err != nil {
			fmt.Fprintf(env.stderr, "loom: warning: the last step's timeline: %v\n", err)
		} else {
			fmt.Fprintf(env.stderr, "loom: the last step's timeline (Chrome trace, opens in Perfetto): %s\n", path)
		}
		if *sampleTokens > 0 && *logFormat == "text" {
			k, closeK := newKernels(*threads)
			defer closeK()
			m, err := checkpoint.LoadModel(dir, k, 0)
			if err != nil {
				return fmt.Errorf("run: sample: %w", err)
			}
			return printSampleWith(env, m, specTokenizer(env, spec), *prompt, *sampleTokens)
		}
		return nil
	}
	k, closeK, err := newTrainKernels(*threads, spec)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer closeK()
	if *initDir != "" && *resume != "" {
		return errors.New("run: --init and --resume exclude each other: --resume restores the weights and the optimizer")
	}
	// The checkpoint to resume is resolved here, before the run claims the
	// job's checkpoint directory, and handed to the rank by its directory.
	var from *checkpoint.Checkpoint
	resumeDir := ""
	if *resume != "" {
		ck, skipped, err := checkpoint.Resolve(checkpoint.JobDir(spec), *resume)
		warnSkipped(env, skipped)
		if err != nil {
			return fmt.Errorf("run: --resume %s: %w", *resume, err)
		}
		from, resumeDir = ck, ck.Dir
	}
	runID, err := claimCheckpoints(env, "run", pos[0], spec, from, *overwrite)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
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
		Init: *initDir, Resume: resumeDir, SpecYAML: src,
		ReportCheckpoint: train.CommitLocal(jobDir, spec.Checkpoint.Keep, runID, env.stderr),
	}, prog.Report)
	if runErr != nil {
		return fmt.Errorf("run: %w", runErr)
	}
	if *sampleTokens > 0 && *logFormat == "text" && res.Final != nil {
		return printSampleWith(env, res.Final, specTokenizer(env, spec), *prompt, *sampleTokens)
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

// humanBytes renders n bytes with a binary suffix (human.Bytes).
func humanBytes(n int64) string { return human.Bytes(n) }
