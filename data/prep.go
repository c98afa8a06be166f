package data

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loomtrain/loom/internal/atomicfile"
)

// PrepConfig says what [Prep] tokenizes and where it writes.
type PrepConfig struct {
	// Inputs are text files, directories (walked recursively in sorted
	// order) and JSONL files (by the .jsonl extension; one document per
	// line, from its "text" string field), processed in the given order.
	Inputs []string
	// Include filters the files found under directories: a file is taken
	// when any glob (path.Match syntax) matches its base name or its
	// slash-separated path relative to the directory. With no globs every
	// regular file is taken. Under directories, hidden files and
	// directories (".git", ".DS_Store") and symbolic links are always
	// skipped, and so is a file containing a NUL byte unless it is JSONL.
	// Files named directly in Inputs are always taken whole.
	Include []string
	// Out is the token file to write; its sidecar is Out+".json".
	Out string
	// Tokenizer encodes documents; nil means ByteTokenizer.
	Tokenizer Tokenizer
	// Workers is the number of encoding goroutines; 0 means GOMAXPROCS.
	Workers int
	// Progress, when set, is called from Prep's goroutine at most every
	// ProgressInterval and once at the end with Done set.
	Progress func(PrepStats)
	// ProgressInterval is the least time between Progress calls; 0 means 200ms.
	ProgressInterval time.Duration
	// ChunkBytes is the size above which a plain file is read and encoded
	// in chunks of about this many bytes, cut where the tokenizer says the
	// ids do not change (a [Cutter]); 0 means 1 MiB. Memory then stays
	// bounded by the window of chunks in flight, whatever the file sizes.
	ChunkBytes int
}

// Validate reports every problem in c at once.
func (c *PrepConfig) Validate() error {
	var probs []string
	if len(c.Inputs) == 0 {
		probs = append(probs, "no inputs given: name at least one file, directory or .jsonl file")
	}
	for i, in := range c.Inputs {
		if in == "" {
			probs = append(probs, fmt.Sprintf("input %d is empty", i))
		}
	}
	if c.Out == "" {
		probs = append(probs, "out is empty: name the token file to write")
	}
	if c.Workers < 0 {
		probs = append(probs, fmt.Sprintf("workers is %d, want ≥ 0 (0 means all cores)", c.Workers))
	}
	if c.ChunkBytes < 0 {
		probs = append(probs, fmt.Sprintf("chunk bytes is %d, want ≥ 0 (0 means 1 MiB)", c.ChunkBytes))
	}
	if c.ProgressInterval < 0 {
		probs = append(probs, fmt.Sprintf("progress interval is %v, want ≥ 0", c.ProgressInterval))
	}
	for _, g := range c.Include {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			probs = append(probs, fmt.Sprintf("include glob %q is malformed (path.Match syntax, e.g. '*.go')", g))
		}
	}
	if len(probs) > 0 {
		return fmt.Errorf("data: prep config: %s", strings.Join(probs, "; "))
	}
	return nil
}

// PrepStats counts what [Prep] has read and written so far.
type PrepStats struct {
	Files      int64         // input files read (plain and JSONL)
	Skipped    int64         // files under directories skipped as binary
	Documents  int64         // documents written
	Tokens     int64         // tokens written, EOS included
	Bytes      int64         // input bytes read
	TotalBytes int64         // input bytes to read, or -1 while still being counted
	Elapsed    time.Duration // since Prep started
	Done       bool          // the final report
	// PeakBufferedBytes is the most input text held in memory at once
	// (read but not yet written out as tokens).
	PeakBufferedBytes int64
}

// InputError reports a bad input file or JSONL line.
type InputError struct {
	Path string // the input file
	Line int    // 1-based JSONL line, or 0 for the whole file
	Err  error
}

// Error returns "data: PATH[:LINE]: ERR".
func (e *InputError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("data: %s:%d: %v", e.Path, e.Line, e.Err)
	}
	return fmt.Sprintf("data: %s: %v", e.Path, e.Err)
}

// Unwrap returns the underlying error.
func (e *InputError) Unwrap() error { return e.Err }

// prepJob is one unit of encoding work: a whole file, or a chunk of whole
// JSONL lines starting at line.
type prepJob struct {
	seq    int64
	path   string
	walked bool   // found under a directory: skip if binary
	jsonl  bool   // text holds JSONL lines
	line   int    // first line number of text
	text   []byte // JSONL lines or a chunk of a plain file; nil for a whole file
	first  bool   // first chunk of its file (counts the file)
	last   bool   // a plain file's last chunk (ends the document)
	chunk  bool   // text is a chunk of a plain file
	err    error  // an enumeration error, passed through in order
}

