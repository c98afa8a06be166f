package data

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/tokenizer"
)

// testBPE trains a small byte-level BPE on text and writes its
// tokenizer.json into dir.
func testBPE(t *testing.T, dir, text string, vocab int) (string, *tokenizer.Tokenizer) {
	t.Helper()
	c, err := tokenizer.NewCounter("")
	if err != nil {
		t.Fatal(err)
	}
	c.Add([]byte(text))
	tok, err := tokenizer.Train(context.Background(), tokenizer.TrainConfig{VocabSize: vocab, ByteAlphabet: true,
		SpecialTokens: []string{"<|begin_of_text|>", "<|end_of_text|>"}}, c)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "tok.json")
	if err := os.WriteFile(p, tok.JSON(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, tok
}

// synthText is a deterministic multi-line text of about n bytes.
func synthText(n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "func f%d(x int) int {\n\treturn x*%d + %d // the %dth line, naïve café 中文\n}\n\n", i, i%7, i%13, i)
		if i%3 == 0 {
			b.WriteString("Prose follows the code.\nIt wraps at short lines,\nas a README would.\n")
		}
		if i%5 == 0 {
			b.WriteString("    indented   text   with runs of spaces      \n")
		}
	}
	return b.String()
}

// Streaming a large document in chunks cut where the tokenizer allows
// gives exactly the ids of encoding it whole, for any worker count, and
// holds only a bounded amount of input in memory.
func TestPrepChunksLargeFilesExactly(t *testing.T) {
	dir := t.TempDir()
	text := synthText(600 << 10)
	tokPath, _ := testBPE(t, dir, text[:60<<10], 600)
	src := filepath.Join(dir, "big.txt")
	if err := os.WriteFile(src, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(dir, "small.txt")
	if err := os.WriteFile(small, []byte("a short document\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tokName := range []string{"byte", tokPath} {
		tok, err := LoadTokenizer(tokName)
		if err != nil {
			t.Fatal(err)
		}
		whole, _ := prepFile(t, PrepConfig{Inputs: []string{src, small}, Out: filepath.Join(dir, "whole.bin"), Tokenizer: tok, Workers: 1, ChunkBytes: 1 << 30})
		for _, workers := range []int{1, 3} {
			out := filepath.Join(dir, fmt.Sprintf("chunked%d.bin", workers))
			m, st := prepFile(t, PrepConfig{Inputs: []string{src, small}, Out: out, Tokenizer: tok, Workers: workers, ChunkBytes: 8 << 10})
			if m.SHA256 != whole.SHA256 || m.Tokens != whole.Tokens || m.Documents != 2 {
				t.Fatalf("%s, %d workers: chunked prep gave %d tokens (sha %s…), whole %d (sha %s…)", tokName, workers, m.Tokens, m.SHA256[:8], whole.Tokens, whole.SHA256[:8])
			}
			// At most the window (4 per worker) of chunks, each at most a
			// few times the chunk size while looking for a cut.
			if limit := int64(4*workers+2) * 4 * (8 << 10); st.PeakBufferedBytes > limit || st.PeakBufferedBytes == 0 {
				t.Fatalf("%s, %d workers: %d bytes of input held at once, want ≤ %d for a %d-byte file", tokName, workers, st.PeakBufferedBytes, limit, len(text))
			}
		}
		if tokName != "byte" {
			if whole.TokenizerSHA256 == "" || whole.Tokenizer != tokPath {
				t.Fatalf("sidecar records tokenizer %q sha %q", whole.Tokenizer, whole.TokenizerSHA256)
			}
			f, err := Open(filepath.Join(dir, "whole.bin"))
			if err != nil {
				t.Fatal(err)
			}
			back, err := TokenizerOf(f.Meta())
			f.Close()
			if err != nil || back.Name() != tok.Name() {
				t.Fatalf("TokenizerOf: %v", err)
			}
		}
	}
}

// A tokenizer file changed after prep is detected by its hash.
func TestTokenizerOfDetectsChangedFile(t *testing.T) {
	dir := t.TempDir()
	tokPath, _ := testBPE(t, dir, synthText(20<<10), 400)
	tok, err := LoadTokenizer(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "a.txt")
	os.WriteFile(src, []byte("hello world\n"), 0o644)
	m, _ := prepFile(t, PrepConfig{Inputs: []string{src}, Out: filepath.Join(dir, "a.bin"), Tokenizer: tok})
	testBPE(t, dir, synthText(30<<10)+"different", 400)
	if _, err := TokenizerOf(m); err == nil || !strings.Contains(err.Error(), "changed since") {
		t.Fatalf("want a changed-tokenizer error, got %v", err)
	}
	if _, err := LoadTokenizer(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("LoadTokenizer of a missing file succeeded")
	}
}
