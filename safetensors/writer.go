package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"

	"github.com/loomtrain/loom/internal/atomicfile"
)

// Tensor is a named float32 tensor to write: a view, not a copy. DType is the
// on-disk type: F32 (the default when empty), or F16 / BF16, in which case the
// values are rounded to nearest, ties to even, as they are written.
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Data  []float32
}

// TensorHeader describes a tensor to be streamed by a Writer, whose data is
// supplied later through WriteFloat32.
type TensorHeader struct {
	Name  string
	DType DType // F32 (default when empty), F16 or BF16
	Shape []int64
}

// Writer streams a safetensors file: the header is written by NewWriter, then
// each tensor's values, in header order, through WriteFloat32. A tensor may be
// supplied in several consecutive calls (e.g. one per row block). Writer is not
// safe for concurrent use.
type Writer struct {
	dst     string // for error messages
	bw      *bufio.Writer
	tensors []TensorHeader
	numel   []int64
	next    int   // index of the tensor being written
	written int64 // elements of tensors[next] written so far
	scratch []byte
	err     error // sticky: after a failure the output is unusable
}

// writeChunk is the number of bytes converted per underlying write.
const writeChunk = 64 << 10

// NewWriter validates the tensor list and writes the header to w. The caller
// owns w; Writer.Close flushes but does not close it. Tensors are laid out in
// the given order; metadata may be nil.
func NewWriter(w io.Writer, tensors []TensorHeader, metadata map[string]string) (*Writer, error) {
	return newWriter("<writer>", w, tensors, metadata)
}

func newWriter(dst string, w io.Writer, tensors []TensorHeader, metadata map[string]string) (*Writer, error) {
	hdr, numel, err := encodeHeader(dst, tensors, metadata)
	if err != nil {
		return nil, err
	}
	ts := make([]TensorHeader, len(tensors))
	for i, t := range tensors {
		if t.DType == "" {
			t.DType = F32
		}
		t.Shape = slices.Clone(t.Shape)
		ts[i] = t
	}
	wr := &Writer{dst: dst, bw: bufio.NewWriterSize(w, writeChunk), tensors: ts, numel: numel, scratch: make([]byte, writeChunk)}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(hdr)))
	if _, err := wr.bw.Write(n[:]); err != nil {
		return nil, fmt.Errorf("safetensors: write header of %s: %w", dst, err)
	}
	if _, err := wr.bw.Write(hdr); err != nil {
		return nil, fmt.Errorf("safetensors: write header of %s: %w", dst, err)
	}
	return wr, nil
}

// encodeHeader builds the JSON header, padded with spaces to a multiple of 8
// bytes as the Hugging Face writer does, so the data buffer is 8-byte aligned.
func encodeHeader(dst string, tensors []TensorHeader, metadata map[string]string) ([]byte, []int64, error) {
	werr := func(name, field, format string, args ...any) error {
		return &Error{File: dst, Tensor: name, Field: field, Msg: fmt.Sprintf(format, args...), Err: ErrWriter}
	}
	var b bytes.Buffer
	b.WriteByte('{')
	if len(metadata) > 0 {
		writeJSONString(&b, metadataKey)
		b.WriteString(":{")
		for i, k := range slices.Sorted(maps.Keys(metadata)) {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(&b, k)
			b.WriteByte(':')
			writeJSONString(&b, metadata[k])
		}
		b.WriteByte('}')
	}
	seen := make(map[string]bool, len(tensors))
	numel := make([]int64, len(tensors))
	off := uint64(0)
	for i, t := range tensors {
		if t.Name == "" || t.Name == metadataKey {
			return nil, nil, werr(t.Name, "name", "tensor names must be non-empty and not %q", metadataKey)
		}
		if seen[t.Name] {
			return nil, nil, werr(t.Name, "name", "tensor listed more than once")
		}
		seen[t.Name] = true
		dt := t.DType
		if dt == "" {
			dt = F32
		}
		if !dt.isFloat32Convertible() {
			return nil, nil, werr(t.Name, "dtype", "%q cannot be written from float32; use F32, F16 or BF16", dt)
		}
		size, _ := dt.Size()
		n := uint64(1)
		for _, d := range t.Shape {
			hi, lo := bits.Mul64(n, uint64(d))
			if d < 0 || hi != 0 || lo > 1<<60 {
				return nil, nil, werr(t.Name, "shape", "%v must have non-negative dimensions and fewer than 2^60 elements", t.Shape)
			}
			n = lo
		}
		numel[i] = int64(n)
		end := off + n*uint64(size)
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		writeJSONString(&b, t.Name)
		fmt.Fprintf(&b, `:{"dtype":"%s","shape":[`, dt)
		for j, d := range t.Shape {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprint(&b, d)
		}
		fmt.Fprintf(&b, `],"data_offsets":[%d,%d]}`, off, end)
		off = end
		if off > 1<<62 {
			return nil, nil, werr(t.Name, "shape", "file would exceed 2^62 bytes")
		}
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	if b.Len() > MaxHeaderSize {
		return nil, nil, werr("", "header", "%d bytes exceeds the %d-byte limit readers enforce; split the tensors over several files", b.Len(), MaxHeaderSize)
	}
	return b.Bytes(), numel, nil
}

// writeJSONString writes s as a JSON string without HTML escaping, matching
// what Python's json and Rust's serde_json produce.
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // cannot fail for a string
	b.Truncate(b.Len() - 1) // drop Encode's newline
}

