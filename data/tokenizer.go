package data

import (
	"fmt"
	"sort"
	"strings"
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

// TokenizerNames lists the names [TokenizerByName] accepts.
func TokenizerNames() []string {
	names := []string{ByteTokenizer{}.Name()}
	sort.Strings(names)
	return names
}

// TokenizerByName returns the tokenizer a sidecar or a flag names.
func TokenizerByName(name string) (Tokenizer, error) {
	switch name {
	case "byte":
		return ByteTokenizer{}, nil
	}
	return nil, fmt.Errorf("data: unknown tokenizer %q (known: %s)", name, strings.Join(TokenizerNames(), ", "))
}
