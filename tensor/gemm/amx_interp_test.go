//go:build amd64 && !purego

package gemm

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

// kernelAMXBF16 through the instruction interpreter: this VM has no AMX
// (CPUID bits clear, arch_prctl refuses the tile state), so the kernel's
// source runs on the interpreter's tiles against kernelGenericAMX, the Go
// model of TDPBF16PS and of the AMX layouts, bit for bit, and against the
// float64 sums of the bf16 products.

// amxCase is one call: k k-pairs (a multiple of 16), mb row blocks.
type amxCase struct {
	k     int
	mb    int
	alpha float32
	load  bool
	ldc   int
	data  string // "ints", "floats" or "tiny" (subnormal sums and C)
}

func (c amxCase) String() string {
	return fmt.Sprintf("k=%d mb=%d alpha=%g load=%v ldc=%d %s", c.k, c.mb, c.alpha, c.load, c.ldc, c.data)
}

func amxCases() []amxCase {
	var cs []amxCase
	for _, data := range []string{"ints", "floats", "tiny"} {
		for _, k := range []int{0, 16, 32, 64} {
			for _, alpha := range []float32{1, -0.5} {
				for _, load := range []bool{false, true} {
					for _, ldc := range []int{amxNR, amxNR + 3} {
						cs = append(cs, amxCase{k, 1, alpha, load, ldc, data})
					}
					if k <= 32 {
						cs = append(cs, amxCase{k, 2 + k/32, alpha, load, amxNR + 5, data})
					}
				}
			}
		}
	}
	return cs
}

// amxData is one call's panels (words of bf16 pairs) and C.
type amxData struct {
	a, b []uint32
	c    []float32
}

func newAMXData(seed uint64, tc amxCase) amxData {
	rng := rand.New(rand.NewPCG(seed, uint64(tc.k)+7))
	val := func() float32 {
		if tc.data == "ints" {
			return float32(rng.IntN(17) - 8)
		}
		e := rng.IntN(13) - 6
		if tc.data == "tiny" {
			e = -60 - rng.IntN(8)
		}
		v := (1 + rng.Float32()) * float32(math.Ldexp(1, e))
		if rng.IntN(2) == 0 {
			v = -v
		}
		return v
	}
	d := amxData{a: make([]uint32, tc.mb*amxMR*tc.k), b: make([]uint32, amxNR*tc.k), c: make([]float32, tc.mb*amxMR*tc.ldc)}
	for _, x := range [][]uint32{d.a, d.b} {
		for i := range x {
			x[i] = bf16Pair(val(), val())
		}
	}
	for i := range d.c {
		switch {
		case !tc.load:
			d.c[i] = math.Float32frombits(cNaN)
		case tc.data == "tiny":
			d.c[i] = math.Float32frombits(uint32(rng.IntN(1<<23)) | uint32(rng.IntN(2))<<31)
		default:
			d.c[i] = val()
		}
	}
	return d
}

func wordsToBytes(x []uint32) []byte {
	b := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	return b
}

const asmCfgBase = 5 << 32

