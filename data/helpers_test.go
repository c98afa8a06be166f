package data

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// writeTree creates files (relative slash paths → contents) under dir.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// prepFile runs Prep and fails the test on error.
func prepFile(t *testing.T, cfg PrepConfig) (Meta, PrepStats) {
	t.Helper()
	m, st, err := Prep(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Prep: %v", err)
	}
	return m, st
}

// readAll returns every token of the file at path.
func readAll(t *testing.T, path string) []int32 {
	t.Helper()
	f, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer f.Close()
	toks := make([]int32, f.Len())
	if err := f.ReadTokens(toks, 0); err != nil {
		t.Fatal(err)
	}
	return toks
}

// byteDocs returns the expected byte-tokenizer stream of docs.
func byteDocs(docs ...string) []int32 {
	var out []int32
	for _, d := range docs {
		for _, b := range []byte(d) {
			out = append(out, int32(b))
		}
		out = append(out, ByteEOS)
	}
	return out
}
