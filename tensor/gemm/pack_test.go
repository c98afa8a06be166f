package gemm

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The row-group packers behind packRows (packRowsGroup8/6: assembly on
// amd64 with AVX, the Go helpers otherwise) against the Go helpers
// packRows8/packRows6 as oracle, bit for bit, including what they must not
// touch: lanes of dst outside the group's rows, and anything outside the
// slices (src rows end at len(src), dst is exactly kc*width long).

// packKCs are the depths tested: every tail length around the 8-step
// blocks, and the realistic KC values.
func packKCs() []int {
	var ks []int
	for kc := 0; kc <= 70; kc++ {
		ks = append(ks, kc)
	}
	return append(ks, 255, 256, 1376)
}

// packSentinel fills dst with a NaN whose payload encodes the index, so an
// element written by mistake or left unwritten is identified.
func packSentinel(dst []float32) {
	for i := range dst {
		dst[i] = math.Float32frombits(0x7fc00000 | uint32(i&0x3fffff))
	}
}

// packSrc returns a source of rows rows of length kc at stride ld, starting
// at an offset off (in floats, so not 32-byte aligned when odd) into a
// fresh allocation, the last row ending exactly at len(src).
func packSrc(rng *rand.Rand, rows, kc, ld, off int) []float32 {
	n := off + (rows-1)*ld + kc
	buf := make([]float32, n)
	for i := range buf {
		buf[i] = rng.Float32()*2 - 1
	}
	return buf[off:n:n]
}

func TestPackRowsGroupMatchesGo(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, rows := range []int{8, 6} {
		for _, width := range []int{6, 8, 14, 16, 32} {
			if width < rows {
				continue
			}
			// Row groups start at lane 0 and, for width 14 and 16, also at
			// lane 8 (packRows' second group).
			for _, lane := range []int{0, 8} {
				if lane+rows > width {
					continue
				}
				for _, kc := range packKCs() {
					if kc == 0 && lane > 0 {
						continue // dst[lane:] of an empty panel
					}
					for _, ldExtra := range []int{0, 1, 3, 37} {
						ld := kc + ldExtra
						off := 1 + (kc+ldExtra)%7 // never 32-byte aligned
						src := packSrc(rng, rows, kc, ld, off)
						got := make([]float32, kc*width)
						want := make([]float32, kc*width)
						packSentinel(got)
						packSentinel(want)
						if rows == 8 {
							packRowsGroup8(got[lane:], src, ld, kc, width)
							packRows8(want[lane:], src, ld, kc, width)
						} else {
							packRowsGroup6(got[lane:], src, ld, kc, width)
							packRows6(want[lane:], src, ld, kc, width)
						}
						for i := range want {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("rows=%d width=%d lane=%d kc=%d ld=%d: dst[%d] (k-step %d, lane %d) = %v (%#x), want %v (%#x)",
									rows, width, lane, kc, ld, i, i/width, i%width,
									got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
							}
						}
					}
				}
			}
		}
	}
}

// TestPackRowsReference checks packRows as a whole (all row counts of a
// panel, zero fill) against the definition dst[p*width+i] = src[off+i*ld+p].
func TestPackRowsReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, width := range []int{4, 6, 8, 14, 16, 32} {
		for n := 1; n <= width; n++ {
			for _, kc := range []int{1, 7, 8, 9, 17, 64, 67, 256} {
				ld := kc + 5
				off := 3
				src := packSrc(rng, n, kc, ld, 0)
				src = append(make([]float32, off), src...)
				dst := make([]float32, kc*width)
				packSentinel(dst)
				packRows(dst, src, off, ld, n, kc, width)
				for p := 0; p < kc; p++ {
					for i := 0; i < width; i++ {
						var want float32
						if i < n {
							want = src[off+i*ld+p]
						}
						if got := dst[p*width+i]; math.Float32bits(got) != math.Float32bits(want) {
							t.Fatalf("width=%d n=%d kc=%d: dst[%d*%d+%d] = %v, want %v", width, n, kc, p, width, i, got, want)
						}
					}
				}
			}
		}
	}
}

// TestPackRowsGroupBounds: a src or dst too short for the group panics
// (as the Go helpers do) instead of letting the assembly run off the end.
func TestPackRowsGroupBounds(t *testing.T) {
	const kc, ld, width = 16, 20, 8
	for _, c := range []struct {
		name     string
		src, dst int
	}{
		{"src", 7*ld + kc - 1, kc * width},
		{"dst", 7*ld + kc, kc*width - 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("no panic with a short %s", c.name)
				}
			}()
			packRowsGroup8(make([]float32, c.dst), make([]float32, c.src), ld, kc, width)
		})
	}
}

// TestPackColsReference: packColPanels (and packCols under it, assembly
// on AVX-512 for widths 14, 16 and 32) against the layout's definition,
// bit for bit, for every edge width. The source ends exactly at its last
// run, and a sentinel after the panels catches a store past them.
func TestPackColsReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, width := range []int{4, 6, 8, 14, 16, 32} {
		for _, n := range []int{1, width - 1, width, width + 1, 2*width + 3, 5 * width} {
			if n < 1 {
				continue
			}
			for _, kc := range []int{1, 7, 8, 9, 64, 67} {
				ld := n + 3
				off := 1
				src := packSrc(rng, kc, n, ld, off) // kc rows of n columns
				panels := ceilDiv(n, width)
				dst := make([]float32, panels*width*kc+width)
				packSentinel(dst)
				packColPanels(dst, src, 0, ld, n, kc, width)
				for q := 0; q < panels; q++ {
					for p := 0; p < kc; p++ {
						for j := 0; j < width; j++ {
							var want float32
							if col := q*width + j; col < n {
								want = src[p*ld+col]
							}
							if got := dst[q*width*kc+p*width+j]; math.Float32bits(got) != math.Float32bits(want) {
								t.Fatalf("width=%d n=%d kc=%d: panel %d k-step %d lane %d = %v, want %v", width, n, kc, q, p, j, got, want)
							}
						}
					}
				}
				for i := panels * width * kc; i < len(dst); i++ {
					if math.Float32bits(dst[i])&0x7fc00000 != 0x7fc00000 {
						t.Fatalf("width=%d n=%d kc=%d: dst[%d] past the panels written (%v)", width, n, kc, i, dst[i])
					}
				}
			}
		}
	}
}
