// Package golden reads the PyTorch golden fixtures that
// scripts/golden/make_fixtures.py writes to model/testdata, for the tests
// that check the model against them with each kernel set.
package golden

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"testing"

	"github.com/loomtrain/loom/model"
)

// Fixture format (see make_fixtures.py): magic, then version and record
// count as uint32, then per record a name, dtype, dims and little-endian data.
const (
	magic   = "LOOMGLD\x00"
	version = 1
	dtF32   = 1
	dtI32   = 2
	dtF64   = 3
)

// Record is one named tensor; exactly one of F32, I32 and F64 is set.
type Record struct {
	Shape []int
	F32   []float32
	I32   []int32
	F64   []float64
}

// Fixture maps record names to records.
type Fixture map[string]*Record

// Read parses the fixture file at path.
func Read(path string) (Fixture, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := bytes.NewReader(data)
	m := make([]byte, 8)
	if _, err := r.Read(m); err != nil || string(m) != magic {
		return nil, fmt.Errorf("%s: bad magic %q", path, m)
	}
	var hdr struct{ Version, Count uint32 }
	if err := binary.Read(r, binary.LittleEndian, &hdr); err != nil {
		return nil, fmt.Errorf("%s: header: %w", path, err)
	}
	if hdr.Version != version {
		return nil, fmt.Errorf("%s: version %d, want %d", path, hdr.Version, version)
	}
	f := Fixture{}
	for i := 0; i < int(hdr.Count); i++ {
		var nameLen uint32
		if err := binary.Read(r, binary.LittleEndian, &nameLen); err != nil || nameLen > 1024 {
			return nil, fmt.Errorf("%s: record %d: name length %d: %v", path, i, nameLen, err)
		}
		name := make([]byte, nameLen)
		if _, err := r.Read(name); err != nil {
			return nil, fmt.Errorf("%s: record %d name: %w", path, i, err)
		}
		var dt, ndim uint32
		if err := binary.Read(r, binary.LittleEndian, &dt); err != nil {
			return nil, fmt.Errorf("%s: record %q: dtype: %w", path, name, err)
		}
		if err := binary.Read(r, binary.LittleEndian, &ndim); err != nil || ndim > 8 {
			return nil, fmt.Errorf("%s: record %q: ndim %d: %v", path, name, ndim, err)
		}
		dims := make([]uint32, ndim)
		if err := binary.Read(r, binary.LittleEndian, dims); err != nil {
			return nil, fmt.Errorf("%s: record %q dims: %w", path, name, err)
		}
		rec := &Record{}
		n := 1
		for _, d := range dims {
			rec.Shape = append(rec.Shape, int(d))
			n *= int(d)
		}
		if n > r.Len() {
			return nil, fmt.Errorf("%s: record %q: %d elements but %d bytes left", path, name, n, r.Len())
		}
		switch dt {
		case dtF32:
			rec.F32 = make([]float32, n)
			err = binary.Read(r, binary.LittleEndian, rec.F32)
		case dtI32:
			rec.I32 = make([]int32, n)
			err = binary.Read(r, binary.LittleEndian, rec.I32)
		case dtF64:
			rec.F64 = make([]float64, n)
			err = binary.Read(r, binary.LittleEndian, rec.F64)
		default:
			err = fmt.Errorf("unknown dtype %d", dt)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: record %q data: %w", path, name, err)
		}
		f[string(name)] = rec
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%s: %d trailing bytes", path, r.Len())
	}
	return f, nil
}

// Get returns the record name, failing tb if there is none.
func (f Fixture) Get(tb testing.TB, name string) *Record {
	tb.Helper()
	r, ok := f[name]
	if !ok {
		tb.Fatalf("fixture has no record %q", name)
	}
	return r
}

// Config returns the model configuration the fixture was made with.
func (f Fixture) Config(tb testing.TB) model.Config {
	tb.Helper()
	c, cf := f.Get(tb, "config").I32, f.Get(tb, "config_f64").F64
	return model.Config{VocabSize: int(c[0]), Dim: int(c[1]), NLayers: int(c[2]), NHeads: int(c[3]), NKVHeads: int(c[4]),
		FFNHidden: int(c[5]), SeqLen: int(c[6]), TieEmbeddings: c[7] != 0, RopeTheta: cf[0], NormEps: cf[1]}
}
