package data

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"strings"
)

// DocConfig says which documents [Documents] reads: the inputs and globs
// of [PrepConfig], with documents larger than ChunkBytes handed over in
// chunks cut where Cutter allows (whole when Cutter is nil).
type DocConfig struct {
	Inputs     []string
	Include    []string
	Cutter     Cutter
	ChunkBytes int // 0: 1 MiB
}

// DocStats counts what [Documents] read.
type DocStats struct {
	Files, Skipped, Documents, Bytes int64
}

// Documents calls fn with every document of the inputs in order, as prep
// sees them: each plain file one document (skipping binary files found
// under directories), each JSONL line's "text" one document. A large
// plain file comes in chunks, last reporting its final one. The slices are
// valid only during the call. Memory is bounded by the chunk size and the
// largest JSONL chunk, not by the corpus.
func Documents(ctx context.Context, cfg DocConfig, fn func(doc []byte, last bool) error) (DocStats, error) {
	var st DocStats
	if len(cfg.Inputs) == 0 {
		return st, fmt.Errorf("data: no inputs given: name at least one file, directory or .jsonl file")
	}
	for _, g := range cfg.Include {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			return st, fmt.Errorf("data: include glob %q is malformed (path.Match syntax, e.g. '*.go')", g)
		}
	}
	chunk := cfg.ChunkBytes
	if chunk == 0 {
		chunk = 1 << 20
	}
	sel := selector{include: cfg.Include}
	err := sel.walk(ctx, cfg.Inputs, func(p string, size int64, walked bool) error {
		st.Files++
		if isJSONL(p) {
			var ferr error
			err := readJSONLChunks(ctx, p, func(line int, text []byte, first bool) bool {
				st.Bytes += int64(len(text))
				for rest := text; len(rest) > 0; line++ {
					var l []byte
					l, rest, _ = bytes.Cut(rest, []byte{'\n'})
					doc, ok, err := parseJSONLLine(l)
					if err != nil {
						ferr = &InputError{Path: p, Line: line, Err: err}
						return false
					}
					if !ok {
						continue
					}
					st.Documents++
					if ferr = fn(doc, true); ferr != nil {
						return false
					}
				}
				return true
			})
			if ferr != nil {
				return ferr
			}
			return err
		}
		if cfg.Cutter != nil && size > int64(chunk) {
			var ferr error
			err := readPlainChunks(ctx, p, chunk, cfg.Cutter, func(c []byte, first, last bool) bool {
				if first && walked && bytes.IndexByte(c, 0) >= 0 {
					st.Skipped++
					return false
				}
				st.Bytes += int64(len(c))
				if last {
					st.Documents++
				}
				ferr = fn(c, last)
				return ferr == nil
			})
			if ferr != nil {
				return ferr
			}
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("data: reading %s: %w", p, err)
		}
		st.Bytes += int64(len(b))
		if walked && bytes.IndexByte(b, 0) >= 0 {
			st.Skipped++
			return nil
		}
		st.Documents++
		return fn(b, true)
	})
	if err != nil {
		return st, err
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if st.Documents == 0 {
		return st, fmt.Errorf("data: no documents found in %s (check the paths and the --include globs)", strings.Join(cfg.Inputs, ", "))
	}
	return st, nil
}