// interpretAMX runs f on d and returns C. A and the tile configuration
// must each be read exactly once and B once per row block, C read only
// when the call loads it (and then once per byte by TILELOADD) or after
// it was written, the 32·mb×32 block written once by TILESTORED (twice
// with alpha ≠ 1: the AVX-512 scaling) and nothing else of C touched; the
// tile state must be released and the upper vector state clean at RET.
func interpretAMX(f *asmFunc, tc amxCase, d amxData, cov []int) ([]float32, error) {
	frame := make([]byte, f.argSize)
	args := map[string]uint64{
		"k": uint64(tc.k), "a": asmABase, "b": asmBBase, "c": asmCBase, "ldc": uint64(tc.ldc),
		"alpha": uint64(math.Float32bits(tc.alpha)), "load": loadArg(tc.load), "cfg": asmCfgBase, "mb": uint64(tc.mb),
	}
	for _, s := range f.frame {
		v, ok := args[s.name]
		if !ok {
			return nil, fmt.Errorf("no value for argument %s", s.name)
		}
		if s.size == 4 {
			binary.LittleEndian.PutUint32(frame[s.off:], uint32(v))
		} else {
			binary.LittleEndian.PutUint64(frame[s.off:], v)
		}
	}
	cfg := amxTileConfig()
	mem := &asmMemory{}
	mem.add("args", asmFrameBase, frame, true, false)
	rcfg := mem.add("cfg", asmCfgBase, cfg[:], true, false)
	ra := mem.add("A", asmABase, wordsToBytes(d.a), true, false)
	rb := mem.add("B", asmBBase, wordsToBytes(d.b), true, false)
	rc := mem.add("C", asmCBase, floatsToBytes(d.c), true, true)
	rc.writeFirst = !tc.load
	m := newAsmMachine(mem, asmFrameBase)
	if err := m.run(f, cov); err != nil {
		return nil, err
	}
	for _, r := range []*asmRegion{rcfg, ra, rb} {
		want := 1
		if r == rb {
			want = tc.mb
		}
		if i := slices.IndexFunc(r.reads, func(n int) bool { return n != want }); i >= 0 {
			return nil, fmt.Errorf("%s byte %d read %d times, want %d", r.name, i, r.reads[i], want)
		}
	}
	wantW := 1
	if tc.alpha != 1 {
		wantW = 2
	}
	for x := range rc.data {
		i, j := x/4/tc.ldc, x/4%tc.ldc
		w := 0
		if i < tc.mb*amxMR && j < amxNR {
			w = wantW
		}
		if rc.writes[x] != w {
			return nil, fmt.Errorf("C[%d][%d] byte %d written %d times, want %d", i, j, x%4, rc.writes[x], w)
		}
		if w == 0 && rc.reads[x] != 0 {
			return nil, fmt.Errorf("C[%d][%d] past the block read", i, j)
		}
	}
	if m.tileCfg {
		return nil, fmt.Errorf("tile state not released at RET (missing TILERELEASE)")
	}
	for r := 0; r < 16; r++ {
		if slices.ContainsFunc(m.vec[r][4:], func(v uint32) bool { return v != 0 }) {
			return nil, fmt.Errorf("upper half of vector register %d dirty at RET (missing VZEROUPPER?)", r)
		}
	}
	if want := 2 * tc.k * tc.mb * amxMR * amxNR; m.fmaLanes != want {
		return nil, fmt.Errorf("%d bf16 products, want %d", m.fmaLanes, want)
	}
	return bytesToFloats(rc.data), nil
}

// modelAMX runs kernelGenericAMX on a copy of d.
func modelAMX(tc amxCase, d amxData) []float32 {
	c := slices.Clone(d.c)
	a, b := append(slices.Clone(d.a), 0), append(slices.Clone(d.b), 0)
	columnGenericAMX(tc.mb, tc.k, wordPtr(a), wordPtr(b), &c[0], tc.ldc, int(loadArg(tc.load)), tc.alpha)
	return c
}

// referenceAMX checks got against float64 sums of the bf16 products: exact
// for integers, within the bf16 kernels' bound otherwise.
func referenceAMX(got []float32, tc amxCase, d amxData) error {
	for i := range tc.mb * amxMR {
		for j := range amxNR {
			x := i*tc.ldc + j
			ai := d.a[i/amxMR*amxMR*tc.k:]
			var s, mag float64
			if tc.load {
				s, mag = float64(d.c[x]), math.Abs(float64(d.c[x]))
			}
			for p := range tc.k {
				aw := ai[p/amxKBlock*amxKBlock*amxMR+i%amxMR*amxKBlock+p%amxKBlock]
				bw := d.b[p*amxNR+j]
				for _, sh := range []uint{16, 0} {
					ab := float64(math.Float32frombits(aw>>sh<<16)) * float64(math.Float32frombits(bw>>sh<<16))
					s, mag = s+ab, mag+math.Abs(ab)
				}
			}
			want := float64(tc.alpha) * s
			tol := float64(2*tc.k+4)*0x1p-24*math.Abs(float64(tc.alpha))*mag + float64(2*tc.k+1)*0x1p-126
			if tc.data == "ints" {
				tol = 0
			}
			if diff := math.Abs(float64(got[x]) - want); !(diff <= tol) {
				return fmt.Errorf("C[%d][%d] = %g, reference %g (|diff| %g > %g)", i, j, got[x], want, diff, tol)
			}
		}
	}
	return nil
}

func checkAMXCase(f *asmFunc, idx int, tc amxCase, cov []int) error {
	d := newAMXData(uint64(idx), tc)
	got, err := interpretAMX(f, tc, d, cov)
	if err != nil {
		return err
	}
	if err := compareBits(got, modelAMX(tc, d), tc.ldc); err != nil {
		return fmt.Errorf("interpreted vs Go model: %v", err)
	}
	if tc.data != "tiny" {
		return referenceAMX(got, tc, d)
	}
	return nil
}