type prepResult struct {
	seq     int64
	buf     []byte // packed little-endian tokens
	docs    int64
	tokens  int64
	bytes   int64
	files   int64
	skipped int64
	held    int64 // input bytes this job held in memory
	err     error
}

// bufferGauge tracks the input bytes held in memory and their peak.
type bufferGauge struct{ cur, peak atomic.Int64 }

func (g *bufferGauge) add(n int64) {
	c := g.cur.Add(n)
	for p := g.peak.Load(); c > p && !g.peak.CompareAndSwap(p, c); p = g.peak.Load() {
	}
}

// jsonlChunk is the size at which JSONL lines are grouped into one job.
const jsonlChunk = 256 << 10

// Prep tokenizes cfg.Inputs into the token file cfg.Out and its sidecar,
// and returns the sidecar it wrote.
//
// Documents are encoded by cfg.Workers goroutines and written in input
// order through a bounded window, so memory is bounded by a few documents
// per worker, not by the corpus, and the output does not depend on the
// number of workers. The file is written to a temporary file in the same
// directory, synced and renamed into place; a stale sidecar is removed
// before that rename and the new one is written last, so a sidecar always
// describes the file beside it.
func Prep(ctx context.Context, cfg PrepConfig) (Meta, PrepStats, error) {
	start := time.Now()
	if err := cfg.Validate(); err != nil {
		return Meta{}, PrepStats{}, err
	}
	tok := cfg.Tokenizer
	if tok == nil {
		tok = ByteTokenizer{}
	}
	workers := cfg.Workers
	if workers == 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	interval := cfg.ProgressInterval
	if interval == 0 {
		interval = 200 * time.Millisecond
	}
	outAbs, err := filepath.Abs(cfg.Out)
	if err != nil {
		return Meta{}, PrepStats{}, fmt.Errorf("data: prep: output path %s: %w", cfg.Out, err)
	}
	width := TokenWidth(tok.VocabSize())
	if tok.EOS() < 0 || int(tok.EOS()) >= tok.VocabSize() {
		return Meta{}, PrepStats{}, fmt.Errorf("data: prep: tokenizer %s has no end-of-sequence id (EOS %d): prep ends every document with one", tok.Name(), tok.EOS())
	}
	chunkBytes := cfg.ChunkBytes
	if chunkBytes == 0 {
		chunkBytes = 1 << 20
	}
	cutter, _ := tok.(Cutter)
	var gauge bufferGauge

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	sel := selector{include: cfg.Include, skip: map[string]bool{outAbs: true, SidecarPath(outAbs): true}}
	var total atomic.Int64
	total.Store(-1)
	var sizing sync.WaitGroup
	defer func() { cancel(); sizing.Wait() }()
	if cfg.Progress != nil {
		sizing.Add(1)
		go func() {
			defer sizing.Done()
			var n int64
			err := sel.walk(ctx, cfg.Inputs, func(path string, size int64, walked bool) error {
				n += size
				return nil
			})
			if err == nil {
				total.Store(n)
			}
		}()
	}

	window := 4 * workers
	sem := make(chan struct{}, window)
	jobs := make(chan prepJob, window)
	results := make(chan prepResult, window)
	free := make(chan []byte, window+workers)

	// Producer: enumerate inputs in order.
	go func() {
		defer close(jobs)
		var seq int64
		emit := func(j prepJob) bool {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return false
			}
			j.seq = seq
			seq++
			select {
			case jobs <- j:
				return true
			case <-ctx.Done():
				return false
			}
		}
		err := sel.walk(ctx, cfg.Inputs, func(path string, size int64, walked bool) error {
			if !isJSONL(path) && cutter != nil && size > int64(chunkBytes) {
				return readPlainChunks(ctx, path, chunkBytes, cutter, func(chunk []byte, first, last bool) bool {
					if first && walked && bytes.IndexByte(chunk, 0) >= 0 {
						emit(prepJob{path: path, walked: true, chunk: true, first: true, last: true, text: []byte{0}})
						return false
					}
					gauge.add(int64(len(chunk)))
					return emit(prepJob{path: path, walked: walked, chunk: true, text: chunk, first: first, last: last})
				})
			}
			if !isJSONL(path) {
				if !emit(prepJob{path: path, walked: walked}) {
					return ctx.Err()
				}
				return nil
			}
			return readJSONLChunks(ctx, path, func(line int, chunk []byte, first bool) bool {
				gauge.add(int64(len(chunk)))
				return emit(prepJob{path: path, jsonl: true, line: line, text: chunk, first: first})
			})
		})
		if err != nil && ctx.Err() == nil {
			emit(prepJob{err: err})
		}
	}()

	// Workers: encode.
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var scratch []int32
			for j := range jobs {
				var buf []byte
				select {
				case buf = <-free:
				default:
				}
				var r prepResult
				r, scratch = encodeJob(j, tok, width, scratch, buf[:0], &gauge)
				r.seq = j.seq
				results <- r
			}
		}()
	}
	go func() { wg.Wait(); close(results) }()

	meta, stats, err := writeOrdered(ctx, cancel, cfg, outAbs, tok, width, start, interval, &total, sem, results, free, &gauge)
	if err != nil {
		cancel()
		for range results { // let the workers and producer exit
		}
		return Meta{}, stats, err
	}
	return meta, stats, nil
}

