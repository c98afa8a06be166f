package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/internal/atomicfile"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tokenizer"
)

func cmdTokenizer(ctx context.Context, env *cmdEnv, args []string) error {
	subs := map[string]struct {
		summary string
		run     func(context.Context, *cmdEnv, []string) error
	}{
		"train":   {"train a byte-level BPE over text, directories and JSONL; write a Hugging Face tokenizer.json", cmdTokenizerTrain},
		"encode":  {"print the ids of a text", cmdTokenizerEncode},
		"decode":  {"print the text of ids", cmdTokenizerDecode},
		"info":    {"describe a tokenizer: vocabulary, special ids, hash", cmdTokenizerInfo},
		"convert": {"write a tiktoken rank file (or any tokenizer) as a Hugging Face tokenizer.json", cmdTokenizerConvert},
		"bench":   {"measure encoding throughput (MB/s of UTF-8) on a file at a thread count", cmdTokenizerBench},
	}
	order := []string{"train", "encode", "decode", "info", "convert", "bench"}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(env.stdout, "Usage: loom tokenizer COMMAND [flags]\n\nCommands:")
		for _, n := range order {
			fmt.Fprintf(env.stdout, "  %-8s %s\n", n, subs[n].summary)
		}
		fmt.Fprintln(env.stdout, "\nA tokenizer is \"byte\", a tokenizer.json, a Hugging Face model directory or a tiktoken file.")
		return nil
	}
	s, ok := subs[args[0]]
	if !ok {
		return fmt.Errorf("tokenizer: unknown command %q (want %s)", args[0], strings.Join(order, ", "))
	}
	return s.run(ctx, env, args[1:])
}

// defaultSpecials are the special tokens `loom tokenizer train` reserves:
// BOS, EOS and padding, ids 0, 1, 2.
const defaultSpecials = "<|begin_of_text|>,<|end_of_text|>,<|pad|>"

func patternFlag(name string) (string, error) {
	switch name {
	case "", "gpt2":
		return "", nil
	case "llama3", "cl100k":
		return tokenizer.PatternLlama3, nil
	}
	return name, nil
}

func cmdTokenizerTrain(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "tokenizer train", "INPUT... --vocab-size N --out tok.json [flags]\n\n"+
		"Trains a byte-level BPE the way Hugging Face's BpeTrainer does (same merges on the\n"+
		"same pieces) over text files, directories (recursively, sorted) and JSONL (.jsonl, the\n"+
		"\"text\" field), each file or line one document, reading on all cores. Writes a\n"+
		"Hugging Face tokenizer.json that `loom prep --tokenizer` and transformers read.")
	vocab := fs.Int("vocab-size", 8192, "vocabulary size, special tokens included")
	out := fs.String("out", "", "tokenizer.json to write (required)")
	minFreq := fs.Int64("min-frequency", 2, "stop when the most frequent pair occurs fewer times")
	specials := fs.String("special", defaultSpecials, "comma-separated special tokens, ids 0, 1, … (BOS, EOS, padding)")
	pattern := fs.String("pattern", "gpt2", "split regex: gpt2, llama3 (cl100k), or a regex")
	maxLen := fs.Int("max-token-length", 0, "longest token in bytes (0: no limit)")
	var include stringList
	fs.Var(&include, "include", "take only files under directories matching `GLOB` (repeatable)")
	goSrc := fs.Bool("go-src", false, "add the Go standard library sources with --include '*.go'")
	workers := fs.Int("workers", runtime.GOMAXPROCS(0), "counting goroutines")
	quiet := fs.Bool("quiet", false, "show no progress on stderr")
	inputs, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *goSrc {
		in, inc, err := data.GoSourceInputs(ctx)
		if err != nil {
			return fmt.Errorf("tokenizer train: %w", err)
		}
		inputs = append(inputs, in...)
		include = append(include, inc...)
	}
	if *out == "" || len(inputs) == 0 {
		fs.Usage()
		return errors.New("tokenizer train: need at least one INPUT and --out FILE")
	}
	if *workers < 1 {
		return fmt.Errorf("tokenizer train: --workers %d: want ≥ 1", *workers)
	}
	pat, err := patternFlag(*pattern)
	if err != nil {
		return err
	}
	var sp []string
	if *specials != "" {
		sp = strings.Split(*specials, ",")
	}
	cfg := tokenizer.TrainConfig{VocabSize: *vocab, MinFrequency: *minFreq, SpecialTokens: sp, ByteAlphabet: true, Pattern: pat, MaxTokenLength: *maxLen}
	if err := cfg.Validate(); err != nil {
		return err
	}
	start := time.Now()
	counter, st, err := countPieces(ctx, env, data.DocConfig{Inputs: inputs, Include: include}, pat, *workers, *quiet)
	if err != nil {
		return fmt.Errorf("tokenizer train: %w", err)
	}
	counted := time.Since(start)
	if !*quiet {
		cfg.Progress = func(p tokenizer.TrainProgress) {
			fmt.Fprintf(env.stderr, "\rtokenizer train: %d/%d merges, %.1fs ", p.Merges, p.Target, p.Elapsed.Seconds())
		}
	}
	tok, err := tokenizer.Train(ctx, cfg, counter)
	if !*quiet {
		fmt.Fprintln(env.stderr)
	}
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(*out, tok.JSON()); err != nil {
		return fmt.Errorf("tokenizer train: %w", err)
	}
	fmt.Fprintf(env.stdout, "tokenizer train: %d documents, %.1f MB, %d distinct pieces counted in %.2fs; %d tokens after %.2fs -> %s\n",
		st.Documents, float64(st.Bytes)/1e6, counter.Words(), counted.Seconds(), tok.VocabSize(), time.Since(start).Seconds(), *out)
	return nil
}

