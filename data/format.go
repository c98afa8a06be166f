package data

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// FormatVersion is the token file format version prep writes and the
// loader accepts.
const FormatVersion = 1

// sidecarFormat is the magic string in every sidecar's "format" field.
const sidecarFormat = "loom-tokens"

// SidecarPath returns the sidecar path of the token file at path.
func SidecarPath(path string) string { return path + ".json" }

// ErrCorrupt is the class of every error about a token file or sidecar that
// is malformed, truncated or inconsistent; match it with errors.Is.
var ErrCorrupt = errors.New("corrupt token file")

// FormatError reports what is wrong with a token file or its sidecar. It
// unwraps to [ErrCorrupt].
type FormatError struct {
	Path    string // the token file or sidecar at fault
	Problem string // what is wrong, with the values found and expected
	Fix     string // what the user can do about it
}

// Error returns "data: PATH: PROBLEM (FIX)".
func (e *FormatError) Error() string {
	s := "data: " + e.Path + ": " + e.Problem
	if e.Fix != "" {
		s += " (" + e.Fix + ")"
	}
	return s
}

// Unwrap returns [ErrCorrupt].
func (e *FormatError) Unwrap() error { return ErrCorrupt }

const fixReprep = "re-run `loom prep` to regenerate the file and its sidecar"

// TokenWidth returns the bytes per token for a vocabulary: 2 when every id
// fits in a uint16 (vocab ≤ 65,536), else 4.
func TokenWidth(vocab int) int {
	if vocab <= 1<<16 {
		return 2
	}
	return 4
}

// Meta is a token file's sidecar (FILE.json). Its JSON field names are the
// on-disk format; unknown fields are rejected.
type Meta struct {
	Format     string `json:"format"`      // always "loom-tokens"
	Version    int    `json:"version"`     // FormatVersion
	VocabSize  int    `json:"vocab_size"`  // every token is < VocabSize
	TokenBytes int    `json:"token_bytes"` // 2 (uint16) or 4 (uint32), little-endian
	Tokens     int64  `json:"tokens"`      // number of tokens in the array
	Documents  int64  `json:"documents"`   // number of documents (each ends in EOS)
	Tokenizer  string `json:"tokenizer"`   // "byte", or the tokenizer file's absolute path; see LoadTokenizer
	SHA256     string `json:"sha256"`      // lowercase hex SHA-256 of the array
	// TokenizerSHA256 is the SHA-256 of the tokenizer file (empty for a
	// built-in tokenizer).
	TokenizerSHA256 string `json:"tokenizer_sha256,omitempty"`
	// Bytes is the UTF-8 input the tokens were encoded from (0: unknown),
	// for bits per byte.
	Bytes int64 `json:"bytes,omitempty"`
}

// Validate reports every inconsistency in m at once; path names the
// sidecar in the messages.
func (m *Meta) Validate(path string) error {
	var probs []string
	if m.Format != sidecarFormat {
		probs = append(probs, fmt.Sprintf("format is %q, want %q", m.Format, sidecarFormat))
	}
	if m.Version != FormatVersion {
		probs = append(probs, fmt.Sprintf("version is %d, this Loom reads version %d", m.Version, FormatVersion))
	}
	if m.VocabSize < 1 || m.VocabSize > 1<<31 {
		probs = append(probs, fmt.Sprintf("vocab_size is %d, want 1 … 2^31", m.VocabSize))
	} else if m.TokenBytes != TokenWidth(m.VocabSize) {
		probs = append(probs, fmt.Sprintf("token_bytes is %d, want %d for vocab_size %d", m.TokenBytes, TokenWidth(m.VocabSize), m.VocabSize))
	}
	if m.Tokens < 0 {
		probs = append(probs, fmt.Sprintf("tokens is %d, want ≥ 0", m.Tokens))
	}
	if m.Documents < 0 || m.Documents > m.Tokens && m.Tokens >= 0 {
		probs = append(probs, fmt.Sprintf("documents is %d, want 0 … tokens (%d)", m.Documents, m.Tokens))
	}
	if m.Tokenizer == "" {
		probs = append(probs, "tokenizer is empty")
	}
	if b, err := hex.DecodeString(m.SHA256); err != nil || len(b) != 32 || strings.ToLower(m.SHA256) != m.SHA256 {
		probs = append(probs, fmt.Sprintf("sha256 is %q, want 64 lowercase hex digits", m.SHA256))
	}
	if m.Bytes < 0 {
		probs = append(probs, fmt.Sprintf("bytes is %d, want ≥ 0", m.Bytes))
	}
	if m.TokenizerSHA256 != "" {
		if b, err := hex.DecodeString(m.TokenizerSHA256); err != nil || len(b) != 32 || strings.ToLower(m.TokenizerSHA256) != m.TokenizerSHA256 {
			probs = append(probs, fmt.Sprintf("tokenizer_sha256 is %q, want 64 lowercase hex digits", m.TokenizerSHA256))
		}
	}
	if len(probs) > 0 {
		return &FormatError{Path: path, Problem: "bad sidecar: " + strings.Join(probs, "; "), Fix: fixReprep}
	}
	return nil
}

// maxSidecarBytes bounds how much of a sidecar is read: real ones are a few
// hundred bytes.
const maxSidecarBytes = 1 << 16

// DecodeMeta reads and validates a sidecar; path names it in errors.
func DecodeMeta(r io.Reader, path string) (Meta, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxSidecarBytes+1))
	if err != nil {
		return Meta{}, fmt.Errorf("data: reading sidecar %s: %w", path, err)
	}
	if len(b) > maxSidecarBytes {
		return Meta{}, &FormatError{Path: path, Problem: fmt.Sprintf("sidecar is larger than %d bytes", maxSidecarBytes), Fix: fixReprep}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Meta
	if err := dec.Decode(&m); err != nil {
		return Meta{}, &FormatError{Path: path, Problem: "sidecar is not valid JSON: " + err.Error(), Fix: fixReprep}
	}
	if _, err := dec.Token(); err != io.EOF {
		return Meta{}, &FormatError{Path: path, Problem: "sidecar has data after the JSON object", Fix: fixReprep}
	}
	if err := m.Validate(path); err != nil {
		return Meta{}, err
	}
	return m, nil
}

// EncodeMeta returns the sidecar bytes for m (indented JSON, newline at the end).
func EncodeMeta(m Meta) ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("data: encoding sidecar: %w", err)
	}
	return append(b, '\n'), nil
}
