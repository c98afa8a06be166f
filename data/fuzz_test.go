package data

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func validSidecar(tokens []byte, vocab int) []byte {
	sum := sha256.Sum256(tokens)
	b, _ := EncodeMeta(Meta{Format: sidecarFormat, Version: FormatVersion, VocabSize: vocab, TokenBytes: TokenWidth(vocab),
		Tokens: int64(len(tokens) / TokenWidth(vocab)), Documents: 1, Tokenizer: "byte", SHA256: hex.EncodeToString(sum[:])})
	return b
}

// FuzzOpen feeds arbitrary token files and sidecars to Open, Verify and a
// loader: any outcome but a panic or an unclassified corruption error is
// fine.
func FuzzOpen(f *testing.F) {
	tok := []byte{1, 0, 2, 0, 3, 0, 0, 1, 4, 0}
	f.Add(tok, validSidecar(tok, 258), 2)
	f.Add(tok, validSidecar(tok, 1<<17), 1)
	f.Add(tok[:9], validSidecar(tok, 258), 3)
	f.Add([]byte{}, validSidecar(nil, 258), 1)
	f.Add(tok, []byte(`{"format":"loom-tokens","version":1}`), 1)
	f.Add(tok, []byte(`{"format":"loom-tokens"} {}`), 1)
	f.Add(tok, []byte(`null`), 1)
	f.Fuzz(func(t *testing.T, tokens, sidecar []byte, seqLen int) {
		dir := t.TempDir()
		path := filepath.Join(dir, "f.bin")
		if err := os.WriteFile(path, tokens, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(SidecarPath(path), sidecar, 0o644); err != nil {
			t.Fatal(err)
		}
		file, err := Open(path)
		if err != nil {
			return
		}
		defer file.Close()
		verr := file.Verify(context.Background())
		if verr != nil && !errors.Is(verr, ErrCorrupt) {
			t.Fatalf("Verify: unclassified error %v", verr)
		}
		seqLen = 1 + (seqLen&0xff)%8
		l, err := NewLoader(file, LoaderConfig{SeqLen: seqLen, Shuffle: true, Seed: uint64(len(tokens))})
		if err != nil {
			return
		}
		in := make([]int32, seqLen)
		tg := make([]int32, seqLen)
		bad := false
		for w := range l.NumWindows() {
			if err := l.FillWindow(w, in, tg); err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("FillWindow: unclassified error %v", err)
				}
				bad = true
			}
		}
		if bad && verr == nil {
			t.Fatal("FillWindow found a bad token that Verify passed")
		}
	})
}

// FuzzDecodeMeta checks that a sidecar that decodes also re-encodes to one
// that decodes to the same value.
func FuzzDecodeMeta(f *testing.F) {
	f.Add(validSidecar([]byte{1, 0}, 258))
	f.Add([]byte(`{"format":"loom-tokens","version":1,"vocab_size":70000,"token_bytes":4,"tokens":0,"documents":0,"tokenizer":"x","sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}`))
	f.Add([]byte(`{"format":"loom-tokens","extra":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(bytes.NewReader(b), "fuzz.json")
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		enc, err := EncodeMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := DecodeMeta(bytes.NewReader(enc), "fuzz.json")
		if err != nil || m2 != m {
			t.Fatalf("re-decode: %+v, %v; want %+v", m2, err, m)
		}
	})
}