// WriteFloat32 appends data to the named tensor, which must be the next
// tensor in header order (or the one in progress). Values are converted to the
// tensor's dtype as they are written.
func (w *Writer) WriteFloat32(name string, data []float32) error {
	if w.err != nil {
		return w.err
	}
	if w.next >= len(w.tensors) {
		return w.fail(&Error{File: w.dst, Tensor: name, Msg: "all tensors in the header are already written", Err: ErrWriter})
	}
	t := w.tensors[w.next]
	if name != t.Name {
		msg := fmt.Sprintf("expected tensor %q next (header order)", t.Name)
		if w.written > 0 {
			msg = fmt.Sprintf("tensor %q is incomplete: %d of %d elements written", t.Name, w.written, w.numel[w.next])
		}
		return w.fail(&Error{File: w.dst, Tensor: name, Msg: msg, Err: ErrWriter})
	}
	if int64(len(data)) > w.numel[w.next]-w.written {
		return w.fail(&Error{File: w.dst, Tensor: name, Msg: fmt.Sprintf("%d more elements would exceed its %d elements (%d already written)", len(data), w.numel[w.next], w.written), Err: ErrWriter})
	}
	if err := w.encode(t.DType, data); err != nil {
		return w.fail(fmt.Errorf("safetensors: write tensor %q to %s: %w", name, w.dst, err))
	}
	w.written += int64(len(data))
	if w.written == w.numel[w.next] {
		w.next++
		w.written = 0
	}
	return nil
}

func (w *Writer) fail(err error) error {
	w.err = err
	return err
}

// encode converts data to little-endian dt in scratch-sized chunks.
func (w *Writer) encode(dt DType, data []float32) error {
	size, _ := dt.Size()
	per := len(w.scratch) / size
	for len(data) > 0 {
		n := min(per, len(data))
		out := w.scratch[:n*size]
		switch dt {
		case F32:
			for i, v := range data[:n] {
				binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
			}
		case F16:
			for i, v := range data[:n] {
				binary.LittleEndian.PutUint16(out[2*i:], Float32ToF16(v))
			}
		case BF16:
			for i, v := range data[:n] {
				binary.LittleEndian.PutUint16(out[2*i:], Float32ToBF16(v))
			}
		}
		if _, err := w.bw.Write(out); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// Close checks that every tensor was fully written and flushes buffered
// bytes. It does not close the underlying io.Writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.next < len(w.tensors) {
		t := w.tensors[w.next]
		return w.fail(&Error{File: w.dst, Tensor: t.Name, Msg: fmt.Sprintf("not written: %d of %d elements supplied; every tensor in the header must be written", w.written, w.numel[w.next]), Err: ErrWriter})
	}
	if err := w.bw.Flush(); err != nil {
		return w.fail(fmt.Errorf("safetensors: flush %s: %w", w.dst, err))
	}
	return nil
}

// FileWriter streams a safetensors file to a temporary file beside its
// destination and renames it into place on Commit, so readers never see a
// partial file. Not safe for concurrent use.
type FileWriter struct {
	*Writer
	path string
	tmp  *os.File
	done bool
}

// Create starts writing a safetensors file that will appear at path when
// Commit succeeds. Call Abort (or Commit) on every path out.
func Create(path string, tensors []TensorHeader, metadata map[string]string) (*FileWriter, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("safetensors: create %s: %w", path, err)
	}
	w, err := newWriter(path, tmp, tensors, metadata)
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, err
	}
	return &FileWriter{Writer: w, path: path, tmp: tmp}, nil
}

// Commit finishes the file: checks every tensor was written, flushes, fsyncs,
// sets mode 0644,
// renames it to the destination path and fsyncs the directory. On error the
// temporary file is removed and the destination is untouched.
func (fw *FileWriter) Commit() error {
	if fw.done {
		return &Error{File: fw.path, Msg: "Commit after Commit or Abort", Err: ErrWriter}
	}
	err := fw.Writer.Close()
	if err == nil {
		err = fw.tmp.Chmod(0o644) // CreateTemp makes 0600; checkpoints are meant to be shared
	}
	if err == nil {
		err = fw.tmp.Sync()
	}
	if cerr := fw.tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(fw.tmp.Name(), fw.path)
	}
	if err == nil {
		err = SyncDir(filepath.Dir(fw.path))
	}
	fw.done = true
	if err != nil {
		os.Remove(fw.tmp.Name())
		return fmt.Errorf("safetensors: commit %s: %w", fw.path, err)
	}
	return nil
}

// Abort discards the partial file. It is a no-op after Commit.
func (fw *FileWriter) Abort() error {
	if fw.done {
		return nil
	}
	fw.done = true
	fw.tmp.Close()
	if err := os.Remove(fw.tmp.Name()); err != nil {
		return fmt.Errorf("safetensors: abort %s: %w", fw.path, err)
	}
	return nil
}

// Write writes tensors, in the given order, and metadata (may be nil) to a
// safetensors file at path, atomically. Tensor data is streamed from the
// given slices; nothing is copied into one big buffer.
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	hdrs := make([]TensorHeader, len(tensors))
	for i, t := range tensors {
		hdrs[i] = TensorHeader{Name: t.Name, DType: t.DType, Shape: t.Shape}
	}
	fw, err := Create(path, hdrs, metadata)
	if err != nil {
		return err
	}
	for i, t := range tensors {
		if want := fw.numel[i]; int64(len(t.Data)) != want {
			fw.Abort()
			return &Error{File: path, Tensor: t.Name, Field: "data", Msg: fmt.Sprintf("has %d values but shape %v needs %d", len(t.Data), t.Shape, want), Err: ErrWriter}
		}
		if err := fw.WriteFloat32(t.Name, t.Data); err != nil {
			fw.Abort()
			return err
		}
	}
	return fw.Commit()
}

// SyncDir fsyncs a directory so that a rename into it survives a crash.
func SyncDir(dir string) error { return atomicfile.SyncDir(dir) }