// countPieces reads the documents and counts their pieces on workers
// goroutines, each with its own counter, merged at the end (counts are
// sums, so the result does not depend on the worker count).
func countPieces(ctx context.Context, env *cmdEnv, cfg data.DocConfig, pattern string, workers int, quiet bool) (*tokenizer.Counter, data.DocStats, error) {
	counters := make([]*tokenizer.Counter, workers)
	for i := range counters {
		c, err := tokenizer.NewCounter(pattern)
		if err != nil {
			return nil, data.DocStats{}, err
		}
		counters[i] = c
	}
	cfg.Cutter = counters[0]
	docs := make(chan []byte, 2*workers)
	var wg sync.WaitGroup
	for _, c := range counters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range docs {
				c.Add(d)
			}
		}()
	}
	start, last := time.Now(), time.Now()
	var read int64
	st, err := data.Documents(ctx, cfg, func(doc []byte, _ bool) error {
		read += int64(len(doc))
		select {
		case docs <- append([]byte(nil), doc...):
		case <-ctx.Done():
			return ctx.Err()
		}
		if !quiet && time.Since(last) > time.Second {
			last = time.Now()
			fmt.Fprintf(env.stderr, "\rtokenizer train: counted %.1f MB, %.1f MB/s ", float64(read)/1e6, float64(read)/1e6/time.Since(start).Seconds())
		}
		return nil
	})
	close(docs)
	wg.Wait()
	if !quiet {
		fmt.Fprintln(env.stderr)
	}
	if err != nil {
		return nil, st, err
	}
	for _, c := range counters[1:] {
		counters[0].Merge(c)
	}
	return counters[0], st, nil
}

func loadTokenizerFlag(name string) (data.Tokenizer, error) {
	if name == "" {
		return nil, errors.New("--tokenizer is required: \"byte\", a tokenizer.json, a Hugging Face model directory or a tiktoken file")
	}
	return data.LoadTokenizer(name)
}

