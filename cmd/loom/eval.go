package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/loomtrain/loom/data"
)

func cmdEval(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "eval", "--model DIR --data FILE [flags]\n\n"+
		"Prints the mean cross-entropy loss of a model over a token file's windows,\n"+
		"in file order (window i holds tokens [i·T, i·T+T+1)).")
	modelDir := fs.String("model", "", "model `DIR`: Loom's checkpoint.dir/NAME/final or any Hugging Face LLaMA directory, or a sharded checkpoint (NAME/step-N, or NAME for the newest complete one)")
	dataPath := fs.String("data", "", "token `FILE` written by `loom prep`")
	seqLen := fs.Int("seq-len", 0, "window length T (0: the model's context length)")
	batch := fs.Int("batch", 8, "windows per forward pass")
	maxWindows := fs.Int("max-windows", 0, "evaluate only the first N windows (0: all)")
	logFormat := fs.String("log-format", "text", "output: text, or json ({\"loss\", \"tokens\"})")
	threads := fs.Int("threads", 0, "kernel threads (0: all cores)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *modelDir == "" || *dataPath == "" || len(pos) != 0 {
		fs.Usage()
		return errors.New("eval: need --model DIR and --data FILE")
	}
	if *logFormat != "text" && *logFormat != "json" {
		return fmt.Errorf("eval: --log-format %q: allowed: text, json", *logFormat)
	}
	if *batch < 1 || *seqLen < 0 || *maxWindows < 0 {
		return errors.New("eval: --batch must be ≥ 1, --seq-len and --max-windows ≥ 0")
	}
	k, closeK := newKernels(*threads)
	defer closeK()
	m, err := loadAnyModel(env, *modelDir, k, *seqLen)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	T := m.Config.SeqLen
	f, err := data.Open(*dataPath)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	defer f.Close()
	if f.VocabSize() > m.Config.VocabSize {
		return fmt.Errorf("eval: %s has a vocabulary of %d, more than the model's %d", *dataPath, f.VocabSize(), m.Config.VocabSize)
	}
	loader, err := data.NewLoader(f, data.LoaderConfig{SeqLen: T})
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	nwin := loader.NumWindows()
	if *maxWindows > 0 {
		nwin = min(nwin, *maxWindows)
	}
	acts, err := m.NewActs(*batch, T)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	inputs, targets := make([]int32, *batch*T), make([]int32, *batch*T)
	var sum float64
	for w := 0; w < nwin; w += *batch {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("eval: stopped at window %d: %w", w, err)
		}
		b := min(*batch, nwin-w)
		for i := 0; i < b; i++ {
			if err := loader.FillWindow(w+i, inputs[i*T:(i+1)*T], targets[i*T:(i+1)*T]); err != nil {
				return fmt.Errorf("eval: %w", err)
			}
		}
		if err := acts.SetShape(b, T); err != nil {
			return fmt.Errorf("eval: %w", err)
		}
		loss, err := m.Loss(acts, inputs[:b*T], targets[:b*T])
		if err != nil {
			return fmt.Errorf("eval: %w", err)
		}
		sum += loss * float64(b)
	}
	mean := sum / float64(nwin)
	tokens := nwin * T
	if *logFormat == "json" {
		b, _ := json.Marshal(map[string]any{"loss": mean, "tokens": tokens, "windows": nwin, "seq_len": T})
		fmt.Fprintf(env.stdout, "%s\n", b)
		return nil
	}
	fmt.Fprintf(env.stdout, "loss %.4f over %d tokens (%d windows of %d)\n", mean, tokens, nwin, T)
	return nil
}
