package data

import (
	"bytes"
	"testing"
)

func TestByteTokenizerRoundTrip(t *testing.T) {
	var tok Tokenizer = ByteTokenizer{}
	text := []byte("héllo\x00\xff world")
	ids := tok.Encode(nil, text)
	if len(ids) != len(text) {
		t.Fatalf("Encode gave %d ids for %d bytes", len(ids), len(text))
	}
	ids = append([]int32{tok.BOS()}, append(ids, tok.EOS())...)
	got, err := tok.Decode(nil, ids)
	if err != nil || !bytes.Equal(got, text) {
		t.Fatalf("Decode = %q, %v; want %q", got, err, text)
	}
	if tok.VocabSize() != 258 || tok.BOS() != 256 || tok.EOS() != 257 || tok.Name() != "byte" {
		t.Fatalf("byte tokenizer constants wrong: %d %d %d %q", tok.VocabSize(), tok.BOS(), tok.EOS(), tok.Name())
	}
	for _, bad := range []int32{-1, 258, 1 << 20} {
		if _, err := tok.Decode(nil, []int32{65, bad}); err == nil {
			t.Errorf("Decode(%d) succeeded, want an error", bad)
		}
	}
	if _, err := TokenizerByName("bpe-nope"); err == nil {
		t.Error("TokenizerByName of an unknown name succeeded")
	}
}
