package data

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/loomtrain/loom/tokenizer"
)

// Tokenizer turns text into token ids and back. Implementations must be
// safe for concurrent use: prep calls Encode from many goroutines.
type Tokenizer interface {
	// Name identifies the tokenizer in token file sidecars (e.g. "byte").
	Name() string
	// VocabSize is the number of distinct ids; every id is in [0, VocabSize).
	VocabSize() int
	// BOS is the beginning-of-sequence id.
	BOS() int32
	// EOS is the end-of-sequence id; prep appends it after every document.
	EOS() int32
	// Encode appends the ids of text to dst and returns the extended slice.
	// It adds no special ids.
	Encode(dst []int32, text []byte) []int32
	// Decode appends the text of ids to dst and returns the extended slice.
	// Special ids (BOS, EOS) produce no text; an id outside the vocabulary
	// is an error.
	Decode(dst []byte, ids []int32) ([]byte, error)
}

// ByteTokenizer is the byte-level tokenizer: byte b is id b, BOS is 256 and
// EOS is 257, for a vocabulary of 258. It is stateless and safe for
// concurrent use.
type ByteTokenizer struct{}

// Byte tokenizer special ids and vocabulary size.
const (
	ByteBOS   int32 = 256
	ByteEOS   int32 = 257
	ByteVocab       = 258
)

// Name returns "byte".
func (ByteTokenizer) Name() string { return "byte" }

// VocabSize returns 258.
func (ByteTokenizer) VocabSize() int { return ByteVocab }

// BOS returns 256.
func (ByteTokenizer) BOS() int32 { return ByteBOS }

// EOS returns 257.
func (ByteTokenizer) EOS() int32 { return ByteEOS }

// Encode appends one id per byte of text.
func (ByteTokenizer) Encode(dst []int32, text []byte) []int32 {
	dst = grow(dst, len(text))
	for _, b := range text {
		dst = append(dst, int32(b))
	}
	return dst
}

// Decode appends the byte of every id below 256, skips BOS and EOS, and
// fails on any other id.
func (ByteTokenizer) Decode(dst []byte, ids []int32) ([]byte, error) {
	for i, id := range ids {
		switch {
		case id >= 0 && id < 256:
			dst = append(dst, byte(id))
		case id == ByteBOS || id == ByteEOS:
		default:
			return dst, fmt.Errorf("data: byte tokenizer: id %d at position %d is outside the vocabulary [0, %d)", id, i, ByteVocab)
		}
	}
	return dst, nil
}

func grow(dst []int32, n int) []int32 {
	if cap(dst)-len(dst) < n {
		nd := make([]int32, len(dst), len(dst)+n)
		copy(nd, dst)
		dst = nd
	}
	return dst
}

// TokenizerNames lists the built-in tokenizers [LoadTokenizer] accepts by
// name; anything else is a path.
func TokenizerNames() []string {
	names := []string{ByteTokenizer{}.Name()}
	sort.Strings(names)
	return names
}

// TokenizerByName returns a built-in tokenizer.
func TokenizerByName(name string) (Tokenizer, error) {
	switch name {
	case "byte":
		return ByteTokenizer{}, nil
	}
	return nil, fmt.Errorf("data: unknown tokenizer %q (known: %s, or the path of a tokenizer.json, a Hugging Face model directory or a tiktoken file)", name, strings.Join(TokenizerNames(), ", "))
}

// Hashed is a tokenizer whose definition has a content hash (a file's),
// which prep records in the sidecar.
type Hashed interface {
	SHA256() string
}

// Cutter is a tokenizer that can say where a long document may be cut so
// that encoding the parts gives the ids of the whole (see
// tokenizer.Tokenizer.SafeCut); prep streams such documents in chunks.
type Cutter interface {
	SafeCut(text []byte) int
}

// SafeCut returns len(text)−1 or −1: the byte tokenizer encodes each byte
// alone, so any cut is safe.
func (ByteTokenizer) SafeCut(text []byte) int {
	if len(text) < 2 {
		return -1
	}
	return len(text) - 1
}

// LoadTokenizer returns the tokenizer spec names: a built-in name
// ("byte"), or the path of a Hugging Face tokenizer.json, a model
// directory holding one (with tokenizer_config.json's special tokens), or
// a tiktoken rank file. A file's tokenizer is named by its absolute path.
func LoadTokenizer(spec string) (Tokenizer, error) {
	if spec == "" {
		return nil, errors.New("data: empty tokenizer name: use \"byte\" or a tokenizer file")
	}
	if t, err := TokenizerByName(spec); err == nil {
		return t, nil
	}
	if _, err := os.Stat(spec); err != nil {
		return nil, fmt.Errorf("data: tokenizer %q is neither built in (%s) nor a readable file: %w", spec, strings.Join(TokenizerNames(), ", "), err)
	}
	abs, err := filepath.Abs(spec)
	if err != nil {
		return nil, fmt.Errorf("data: tokenizer %s: %w", spec, err)
	}
	t, err := tokenizer.Load(abs)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	if t.EOS() < 0 {
		return nil, fmt.Errorf("data: tokenizer %s has no end-of-sequence token (none of <|end_of_text|>, </s>, <|endoftext|>, <eos> is an added token): add one, or set eos_token in tokenizer_config.json beside it", abs)
	}
	return t, nil
}

// TokenizerOf returns the tokenizer a token file was prepared with, as its
// sidecar records it, and checks the recorded hash.
func TokenizerOf(m Meta) (Tokenizer, error) {
	t, err := LoadTokenizer(m.Tokenizer)
	if err != nil {
		return nil, err
	}
	if h, ok := t.(Hashed); ok && m.TokenizerSHA256 != "" && h.SHA256() != m.TokenizerSHA256 {
		return nil, fmt.Errorf("data: tokenizer %s has SHA-256 %s, but the token file was prepared with %s: the tokenizer changed since `loom prep` (restore it or re-run prep)", m.Tokenizer, h.SHA256(), m.TokenizerSHA256)
	}
	if t.VocabSize() != m.VocabSize {
		return nil, fmt.Errorf("data: tokenizer %s has %d tokens, the token file's sidecar says %d: re-run `loom prep`", m.Tokenizer, t.VocabSize(), m.VocabSize)
	}
	return t, nil
}
