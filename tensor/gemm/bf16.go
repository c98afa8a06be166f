package gemm

import (
	"math"
	"unsafe"
)

// bfloat16 packing. A k-step of a bf16 panel is one 32-bit word per row (A)
// or column (B) holding the pair (k even in the low half, k odd in the
// high half), the operand layout of VDPBF16PS: panel word [p*W + i] holds
// op(X)(2p, i) and op(X)(2p+1, i) for a panel of width W. A slice of odd
// depth pads the last pair's high half with zero.

// words reinterprets a float32 pack buffer as the 32-bit words of bf16
// pairs (the same bytes; a pair takes the room of one float32).
func words(buf []float32) []uint32 {
	if len(buf) == 0 {
		return nil
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(&buf[0])), len(buf))
}

// ToBF16 rounds f to bfloat16 as the packing does: to nearest even, NaN
// to a quiet NaN, subnormals (and the results that round to them) to a
// zero of the same sign — the inputs VDPBF16PS treats as zero anyway.
func ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7f80_0000 == 0 { // zero or subnormal
		return uint16(b>>16) & 0x8000
	}
	if b&0x7fff_ffff > 0x7f80_0000 { // NaN: keep the sign and top payload, set quiet
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// FromBF16 widens a bfloat16 to float32 (exact).
func FromBF16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// RoundBF16 is FromBF16(ToBF16(f)): f as the bf16 kernels see it.
func RoundBF16(f float32) float32 { return FromBF16(ToBF16(f)) }

// roundBF16 rounds x to bf16 values in place (the bf16-fma kernels'
// packing).
func roundBF16(x []float32) {
	for i, v := range x {
		x[i] = RoundBF16(v)
	}
}

// bf16Pair packs two float32s into one word, x0 in the low half.
func bf16Pair(x0, x1 float32) uint32 { return uint32(ToBF16(x0)) | uint32(ToBF16(x1))<<16 }

// packABF16 is packA for bf16 kernels: dst gets ceil(kc/2) words per row
// of each MR-row panel.
func packABF16(dst []uint32, trans bool, a []float32, lda, ic, pc, mc, kc, mr int) {
	if trans { // A stored k×m: a k-step pair is two rows, contiguous over i
		pairColPanels(dst, a, pc*lda+ic, lda, mc, kc, mr)
		return
	}
	pairRowPanels(dst, a, ic*lda+pc, lda, mc, kc, mr)
}

// packBBF16 is packB for bf16 kernels.
func packBBF16(dst []uint32, trans bool, b []float32, ldb, pc, jc, kc, nc, nr int) {
	if !trans { // B stored k×n
		pairColPanels(dst, b, pc*ldb+jc, ldb, nc, kc, nr)
		return
	}
	pairRowPanels(dst, b, jc*ldb+pc, ldb, nc, kc, nr)
}

// pairColPanels packs n columns of kc rows (row p at src[off+p*ld:]) into
// ceil(n/width) panels of depth ceil(kc/2), panel q at dst[q*width*d:]:
// each k-step pair reads two source rows once, sequentially. On AVX-512
// a whole pair of rows goes through pairSweepAsm; the Go loop remains for
// other CPUs (and the odd last row), and is its oracle in the tests.
func pairColPanels(dst []uint32, src []float32, off, ld, n, kc, width int) {
	pairColPanelsWith(dst, src, off, ld, n, kc, width, true, true)
}

// pairColPanelsWith is pairColPanels, with the assembly only if asm,
// converting with VCVTNE2PS2BF16 where the CPU has it only if cvt.
func pairColPanelsWith(dst []uint32, src []float32, off, ld, n, kc, width int, asm, cvt bool) {
	d := (kc + 1) / 2
	np := (n + width - 1) / width
	for p := 0; p < d; p++ {
		r0 := src[off+2*p*ld : off+2*p*ld+n]
		var r1 []float32
		if 2*p+1 < kc {
			r1 = src[off+(2*p+1)*ld : off+(2*p+1)*ld+n]
			if asm && pairSweepAsm(dst[p*width:], r0, r1, n, width, width*d, pairSweepAhead*2*ld*4, cvt) {
				continue
			}
		}
		for q := 0; q < np; q++ {
			c0 := q * width
			cols := min(width, n-c0)
			out := dst[q*width*d+p*width : q*width*d+p*width+width]
			if r1 != nil {
				a, b := r0[c0:c0+cols], r1[c0:c0+cols]
				for j := range a {
					out[j] = bf16Pair(a[j], b[j])
				}
			} else {
				for j, v := range r0[c0 : c0+cols] {
					out[j] = uint32(ToBF16(v))
				}
			}
			clear(out[cols:])
		}
	}
}

// pairSweepAhead is how many k-pairs ahead the pair sweep prefetches its
// two rows: in a training step the source was just written by another op
// and is not in L2. On a Sapphire-Rapids-class Xeon (AMX, one thread, the
// `small` bf16 step, tuning off, paired rounds) 0 pairs: 885–939 ms, 2:
// 867–906, 4: 865–894, 8: 857–878.
const pairSweepAhead = 8

// pairRowChunk is how many pairs of each row pairRowPanels converts
// per pass (its scratch: 32 rows × 128 words, 16 KiB, in L1): a whole
// row of a KC ≤ 256 slice.
const pairRowChunk = 128

// pairRowAhead is how many rows ahead pairRowPanels prefetches the row
// it converts.
const pairRowAhead = 4

// pairRowPanels packs n rows of length kc (row i at src[off+i*ld:]) into
// ceil(n/width) panels of pairRowPanel's layout, panel q at
// dst[q*width*d:]. On AVX-512 (width ≤ 32) each pass converts up to
// pairRowChunk pairs of each of a panel's rows into a scratch block,
// where a row's adjacent k values already are its pair words
// (cvtPairsAsm), and packRows' 8×8 transposes (bit moves) interleave
// those words into the panel; elsewhere it is pairRowPanel per panel.
func pairRowPanels(dst []uint32, src []float32, off, ld, n, kc, width int) {
	pairRowPanelsWith(dst, src, off, ld, n, kc, width, true)
}

// pairRowPanelsWith is pairRowPanels, with the assembly only if asm.
func pairRowPanelsWith(dst []uint32, src []float32, off, ld, n, kc, width int, asm bool) {
	d := (kc + 1) / 2
	if !asm || !useBF16Asm() || width > 32 || kc < 2 {
		for q0 := 0; q0 < n; q0 += width {
			pairRowPanel(dst[q0*d:q0*d+d*width], src, off+q0*ld, ld, min(width, n-q0), kc, width)
		}
		return
	}
	var scratch [32 * pairRowChunk]uint32
	sf := floats(scratch[:])
	for q0 := 0; q0 < n; q0 += width {
		rows := min(width, n-q0)
		panel := floats(dst[q0*d : q0*d+d*width])
		for p0 := 0; p0 < d; p0 += pairRowChunk {
			cw := min(pairRowChunk, d-p0)
			full := min(cw, kc/2-p0) // whole pairs in this pass; cw-full ≤ 1
			for i := 0; i < rows; i++ {
				row := src[off+(q0+i)*ld+2*p0 : off+(q0+i)*ld+kc]
				s := scratch[i*pairRowChunk : i*pairRowChunk+cw]
				cvtPairsAsm(s[:full], row[:2*full], pairRowAhead*ld*4)
				if full < cw {
					s[full] = uint32(ToBF16(row[2*full]))
				}
			}
			packRows(panel[p0*width:], sf, 0, pairRowChunk, rows, cw, width)
		}
	}
}

// floats reinterprets pair words as float32s for the bit-moving packers
// (the inverse of words).
func floats(w []uint32) []float32 {
	if len(w) == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&w[0])), len(w))
}

