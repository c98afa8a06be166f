//go:build amd64 && !purego

package gemm

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
)

// The strided kernels (kernelAVX512S, kernelAVX2S) through the
// instruction interpreter: A and B laid out in place, with padding the
// kernel must never read.

// stridedArgs places tile d's panels as one of the engine's layouts: A
// row-major (rsa lda, csa 1), A transposed (rsa 1, csa lda) or packed, and
// B with a row stride wider than NR. Padding elements are NaN.
type stridedArgs struct {
	a, b           []float32
	rsa, csa, ldb  int
	aValid, bValid []bool // which elements belong to the tile
}

func placeStrided(d tileData, mr, nr, k int, layout string) stridedArgs {
	kk := max(k, 1)
	s := stridedArgs{}
	switch layout {
	case "packed":
		s.a, s.rsa, s.csa = append(slices.Clone(d.a), float32(math.NaN())), 1, mr // k = 0 still needs a pointer
		s.aValid = make([]bool, len(s.a))
		for i := range d.a {
			s.aValid[i] = true
		}
	case "rows":
		lda := kk + 3
		s.rsa, s.csa = lda, 1
		s.a = make([]float32, (mr-1)*lda+kk)
		s.aValid = make([]bool, len(s.a))
		for i := range s.a {
			s.a[i] = float32(math.NaN())
		}
		for i := 0; i < mr; i++ {
			for p := 0; p < k; p++ {
				s.a[i*lda+p], s.aValid[i*lda+p] = d.a[p*mr+i], true
			}
		}
	case "cols":
		lda := mr + 7
		s.rsa, s.csa = 1, lda
		s.a = make([]float32, (kk-1)*lda+mr)
		s.aValid = make([]bool, len(s.a))
		for i := range s.a {
			s.a[i] = float32(math.NaN())
		}
		for p := 0; p < k; p++ {
			for i := 0; i < mr; i++ {
				s.a[p*lda+i], s.aValid[p*lda+i] = d.a[p*mr+i], true
			}
		}
	default:
		panic(layout)
	}
	s.ldb = nr + 9
	s.b = make([]float32, (kk-1)*s.ldb+nr)
	s.bValid = make([]bool, len(s.b))
	for i := range s.b {
		s.b[i] = float32(math.NaN())
	}
	for p := 0; p < k; p++ {
		for j := 0; j < nr; j++ {
			s.b[p*s.ldb+j], s.bValid[p*s.ldb+j] = d.b[p*nr+j], true
		}
	}
	return s
}

// interpretStrided runs a strided kernel on s and d.c and returns C. Each
// element of A and B in the tile is read exactly once, nothing else of A
// or B is read, and C is accessed as interpretKernel requires.
func interpretStrided(f *asmFunc, mr, nr int, tc interpCase, s stridedArgs, d tileData, cov []int) ([]float32, error) {
	frame := make([]byte, f.argSize)
	args := map[string]uint64{
		"k": uint64(tc.k), "a": asmABase, "rsa": uint64(s.rsa), "csa": uint64(s.csa),
		"b": asmBBase, "ldb": uint64(s.ldb), "c": asmCBase, "ldc": uint64(tc.ldc),
		"alpha": uint64(math.Float32bits(tc.alpha)), "load": loadArg(tc.load),
	}
	for _, sl := range f.frame {
		v, ok := args[sl.name]
		if !ok {
			return nil, fmt.Errorf("no value for argument %s", sl.name)
		}
		if sl.size == 4 {
			binary.LittleEndian.PutUint32(frame[sl.off:], uint32(v))
		} else {
			binary.LittleEndian.PutUint64(frame[sl.off:], v)
		}
	}
	mem := &asmMemory{}
	mem.add("args", asmFrameBase, frame, true, false)
	ra := mem.add("A", asmABase, floatsToBytes(s.a), true, false)
	rb := mem.add("B", asmBBase, floatsToBytes(s.b), true, false)
	rc := mem.add("C", asmCBase, floatsToBytes(d.c), tc.load, true)
	m := newAsmMachine(mem, asmFrameBase)
	if err := m.run(f, cov); err != nil {
		return nil, err
	}
	for _, r := range []struct {
		reg   *asmRegion
		valid []bool
	}{{ra, s.aValid}, {rb, s.bValid}} {
		for x, n := range r.reg.reads {
			want := 0
			if r.valid[x/4] {
				want = 1
			}
			if n != want {
				return nil, fmt.Errorf("%s element %d byte %d read %d times, want %d", r.reg.name, x/4, x%4, n, want)
			}
		}
	}
	if err := checkTileAccess(rc, mr, nr, tc); err != nil {
		return nil, err
	}
	if err := checkPrefetches(m.prefetches, mr, nr, tc.ldc, !tc.load, tc.k); err != nil {
		return nil, err
	}
	for r := 0; r < 16; r++ {
		if slices.ContainsFunc(m.vec[r][4:], func(v uint32) bool { return v != 0 }) {
			return nil, fmt.Errorf("upper half of vector register %d dirty at RET (missing VZEROUPPER?)", r)
		}
	}
	return bytesToFloats(rc.data), nil
}

var stridedInterpLayouts = []string{"packed", "rows", "cols"}