func cmdTokenizerEncode(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "tokenizer encode", "--tokenizer T [TEXT...] [flags]\n\n"+
		"Prints the ids of TEXT (the arguments joined by spaces) or of --file, as Hugging\n"+
		"Face's encode(text, add_special_tokens=False).")
	name := fs.String("tokenizer", "", "tokenizer (required)")
	file := fs.String("file", "", "encode this file instead of the arguments (- for stdin)")
	ordinary := fs.Bool("ordinary", false, "treat special-token text as plain text")
	asJSON := fs.Bool("json", false, "print {\"ids\": […], \"tokens\": […]}")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	tok, err := loadTokenizerFlag(*name)
	if err != nil {
		return fmt.Errorf("tokenizer encode: %w", err)
	}
	var text []byte
	switch *file {
	case "":
		text = []byte(strings.Join(pos, " "))
	case "-":
		if text, err = io.ReadAll(os.Stdin); err != nil {
			return fmt.Errorf("tokenizer encode: %w", err)
		}
	default:
		if text, err = os.ReadFile(*file); err != nil {
			return fmt.Errorf("tokenizer encode: %w", err)
		}
	}
	var ids []int32
	if bt, ok := tok.(*tokenizer.Tokenizer); ok && *ordinary {
		ids = bt.EncodeOrdinary(nil, text)
	} else {
		ids = tok.Encode(nil, text)
	}
	if *asJSON {
		toks := make([]string, len(ids))
		for i, id := range ids {
			b, _ := tok.Decode(nil, []int32{id})
			toks[i] = string(b)
		}
		b, _ := json.Marshal(map[string]any{"ids": ids, "tokens": toks})
		fmt.Fprintf(env.stdout, "%s\n", b)
		return nil
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(int(id))
	}
	fmt.Fprintln(env.stdout, strings.Join(s, " "))
	return nil
}

func cmdTokenizerDecode(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "tokenizer decode", "--tokenizer T ID...\n\nPrints the text of the ids (special tokens written out).")
	name := fs.String("tokenizer", "", "tokenizer (required)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	tok, err := loadTokenizerFlag(*name)
	if err != nil {
		return fmt.Errorf("tokenizer decode: %w", err)
	}
	var ids []int32
	for _, a := range pos {
		for _, f := range strings.FieldsFunc(a, func(r rune) bool { return r == ',' || r == ' ' }) {
			v, err := strconv.ParseInt(f, 10, 32)
			if err != nil {
				return fmt.Errorf("tokenizer decode: %q is not an id", f)
			}
			ids = append(ids, int32(v))
		}
	}
	var text []byte
	if bt, ok := tok.(*tokenizer.Tokenizer); ok {
		text, err = bt.DecodeAll(nil, ids)
	} else {
		text, err = tok.Decode(nil, ids)
	}
	if err != nil {
		return fmt.Errorf("tokenizer decode: %w", err)
	}
	fmt.Fprintln(env.stdout, string(text))
	return nil
}

func cmdTokenizerInfo(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "tokenizer info", "--tokenizer T\n\nDescribes a tokenizer.")
	name := fs.String("tokenizer", "", "tokenizer (required)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	tok, err := loadTokenizerFlag(*name)
	if err != nil {
		return fmt.Errorf("tokenizer info: %w", err)
	}
	fmt.Fprintf(env.stdout, "tokenizer  %s\nvocabulary %d\nbos        %d\neos        %d\n", tok.Name(), tok.VocabSize(), tok.BOS(), tok.EOS())
	if bt, ok := tok.(*tokenizer.Tokenizer); ok {
		fmt.Fprintf(env.stdout, "pad        %d\nsha256     %s\n", bt.Pad(), bt.SHA256())
		for _, id := range []int32{tok.BOS(), tok.EOS(), bt.Pad()} {
			if id >= 0 {
				fmt.Fprintf(env.stdout, "token %-6d %q\n", id, bt.IDToken(id))
			}
		}
	}
	return nil
}

func cmdTokenizerConvert(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "tokenizer convert", "FILE --out tokenizer.json [--pattern P]\n\n"+
		"Writes a tokenizer (a tiktoken rank file such as cl100k_base.tiktoken or LLaMA-3's\n"+
		"tokenizer.model) as a Hugging Face tokenizer.json: the ranks as vocabulary, one merge\n"+
		"per token derived as tiktoken would build it, ignore_merges set, the split regex and\n"+
		"the special tokens of the encoding.")
	out := fs.String("out", "", "tokenizer.json to write (required)")
	pattern := fs.String("pattern", "", "split regex of the tiktoken encoding (default: by its number of ranks)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *out == "" {
		fs.Usage()
		return errors.New("tokenizer convert: need one FILE and --out")
	}
	var tok *tokenizer.Tokenizer
	if *pattern != "" {
		b, err := os.ReadFile(pos[0])
		if err != nil {
			return fmt.Errorf("tokenizer convert: %w", err)
		}
		pat, _ := patternFlag(*pattern)
		if pat == "" {
			pat = tokenizer.PatternGPT2
		}
		tok, err = tokenizer.ParseTiktoken(b, pos[0], tokenizer.TiktokenOptions{Pattern: pat})
		if err != nil {
			return err
		}
	} else if tok, err = tokenizer.Load(pos[0]); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(*out, tok.JSON()); err != nil {
		return fmt.Errorf("tokenizer convert: %w", err)
	}
	fmt.Fprintf(env.stdout, "tokenizer convert: %d tokens -> %s\n", tok.VocabSize(), *out)
	return nil
}

