package tokenizer

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The reference tests run Hugging Face's tokenizers (the npm package's
// Node binding) and tiktoken (its Rust core as WASM) from scripts/tokref,
// which `scripts/setup.sh test` installs. Without them the tests skip,
// except under CI, where they fail.

func refDir(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "scripts", "tokref")
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(dir, "node_modules", "tokenizers"))
	}
	if err != nil || node == "" {
		msg := fmt.Sprintf("reference tokenizers not installed (%v): run scripts/setup.sh test", err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

func runRef(t *testing.T, args ...string) {
	t.Helper()
	dir := refDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{filepath.Join(dir, "ref.cjs")}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("node ref.cjs %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
}

// vocabs exports the npm packages' vocabularies once per test binary.
var vocabsOnce struct {
	sync.Once
	dir string
	err error
}

func exportedVocabs(t *testing.T) string {
	t.Helper()
	refDir(t)
	vocabsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "loom-tokref-*")
		if err != nil {
			vocabsOnce.err = err
			return
		}
		vocabsOnce.dir = dir
		cmd := exec.Command("node", filepath.Join(refDir(t), "ref.cjs"), "export", dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			vocabsOnce.err = fmt.Errorf("export: %v\n%s", err, out)
		}
	})
	if vocabsOnce.err != nil {
		t.Fatal(vocabsOnce.err)
	}
	return vocabsOnce.dir
}

type refOutput struct {
	IDs     [][]int32 `json:"ids"`
	Decoded []string  `json:"decoded"`
}

// compareWithRef encodes docs with tok and checks every document's ids
// against the reference output, and decode(encode(x)) = x.
func compareWithRef(t *testing.T, tok *Tokenizer, docs []string, ref refOutput, what string) {
	t.Helper()
	if len(ref.IDs) != len(docs) {
		t.Fatalf("%s: reference returned %d documents, want %d", what, len(ref.IDs), len(docs))
	}
	bad, tokens, nbytes := 0, 0, 0
	for i, d := range docs {
		got := tok.Encode(nil, []byte(d))
		tokens += len(got)
		nbytes += len(d)
		if !equalIDs(got, ref.IDs[i]) {
			bad++
			if bad <= 3 {
				j := firstDiff(got, ref.IDs[i])
				t.Errorf("%s: document %d (%d bytes, %q…): ids differ at token %d:\n  loom %v\n  ref  %v\n  loom pieces %q\n  ref pieces  %q",
					what, i, len(d), clip(d, 60), j, window(got, j), window(ref.IDs[i], j), pieces(tok, window(got, j)), pieces(tok, window(ref.IDs[i], j)))
			}
			continue
		}
		back, err := tok.DecodeAll(nil, got)
		if err != nil || string(back) != d {
			t.Errorf("%s: document %d: decode(encode(x)) != x (err %v): %q", what, i, err, clip(string(back), 80))
		}
		if ref.Decoded != nil && ref.Decoded[i] != d {
			t.Logf("%s: document %d: the reference's own decode differs from the input", what, i)
		}
	}
	if bad > 0 {
		t.Fatalf("%s: %d of %d documents differ", what, bad, len(docs))
	}
	t.Logf("%s: %d documents, %d bytes, %d tokens: ids identical", what, len(docs), nbytes, tokens)
}

