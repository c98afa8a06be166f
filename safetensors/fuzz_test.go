package safetensors

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse. It must never panic; when it
// accepts a file, every tensor must be readable within bounds, and writing the
// float tensors back out must parse again to the same values.
func FuzzParse(f *testing.F) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, []TensorHeader{
		{Name: "a", Shape: []int64{2, 3}},
		{Name: "b", DType: F16, Shape: []int64{3}},
		{Name: "c", DType: BF16, Shape: []int64{}},
		{Name: "e", Shape: []int64{0}},
	}, map[string]string{"format": "pt"})
	if err != nil {
		f.Fatal(err)
	}
	w.WriteFloat32("a", []float32{1, 2, 3, 4, 5, 6})
	w.WriteFloat32("b", []float32{0.5, -1, 2})
	w.WriteFloat32("c", []float32{3})
	w.WriteFloat32("e", nil)
	if err := w.Close(); err != nil {
		f.Fatal(err)
	}
	valid := buf.Bytes()
	f.Add(valid)
	f.Add(valid[:len(valid)-1])
	f.Add(valid[:20])
	f.Add(rawFile(`{}`, nil))
	f.Add(rawFile(`{"__metadata__":null}`, nil))
	f.Add(rawFile(`{"x":{"dtype":"I8","shape":[3],"data_offsets":[0,3]}}`, []byte{1, 2, 3}))
	f.Add(rawFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}`, make([]byte, 6)))
	f.Add(rawFile(`{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data)
		if err != nil {
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error is not *Error: %v", err)
			}
			return
		}
		var hdrs []TensorHeader
		var vals [][]float32
		for _, ti := range file.Tensors() {
			raw, err := file.RawBytes(ti.Name)
			if err != nil || int64(len(raw)) != ti.End-ti.Begin {
				t.Fatalf("RawBytes(%q) = %d bytes, %v", ti.Name, len(raw), err)
			}
			v, err := file.ReadFloat32(ti.Name)
			if !ti.DType.isFloat32Convertible() {
				if !errors.Is(err, ErrUnsupportedDType) {
					t.Fatalf("ReadFloat32(%q) of %s: err = %v", ti.Name, ti.DType, err)
				}
				continue
			}
			if err != nil || int64(len(v)) != ti.NumElements() {
				t.Fatalf("ReadFloat32(%q) = %d values, %v; want %d", ti.Name, len(v), err, ti.NumElements())
			}
			if ti.Name == "" || ti.Name == metadataKey {
				continue
			}
			hdrs = append(hdrs, TensorHeader{Name: ti.Name, DType: ti.DType, Shape: ti.Shape})
			vals = append(vals, v)
		}
		var out bytes.Buffer
		w, err := NewWriter(&out, hdrs, file.Metadata())
		if err != nil {
			t.Fatalf("re-encoding accepted tensors: %v", err)
		}
		for i, h := range hdrs {
			if err := w.WriteFloat32(h.Name, vals[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		again, err := Parse(out.Bytes())
		if err != nil {
			t.Fatalf("re-encoded file does not parse: %v", err)
		}
		for i, h := range hdrs {
			got, err := again.ReadFloat32(h.Name)
			if err != nil {
				t.Fatal(err)
			}
			for j := range got {
				// NaN payloads may be quieted by the F16/BF16 encoders.
				if got[j] != vals[i][j] && !(got[j] != got[j] && vals[i][j] != vals[i][j]) {
					t.Fatalf("%q[%d] = %v after re-encoding, want %v", h.Name, j, got[j], vals[i][j])
				}
			}
		}
	})
}