// TestInterpAMX runs kernelAMXBF16's source on every case.
func TestInterpAMX(t *testing.T) {
	f := loadAsm(t)["kernelAMXBF16"]
	cov := make([]int, len(f.code))
	cases := amxCases()
	n := 0
	for idx, tc := range cases {
		if (raceEnabled || testing.Short()) && tc.k > 16 && tc.ldc != amxNR {
			continue // the interpreter is slow under the race detector
		}
		if err := checkAMXCase(f, idx, tc, cov); err != nil {
			t.Fatalf("%v: %v", tc, err)
		}
		n++
	}
	requireCoverage(t, f, cov)
	t.Logf("%d cases agree bit for bit with the Go model of TDPBF16PS", n)
}

// TestInterpAMXCatchesMutations: planted bugs in the AMX kernel each fail
// some case (or the interpreter's checks).
func TestInterpAMXCatchesMutations(t *testing.T) {
	raw, err := os.ReadFile(asmSourceFile)
	if err != nil {
		t.Fatal(err)
	}
	src := string(raw)
	frames, err := goFrames(asmDeclFile)
	if err != nil {
		t.Fatal(err)
	}
	mutations := []struct{ what, old, new string }{
		{"A and B tiles swapped", "TDPBF16PS(0, 4, 6)", "TDPBF16PS(0, 6, 4)"},
		{"lower A tile read from the upper rows' offset", "TILELOADD32(5, 6, 8, 1024)", "TILELOADD32(5, 6, 8, 1088)"},
		{"B rows at A's stride", "TILELOADD(6, 7, 9, 0)", "TILELOADD(6, 7, 8, 0)"},
		{"C quarter 3 stored over quarter 2", "TILESTORED(3, 10, 3, 64)", "TILESTORED(3, 10, 3, 0)"},
		{"no TILERELEASE", "\tTILERELEASE\n\tVZEROUPPER\n\tRET\n\n// ---", "\tVZEROUPPER\n\tRET\n\n// ---"},
		{"C not advanced to the next row block", "SHLQ $5, AX\n\tADDQ AX, DX", "SHLQ $5, AX"},
		{"B not rewound for the next row block", "MOVQ b+16(FP), DI\n\tMOVQ BX, R10", "MOVQ BX, R10"},
		{"one row block only", "DECQ R11\n\tJNZ  amx_block", "DECQ R11"},
		{"alpha never applied", "JZ   amx_next", "JMP  amx_next"},
		{"C zeroed though loaded", "TILELOADD(3, 10, 3, 64)\n", "TILELOADD(3, 10, 3, 64)\n\tTILEZERO(0)\n"},
		{"load flag ignored", "JNZ  amx_load\n\tTILEZERO(0)", "JMP  amx_load\n\tTILEZERO(0)"},
		{"A not advanced", "ADDQ $2048, SI\n\tADDQ $2048, DI", "ADDQ $2048, DI"},
	}
	cases := amxCases()
	for _, mu := range mutations {
		if strings.Count(src, mu.old) != 1 {
			t.Fatalf("mutation %q: pattern found %d times", mu.what, strings.Count(src, mu.old))
		}
		funcs, err := decodeAsm(strings.Replace(src, mu.old, mu.new, 1), frames)
		if err != nil {
			t.Fatalf("mutation %q: %v", mu.what, err)
		}
		caught := false
		for idx, tc := range cases {
			if checkAMXCase(funcs["kernelAMXBF16"], idx, tc, nil) != nil {
				caught = true
				break
			}
		}
		if !caught {
			t.Errorf("mutation %q passed every case", mu.what)
		}
	}
}

// TestInterpAMXPeakLoop: the peak loop's TDPBF16PS count matches the
// FLOPs its kernel's peak function reports, and it releases the tiles.
func TestInterpAMXPeakLoop(t *testing.T) {
	f := loadAsm(t)["amxPeakLoop"]
	for _, n := range []int{0, 1, 3} {
		frame := make([]byte, f.argSize)
		binary.LittleEndian.PutUint64(frame, uint64(n))
		binary.LittleEndian.PutUint64(frame[8:], asmCfgBase)
		cfg := amxTileConfig()
		mem := &asmMemory{}
		mem.add("args", asmFrameBase, frame, true, false)
		mem.add("cfg", asmCfgBase, cfg[:], true, false)
		m := newAsmMachine(mem, asmFrameBase)
		if err := m.run(f, nil); err != nil {
			t.Fatalf("amxPeakLoop(%d): %v", n, err)
		}
		if want := n * 4 * 16 * 16 * 16 * 2; m.fmaLanes != want { // products of bf16 pairs
			t.Errorf("amxPeakLoop(%d): %d products, want %d", n, m.fmaLanes, want)
		}
		if m.tileCfg {
			t.Errorf("amxPeakLoop(%d): tiles not released", n)
		}
	}
}