func equalIDs(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func firstDiff(a, b []int32) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func window(a []int32, j int) []int32 { return a[max(0, j-3):min(len(a), j+5)] }

func pieces(tok *Tokenizer, ids []int32) []string {
	var s []string
	for _, id := range ids {
		b, _ := tok.DecodeAll(nil, []int32{id})
		s = append(s, string(b))
	}
	return s
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readRef(t *testing.T, path string) refOutput {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r refOutput
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func refCorpus() []string {
	docs := mixedCorpus(200 << 10)
	return append(docs, "before<|endoftext|>after <|begin_of_text|>x<|end_of_text|> <|fim_prefix|>")
}

// hfEncode runs Hugging Face's tokenizers on docs with the tokenizer.json at path.
func hfEncode(t *testing.T, path string, docs []string) refOutput {
	t.Helper()
	dir := t.TempDir()
	writeJSON(t, filepath.Join(dir, "corpus.json"), docs)
	runRef(t, "hf", path, filepath.Join(dir, "corpus.json"), filepath.Join(dir, "out.json"))
	return readRef(t, filepath.Join(dir, "out.json"))
}

func tiktokenEncode(t *testing.T, ranks, pattern string, specials map[string]int32, docs []string) refOutput {
	t.Helper()
	dir := t.TempDir()
	writeJSON(t, filepath.Join(dir, "corpus.json"), docs)
	writeJSON(t, filepath.Join(dir, "specials.json"), specials)
	runRef(t, "tiktoken", ranks, pattern, filepath.Join(dir, "specials.json"), filepath.Join(dir, "corpus.json"), filepath.Join(dir, "out.json"))
	return readRef(t, filepath.Join(dir, "out.json"))
}

func writeFile(t *testing.T, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestGPT2MatchesReference: the real GPT-2 vocabulary (tiktoken's gpt2
// ranks, which the npm package ships) as a tiktoken file against tiktoken,
// and converted to a tokenizer.json (ByteLevel, merges in rank order, as
// GPT-2's own) against Hugging Face.
func TestGPT2MatchesReference(t *testing.T) {
	t.Parallel()
	dir := exportedVocabs(t)
	docs := refCorpus()
	rankFile := filepath.Join(dir, "gpt2.tiktoken")
	b, err := os.ReadFile(rankFile)
	if err != nil {
		t.Fatal(err)
	}
	tt, err := ParseTiktoken(b, rankFile, TiktokenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tt.VocabSize() != 50257 || tt.EOS() != 50256 {
		t.Fatalf("gpt2: vocab %d, eos %d; want 50257, 50256", tt.VocabSize(), tt.EOS())
	}
	compareWithRef(t, tt, docs, tiktokenEncode(t, rankFile, PatternGPT2, map[string]int32{"<|endoftext|>": 50256}, docs), "gpt2 tiktoken")

	js := gpt2JSON(t, tt, b)
	hf, err := ParseJSON(js, "gpt2-tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, filepath.Join(t.TempDir(), "tokenizer.json"), js)
	compareWithRef(t, hf, docs, hfEncode(t, p, docs), "gpt2 tokenizer.json")
}

// gpt2JSON is GPT-2's tokenizer.json rebuilt from its ranks: ByteLevel
// pre-tokenizer and decoder, no ignore_merges, one merge per token above
// the bytes.
func gpt2JSON(t *testing.T, tt *Tokenizer, ranks []byte) []byte {
	t.Helper()
	var vocab [][]byte
	for _, l := range strings.Split(strings.TrimSpace(string(ranks)), "\n") {
		tok64, _, _ := strings.Cut(l, " ")
		raw, err := base64.StdEncoding.DecodeString(tok64)
		if err != nil {
			t.Fatal(err)
		}
		vocab = append(vocab, raw)
	}
	merges := tt.derivedMerges(vocab)
	if len(merges) != 50000 {
		t.Fatalf("gpt2: %d merges derived from the ranks, want 50000", len(merges))
	}
	js, err := hfWriter{vocab: vocab, merges: merges, added: []hfAdded{{ID: 50256, Content: "<|endoftext|>", Normalized: true, Special: true}}}.encode()
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestLlama3MatchesReference: the real LLaMA-3 vocabulary and merges
// (llama3-tokenizer-js ships them) as Meta's tokenizer.json lays them out
// (Split with LLaMA-3's regex, ByteLevel without regex, ignore_merges)
// against Hugging Face, and as a tiktoken file against tiktoken.
func TestLlama3MatchesReference(t *testing.T) {
	t.Parallel()
	dir := exportedVocabs(t)
	docs := refCorpus()
	raw, err := os.ReadFile(filepath.Join(dir, "llama3.json"))
	if err != nil {
		t.Fatal(err)
	}
	var l3 struct {
		Vocab    []string         `json:"vocab"`
		Merges   [][2]string      `json:"merges"`
		Specials map[string]int32 `json:"specials"`
	}
	if err := json.Unmarshal(raw, &l3); err != nil {
		t.Fatal(err)
	}
	if want := Llama3Specials(); !mapsEqual(want, l3.Specials) {
		t.Errorf("Llama3Specials differs from llama3-tokenizer-js's special tokens")
	}
	js := llama3JSON(t, l3.Vocab, l3.Merges, l3.Specials)
	p := writeFile(t, filepath.Join(t.TempDir(), "tokenizer.json"), js)
	hf, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if hf.VocabSize() != 128256 || hf.BOS() != 128000 || hf.EOS() != 128001 {
		t.Fatalf("llama3: vocab %d, bos %d, eos %d", hf.VocabSize(), hf.BOS(), hf.EOS())
	}
	compareWithRef(t, hf, docs, hfEncode(t, p, docs), "llama3 tokenizer.json")

	var tk strings.Builder
	for id, s := range l3.Vocab {
		b, ok := byteLevelBytes(s)
		if !ok {
			t.Fatalf("llama3 token %d %q is not byte-level", id, s)
		}
		fmt.Fprintf(&tk, "%s %d\n", base64.StdEncoding.EncodeToString(b), id)
	}
	rankFile := writeFile(t, filepath.Join(t.TempDir(), "tokenizer.model"), []byte(tk.String()))
	tt, err := Load(rankFile)
	if err != nil {
		t.Fatal(err)
	}
	compareWithRef(t, tt, docs, tiktokenEncode(t, rankFile, PatternLlama3, Llama3Specials(), docs), "llama3 tiktoken")
}

func mapsEqual(a, b map[string]int32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func llama3JSON(t *testing.T, vocab []string, merges [][2]string, specials map[string]int32) []byte {
	t.Helper()
	type added struct {
		ID         int32  `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	}
	var at []added
	for s, id := range specials {
		at = append(at, added{ID: id, Content: s, Special: true})
	}
	sort.Slice(at, func(i, j int) bool { return at[i].ID < at[j].ID })
	v := map[string]int32{}
	for id, s := range vocab {
		v[s] = int32(id)
	}
	f := map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil, "added_tokens": at, "normalizer": nil,
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]string{"Regex": PatternLlama3}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
		}},
		"post_processor": map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
		"decoder":        map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true, "vocab": v, "merges": merges},
	}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCL100KMatchesTiktoken: cl100k_base's ranks against tiktoken.
func TestCL100KMatchesTiktoken(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("short")
	}
	dir := exportedVocabs(t)
	docs := refCorpus()
	rankFile := filepath.Join(dir, "cl100k_base.tiktoken")
	tt, err := Load(rankFile)
	if err != nil {
		t.Fatal(err)
	}
	_, specials, _ := knownEncoding(100256)
	compareWithRef(t, tt, docs, tiktokenEncode(t, rankFile, PatternLlama3, specials, docs), "cl100k tiktoken")
}

// cl100k_base converted to a tokenizer.json (its unused ids filled with
// placeholders, as Hugging Face numbers added tokens consecutively) encodes
// as tiktoken does, under Hugging Face.
func TestCL100KConvertedMatchesHuggingFace(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	t.Parallel()
	dir := exportedVocabs(t)
	docs := refCorpus()
	tt, err := Load(filepath.Join(dir, "cl100k_base.tiktoken"))
	if err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, filepath.Join(t.TempDir(), "tokenizer.json"), tt.JSON())
	hf, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	ref := hfEncode(t, p, docs)
	compareWithRef(t, hf, docs, ref, "cl100k tokenizer.json")
	compareWithRef(t, tt, docs, ref, "cl100k tiktoken vs Hugging Face on the converted file")
}
