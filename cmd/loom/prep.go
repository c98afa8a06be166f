package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/loomtrain/loom/data"
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdPrep(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "prep", "INPUT... --out FILE [flags]\n\n"+
		"Tokenizes text files, directories (recursively, sorted) and JSONL files (.jsonl,\n"+
		"one document per line from its \"text\" field) into FILE, a little-endian array of\n"+
		"uint16 tokens (uint32 for vocabularies over 65,536) as nanoGPT's train.bin, with\n"+
		"the sidecar FILE.json (which records the tokenizer and its SHA-256). Each file or\n"+
		"JSONL line is one document, ended by EOS. Output is the same for any --workers.")
	out := fs.String("out", "", "token file to write (required); the sidecar is `FILE`.json")
	var include stringList
	fs.Var(&include, "include", "take only files under directories whose name or relative path matches `GLOB`, e.g. '*.go' (repeatable; default: every non-hidden file without NUL bytes)")
	workers := fs.Int("workers", runtime.GOMAXPROCS(0), "encoding goroutines")
	tokName := fs.String("tokenizer", "byte", "tokenizer: "+strings.Join(data.TokenizerNames(), ", ")+", or the path of a tokenizer.json, a Hugging Face model directory or a tiktoken file")
	chunk := fs.Int("chunk-bytes", 0, "stream plain files larger than this in chunks cut where the ids cannot change (0: 1 MiB)")
	goSrc := fs.Bool("go-src", false, "add the Go standard library sources, $(go env GOROOT)/src, with --include '*.go'")
	quiet := fs.Bool("quiet", false, "show no progress on stderr")

	inputs, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *goSrc {
		in, inc, err := data.GoSourceInputs(ctx)
		if err != nil {
			return fmt.Errorf("prep: %w", err)
		}
		inputs = append(inputs, in...)
		include = append(include, inc...)
	}
	if *out == "" || len(inputs) == 0 {
		fs.Usage()
		return fmt.Errorf("prep: need at least one INPUT and --out FILE")
	}
	tok, err := data.LoadTokenizer(*tokName)
	if err != nil {
		return fmt.Errorf("prep: --tokenizer: %w", err)
	}
	cfg := data.PrepConfig{
		Inputs:     inputs,
		Include:    include,
		Out:        *out,
		Tokenizer:  tok,
		Workers:    *workers,
		ChunkBytes: *chunk,
	}
	var bar *progressBar
	if !*quiet {
		bar = newProgressBar(env.stderr)
		cfg.Progress = bar.update
		cfg.ProgressInterval = bar.interval
	}
	meta, st, err := data.Prep(ctx, cfg)
	if err != nil {
		return err // already says "data: prep: …" and names the file
	}
	secs := st.Elapsed.Seconds()
	fmt.Fprintf(env.stdout, "prep: %d documents, %d tokens (%d-byte, vocabulary %d, %.2f bytes/token), %d bytes from %d files (%d binary skipped) in %.2fs, %.1f MB/s -> %s\n",
		meta.Documents, meta.Tokens, meta.TokenBytes, meta.VocabSize, float64(st.Bytes)/float64(max(meta.Tokens, 1)), st.Bytes, st.Files, st.Skipped, secs, float64(st.Bytes)/1e6/max(secs, 1e-9), *out)
	return nil
}

// progressBar draws prep's progress: a redrawn bar on a terminal, an
// occasional plain line otherwise.
type progressBar struct {
	w        io.Writer
	tty      bool
	interval time.Duration
	last     time.Time
}

func newProgressBar(w io.Writer) *progressBar {
	p := &progressBar{w: w, interval: 10 * time.Second}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty, p.interval = true, 100*time.Millisecond
		}
	}
	return p
}

func (p *progressBar) update(st data.PrepStats) {
	mbps := float64(st.Bytes) / 1e6 / max(st.Elapsed.Seconds(), 1e-9)
	if !p.tty {
		if !st.Done {
			fmt.Fprintf(p.w, "prep: %d files, %d documents, %d tokens, %.1f MB/s\n", st.Files, st.Documents, st.Tokens, mbps)
		}
		return
	}
	const width = 30
	var line string
	if st.TotalBytes > 0 {
		frac := min(float64(st.Bytes)/float64(st.TotalBytes), 1)
		n := int(frac * width)
		line = fmt.Sprintf("[%s%s] %5.1f%%", strings.Repeat("=", n), strings.Repeat(" ", width-n), 100*frac)
	} else {
		line = "[counting input…]"
	}
	fmt.Fprintf(p.w, "\r%s %d docs %d tokens %.1f MB/s ", line, st.Documents, st.Tokens, mbps)
	if st.Done {
		fmt.Fprintln(p.w)
	}
}