// pairRowPanel interleaves n ≤ width rows of length kc (row i at
// src[off+i*ld:]) into one panel: dst[p*width+i] = pair(row_i[2p],
// row_i[2p+1]), rows n..width zero.
func pairRowPanel(dst []uint32, src []float32, off, ld, n, kc, width int) {
	d := (kc + 1) / 2
	dst = dst[:d*width]
	for i := 0; i < n; i++ {
		row := src[off+i*ld : off+i*ld+kc]
		p := 0
		for ; 2*p+1 < kc; p++ {
			dst[p*width+i] = bf16Pair(row[2*p], row[2*p+1])
		}
		if p < d {
			dst[p*width+i] = uint32(ToBF16(row[2*p]))
		}
	}
	for i := n; i < width; i++ {
		for p := 0; p < d; p++ {
			dst[p*width+i] = 0
		}
	}
}

// dpbf16 is one lane of VDPBF16PS: acc + a.hi·b.hi, then + a.lo·b.lo, each
// a fused multiply-add rounded to nearest even, with a subnormal
// accumulator read as zero and subnormal results flushed to zero (checked
// against the instruction by TestInterpAVX512BF16's tiny cases). The
// products of two bf16 values are exact in float64 and their sum with a
// float32 rounds correctly through float64 (53 ≥ 2·24+2 bits), so no FMA
// instruction is needed.
func dpbf16(acc float32, a, b uint32) float32 {
	acc = ftz(float32(float64(ftz(acc)) + float64(math.Float32frombits(a&0xffff_0000))*float64(math.Float32frombits(b&0xffff_0000))))
	return ftz(float32(float64(acc) + float64(math.Float32frombits(a<<16))*float64(math.Float32frombits(b<<16))))
}

// ftz flushes a subnormal to a zero of the same sign.
func ftz(x float32) float32 {
	if b := math.Float32bits(x); b&0x7f80_0000 == 0 {
		return math.Float32frombits(b & 0x8000_0000)
	}
	return x
}

// kernelGenericBF16 is the 4×4 pure-Go kernel over bf16 pairs (k pairs):
// bit for bit what kernelAVX512BF16 computes.
func kernelGenericBF16(k int, a, b, c *float32, ldc int, load int, alpha float32) {
	ap := unsafe.Slice((*uint32)(unsafe.Pointer(a)), 4*k)
	bp := unsafe.Slice((*uint32)(unsafe.Pointer(b)), 4*k)
	cs := unsafe.Slice(c, 3*ldc+4)
	var acc [4][4]float32
	if load != 0 {
		for i := range 4 {
			acc[i] = *(*[4]float32)(cs[i*ldc:])
		}
	}
	for p := 0; p < k; p++ {
		av := (*[4]uint32)(ap[4*p:])
		bv := (*[4]uint32)(bp[4*p:])
		for i := range 4 {
			for j := range 4 {
				acc[i][j] = dpbf16(acc[i][j], av[i], bv[j])
			}
		}
	}
	for i := 0; i < 4; i++ {
		row := cs[i*ldc : i*ldc+4 : i*ldc+4]
		for j := 0; j < 4; j++ {
			row[j] = alpha * acc[i][j]
		}
	}
}
