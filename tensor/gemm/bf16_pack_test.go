package gemm

import (
	"math"
	"math/rand/v2"
	"os"
	"testing"
)

// The bf16 pair packers with their assembly (AVX-512, where the CPU has
// it) against the Go loops as oracle, bit for bit: on values that take
// every branch of ToBF16 (zeros, subnormals, NaNs, infinities, ties to
// even, the largest finite values that round to inf), odd and even
// depths, partial panels and every tail length of the 8-pair blocks,
// and nothing written outside the panels.

// bf16EdgeBits are float32 bit patterns on ToBF16's boundaries.
var bf16EdgeBits = []uint32{
	0x0000_0000, 0x8000_0000, // ±0
	0x0000_0001, 0x8000_0001, 0x007f_ffff, 0x807f_ffff, 0x0040_0000, // subnormals
	0x0080_0000, 0x8080_0000, 0x0080_7fff, 0x0080_8000, 0x0081_8000, // smallest normals, ties
	0x3f80_0000, 0x3f80_7fff, 0x3f80_8000, 0x3f80_8001, 0x3f81_8000, 0xbf81_8000, // ties to even
	0x7f7f_ffff, 0xff7f_ffff, 0x7f7f_7fff, 0x7f7f_8000, // rounding to ±inf
	0x7f80_0000, 0xff80_0000, // ±inf
	0x7f80_0001, 0xff80_0001, 0x7fc0_0000, 0xffc0_0000, 0x7fbf_ffff, 0x7fff_ffff, 0xffff_ffff, 0x7f80_8000, // NaNs
}

// bf16Src returns n floats: edge patterns mixed with random bits and
// ordinary values.
func bf16Src(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		switch rng.IntN(3) {
		case 0:
			x[i] = math.Float32frombits(bf16EdgeBits[rng.IntN(len(bf16EdgeBits))])
		case 1:
			x[i] = math.Float32frombits(rng.Uint32())
		default:
			x[i] = rng.Float32()*2 - 1
		}
	}
	return x
}

func TestCvtPairsAsmMatchesToBF16(t *testing.T) {
	if !useBF16Asm() {
		t.Skip("no AVX-512 bf16 packing on this CPU or build")
	}
	// Every high half with low halves around the rounding boundaries,
	// at every tail length.
	lows := []uint32{0, 1, 0x7fff, 0x8000, 0x8001, 0xffff, 0x4000, 0xc000}
	src := make([]float32, 0, 1<<16*len(lows))
	for hi := uint32(0); hi < 1<<16; hi++ {
		for _, lo := range lows {
			src = append(src, math.Float32frombits(hi<<16|lo))
		}
	}
	checkCvtPairs(t, src)
	rng := rand.New(rand.NewPCG(3, 4))
	for n := 0; n <= 40; n++ {
		checkCvtPairs(t, bf16Src(rng, 2*n))
	}
}

// TestCvtPairsAsmExhaustive checks every float32 (LOOM_BF16_EXHAUSTIVE=1;
// ~10 s).
func TestCvtPairsAsmExhaustive(t *testing.T) {
	if os.Getenv("LOOM_BF16_EXHAUSTIVE") == "" || !useBF16Asm() {
		t.Skip("set LOOM_BF16_EXHAUSTIVE=1 (and run on AVX-512)")
	}
	const chunk = 1 << 20
	src := make([]float32, chunk)
	dst := make([]uint32, chunk/2)
	for base := uint64(0); base < 1<<32; base += chunk {
		for i := range src {
			src[i] = math.Float32frombits(uint32(base) + uint32(i))
		}
		cvtPairsAsm(dst, src, 0)
		for p, w := range dst {
			if want := bf16Pair(src[2*p], src[2*p+1]); w != want {
				t.Fatalf("pair of %#08x, %#08x: got %#08x, want %#08x", math.Float32bits(src[2*p]), math.Float32bits(src[2*p+1]), w, want)
			}
		}
	}
}

func checkCvtPairs(t *testing.T, src []float32) {
	t.Helper()
	n := len(src) / 2
	dst := make([]uint32, n+3)
	for i := range dst {
		dst[i] = 0xdead_beef
	}
	if !cvtPairsAsm(dst[:n], src[:2*n:2*n], 1<<20) {
		t.Fatal("cvtPairsAsm did not run")
	}
	for p := 0; p < n; p++ {
		if want := bf16Pair(src[2*p], src[2*p+1]); dst[p] != want {
			t.Fatalf("n=%d pair %d of %#08x, %#08x: got %#08x, want %#08x", n, p, math.Float32bits(src[2*p]), math.Float32bits(src[2*p+1]), dst[p], want)
		}
	}
	for i := n; i < len(dst); i++ {
		if dst[i] != 0xdead_beef {
			t.Fatalf("n=%d: word %d past the run written", n, i)
		}
	}
}

// bf16PackKCs are the depths tested: odd and even, every tail of the
// 8-pair blocks and of pairRowChunk, and realistic KCs.
func bf16PackKCs() []int {
	var ks []int
	for kc := 1; kc <= 36; kc++ {
		ks = append(ks, kc)
	}
	return append(ks, 127, 128, 129, 130, 255, 256, 257, 464)
}

func TestPairPanelsAsmMatchesGo(t *testing.T) {
	if !useBF16Asm() {
		t.Skip("no AVX-512 bf16 packing on this CPU or build")
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, width := range []int{4, 14, 16, 32} {
		for _, n := range []int{1, width - 1, width, width + 1, 3*width + 5} {
			if n < 1 {
				continue
			}
			for _, kc := range bf16PackKCs() {
				d := (kc + 1) / 2
				np := (n + width - 1) / width
				size := np * width * d
				// Columns: kc rows of n values at stride ld (> n).
				ld := n + 3
				src := bf16Src(rng, (kc-1)*ld+n)
				got, want := make([]uint32, size+5), make([]uint32, size+5)
				for i := range got {
					got[i], want[i] = 0xdead_beef, 0xdead_beef
				}
				pairColPanelsWith(got, src, 0, ld, n, kc, width, true, true)
				pairColPanelsWith(want, src, 0, ld, n, kc, width, false, false)
				compareWords(t, "cols", width, n, kc, got, want)
				// The integer rounding where the CPU has VCVTNE2PS2BF16 too.
				for i := range got {
					got[i] = 0xdead_beef
				}
				pairColPanelsWith(got, src, 0, ld, n, kc, width, true, false)
				compareWords(t, "cols, integer rounding", width, n, kc, got, want)
				// Rows: n rows of kc values at stride ld (> kc), from an
				// offset.
				ld = kc + 5
				src = bf16Src(rng, 7+(n-1)*ld+kc)
				for i := range got {
					got[i], want[i] = 0xdead_beef, 0xdead_beef
				}
				pairRowPanelsWith(got, src, 7, ld, n, kc, width, true)
				pairRowPanelsWith(want, src, 7, ld, n, kc, width, false)
				compareWords(t, "rows", width, n, kc, got, want)
			}
		}
	}
}

func compareWords(t *testing.T, what string, width, n, kc int, got, want []uint32) {
	t.Helper()
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s width=%d n=%d kc=%d: word %d = %#08x, want %#08x", what, width, n, kc, i, got[i], want[i])
		}
	}
}
