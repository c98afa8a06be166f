package safetensors

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// rawFile assembles a safetensors file from a literal header and buffer.
func rawFile(header string, buf []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(buf))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, buf...)
}

func f32Bytes(vs ...float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

func TestParseValid(t *testing.T) {
	hdr := `{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},` +
		`"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"h":{"dtype":"F16","shape":[1,2],"data_offsets":[12,16]},` +
		`"empty":{"dtype":"F32","shape":[0,3],"data_offsets":[16,16]},"i":{"dtype":"I64","shape":[],"data_offsets":[16,24]}}   `
	buf := f32Bytes(1.5, -2)
	buf = binary.LittleEndian.AppendUint16(buf, Float32ToBF16(3))
	buf = binary.LittleEndian.AppendUint16(buf, Float32ToBF16(-0.5))
	buf = binary.LittleEndian.AppendUint16(buf, Float32ToF16(0.25))
	buf = binary.LittleEndian.AppendUint16(buf, Float32ToF16(65504))
	buf = binary.LittleEndian.AppendUint64(buf, 7)
	f, err := Parse(rawFile(hdr, buf))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Metadata()["format"]; got != "pt" {
		t.Errorf("metadata format = %q, want pt", got)
	}
	if got, want := strings.Join(f.Names(), ","), "a,b,empty,h,i"; got != want {
		t.Errorf("Names = %s, want %s", got, want)
	}
	for name, want := range map[string][]float32{"a": {1.5, -2}, "b": {3, -0.5}, "h": {0.25, 65504}, "empty": {}} {
		got, err := f.ReadFloat32(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !equalF32(got, want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if _, err := f.ReadFloat32("i"); !errors.Is(err, ErrUnsupportedDType) || !strings.Contains(err.Error(), `"i"`) {
		t.Errorf("reading I64 as float32: err = %v, want ErrUnsupportedDType naming the tensor", err)
	}
	if raw, err := f.RawBytes("i"); err != nil || binary.LittleEndian.Uint64(raw) != 7 {
		t.Errorf("RawBytes(i) = %v, %v", raw, err)
	}
	if _, err := f.ReadFloat32("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tensor: err = %v, want ErrNotFound", err)
	}
	ti, ok := f.Tensor("h")
	if !ok || ti.DType != F16 || len(ti.Shape) != 2 || ti.Shape[1] != 2 || ti.NumElements() != 2 {
		t.Errorf("Tensor(h) = %+v, %v", ti, ok)
	}
}

func equalF32(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func TestParseRejects(t *testing.T) {
	okEntry := func(name string, begin, end int) string {
		return `"` + name + `":{"dtype":"F32","shape":[` + strconv.Itoa((end-begin)/4) + `],"data_offsets":[` + strconv.Itoa(begin) + `,` + strconv.Itoa(end) + `]}`
	}
	buf8 := make([]byte, 8)
	hugeLen := make([]byte, 16)
	binary.LittleEndian.PutUint64(hugeLen, MaxHeaderSize+1)
	pastEnd := make([]byte, 16)
	binary.LittleEndian.PutUint64(pastEnd, 9)
	tests := []struct {
		name string
		file []byte
		want []string // substrings of the error
	}{
		{"empty file", nil, []string{"header length", "shorter than the 8-byte"}},
		{"short file", []byte{1, 2, 3}, []string{"header length", "truncated"}},
		{"absurd header length", hugeLen, []string{"header length", "exceeds"}},
		{"header past end", pastEnd, []string{"header length", "only 8 bytes follow"}},
		{"not json", rawFile(`{not json}`, nil), []string{"invalid JSON"}},
		{"not an object", rawFile(`[1,2]`, nil), []string{"must start with '{'"}},
		{"invalid utf8", rawFile("{\"\xff\":1}", nil), []string{"UTF-8"}},
		{"trailing garbage", rawFile(`{} x`, nil), []string{"unexpected data after"}},
		{"two objects", rawFile(`{}{}`, nil), []string{"unexpected data after"}},
		{"unknown dtype", rawFile(`{"w":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}}`, buf8), []string{`tensor "w"`, "dtype", `unknown dtype "F31"`}},
		{"sub-byte dtype", rawFile(`{"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}`, buf8[:1]), []string{`tensor "w"`, "sub-byte"}},
		{"dtype not string", rawFile(`{"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}`, buf8), []string{"dtype", "must be a string"}},
		{"negative dim", rawFile(`{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, buf8), []string{`tensor "w"`, "shape", "non-negative"}},
		{"fractional dim", rawFile(`{"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}`, buf8), []string{"shape", "non-negative integer"}},
		{"string dim", rawFile(`{"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}`, buf8), []string{"shape"}},
		{"dim overflows int64", rawFile(`{"w":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}}`, buf8), []string{"shape", "below 2^63"}},
		{"shape product overflows", rawFile(`{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, buf8), []string{"shape", "too many elements"}},
		{"byte size overflows", rawFile(`{"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}}`, buf8), []string{"shape", "too many bytes"}},
		{"null shape", rawFile(`{"w":{"dtype":"F32","shape":null,"data_offsets":[0,4]}}`, buf8[:4]), []string{"shape", "must be an array"}},
		{"size mismatch", rawFile(`{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, buf8), []string{`tensor "w"`, "data_offsets", "spans 8 bytes", "needs 12 bytes"}},
		{"offsets reversed", rawFile(`{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, buf8), []string{"before begin"}},
		{"offsets three numbers", rawFile(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}`, buf8), []string{"[begin, end]"}},
		{"offsets out of bounds", rawFile(`{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, buf8), []string{`tensor "w"`, "runs past the end", "truncated"}},
		{"overlap", rawFile(`{`+okEntry("a", 0, 8)+`,`+okEntry("b", 4, 12)+`}`, make([]byte, 12)), []string{`tensor "b"`, `overlaps tensor "a"`}},
		{"hole", rawFile(`{`+okEntry("a", 0, 4)+`,`+okEntry("b", 8, 12)+`}`, make([]byte, 12)), []string{`tensor "b"`, "hole of 4 bytes"}},
		{"hole at start", rawFile(`{`+okEntry("a", 4, 8)+`}`, buf8), []string{"hole of 4 bytes after offset 0"}},
		{"trailing bytes", rawFile(`{`+okEntry("a", 0, 4)+`}`, buf8), []string{"cover 4 bytes but the data buffer has 8"}},
		{"duplicate name", rawFile(`{`+okEntry("a", 0, 4)+`,`+okEntry("a", 4, 8)+`}`, buf8), []string{`tensor "a"`, "more than once"}},
		{"duplicate field", rawFile(`{"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, buf8), []string{"dtype", "more than once"}},
		{"unknown field", rawFile(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}}`, buf8), []string{"extra", "unknown field"}},
		{"missing field", rawFile(`{"w":{"dtype":"F32","shape":[2]}}`, buf8), []string{"data_offsets", "missing"}},
		{"entry not object", rawFile(`{"w":[1]}`, nil), []string{`tensor "w"`, "must be an object"}},
		{"metadata not strings", rawFile(`{"__metadata__":{"a":1}}`, nil), []string{"__metadata__", "must be a string"}},
		{"metadata not object", rawFile(`{"__metadata__":[]}`, nil), []string{"__metadata__", "must be an object"}},
		{"metadata duplicate key", rawFile(`{"__metadata__":{"a":"x","a":"y"}}`, nil), []string{"__metadata__", "more than once"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.file)
			if err == nil {
				t.Fatal("Parse accepted an invalid file")
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("err = %v, want ErrFormat", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %q, want it to contain %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), "<bytes>") {
				t.Errorf("err = %q does not name the source", err)
			}
		})
	}
}

func TestParseReportsAllProblems(t *testing.T) {
	hdr := `{"a":{"dtype":"X","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`
	_, err := Parse(rawFile(hdr, make([]byte, 4)))
	if err == nil || !strings.Contains(err.Error(), `tensor "a"`) || !strings.Contains(err.Error(), `tensor "b"`) {
		t.Fatalf("err = %v, want problems with both a and b", err)
	}
}

func TestOpenNamesFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.safetensors")
	if err := os.WriteFile(p, rawFile(`{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, make([]byte, 8)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(p)
	var se *Error
	if !errors.As(err, &se) || se.File != p || se.Tensor != "w" {
		t.Fatalf("err = %v, want *Error naming %s and tensor w", err, p)
	}
	if _, err := Open(filepath.Join(dir, "missing.safetensors")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want ErrNotExist", err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("Open(dir) = %v, want an error naming it", err)
	}
}

func TestReadRanges(t *testing.T) {
	vals := make([]float32, 3*5)
	for i := range vals {
		vals[i] = float32(i)
	}
	hdr := `{"m":{"dtype":"F32","shape":[3,5],"data_offsets":[0,60]},"s":{"dtype":"F32","shape":[],"data_offsets":[60,64]}}`
	f, err := Parse(rawFile(hdr, append(f32Bytes(vals...), f32Bytes(42)...)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.ReadFloat32Range("m", 4, 7)
	if err != nil || !equalF32(got, vals[4:11]) {
		t.Errorf("ReadFloat32Range(m, 4, 7) = %v, %v", got, err)
	}
	got, err = f.ReadFloat32Rows("m", 1, 2)
	if err != nil || !equalF32(got, vals[5:15]) {
		t.Errorf("ReadFloat32Rows(m, 1, 2) = %v, %v", got, err)
	}
	got, err = f.ReadFloat32("s")
	if err != nil || !equalF32(got, []float32{42}) {
		t.Errorf("scalar = %v, %v", got, err)
	}
	dst := make([]float32, 2)
	if err := f.ReadFloat32RangeInto("m", 13, dst); err != nil || !equalF32(dst, vals[13:15]) {
		t.Errorf("ReadFloat32RangeInto(m, 13) = %v, %v", dst, err)
	}
	for _, r := range [][2]int64{{-1, 1}, {0, 16}, {15, 1}, {16, 0}, {1, -1}, {math.MaxInt64, 2}, {2, math.MaxInt64}} {
		if _, err := f.ReadFloat32Range("m", r[0], r[1]); !errors.Is(err, ErrRange) {
			t.Errorf("ReadFloat32Range(m, %d, %d): err = %v, want ErrRange", r[0], r[1], err)
		}
	}
	if _, err := f.ReadFloat32Rows("m", 2, 2); !errors.Is(err, ErrRange) {
		t.Errorf("rows past end: err = %v", err)
	}
	if _, err := f.ReadFloat32Rows("s", 0, 1); !errors.Is(err, ErrRange) {
		t.Errorf("rows of scalar: err = %v", err)
	}
}

func TestOpenMmapAndClose(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.safetensors")
	data := make([]float32, 10000) // large enough to be memory-mapped
	for i := range data {
		data[i] = float32(i) * 0.5
	}
	if err := Write(p, []Tensor{{Name: "w", Shape: []int64{100, 100}, Data: data}}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.ReadFloat32Rows("w", 99, 1)
	if err != nil || !equalF32(got, data[9900:]) {
		t.Errorf("last row = %v, %v", got[:3], err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := f.ReadFloat32("w"); err == nil {
		t.Error("read after Close succeeded")
	}
	if f.Path() != p {
		t.Errorf("Path = %s", f.Path())
	}
}
