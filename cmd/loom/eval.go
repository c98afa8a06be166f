package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/loomtrain/loom/data"
)

func cmdEval(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "eval", "--model DIR --data FILE [flags]\n\n"+
		"Prints the mean cross-entropy loss of a model over a token file's windows,\n"+
		"in file order (window i holds tokens [i·T, i·T+T+1)), and bits per byte of the\n"+
		"text they encode. --text FILE|DIR encodes text with the model's tokenizer instead.")
	modelDir := fs.String("model", "", "model `DIR`: Loom's checkpoint.dir/NAME/final or any Hugging Face LLaMA directory, or a sharded checkpoint (NAME/step-N, or NAME for the newest complete one)")
	dataPath := fs.String("data", "", "token `FILE` written by `loom prep`")
	textPath := fs.String("text", "", "text `FILE` or directory to encode with the model's tokenizer and evaluate (instead of --data)")
	tokName := fs.String("tokenizer", "", "tokenizer for --text (default: the model's; see loom sample --help)")
	seqLen := fs.Int("seq-len", 0, "window length T (0: the model's context length)")
	batch := fs.Int("batch", 8, "windows per forward pass")
	maxWindows := fs.Int("max-windows", 0, "evaluate only the first N windows (0: all)")
	logFormat := fs.String("log-format", "text", "output: text, or json ({\"loss\", \"tokens\"})")
	threads := fs.Int("threads", 0, "kernel threads (0: all cores)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *modelDir == "" || (*dataPath == "") == (*textPath == "") || len(pos) != 0 {
		fs.Usage()
		return errors.New("eval: need --model DIR and one of --data FILE or --text FILE")
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
	if *textPath != "" {
		tok, err := modelTokenizer(env, *modelDir, *tokName, m.Config.VocabSize)
		if err != nil {
			return fmt.Errorf("eval: %w", err)
		}
		tmp, err := os.MkdirTemp("", "loom-eval-*")
		if err != nil {
			return fmt.Errorf("eval: %w", err)
		}
		defer os.RemoveAll(tmp)
		*dataPath = filepath.Join(tmp, "text.bin")
		if _, _, err := data.Prep(ctx, data.PrepConfig{Inputs: []string{*textPath}, Out: *dataPath, Tokenizer: tok}); err != nil {
			return fmt.Errorf("eval: %w", err)
		}
	}
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
	// Bits per byte: the nats of the evaluated tokens over the bytes they
	// stand for, at the file's average bytes per token.
	bpb := 0.0
	if meta := f.Meta(); meta.Bytes > 0 && meta.Tokens > 0 {
		bpb = mean / math.Ln2 * float64(meta.Tokens) / float64(meta.Bytes)
	}
	if *logFormat == "json" {
		out := map[string]any{"loss": mean, "tokens": tokens, "windows": nwin, "seq_len": T, "tokenizer": f.Meta().Tokenizer}
		if bpb > 0 {
			out["bits_per_byte"] = bpb
		}
		b, _ := json.Marshal(out)
		fmt.Fprintf(env.stdout, "%s\n", b)
		return nil
	}
	fmt.Fprintf(env.stdout, "loss %.4f over %d tokens (%d windows of %d)", mean, tokens, nwin, T)
	if bpb > 0 {
		fmt.Fprintf(env.stdout, ", %.4f bits per byte", bpb)
	}
	fmt.Fprintln(env.stdout)
	return nil
}
