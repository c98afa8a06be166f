package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The BPE path end to end: train a tokenizer, prep with it, train a model
// whose vocabulary is the tokenizer's, then eval (on text, with bits per
// byte), sample and export with the tokenizer found from the model alone.
func TestTokenizerTrainPrepRunExport(t *testing.T) {
	dir := t.TempDir()
	corpus := filepath.Join(dir, "corpus")
	if err := os.MkdirAll(corpus, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		var b strings.Builder
		for j := range 60 {
			fmt.Fprintf(&b, "func f%d(x int) int { return x * %d } // the %s line\n", j, i, []string{"first", "next", "last"}[j%3])
		}
		os.WriteFile(filepath.Join(corpus, fmt.Sprintf("f%d.go", i)), []byte(b.String()), 0o644)
	}
	tokPath := filepath.Join(dir, "tok.json")
	out, _, err := loom(t, "tokenizer", "train", corpus, "--vocab-size", "300", "--out", tokPath, "--quiet")
	if err != nil || !strings.Contains(out, "300 tokens") {
		t.Fatalf("tokenizer train: %q %v", out, err)
	}
	out, _, err = loom(t, "tokenizer", "encode", "--tokenizer", tokPath, "return x * 3 } // héllo")
	if err != nil {
		t.Fatal(err)
	}
	back, _, err := loom(t, "tokenizer", "decode", "--tokenizer", tokPath, strings.TrimSpace(out))
	if err != nil || strings.TrimSpace(back) != "return x * 3 } // héllo" {
		t.Fatalf("decode(encode(x)) = %q, %v", back, err)
	}
	if out, _, err = loom(t, "tokenizer", "info", "--tokenizer", tokPath); err != nil || !strings.Contains(out, "vocabulary 300") || !strings.Contains(out, "eos        1") {
		t.Fatalf("info: %q %v", out, err)
	}
	tokens := filepath.Join(dir, "tok.bin")
	if out, _, err = loom(t, "prep", corpus, "--tokenizer", tokPath, "--out", tokens, "--quiet"); err != nil || !strings.Contains(out, "vocabulary 300") {
		t.Fatalf("prep: %q %v", out, err)
	}
	spec := filepath.Join(dir, "job.yaml")
	y := "name: bpe\nmodel: {vocab_size: 300, dim: 32, n_layers: 1, n_heads: 4, n_kv_heads: 2, ffn_hidden: 64, seq_len: 16}\n" +
		"data: {path: " + tokens + "}\ntrain: {steps: 4, global_batch: 4, micro_batch: 2, warmup_steps: 1}\n" +
		"checkpoint: {dir: " + filepath.Join(dir, "ck") + "}\n"
	os.WriteFile(spec, []byte(y), 0o644)
	if _, _, err := loom(t, "run", spec, "--log-format", "json", "--threads", "1"); err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(dir, "ck", "bpe", "final")
	out, _, err = loom(t, "eval", "--model", final, "--text", filepath.Join(corpus, "f0.go"), "--log-format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil || raw["bits_per_byte"] == nil || raw["tokenizer"] != tokPath {
		t.Fatalf("eval --text: %q (%v)", out, err)
	}
	out, _, err = loom(t, "sample", "--model", final, "--prompt", "func f", "--max-tokens", "5")
	if err != nil || !strings.HasPrefix(out, "func f") {
		t.Fatalf("sample: %q %v", out, err)
	}
	hfDir := filepath.Join(dir, "hf")
	if _, _, err := loom(t, "export", "--model", final, "--out", hfDir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(hfDir, "tokenizer.json"))
	want, _ := os.ReadFile(tokPath)
	if err != nil || string(b) != string(want) {
		t.Fatalf("exported tokenizer.json differs from the trained one (%v)", err)
	}
	var cfg map[string]any
	b, _ = os.ReadFile(filepath.Join(hfDir, "tokenizer_config.json"))
	if json.Unmarshal(b, &cfg) != nil || cfg["eos_token"] != "<|end_of_text|>" {
		t.Fatalf("tokenizer_config.json: %s", b)
	}
	// The exported directory carries its tokenizer: sample finds it there.
	if out, _, err = loom(t, "sample", "--model", hfDir, "--prompt", "return", "--max-tokens", "3"); err != nil || !strings.HasPrefix(out, "return") {
		t.Fatalf("sample from export: %q %v", out, err)
	}
	// A byte model exports the byte tokenizer as a tokenizer.json.
	bspec, _ := fixture(t, "")
	if _, _, err := loom(t, "run", bspec, "--log-format", "json", "--threads", "1"); err != nil {
		t.Fatal(err)
	}
	bdir := filepath.Join(dir, "hf-byte")
	if _, _, err := loom(t, "export", "--model", filepath.Join(filepath.Dir(bspec), "ck", "t", "final"), "--out", bdir); err != nil {
		t.Fatal(err)
	}
	if out, _, err = loom(t, "tokenizer", "info", "--tokenizer", bdir); err != nil || !strings.Contains(out, "vocabulary 258") {
		t.Fatalf("byte export's tokenizer: %q %v", out, err)
	}
}
