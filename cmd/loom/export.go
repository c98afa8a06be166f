package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/model"
)

func cmdExport(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "export", "--model DIR --out DIR\n\n"+
		"Writes a model as a Hugging Face LlamaForCausalLM directory (config.json,\n"+
		"model.safetensors, generation_config.json) that transformers loads as is.\n"+
		"--model is a Hugging Face directory (Loom's checkpoint.dir/NAME/final) or a\n"+
		"sharded training checkpoint: a step directory (checkpoint.dir/NAME/step-N),\n"+
		"or a job's checkpoint directory, whose newest complete checkpoint is used.")
	modelDir := fs.String("model", "", "model `DIR` to export: a Hugging Face directory or a sharded checkpoint")
	out := fs.String("out", "", "output `DIR` (replaced atomically)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *modelDir == "" || *out == "" || len(pos) != 0 {
		fs.Usage()
		return errors.New("export: need --model DIR and --out DIR")
	}
	k, closeK := newKernels(1)
	defer closeK()
	var m *model.Model
	if sharded(*modelDir) {
		which, jobDir := *modelDir, *modelDir
		if _, err := os.Stat(filepath.Join(*modelDir, checkpoint.ManifestFile)); err != nil {
			which = "latest"
		}
		ck, skipped, err := checkpoint.Resolve(jobDir, which)
		warnSkipped(env, skipped)
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		if m, err = ck.Model(k); err != nil {
			return fmt.Errorf("export: %w", err)
		}
		fmt.Fprintf(env.stderr, "loom: exporting %s (step %d, saved with %s)\n", ck.Dir, ck.Manifest.Step, ck.Manifest.Layout)
	} else if m, err = checkpoint.LoadModel(*modelDir, k, 0); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := checkpoint.SaveModel(*out, m, nil); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(env.stdout, "exported %s parameters to %s\n", humanCount(int64(m.Config.NumParams())), *out)
	return nil
}

// sharded reports whether dir is a sharded checkpoint (a step directory
// with a manifest, or a directory of step directories) rather than a
// Hugging Face directory.
func sharded(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, checkpoint.ManifestFile)); err == nil {
		return true
	}
	ds, _ := checkpointJobDirs(dir)
	return len(ds) == 1 && ds[0] == dir
}