func cmdTokenizerBench(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "tokenizer bench", "--tokenizer T FILE [--threads N]\n\n"+
		"Encodes FILE, cut into documents at the first blank line after 4 KB (as\n"+
		"scripts/tokref/ref.cjs bench cuts it for Hugging Face), on N goroutines and prints\n"+
		"one JSON line with MB/s of UTF-8 input. The best of --rounds passes counts.")
	name := fs.String("tokenizer", "", "tokenizer (required)")
	threads := fs.Int("threads", 1, "encoding goroutines")
	rounds := fs.Int("rounds", 3, "timed passes over the file")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *threads < 1 || *rounds < 1 {
		fs.Usage()
		return errors.New("tokenizer bench: need one FILE, --threads ≥ 1 and --rounds ≥ 1")
	}
	tok, err := loadTokenizerFlag(*name)
	if err != nil {
		return fmt.Errorf("tokenizer bench: %w", err)
	}
	text, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("tokenizer bench: %w", err)
	}
	// Documents are cut at the first blank line after 4096 bytes, as
	// ref.cjs bench cuts them for Hugging Face's encodeBatch.
	var docs [][]byte
	for start := 0; start < len(text); {
		end := len(text)
		if start+4096 < len(text) {
			if i := bytes.Index(text[start+4096:], []byte("\n\n")); i >= 0 {
				end = start + 4096 + i + 2
			}
		}
		docs = append(docs, text[start:end])
		start = end
	}
	runtime.GOMAXPROCS(*threads)
	encodeAll := func() (int, time.Duration) {
		next := make(chan []byte, len(docs))
		for _, d := range docs {
			next <- d
		}
		close(next)
		var total int64
		var mu sync.Mutex
		var wg sync.WaitGroup
		t0 := time.Now()
		for range *threads {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var ids []int32
				n := 0
				for d := range next {
					ids = tok.Encode(ids[:0], d)
					n += len(ids)
				}
				mu.Lock()
				total += int64(n)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return int(total), time.Since(t0)
	}
	encodeAll() // warm up: caches, page faults
	best := time.Duration(1<<63 - 1)
	var tokens int
	for range *rounds {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, d := encodeAll()
		tokens = n
		best = min(best, d)
	}
	b, _ := json.Marshal(map[string]any{"impl": "loom", "tokenizer": tok.Name(), "bytes": len(text), "tokens": tokens,
		"seconds": best.Seconds(), "mb_per_s": float64(len(text)) / 1e6 / best.Seconds(), "threads": *threads})
	fmt.Fprintf(env.stdout, "%s\n", b)
	return nil
}

