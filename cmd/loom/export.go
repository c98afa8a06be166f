package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/loomtrain/loom/checkpoint"
)

func cmdExport(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "export", "--model DIR --out DIR\n\n"+
		"Writes a model as a Hugging Face LlamaForCausalLM directory (config.json,\n"+
		"model.safetensors, generation_config.json) that transformers loads as is.")
	modelDir := fs.String("model", "", "model `DIR` to export (Loom's checkpoint.dir/NAME/final)")
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
	m, err := checkpoint.LoadModel(*modelDir, k, 0)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := checkpoint.SaveModel(*out, m, nil); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(env.stdout, "exported %s parameters to %s\n", humanCount(int64(m.Config.NumParams())), *out)
	return nil
}
