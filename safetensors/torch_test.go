package safetensors

import (
	"flag"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "regenerate testdata/torch_fixture.safetensors with python3 + torch")

const (
	torchFixture   = "testdata/torch_fixture.safetensors"
	torchGenerator = "testdata/gen_torch_fixture.py"
)

// TestTorchFixture reads a file that torch wrote (see gen_torch_fixture.py)
// and checks the reader, and Loom's F16/BF16 rounding against torch's.
func TestTorchFixture(t *testing.T) {
	if *update {
		if _, ok := runTorch(t, torchGenerator, torchFixture); !ok {
			t.Fatal("-update needs python3 with torch; set $PYTHON")
		}
	}
	f, err := Open(torchFixture)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	md := f.Metadata()
	if md["generator"] != "gen_torch_fixture.py" || md["fixture_version"] != "1" {
		t.Fatalf("fixture metadata %v; regenerate with -update", md)
	}
	src, err := f.ReadFloat32("src")
	if err != nil {
		t.Fatal(err)
	}
	if len(src) != 108 || src[0] != float32(-40)*0.37 {
		t.Fatalf("src has %d values starting %v", len(src), src[0])
	}
	for _, c := range []struct {
		name  string
		round func(float32) float32
	}{
		{"src.f16", func(v float32) float32 { return F16ToFloat32(Float32ToF16(v)) }},
		{"src.bf16", func(v float32) float32 { return BF16ToFloat32(Float32ToBF16(v)) }},
	} {
		got, err := f.ReadFloat32(c.name)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range src {
			if want := c.round(v); math.Float32bits(got[i]) != math.Float32bits(want) {
				t.Errorf("%s[%d]: torch rounded %g to %g, Loom to %g", c.name, i, v, got[i], want)
			}
		}
	}
	if v, err := f.ReadFloat32("scalar"); err != nil || len(v) != 1 || v[0] != 2.5 {
		t.Errorf("scalar = %v, %v", v, err)
	}
	if v, err := f.ReadFloat32("empty"); err != nil || len(v) != 0 {
		t.Errorf("empty = %v, %v", v, err)
	}
	if raw, err := f.RawBytes("ints"); err != nil || len(raw) != 48 || raw[8] != 1 || raw[40] != 5 {
		t.Errorf("ints bytes = %v, %v", raw, err)
	}
}

// TestTorchReadsGoFile has torch read a file Loom wrote and compares every
// value. It runs only where python3 with torch is installed, and not in
// -short mode.
func TestTorchReadsGoFile(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Python interpreter")
	}
	p := filepath.Join(t.TempDir(), "go.safetensors")
	data := []float32{0.1, -2.5, 65519, 1e-7, 3, float32(math.Inf(-1))}
	tensors := []Tensor{
		{Name: "w.f32", Shape: []int64{2, 3}, Data: data},
		{Name: "w.f16", DType: F16, Shape: []int64{6}, Data: data},
		{Name: "w.bf16", DType: BF16, Shape: []int64{3, 2}, Data: data},
		{Name: "s", Shape: []int64{}, Data: []float32{-1}},
		{Name: "e", Shape: []int64{0}},
	}
	if err := Write(p, tensors, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	out, ok := runTorch(t, torchGenerator, "--check", p)
	if !ok {
		t.Skip("no python3 with torch; set $PYTHON to run this cross-check")
	}
	got := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 4 {
			got[f[0]] = f[1:]
		}
	}
	for _, tn := range tensors {
		dt := tn.DType
		if dt == "" {
			dt = F32
		}
		dims := make([]string, len(tn.Shape))
		for i, d := range tn.Shape {
			dims[i] = strconv.FormatInt(d, 10)
		}
		shape := strings.Join(dims, ",")
		if shape == "" {
			shape = "-"
		}
		g := got[tn.Name]
		if len(g) != 3 || g[0] != string(dt) || g[1] != shape {
			t.Errorf("%s: torch saw %q, want dtype %s shape %s\n%s", tn.Name, g, dt, shape, out)
			continue
		}
		vals := strings.Split(g[2], ",")
		if g[2] == "-" {
			vals = nil
		}
		if len(vals) != len(tn.Data) {
			t.Errorf("%s: torch read %d values, want %d", tn.Name, len(vals), len(tn.Data))
			continue
		}
		for i, v := range tn.Data {
			switch tn.DType {
			case F16:
				v = F16ToFloat32(Float32ToF16(v))
			case BF16:
				v = BF16ToFloat32(Float32ToBF16(v))
			}
			tv, err := strconv.ParseFloat(vals[i], 64)
			if err != nil || tv != float64(v) {
				t.Errorf("%s[%d]: torch read %s, Loom wrote %v", tn.Name, i, vals[i], v)
			}
		}
	}
}

// runTorch runs a Python script with the first interpreter that has torch
// ($PYTHON, then Debian's /usr/bin/python3, then python3 on $PATH). ok is
// false when none has torch; a failure of the script itself fails the test.
func runTorch(t *testing.T, args ...string) (out string, ok bool) {
	t.Helper()
	var cands []string
	if p := os.Getenv("PYTHON"); p != "" {
		cands = append(cands, p)
	}
	cands = append(cands, "/usr/bin/python3", "python3")
	for _, c := range cands {
		b, err := exec.Command(c, args...).CombinedOutput()
		if err == nil {
			return string(b), true
		}
		if _, notFound := err.(*exec.Error); notFound || strings.Contains(string(b), "No module named 'torch'") {
			continue
		}
		t.Fatalf("%s %v: %v\n%s", c, args, err, b)
	}
	return "", false
}
