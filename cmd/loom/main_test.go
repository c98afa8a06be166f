package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// loom runs a command in-process and returns its stdout, stderr and error.
func loom(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := dispatch(context.Background(), &cmdEnv{stdout: &out, stderr: &errb}, args)
	return out.String(), errb.String(), err
}

// fixture prepares a small corpus and a job spec training on it; it returns
// the spec's path and the token file's.
func fixture(t *testing.T, extra string) (spec, tokens string) {
	t.Helper()
	dir := t.TempDir()
	var b strings.Builder
	for i := 0; i < 300; i++ {
		b.WriteString("for i := 0; i < n; i++ { sum += i }\n")
	}
	src := filepath.Join(dir, "corpus.txt")
	if err := os.WriteFile(src, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	tokens = filepath.Join(dir, "tok.bin")
	if _, _, err := loom(t, "prep", src, "--out", tokens, "--quiet"); err != nil {
		t.Fatal(err)
	}
	spec = filepath.Join(dir, "job.yaml")
	y := "name: t\nmodel: {dim: 32, n_layers: 1, n_heads: 4, n_kv_heads: 2, ffn_hidden: 64, seq_len: 16}\n" +
		"data: {path: " + tokens + "}\ntrain: {steps: 6, global_batch: 4, micro_batch: 2, warmup_steps: 1}\n" +
		"checkpoint: {dir: " + filepath.Join(dir, "ck") + "}\n" + extra
	if err := os.WriteFile(spec, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	return spec, tokens
}

func TestRunEvalSampleExport(t *testing.T) {
	spec, tokens := fixture(t, "")
	out, _, err := loom(t, "run", spec, "--log-format", "json", "--threads", "1")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 {
		t.Fatalf("want 6 JSON lines, got %d:\n%s", len(lines), out)
	}
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		for _, k := range []string{"step", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed_s"} {
			if _, ok := rec[k]; !ok {
				t.Fatalf("line %q lacks %q", l, k)
			}
		}
	}
	final := filepath.Join(filepath.Dir(spec), "ck", "t", "final")
	out, _, err = loom(t, "eval", "--model", final, "--data", tokens, "--log-format", "json", "--max-windows", "10")
	if err != nil {
		t.Fatal(err)
	}
	var ev struct {
		Loss   float64 `json:"loss"`
		Tokens int     `json:"tokens"`
	}
	if err := json.Unmarshal([]byte(out), &ev); err != nil || ev.Tokens != 160 || !(ev.Loss > 0 && ev.Loss < 6) {
		t.Fatalf("eval output %q (%v)", out, err)
	}
	out, _, err = loom(t, "sample", "--model", final, "--prompt", "for ", "--max-tokens", "10", "--seed", "3")
	if err != nil || !strings.HasPrefix(out, "for ") {
		t.Fatalf("sample: %q %v", out, err)
	}
	hfDir := filepath.Join(t.TempDir(), "hf")
	if _, _, err := loom(t, "export", "--model", final, "--out", hfDir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "model.safetensors"} {
		if _, err := os.Stat(filepath.Join(hfDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	// Continued pretraining from the exported directory.
	if _, _, err := loom(t, "run", spec, "--init", hfDir, "--log-format", "json"); err != nil {
		t.Fatalf("run --init: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	spec, tokens := fixture(t, "")
	dir := filepath.Dir(spec)
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	specText, _ := os.ReadFile(spec)
	truncated := write("trunc.bin", "abc")
	if b, err := os.ReadFile(tokens + ".json"); err == nil {
		write("trunc.bin.json", string(b))
	}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"no args", []string{"run"}, []string{"JOB.yaml"}},
		{"unknown command", []string{"runn"}, []string{`unknown command "runn"`}},
		{"missing spec", []string{"run", filepath.Join(dir, "nope.yaml")}, []string{"nope.yaml", "no such file"}},
		{"malformed", []string{"run", write("bad.yaml", "model: [1,\n")}, []string{"bad.yaml", "malformed YAML"}},
		{"unknown key", []string{"run", write("key.yaml", string(specText)+"trian: {}\n")}, []string{"key.yaml", "trian", "unknown key"}},
		{"tensor parallel", []string{"run", write("tp.yaml", string(specText)+"parallel: {tp: 3}\n")}, []string{"tp.yaml", "parallel.tp", "got 3", "must divide model.n_heads (4)", "must divide model.ffn_hidden (64)"}},
		{"pipeline parallel", []string{"run", write("pp.yaml", string(specText)+"parallel: {pp: 2}\n")}, []string{"parallel.pp", "must not exceed model.n_layers (1)"}},
		{"vocab", []string{"run", write("vocab.yaml", strings.Replace(string(specText), "dim: 32,", "dim: 32, vocab_size: 100,", 1))}, []string{"model.vocab_size = 100", "258"}},
		{"missing data", []string{"run", write("nodata.yaml", strings.Replace(string(specText), tokens, filepath.Join(dir, "none.bin"), 1))}, []string{"data.path", "none.bin"}},
		{"truncated data", []string{"run", write("trunc.yaml", strings.Replace(string(specText), tokens, truncated, 1))}, []string{"trunc.bin"}},
		{"eval no model", []string{"eval", "--model", dir, "--data", tokens}, []string{"config.json"}},
		{"bad log format", []string{"run", spec, "--log-format", "xml"}, []string{"--log-format", "xml"}},
		{"bad flag", []string{"run", spec, "--nope"}, []string{"nope"}},
		{"bad cpu list", []string{"worker", "--coordinator", "127.0.0.1:1", "--cpus", "3-1"}, []string{"--cpus", "3-1", "low ≤ high"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, err := loom(t, c.args...)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error() + stderr
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, c := range []string{"run", "prep", "eval", "sample", "export"} {
		_, stderr, err := loom(t, c, "--help")
		if err == nil || !strings.Contains(stderr, "Usage: loom "+c) {
			t.Errorf("%s --help: %v %q", c, err, stderr)
		}
	}
	out, _, err := loom(t, "--help")
	if err != nil || !strings.Contains(out, "Commands:") {
		t.Fatalf("--help: %v %q", err, out)
	}
}

// eval and sample read sharded training checkpoints as well as Hugging Face
// directories: a step directory, or a job's directory for its newest one.
func TestEvalSampleShardedCheckpoint(t *testing.T) {
	spec, tokens := fixture(t, "")
	src, _ := os.ReadFile(spec)
	s := strings.Replace(string(src), "checkpoint: {dir: ", "checkpoint: {every: 2, dir: ", 1)
	if err := os.WriteFile(spec, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loom(t, "run", spec, "--log-format", "json"); err != nil {
		t.Fatal(err)
	}
	jobDir := filepath.Join(filepath.Dir(spec), "ck", "t")
	for _, dir := range []string{jobDir, filepath.Join(jobDir, "step-4")} {
		out, stderr, err := loom(t, "eval", "--model", dir, "--data", tokens, "--max-windows", "4", "--log-format", "json")
		if err != nil || !strings.Contains(out, `"loss"`) || !strings.Contains(stderr, "step-") {
			t.Fatalf("eval --model %s: %v\n%s\n%s", dir, err, out, stderr)
		}
		if out, _, err := loom(t, "sample", "--model", dir, "--prompt", "for", "--max-tokens", "5"); err != nil || !strings.HasPrefix(out, "for") {
			t.Fatalf("sample --model %s: %v %q", dir, err, out)
		}
	}
}
