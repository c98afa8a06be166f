package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "model.safetensors")
	emb := []float32{1, 2, 3, 4, 5, 6}
	half := []float32{0.1, -3.5, 65504, 1e-7}
	tensors := []Tensor{
		{Name: "z.emb", Shape: []int64{3, 2}, Data: emb},
		{Name: "a.half", DType: F16, Shape: []int64{4}, Data: half},
		{Name: "b.bf", DType: BF16, Shape: []int64{2, 2}, Data: half},
		{Name: "scalar", Shape: []int64{}, Data: []float32{7}},
		{Name: "empty", Shape: []int64{0, 4}, Data: nil},
		{Name: `quote"<&>`, Shape: []int64{1}, Data: []float32{-1}},
	}
	md := map[string]string{"format": "pt", "loom": "1"}
	if err := Write(p, tensors, md); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(raw)
	if n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	hdr := string(raw[8 : 8+n])
	if !strings.HasPrefix(hdr, `{"__metadata__":{"format":"pt","loom":"1"},"z.emb":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]}`) {
		t.Errorf("header = %s", hdr)
	}
	if strings.TrimRight(hdr, " ") != strings.TrimSpace(hdr) || !strings.HasSuffix(strings.TrimRight(hdr, " "), "}") {
		t.Errorf("header is not padded with trailing spaces: %q", hdr)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := f.Metadata(); len(got) != 2 || got["loom"] != "1" {
		t.Errorf("metadata = %v", got)
	}
	infos := f.Tensors()
	if len(infos) != len(tensors) {
		t.Fatalf("got %d tensors, want %d", len(infos), len(tensors))
	}
	for i, want := range tensors {
		if infos[i].Name != want.Name {
			t.Errorf("tensor %d is %q, want %q (given order)", i, infos[i].Name, want.Name)
		}
		got, err := f.ReadFloat32(want.Name)
		if err != nil {
			t.Fatal(err)
		}
		exp := make([]float32, len(want.Data))
		for j, v := range want.Data {
			switch want.DType {
			case F16:
				exp[j] = F16ToFloat32(Float32ToF16(v))
			case BF16:
				exp[j] = BF16ToFloat32(Float32ToBF16(v))
			default:
				exp[j] = v
			}
		}
		if !equalF32(got, exp) {
			t.Errorf("%s = %v, want %v", want.Name, got, exp)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory has %d entries, want only the committed file (no temp leftovers)", len(ents))
	}
}

func TestWriterStreamsInChunks(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, []TensorHeader{{Name: "a", Shape: []int64{4, 3}}, {Name: "b", DType: BF16, Shape: []int64{2}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for r := range 4 {
		if err := w.WriteFloat32("a", []float32{float32(3 * r), float32(3*r + 1), float32(3*r + 2)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.WriteFloat32("b", []float32{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Parse(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := f.ReadFloat32("a")
	for i, v := range got {
		if v != float32(i) {
			t.Fatalf("a = %v", got)
		}
	}
}

func TestWriterLargeTensorCrossesChunks(t *testing.T) {
	var buf bytes.Buffer
	n := writeChunk/4*2 + 7
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(i)
	}
	w, err := NewWriter(&buf, []TensorHeader{{Name: "big", Shape: []int64{int64(n)}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFloat32("big", data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Parse(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := f.ReadFloat32("big")
	if !equalF32(got, data) {
		t.Error("large tensor did not round-trip")
	}
}

func TestWriterMisuse(t *testing.T) {
	hdrs := []TensorHeader{{Name: "a", Shape: []int64{2}}, {Name: "b", Shape: []int64{1}}}
	tests := []struct {
		name string
		run  func(w *Writer) error
		want string
	}{
		{"wrong order", func(w *Writer) error { return w.WriteFloat32("b", []float32{1}) }, `expected tensor "a" next`},
		{"incomplete then next", func(w *Writer) error {
			w.WriteFloat32("a", []float32{1})
			return w.WriteFloat32("b", []float32{1})
		}, `"a" is incomplete: 1 of 2`},
		{"too many", func(w *Writer) error { return w.WriteFloat32("a", []float32{1, 2, 3}) }, "exceed its 2 elements"},
		{"extra tensor", func(w *Writer) error {
			w.WriteFloat32("a", []float32{1, 2})
			w.WriteFloat32("b", []float32{1})
			return w.WriteFloat32("c", nil)
		}, "already written"},
		{"close early", func(w *Writer) error {
			w.WriteFloat32("a", []float32{1, 2})
			return w.Close()
		}, `tensor "b": not written`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := NewWriter(&bytes.Buffer{}, hdrs, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = tc.run(w)
			if !errors.Is(err, ErrWriter) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrWriter containing %q", err, tc.want)
			}
			if w.Close() == nil {
				t.Error("Close after a failure succeeded")
			}
		})
	}
}

func TestWriterRejectsBadHeaders(t *testing.T) {
	tests := []struct {
		name    string
		tensors []TensorHeader
		want    string
	}{
		{"duplicate", []TensorHeader{{Name: "a"}, {Name: "a"}}, "more than once"},
		{"empty name", []TensorHeader{{Name: ""}}, "non-empty"},
		{"metadata name", []TensorHeader{{Name: "__metadata__"}}, "non-empty"},
		{"negative dim", []TensorHeader{{Name: "a", Shape: []int64{-1}}}, "non-negative"},
		{"overflow", []TensorHeader{{Name: "a", Shape: []int64{1 << 40, 1 << 40}}}, "2^60"},
		{"int dtype", []TensorHeader{{Name: "a", DType: I32}}, "cannot be written from float32"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewWriter(&bytes.Buffer{}, tc.tensors, nil)
			if !errors.Is(err, ErrWriter) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrWriter containing %q", err, tc.want)
			}
		})
	}
}

func TestWriteAtomicOnError(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.safetensors")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Write(p, []Tensor{{Name: "a", Shape: []int64{3}, Data: []float32{1, 2}}}, nil)
	if !errors.Is(err, ErrWriter) || !strings.Contains(err.Error(), "has 2 values but shape [3] needs 3") {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("destination changed to %q after a failed write", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temp file left behind: %d entries", len(ents))
	}
	fw, err := Create(p, []TensorHeader{{Name: "a", Shape: []int64{1}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fw.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := fw.Commit(); err == nil {
		t.Error("Commit after Abort succeeded")
	}
}

func TestF16Conversion(t *testing.T) {
	// Every non-NaN half round-trips exactly.
	for h := range 1 << 16 {
		f := F16ToFloat32(uint16(h))
		if f != f {
			if g := Float32ToF16(f); F16ToFloat32(g) == F16ToFloat32(g) {
				t.Fatalf("NaN %#04x became non-NaN %#04x", h, g)
			}
			continue
		}
		if g := Float32ToF16(f); g != uint16(h) {
			t.Fatalf("%#04x -> %g -> %#04x", h, f, g)
		}
	}
	// Midpoints between neighbouring positive halves round to even; the
	// nearest floats on either side round to the nearer half.
	for h := uint16(0); h < 0x7bff; h++ {
		lo, hi := F16ToFloat32(h), F16ToFloat32(h+1)
		mid := float32((float64(lo) + float64(hi)) / 2)
		even := h
		if h&1 == 1 {
			even = h + 1
		}
		if g := Float32ToF16(mid); g != even {
			t.Fatalf("midpoint %g of %#04x,%#04x -> %#04x, want %#04x", mid, h, h+1, g, even)
		}
		if g := Float32ToF16(math.Nextafter32(mid, 0)); g != h {
			t.Fatalf("below midpoint of %#04x -> %#04x", h, g)
		}
		if g := Float32ToF16(math.Nextafter32(mid, float32(math.Inf(1)))); g != h+1 {
			t.Fatalf("above midpoint of %#04x -> %#04x", h, g)
		}
		if g := Float32ToF16(-mid); g != even|0x8000 {
			t.Fatalf("negative midpoint of %#04x -> %#04x", h, g)
		}
	}
	// Past the largest half (65504) the next step would be 65536: 65520 is the tie.
	if g := Float32ToF16(math.Nextafter32(65520, 0)); g != 0x7bff {
		t.Errorf("just below 65520 -> %#04x, want 0x7bff", g)
	}
	if g := Float32ToF16(65520); g != 0x7c00 {
		t.Errorf("65520 -> %#04x, want +Inf", g)
	}
	if g := Float32ToF16(1e6); g != 0x7c00 {
		t.Errorf("1e6 -> %#04x, want +Inf", g)
	}
	if g := Float32ToF16(1e-30); g != 0 {
		t.Errorf("1e-30 -> %#04x, want 0", g)
	}
}

func TestBF16Conversion(t *testing.T) {
	for h := range 1 << 16 {
		f := BF16ToFloat32(uint16(h))
		if f != f {
			continue
		}
		if g := Float32ToBF16(f); g != uint16(h) {
			t.Fatalf("%#04x -> %g -> %#04x", h, f, g)
		}
	}
	cases := []struct {
		in   uint32
		want uint16
	}{
		{0x3f808000, 0x3f80}, // tie, even stays
		{0x3f818000, 0x3f82}, // tie, odd rounds up
		{0x3f808001, 0x3f81}, // above tie
		{0x7f7fffff, 0x7f80}, // max float rounds to Inf
		{0x7f800001, 0x7fc0}, // signalling NaN stays NaN
	}
	for _, c := range cases {
		if g := Float32ToBF16(math.Float32frombits(c.in)); g != c.want {
			t.Errorf("%#08x -> %#04x, want %#04x", c.in, g, c.want)
		}
	}
}
