package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/model"
)

func cmdSample(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "sample", "--model DIR --prompt TEXT [flags]\n\n"+
		"Generates text from a model: a Loom-saved model or a Hugging Face LLaMA\n"+
		"directory, encoding and decoding with its tokenizer (see --tokenizer).")
	modelDir := fs.String("model", "", "model `DIR`: Loom's checkpoint.dir/NAME/final or any Hugging Face LLaMA directory, or a sharded checkpoint (NAME/step-N, or NAME for the newest complete one)")
	prompt := fs.String("prompt", "", "text to continue")
	temp := fs.Float64("temperature", 0.8, "sampling temperature (0: greedy)")
	topK := fs.Int("top-k", 40, "sample among the K most likely tokens (0: all)")
	maxTokens := fs.Int("max-tokens", 200, "tokens to generate")
	seed := fs.Uint64("seed", 1, "sampling seed")
	threads := fs.Int("threads", 0, "kernel threads (0: all cores)")
	tokName := fs.String("tokenizer", "", "tokenizer (default: the model directory's tokenizer.json, else the one its training data was prepared with, else byte)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *modelDir == "" || len(pos) != 0 {
		fs.Usage()
		return errors.New("sample: need --model DIR (and no positional arguments)")
	}
	if *maxTokens < 0 || *temp < 0 || *topK < 0 {
		return errors.New("sample: --max-tokens, --temperature and --top-k must be ≥ 0")
	}
	k, closeK := newKernels(*threads)
	defer closeK()
	m, err := loadAnyModel(env, *modelDir, k, 0)
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	tok, err := modelTokenizer(env, *modelDir, *tokName, m.Config.VocabSize)
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	text, err := sampleWith(m, tok, *prompt, *maxTokens, model.SampleOptions{Temperature: *temp, TopK: *topK, Seed: *seed})
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	fmt.Fprintln(env.stdout, text)
	return nil
}

// sampleWith continues prompt (encoded by tok, after BOS when tok has one)
// by up to n tokens and returns prompt and continuation as text;
// generation stops at EOS, and special tokens produce no text.
func sampleWith(m *model.Model, tok data.Tokenizer, prompt string, n int, opt model.SampleOptions) (string, error) {
	var ids []int32
	if tok.BOS() >= 0 {
		ids = append(ids, tok.BOS())
	}
	ids = tok.Encode(ids, []byte(prompt))
	out, err := m.Generate(ids, n, opt, tok.EOS())
	if err != nil {
		return "", err
	}
	text := []byte(prompt)
	for _, id := range out {
		if int(id) >= tok.VocabSize() {
			continue // ids past the tokenizer's vocabulary (model padding) carry no text
		}
		if text, err = tok.Decode(text, []int32{id}); err != nil {
			return "", err
		}
	}
	return string(text), nil
}
