package data

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// File is an open token file, memory-mapped read-only. Its methods are
// safe for concurrent use until Close. The file must not be modified or
// truncated while it is open: with a mapping, that faults the process.
type File struct {
	path  string
	meta  Meta
	bare  bool
	data  []byte
	width int
	n     int64
}

// Open maps the token file at path and checks it against its sidecar
// path+".json": the size is a whole number of tokens and the token count
// matches. Token ids are checked against the vocabulary as they are read
// (and all at once by Verify), so Open stays fast on large files.
func Open(path string) (*File, error) {
	f, size, err := openSized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	side := SidecarPath(path)
	sf, err := os.Open(side)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("data: %s has no sidecar %s: %w (prepare the data with `loom prep`, which writes both; a bare nanoGPT .bin without its sidecar is not accepted as data.path)", path, side, err)
		}
		return nil, fmt.Errorf("data: opening the sidecar of %s: %w", path, err)
	}
	meta, err := DecodeMeta(sf, side)
	sf.Close()
	if err != nil {
		return nil, err
	}
	w := int64(meta.TokenBytes)
	if size%w != 0 {
		return nil, &FormatError{Path: path, Problem: fmt.Sprintf("size %d bytes is not a multiple of the token width %d", size, w), Fix: "the file is truncated or not a token file; " + fixReprep}
	}
	if size/w != meta.Tokens {
		return nil, &FormatError{Path: path, Problem: fmt.Sprintf("holds %d tokens (%d bytes) but the sidecar %s says %d", size/w, size, side, meta.Tokens), Fix: "the file is truncated or the sidecar is stale; " + fixReprep}
	}
	return mapOpened(f, path, meta, false, size)
}

// OpenBare maps a token file without a sidecar, such as nanoGPT's
// train.bin: a little-endian array of uint16 ids, each < vocabSize
// (at most 65,536). Its Meta has only VocabSize, TokenBytes and Tokens set,
// and Verify checks only the id range.
func OpenBare(path string, vocabSize int) (*File, error) {
	if vocabSize < 1 || vocabSize > 1<<16 {
		return nil, fmt.Errorf("data: opening bare token file %s: vocabulary size %d must be 1 … 65536 for uint16 tokens", path, vocabSize)
	}
	f, size, err := openSized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if size%2 != 0 {
		return nil, &FormatError{Path: path, Problem: fmt.Sprintf("size %d bytes is odd, so it is not an array of uint16 tokens", size), Fix: "the file is truncated or not a token file"}
	}
	meta := Meta{VocabSize: vocabSize, TokenBytes: 2, Tokens: size / 2}
	return mapOpened(f, path, meta, true, size)
}

func openSized(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("data: opening token file: %w (write it with `loom prep`)", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("data: opening token file: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("data: opening token file %s: not a regular file", path)
	}
	return f, st.Size(), nil
}

func mapOpened(f *os.File, path string, meta Meta, bare bool, size int64) (*File, error) {
	b, err := mapFile(f, size)
	if err != nil {
		return nil, fmt.Errorf("data: mapping token file %s: %w", path, err)
	}
	return &File{path: path, meta: meta, bare: bare, data: b, width: meta.TokenBytes, n: meta.Tokens}, nil
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Meta returns the sidecar (or, for a bare file, what is known of it).
func (f *File) Meta() Meta { return f.meta }

// Bare reports whether the file was opened without a sidecar.
func (f *File) Bare() bool { return f.bare }

// Len returns the number of tokens.
func (f *File) Len() int64 { return f.n }

// VocabSize returns the vocabulary size every id must be below.
func (f *File) VocabSize() int { return f.meta.VocabSize }

// Close unmaps the file. Using f after Close returns errors.
func (f *File) Close() error {
	b := f.data
	f.data, f.n = nil, 0
	if err := unmapFile(b); err != nil {
		return fmt.Errorf("data: closing token file %s: %w", f.path, err)
	}
	return nil
}

// ReadTokens copies the ids at [off, off+len(dst)) into dst, checking
// each against the vocabulary.
func (f *File) ReadTokens(dst []int32, off int64) error {
	if off < 0 || off > f.n || int64(len(dst)) > f.n-off {
		if f.data == nil && f.n == 0 && f.meta.Tokens > 0 {
			return fmt.Errorf("data: reading %s after Close", f.path)
		}
		return fmt.Errorf("data: reading tokens [%d, %d) of %s, which has %d", off, off+int64(len(dst)), f.path, f.n)
	}
	vocab := uint32(f.meta.VocabSize)
	if f.width == 2 {
		src := f.data[2*off : 2*(off+int64(len(dst)))]
		for i := range dst {
			v := uint32(binary.LittleEndian.Uint16(src[2*i:]))
			if v >= vocab {
				return f.badToken(off+int64(i), v)
			}
			dst[i] = int32(v)
		}
		return nil
	}
	src := f.data[4*off : 4*(off+int64(len(dst)))]
	for i := range dst {
		v := binary.LittleEndian.Uint32(src[4*i:])
		if v >= vocab {
			return f.badToken(off+int64(i), v)
		}
		dst[i] = int32(v)
	}
	return nil
}

func (f *File) badToken(i int64, v uint32) error {
	return &FormatError{Path: f.path, Problem: fmt.Sprintf("token %d at index %d (byte offset %d) is not below the vocabulary size %d", v, i, i*int64(f.width), f.meta.VocabSize), Fix: "the file is corrupt or was written with another tokenizer; " + fixReprep}
}

// Verify reads the whole file, checks every id against the vocabulary and,
// unless the file is bare, its SHA-256 against the sidecar.
func (f *File) Verify(ctx context.Context) error {
	if f.data == nil && f.meta.Tokens > 0 {
		return fmt.Errorf("data: verifying %s after Close", f.path)
	}
	const chunk = 1 << 20 // tokens
	buf := make([]int32, min(int64(chunk), f.n))
	for off := int64(0); off < f.n; off += chunk {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("data: verifying %s: %w", f.path, err)
		}
		n := min(int64(chunk), f.n-off)
		if err := f.ReadTokens(buf[:n], off); err != nil {
			return err
		}
	}
	if f.bare {
		return nil
	}
	h := sha256.New()
	for off := 0; off < len(f.data); off += 16 << 20 {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("data: verifying %s: %w", f.path, err)
		}
		h.Write(f.data[off:min(off+16<<20, len(f.data))])
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.meta.SHA256 {
		return &FormatError{Path: f.path, Problem: fmt.Sprintf("SHA-256 is %s but the sidecar says %s", got, f.meta.SHA256), Fix: "the file was modified or is corrupt; " + fixReprep}
	}
	return nil
}