// writeOrdered receives results, writes them in sequence order to a
// temporary file, and on success publishes the file and its sidecar.
func writeOrdered(ctx context.Context, cancel context.CancelFunc, cfg PrepConfig, out string, tok Tokenizer, width int,
	start time.Time, interval time.Duration, total *atomic.Int64,
	sem chan struct{}, results <-chan prepResult, free chan []byte, gauge *bufferGauge) (Meta, PrepStats, error) {
	var stats PrepStats
	dir := filepath.Dir(out)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".tmp*")
	if err != nil {
		return Meta{}, stats, fmt.Errorf("data: prep: creating a temporary file beside %s: %w (check the directory exists and is writable)", out, err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return Meta{}, stats, fmt.Errorf("data: prep: %w", err)
	}
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, h), 1<<20)

	report := func(done bool) {
		if cfg.Progress == nil {
			return
		}
		stats.TotalBytes = total.Load()
		if done {
			stats.TotalBytes = stats.Bytes
		}
		stats.Elapsed = time.Since(start)
		stats.Done = done
		stats.PeakBufferedBytes = gauge.peak.Load()
		cfg.Progress(stats)
	}
	lastReport := time.Now()
	pending := make(map[int64]prepResult)
	var next int64
	for r := range results {
		pending[r.seq] = r
		for {
			r, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			next++
			<-sem
			gauge.add(-r.held)
			if r.err != nil {
				return Meta{}, stats, r.err
			}
			if _, err := bw.Write(r.buf); err != nil {
				return Meta{}, stats, fmt.Errorf("data: prep: writing %s: %w (check free disk space)", tmp.Name(), err)
			}
			select {
			case free <- r.buf:
			default:
			}
			stats.Files += r.files
			stats.Skipped += r.skipped
			stats.Documents += r.docs
			stats.Tokens += r.tokens
			stats.Bytes += r.bytes
			if time.Since(lastReport) >= interval {
				lastReport = time.Now()
				report(false)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return Meta{}, stats, fmt.Errorf("data: prep of %s: %w", out, err)
	}
	if len(pending) > 0 {
		return Meta{}, stats, fmt.Errorf("data: prep: internal error: %d results never written", len(pending))
	}
	if stats.Documents == 0 {
		return Meta{}, stats, fmt.Errorf("data: prep: no documents found in %s (check the paths and the --include globs)", strings.Join(cfg.Inputs, ", "))
	}
	if err := bw.Flush(); err != nil {
		return Meta{}, stats, fmt.Errorf("data: prep: writing %s: %w (check free disk space)", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return Meta{}, stats, fmt.Errorf("data: prep: syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return Meta{}, stats, fmt.Errorf("data: prep: closing %s: %w", tmp.Name(), err)
	}
	meta := Meta{
		Format:     sidecarFormat,
		Version:    FormatVersion,
		VocabSize:  tok.VocabSize(),
		TokenBytes: width,
		Tokens:     stats.Tokens,
		Documents:  stats.Documents,
		Tokenizer:  tok.Name(),
		SHA256:     hex.EncodeToString(h.Sum(nil)),
		Bytes:      stats.Bytes,
	}
	if hs, ok := tok.(Hashed); ok {
		meta.TokenizerSHA256 = hs.SHA256()
	}
	side := SidecarPath(out)
	if err := os.Remove(side); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Meta{}, stats, fmt.Errorf("data: prep: removing the stale sidecar %s: %w", side, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return Meta{}, stats, fmt.Errorf("data: prep: renaming %s to %s: %w", tmp.Name(), out, err)
	}
	committed = true
	sb, err := EncodeMeta(meta)
	if err != nil {
		return Meta{}, stats, err
	}
	// Also makes the token file's rename above durable: one directory fsync.
	if err := atomicfile.WriteFile(side, sb); err != nil {
		return Meta{}, stats, fmt.Errorf("data: %w", err)
	}
	report(true)
	stats.Elapsed = time.Since(start)
	stats.TotalBytes = stats.Bytes
	stats.Done = true
	stats.PeakBufferedBytes = gauge.peak.Load()
	return meta, stats, nil
}

// encodeJob reads or parses one job and packs its tokens into buf.
func encodeJob(j prepJob, tok Tokenizer, width int, scratch []int32, buf []byte, gauge *bufferGauge) (prepResult, []int32) {
	var r prepResult
	if j.err != nil {
		r.err = j.err
		return r, scratch
	}
	scratch = scratch[:0]
	switch {
	case j.chunk:
		r.held = int64(len(j.text))
		if j.first {
			r.files = 1
		}
		if j.first && j.last && len(j.text) == 1 && j.text[0] == 0 && j.walked {
			r.skipped, r.held = 1, 0 // binary: the producer stopped reading it
			return r, scratch
		}
		r.bytes = int64(len(j.text))
		scratch = tok.Encode(scratch, j.text)
		if j.last {
			scratch = append(scratch, tok.EOS())
			r.docs = 1
		}
	case !j.jsonl:
		text, err := os.ReadFile(j.path)
		if err != nil {
			r.err = fmt.Errorf("data: prep: reading %s: %w", j.path, err)
			return r, scratch
		}
		r.held = int64(len(text))
		gauge.add(r.held)
		r.files = 1
		r.bytes = int64(len(text))
		if j.walked && bytes.IndexByte(text, 0) >= 0 {
			r.skipped = 1
			return r, scratch
		}
		scratch = tok.Encode(scratch, text)
		scratch = append(scratch, tok.EOS())
		r.docs = 1
	default:
		r.held = int64(len(j.text))
		if j.first {
			r.files = 1
		}
		r.bytes = int64(len(j.text))
		rest := j.text
		for line := j.line; len(rest) > 0; line++ {
			var l []byte
			l, rest, _ = bytes.Cut(rest, []byte{'\n'})
			text, ok, err := parseJSONLLine(l)
			if err != nil {
				r.err = &InputError{Path: j.path, Line: line, Err: err}
				return r, scratch
			}
			if !ok {
				continue
			}
			scratch = tok.Encode(scratch, text)
			scratch = append(scratch, tok.EOS())
			r.docs++
		}
	}
	r.tokens = int64(len(scratch))
	buf, err := packTokens(buf, scratch, width, tok.VocabSize())
	if err != nil {
		r.err = fmt.Errorf("data: prep: %s: tokenizer %s: %w", j.path, tok.Name(), err)
		return r, scratch
	}
	r.buf = buf
	return r, scratch
}

// parseJSONLLine returns the "text" field of one JSONL line; ok is false
// for a blank line.
func parseJSONLLine(l []byte) (text []byte, ok bool, err error) {
	if len(bytes.TrimSpace(l)) == 0 {
		return nil, false, nil
	}
	var rec struct {
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(l, &rec); err != nil {
		return nil, false, fmt.Errorf("malformed JSONL line: %v (each line must be a JSON object with a string \"text\" field)", err)
	}
	if rec.Text == nil {
		return nil, false, errors.New(`JSONL line has no "text" field (each line must be a JSON object with a string "text" field)`)
	}
	return []byte(*rec.Text), true, nil
}

// packTokens appends ids to buf as little-endian integers of width bytes.
func packTokens(buf []byte, ids []int32, width, vocab int) ([]byte, error) {
	n := len(buf)
	need := n + len(ids)*width
	if cap(buf) < need {
		nb := make([]byte, n, need)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:need]
	out := buf[n:]
	for i, id := range ids {
		if id < 0 || int(id) >= vocab {
			return nil, fmt.Errorf("id %d is outside the vocabulary [0, %d)", id, vocab)
		}
		if width == 2 {
			binary.LittleEndian.PutUint16(out[2*i:], uint16(id))
		} else {
			binary.LittleEndian.PutUint32(out[4*i:], uint32(id))
		}
	}
	return buf, nil
}

// readPlainChunks reads the plain file path in chunks of about size bytes,
// each cut where cutter allows (growing a chunk until it finds such a
// place), and calls emit with each; emit returns false to stop.
func readPlainChunks(ctx context.Context, path string, size int, cutter Cutter, emit func(chunk []byte, first, last bool) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("data: prep: %w", err)
	}
	defer f.Close()
	var carry []byte
	first, eof := true, false
	for !eof {
		want := size
		for {
			buf := make([]byte, len(carry), len(carry)+want)
			copy(buf, carry)
			n, err := io.ReadFull(f, buf[len(carry):cap(buf)])
			buf = buf[:len(carry)+n]
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				eof = true
			} else if err != nil {
				return &InputError{Path: path, Err: err}
			}
			carry = buf
			if eof {
				break
			}
			if cut := cutter.SafeCut(carry); cut > 0 {
				chunk := carry[:cut:cut]
				carry = append([]byte(nil), carry[cut:]...)
				if !emit(chunk, first, false) {
					return ctx.Err()
				}
				first = false
				break
			}
			want *= 2 // no safe cut yet: read on
		}
	}
	if !emit(carry, first, true) {
		return ctx.Err()
	}
	return nil
}

func isJSONL(path string) bool { return strings.EqualFold(filepath.Ext(path), ".jsonl") }

// readJSONLChunks reads path and calls emit with runs of whole lines of
// about jsonlChunk bytes; emit returns false to stop.
func readJSONLChunks(ctx context.Context, path string, emit func(line int, chunk []byte, first bool) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("data: prep: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	var chunk []byte
	line, chunkLine, first := 1, 1, true
	flush := func() bool {
		ok := emit(chunkLine, chunk, first)
		first = false
		chunk = nil
		chunkLine = line
		return ok
	}
	for {
		l, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A long line: gather it whole.
			long := append([]byte(nil), l...)
			for err == bufio.ErrBufferFull {
				l, err = br.ReadSlice('\n')
				long = append(long, l...)
			}
			l = long
		}
		if err != nil && err != io.EOF {
			return &InputError{Path: path, Line: line, Err: err}
		}
		if len(l) > 0 {
			chunk = append(chunk, l...)
			line++
			if len(chunk) >= jsonlChunk && !flush() {
				return ctx.Err()
			}
		}
		if err == io.EOF {
			break
		}
	}
	if len(chunk) > 0 && !flush() {
		return ctx.Err()
	}
	return nil
}

// selector enumerates the files of a list of inputs.
type selector struct {
	include []string
	skip    map[string]bool // absolute paths never to read (the output)
}

// walk calls fn for every file the inputs name, in order; walked says the
// file was found under a directory.
func (s *selector) walk(ctx context.Context, inputs []string, fn func(path string, size int64, walked bool) error) error {
	for _, in := range inputs {
		st, err := os.Stat(in)
		if err != nil {
			return fmt.Errorf("data: prep: cannot read input %s: %w", in, err)
		}
		if st.Mode().IsRegular() {
			if err := fn(in, st.Size(), false); err != nil {
				return err
			}
			continue
		}
		if !st.IsDir() {
			return fmt.Errorf("data: prep: input %s is neither a regular file nor a directory", in)
		}
		abs, err := filepath.Abs(in)
		if err != nil {
			return fmt.Errorf("data: prep: input %s: %w", in, err)
		}
		err = filepath.WalkDir(in, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return fmt.Errorf("data: prep: walking %s: %w", in, err)
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if path == in {
				return nil
			}
			if strings.HasPrefix(d.Name(), ".") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.IsDir() || !d.Type().IsRegular() {
				return nil
			}
			rel, err := filepath.Rel(in, path)
			if err != nil {
				return fmt.Errorf("data: prep: %s: %w", path, err)
			}
			if s.skip[filepath.Join(abs, rel)] || !s.included(d.Name(), filepath.ToSlash(rel)) {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return fmt.Errorf("data: prep: %w", err)
			}
			return fn(path, info.Size(), true)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *selector) included(base, rel string) bool {
	if len(s.include) == 0 {
		return true
	}
	for _, g := range s.include {
		if ok, _ := path.Match(g, base); ok {
			return true
		}
		if ok, _ := path.Match(g, rel); ok {
			return true
		}
	}
	return false
}