// checkStridedCase interprets f on one case and layout against the fused
// model (bit for bit) and the float64 reference; native, when non-nil,
// runs the assembled kernel for a bit-for-bit comparison too.
func checkStridedCase(f *asmFunc, kern kernel, idx int, tc interpCase, layout string, cov []int, native bool) error {
	mr, nr := kern.mr, kern.nr
	d := newTileData(uint64(idx), mr, nr, tc)
	s := placeStrided(d, mr, nr, tc.k, layout)
	got, err := interpretStrided(f, mr, nr, tc, s, d, cov)
	if err != nil {
		return err
	}
	if err := compareBits(got, modelTile(mr, nr, tc, d), tc.ldc); err != nil {
		return fmt.Errorf("vs fused model: %v", err)
	}
	if native {
		c := slices.Clone(d.c)
		kern.strided(tc.k, &s.a[0], s.rsa, s.csa, &s.b[0], s.ldb, &c[0], tc.ldc, int(loadArg(tc.load)), tc.alpha)
		if err := compareBits(got, c, tc.ldc); err != nil {
			return fmt.Errorf("interpreted vs native: %v", err)
		}
	}
	return compareReference(got, mr, nr, tc, d)
}

// TestInterpStrided runs both strided kernels' sources on every case and
// layout: against the model everywhere, and against the native kernel
// where the CPU runs it (which validates the interpreter's indexed
// addressing).
func TestInterpStrided(t *testing.T) {
	funcs := loadAsm(t)
	for _, c := range []struct {
		name   string
		kern   kernel
		native bool
	}{{"kernelAVX2S", avx2Kernel, hasAVX2()}, {"kernelAVX512S", avx512Kernel, hasAVX512()}} {
		f := funcs[c.name]
		cov := make([]int, len(f.code))
		n := 0
		for idx, tc := range interpCases(c.kern.nr) {
			if !tc.ints && tc.k == 64 && tc.ldc != c.kern.nr {
				continue // the slowest cases once is enough
			}
			for _, layout := range stridedInterpLayouts {
				if err := checkStridedCase(f, c.kern, idx, tc, layout, cov, c.native); err != nil {
					t.Fatalf("%s %s %v: %v", c.name, layout, tc, err)
				}
				n++
			}
		}
		requireCoverage(t, f, cov)
		t.Logf("%s: %d cases agree with the model (native too: %v)", c.name, n, c.native)
	}
}

// TestInterpStridedCatchesMutations: planted bugs in kernelAVX512S's
// source each fail some case.
func TestInterpStridedCatchesMutations(t *testing.T) {
	mutations := []struct{ what, old, new string }{
		{"row 3 read with the row-2 offset", "Z_ROW_AT((SI)(R12*1), Z3, Z10, Z11)", "Z_ROW_AT((SI)(AX*2), Z3, Z10, Z11)"},
		{"third row group not advanced", "ADDQ R13, R11\n\tADDQ R9, DI", "ADDQ R9, DI"},
		{"row 10 pointer one row short", "MOVQ R10, R11 // R11 = row 10\n\tADDQ R12, R11\n\tADDQ AX, R11\n\tADDQ AX, R11", "MOVQ R10, R11 // R11 = row 10\n\tADDQ R12, R11\n\tADDQ AX, R11"},
		{"B stride not scaled to bytes", "SHLQ $2, R9\n\tMOVQ AX, R12 // R12 = 3·rsa\n\tADDQ AX, R12\n\tADDQ AX, R12\n\tMOVQ SI, R10 // R10 = row 5\n\tADDQ R12, R10\n\tADDQ AX, R10\n\tADDQ AX, R10\n\tMOVQ R10, R11", "MOVQ AX, R12 // R12 = 3·rsa\n\tADDQ AX, R12\n\tADDQ AX, R12\n\tMOVQ SI, R10 // R10 = row 5\n\tADDQ R12, R10\n\tADDQ AX, R10\n\tADDQ AX, R10\n\tMOVQ R10, R11"},
		{"k = 0 runs one step", "TESTQ CX, CX\n\tJZ   zs_done", "TESTQ CX, CX"},
		{"last row not stored", "Z_STORE(Z30, Z31)\n\tVZEROUPPER\n\tRET\n\n// ------------------------------------------------------- AVX512-BF16", "VZEROUPPER\n\tRET\n\n// ------------------------------------------------------- AVX512-BF16"},
	}
	raw, err := os.ReadFile(asmSourceFile)
	if err != nil {
		t.Fatal(err)
	}
	src := string(raw)
	frames, err := goFrames(asmDeclFile)
	if err != nil {
		t.Fatal(err)
	}
	cases := interpCases(avx512Kernel.nr)
	for _, mu := range mutations {
		if strings.Count(src, mu.old) != 1 {
			t.Fatalf("mutation %q: pattern found %d times", mu.what, strings.Count(src, mu.old))
		}
		funcs, err := decodeAsm(strings.Replace(src, mu.old, mu.new, 1), frames)
		if err != nil {
			t.Fatalf("mutation %q: %v", mu.what, err)
		}
		f := funcs["kernelAVX512S"]
		caught := false
		for idx, tc := range cases {
			if tc.k > 13 {
				continue
			}
			for _, layout := range stridedInterpLayouts {
				if checkStridedCase(f, avx512Kernel, idx, tc, layout, nil, false) != nil {
					caught = true
					break
				}
			}
			if caught {
				break
			}
		}
		if !caught {
			t.Errorf("mutation %q passed every case", mu.what)
		}
	}
}
