package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/internal/human"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
)

func cmdExport(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "export", "--model DIR --out DIR\n\n"+
		"Writes a model as a Hugging Face LlamaForCausalLM directory (config.json,\n"+
		"model.safetensors, generation_config.json) that transformers loads as is, with\n"+
		"its tokenizer as tokenizer.json and tokenizer_config.json.\n"+
		"--model is a Hugging Face directory (Loom's checkpoint.dir/NAME/final) or a\n"+
		"sharded training checkpoint: a step directory (checkpoint.dir/NAME/step-N),\n"+
		"or a job's checkpoint directory, whose newest complete checkpoint is used.")
	modelDir := fs.String("model", "", "model `DIR` to export: a Hugging Face directory or a sharded checkpoint")
	out := fs.String("out", "", "output `DIR` (replaced atomically)")
	tokName := fs.String("tokenizer", "", "tokenizer to write beside the model (default: the model's; see loom sample --help)")
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
	m, err := loadAnyModel(env, *modelDir, k, 0)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	tok, err := modelTokenizer(env, *modelDir, *tokName, m.Config.VocabSize)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := checkpoint.SaveModel(*out, m, nil); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := writeTokenizerFiles(*out, tok); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(env.stdout, "exported %s parameters and tokenizer %s to %s\n", human.Count(int64(m.Config.NumParams())), tok.Name(), *out)
	return nil
}

// loadAnyModel loads a Hugging Face directory (what `loom run` saves as
// NAME/final) or a sharded training checkpoint (a step directory, or a job's
// checkpoint directory whose newest complete checkpoint is used). seqLen
// overrides the context length when positive.
func loadAnyModel(env *cmdEnv, dir string, k tensor.Kernels, seqLen int) (*model.Model, error) {
	if !sharded(dir) {
		return checkpoint.LoadModel(dir, k, seqLen)
	}
	which := dir
	if _, err := os.Stat(filepath.Join(dir, checkpoint.ManifestFile)); err != nil {
		which = "latest"
	}
	ck, skipped, err := checkpoint.Resolve(dir, which)
	warnSkipped(env, skipped)
	if err != nil {
		return nil, err
	}
	m, err := ck.Model(k)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(env.stderr, "loom: loaded %s (step %d, saved with %s)\n", ck.Dir, ck.Manifest.Step, ck.Manifest.Layout)
	if seqLen > 0 && seqLen != m.Config.SeqLen {
		cfg := m.Config
		cfg.SeqLen = seqLen
		m2, err := model.New(cfg, k)
		if err != nil {
			return nil, err
		}
		copy(m2.Params, m.Params)
		m = m2
	}
	return m, nil
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
