package safetensors

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"slices"
)

// File is a parsed, validated safetensors file. Its tensors can be read
// concurrently by many goroutines; Close must not run concurrently with reads,
// and byte slices from RawBytes are invalid after Close.
type File struct {
	src      string
	buf      []byte // the data buffer, after the header
	tensors  []TensorInfo
	byName   map[string]int
	metadata map[string]string
	release  func() error // unmaps or drops the backing memory
}

// Open maps the file at path read-only (or reads it, where memory mapping is
// unavailable) and validates its header. The file must not be truncated while
// open: with a memory map that would fault the process.
func Open(path string) (*File, error) {
	data, release, err := mapFile(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: open %s: %w", path, err)
	}
	f, err := parse(path, data)
	if err != nil {
		release()
		return nil, err
	}
	f.release = release
	return f, nil
}

// Parse validates b as a complete safetensors file. The returned File refers
// to b, which must not be modified while the File is in use.
func Parse(b []byte) (*File, error) { return parse("<bytes>", b) }

func parse(src string, b []byte) (*File, error) {
	if len(b) < 8 {
		return nil, &Error{File: src, Field: "header length", Msg: fmt.Sprintf("file is %d bytes, shorter than the 8-byte length prefix; it is truncated or not safetensors", len(b)), Err: ErrFormat}
	}
	n := binary.LittleEndian.Uint64(b)
	if n > MaxHeaderSize {
		return nil, &Error{File: src, Field: "header length", Msg: fmt.Sprintf("%d bytes exceeds the %d-byte limit; the file is corrupt or not safetensors", n, MaxHeaderSize), Err: ErrFormat}
	}
	if n > uint64(len(b)-8) {
		return nil, &Error{File: src, Field: "header length", Msg: fmt.Sprintf("%d bytes but only %d bytes follow the length prefix; the file is truncated", n, len(b)-8), Err: ErrFormat}
	}
	buf := b[8+n:]
	h, err := parseHeader(src, b[8:8+n], int64(len(buf)))
	if err != nil {
		return nil, err
	}
	f := &File{src: src, buf: buf, tensors: h.tensors, metadata: h.metadata, release: func() error { return nil }}
	f.byName = make(map[string]int, len(h.tensors))
	for i, t := range h.tensors {
		f.byName[t.Name] = i
	}
	return f, nil
}

// Close releases the file's memory. It is safe to call more than once.
func (f *File) Close() error {
	if f.release == nil {
		return nil
	}
	err := f.release()
	f.release, f.buf = nil, nil
	if err != nil {
		return fmt.Errorf("safetensors: close %s: %w", f.src, err)
	}
	return nil
}

// Path returns the path given to Open, or "<bytes>" for Parse.
func (f *File) Path() string { return f.src }

// Tensors returns every tensor in header order.
func (f *File) Tensors() []TensorInfo {
	out := make([]TensorInfo, len(f.tensors))
	for i, t := range f.tensors {
		t.Shape = slices.Clone(t.Shape)
		out[i] = t
	}
	return out
}

// Names returns the tensor names sorted.
func (f *File) Names() []string {
	return slices.Sorted(maps.Keys(f.byName))
}

// Tensor returns the description of the named tensor.
func (f *File) Tensor(name string) (TensorInfo, bool) {
	i, ok := f.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	t := f.tensors[i]
	t.Shape = slices.Clone(t.Shape)
	return t, true
}

// Metadata returns a copy of the header's __metadata__ map (nil if absent).
func (f *File) Metadata() map[string]string { return maps.Clone(f.metadata) }

// RawBytes returns the named tensor's little-endian bytes. The slice aliases
// the file's memory: do not modify it, and do not use it after Close.
func (f *File) RawBytes(name string) ([]byte, error) {
	t, err := f.lookup(name)
	if err != nil {
		return nil, err
	}
	return f.buf[t.Begin:t.End:t.End], nil
}