// modelTokenizer finds the tokenizer of a model: --tokenizer when given;
// else the model directory's tokenizer.json (a Hugging Face directory, or
// one `loom export` wrote); else the tokenizer recorded in the sidecar of
// the first token file of the job spec saved with the model (its hash
// checked); else the byte tokenizer for a 258-token model.
func modelTokenizer(env *cmdEnv, modelDir, flagValue string, vocab int) (data.Tokenizer, error) {
	check := func(t data.Tokenizer, from string) (data.Tokenizer, error) {
		if t.VocabSize() > vocab {
			return nil, fmt.Errorf("tokenizer %s (from %s) has %d tokens, more than the model's vocabulary of %d: pass the model's own with --tokenizer", t.Name(), from, t.VocabSize(), vocab)
		}
		return t, nil
	}
	if flagValue != "" {
		t, err := data.LoadTokenizer(flagValue)
		if err != nil {
			return nil, err
		}
		return check(t, "--tokenizer")
	}
	if _, err := os.Stat(filepath.Join(modelDir, "tokenizer.json")); err == nil {
		t, err := data.LoadTokenizer(modelDir)
		if err != nil {
			return nil, err
		}
		return check(t, modelDir)
	}
	if spec, ok := savedSpec(modelDir); ok {
		src := spec.Data.SourceList()[0].Path
		if _, err := os.Stat(data.SidecarPath(src)); err == nil {
			t, err := sidecarTokenizer(src)
			if err != nil {
				return nil, fmt.Errorf("the tokenizer of %s, which trained %s: %w", src, modelDir, err)
			}
			fmt.Fprintf(env.stderr, "loom: tokenizer %s (recorded for %s)\n", t.Name(), src)
			return check(t, src)
		}
	}
	if vocab == data.ByteVocab {
		return data.ByteTokenizer{}, nil
	}
	return nil, fmt.Errorf("no tokenizer found for %s (vocabulary %d): no tokenizer.json beside it and no token file of its job spec to read one from; pass --tokenizer", modelDir, vocab)
}

// savedSpec returns the job spec saved with a model: the final model's
// loom-job.yaml, or a sharded checkpoint's manifest.
func savedSpec(dir string) (api.JobSpec, bool) {
	if spec, err := api.LoadSpec(filepath.Join(dir, checkpoint.JobFile)); err == nil {
		return spec, true
	}
	if m, err := checkpoint.ReadManifest(dir); err == nil && m.Spec != "" {
		if spec, err := api.ParseSpec([]byte(m.Spec), dir); err == nil {
			return spec, true
		}
	}
	return api.JobSpec{}, false
}

// writeTokenizerFiles writes tok into a model directory as Hugging Face
// expects it: tokenizer.json, and tokenizer_config.json naming the special
// tokens. The byte tokenizer is written as the equivalent byte-level BPE.
func writeTokenizerFiles(dir string, tok data.Tokenizer) error {
	bt, ok := tok.(*tokenizer.Tokenizer)
	if !ok {
		if _, isByte := tok.(data.ByteTokenizer); !isByte {
			return fmt.Errorf("tokenizer %s has no tokenizer.json form", tok.Name())
		}
		var err error
		if bt, err = tokenizer.Bytes(); err != nil {
			return err
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "tokenizer.json"), bt.JSON()); err != nil {
		return err
	}
	cfg := map[string]any{"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false}
	for key, id := range map[string]int32{"bos_token": bt.BOS(), "eos_token": bt.EOS(), "pad_token": bt.Pad()} {
		if id >= 0 {
			cfg[key] = bt.IDToken(id)
		}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, "tokenizer_config.json"), append(b, '\n'))
}

// specTokenizer is the tokenizer a job's first token file was prepared
// with, or the byte tokenizer when it cannot be loaded (said on stderr).
func specTokenizer(env *cmdEnv, spec api.JobSpec) data.Tokenizer {
	t, err := sidecarTokenizer(spec.Data.SourceList()[0].Path)
	if err != nil {
		fmt.Fprintf(env.stderr, "loom: sampling with the byte tokenizer: %v\n", err)
		return data.ByteTokenizer{}
	}
	return t
}

// sidecarTokenizer loads the tokenizer the token file at path was
// prepared with, as its sidecar records it (hash checked).
func sidecarTokenizer(path string) (data.Tokenizer, error) {
	f, err := os.Open(data.SidecarPath(path))
	if err != nil {
		return nil, fmt.Errorf("the sidecar of %s: %w", path, err)
	}
	meta, err := data.DecodeMeta(f, data.SidecarPath(path))
	f.Close()
	if err != nil {
		return nil, err
	}
	return data.TokenizerOf(meta)
}

// printSampleWith prints a continuation of prompt by the trained model.
func printSampleWith(env *cmdEnv, m *model.Model, tok data.Tokenizer, prompt string, n int) error {
	text, err := sampleWith(m, tok, prompt, n, model.SampleOptions{Temperature: 0.8, TopK: 40, Seed: 1})
	if err != nil {
		return fmt.Errorf("run: sample: %w", err)
	}
	fmt.Fprintf(env.stdout, "\nsample (temperature 0.8, top-k 40):\n%s\n", text)
	return nil
}