func (f *File) lookup(name string) (*TensorInfo, error) {
	i, ok := f.byName[name]
	if !ok {
		return nil, &Error{File: f.src, Tensor: name, Msg: "no such tensor in the file", Err: ErrNotFound}
	}
	if f.buf == nil && f.tensors[i].End > 0 {
		return nil, &Error{File: f.src, Tensor: name, Msg: "file is closed", Err: ErrRange}
	}
	return &f.tensors[i], nil
}

// ReadFloat32 returns the whole named tensor converted to float32.
func (f *File) ReadFloat32(name string) ([]float32, error) {
	t, err := f.lookup(name)
	if err != nil {
		return nil, err
	}
	return f.ReadFloat32Range(name, 0, t.NumElements())
}

// ReadFloat32Range returns n elements of the named tensor, in row-major
// order, starting at element elemOffset, converted to float32.
func (f *File) ReadFloat32Range(name string, elemOffset, n int64) ([]float32, error) {
	if _, err := f.checkRange(name, elemOffset, n); err != nil {
		return nil, err
	}
	dst := make([]float32, n)
	return dst, f.ReadFloat32RangeInto(name, elemOffset, dst)
}

// ReadFloat32Rows returns rows [row, row+nrows) of the named tensor, where a
// row is everything below the first dimension (so for a [V, d] embedding it
// returns nrows×d values).
func (f *File) ReadFloat32Rows(name string, row, nrows int64) ([]float32, error) {
	t, err := f.lookup(name)
	if err != nil {
		return nil, err
	}
	if len(t.Shape) == 0 {
		return nil, &Error{File: f.src, Tensor: name, Msg: "scalar tensor has no rows", Err: ErrRange}
	}
	if row < 0 || nrows < 0 || row > t.Shape[0] || nrows > t.Shape[0]-row {
		return nil, &Error{File: f.src, Tensor: name, Msg: fmt.Sprintf("rows [%d, %d+%d) are outside the tensor's %d rows", row, row, nrows, t.Shape[0]), Err: ErrRange}
	}
	rowLen := int64(1)
	for _, d := range t.Shape[1:] {
		rowLen *= d
	}
	return f.ReadFloat32Range(name, row*rowLen, nrows*rowLen)
}

// ReadFloat32RangeInto fills dst with len(dst) elements of the named tensor
// starting at element elemOffset, converted to float32. It allocates nothing.
func (f *File) ReadFloat32RangeInto(name string, elemOffset int64, dst []float32) error {
	t, err := f.checkRange(name, elemOffset, int64(len(dst)))
	if err != nil {
		return err
	}
	size, _ := t.DType.Size()
	src := f.buf[t.Begin+elemOffset*int64(size) : t.Begin+(elemOffset+int64(len(dst)))*int64(size)]
	decodeFloat32(t.DType, src, dst)
	return nil
}

func (f *File) checkRange(name string, elemOffset, n int64) (*TensorInfo, error) {
	t, err := f.lookup(name)
	if err != nil {
		return nil, err
	}
	if !t.DType.isFloat32Convertible() {
		return nil, &Error{File: f.src, Tensor: name, Field: "dtype", Msg: fmt.Sprintf("%s cannot be read as float32; only F32, F16 and BF16 can. Convert the checkpoint to one of those", t.DType), Err: ErrUnsupportedDType}
	}
	numel := t.NumElements()
	if elemOffset < 0 || n < 0 || elemOffset > numel || n > numel-elemOffset {
		return nil, &Error{File: f.src, Tensor: name, Msg: fmt.Sprintf("elements [%d, %d+%d) are outside the tensor's %d elements", elemOffset, elemOffset, n, numel), Err: ErrRange}
	}
	return t, nil
}

// decodeFloat32 converts little-endian elements of dtype dt in src to dst;
// len(src) is len(dst) times the element size.
func decodeFloat32(dt DType, src []byte, dst []float32) {
	switch dt {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = F16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = BF16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	}
}
