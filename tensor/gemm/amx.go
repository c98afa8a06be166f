package gemm

import (
	"math"
	"strings"
	"unsafe"
)

// AMX-BF16: the bf16-amx kernel family. A 32×32 block of C is four 16×16
// float32 tiles (tmm0–3) updated per 16 k-pairs by four TDPBF16PS from two
// A tiles (tmm4–5: 16 rows × 16 pairs) and two B tiles (tmm6–7: 16 pairs ×
// 16 columns). Tiles load rows at a stride, so the packed layouts are:
//   - A: per 32-row panel, blocks of 16 k-pairs, each 32 rows × 16 words
//     (a row's 16 pairs contiguous: one 64-byte tile row): word (p, i) at
//     (p/16)·512 + i·16 + p%16;
//   - B: the bf16 pair panels of the other kernels with NR = 32 (word
//     (p, j) at p·32 + j), whose 64-byte halves are the two B tiles' rows
//     at a stride of 128 bytes.
//
// The depth (k-pairs) is padded to a multiple of 16 with zero pairs, so
// every TDPBF16PS sees whole tiles.
//
// Arithmetic (tdpbf16): per k-pair, acc + a.lo·b.lo, then + a.hi·b.hi,
// each rounded to nearest even, subnormal accumulators read as zero and
// subnormal results flushed — Intel's pseudo-code for TDPBF16PS, the even
// element first (VDPBF16PS takes the odd one first: a family of its own).
// The kernel's source (kernelAMXBF16) is checked in the instruction
// interpreter against this model. The hardware does not round this way
// (a Sapphire-Rapids-class Xeon combines two k-pairs' products before
// rounding: docs/kernels.md), so TestAMXNative holds it to the float64
// reference, determinism and plan independence instead; K slices span
// whole 16-pair blocks (kernel.kcStep) so every plan gives its bits.
const (
	amxMR     = 32
	amxNR     = 32
	amxKBlock = 16 // k-pairs per TDPBF16PS
)

// amxDepth is the padded depth in k-pairs of a KC slice of kc.
func amxDepth(kc int) int { return roundUp((kc+1)/2, amxKBlock) }

// tdpbf16 is one k-pair of TDPBF16PS for one element (see above).
func tdpbf16(acc float32, a, b uint32) float32 {
	acc = ftz(float32(float64(ftz(acc)) + float64(math.Float32frombits(a<<16))*float64(math.Float32frombits(b<<16))))
	return ftz(float32(float64(acc) + float64(math.Float32frombits(a&0xffff_0000))*float64(math.Float32frombits(b&0xffff_0000))))
}

// packAAMX packs op(A)[ic:ic+mc, pc:pc+kc] into 32-row AMX panels (panel
// of row ir at dst[ir·depth:]), rounding to bf16 pairs: with AVX-512, A
// as stored converts a row's 16-pair blocks straight into their tile rows
// (cvtPairBlocksAsm), Aᵀ as stored converts 32×32 blocks and transposes
// them in registers straight into tile rows (packAAMXCols), both rounding
// with VCVTNE2PS2BF16 where the CPU has AVX512-BF16; packAAMXGo, the
// oracle of both, otherwise. On a Sapphire-Rapids-class Xeon (one thread,
// BenchmarkStepBF16) the Go loop took 52% of the `small` step's bf16 GEMM
// time; these paths took those GEMMs from 169–395 to 428–796 GFLOP/s with
// the column kernel. Aᵀ's registers transpose and VCVTNE2PS2BF16 took the
// hot Aᵀ packing (BenchmarkPackBF16/A/amx/trans) from 52 to 30 µs.
func packAAMX(dst []uint32, trans bool, a []float32, lda, ic, pc, mc, kc int) {
	switch {
	case !useBF16Asm() || kc < 2:
		packAAMXGo(dst, trans, a, lda, ic, pc, mc, kc)
	case trans:
		packAAMXCols(dst, a, lda, ic, pc, mc, kc)
	default:
		packAAMXRows(dst, a, lda, ic, pc, mc, kc)
	}
}

// packAAMXRows is packAAMX for A as stored (row i at a[(ic+i)·lda+pc:]).
func packAAMXRows(dst []uint32, a []float32, lda, ic, pc, mc, kc int) {
	packAAMXRowsWith(dst, a, lda, ic, pc, mc, kc, true)
}

// packAAMXRowsWith is packAAMXRows, converting with VCVTNE2PS2BF16 where
// the CPU has it only if cvt.
func packAAMXRowsWith(dst []uint32, a []float32, lda, ic, pc, mc, kc int, cvt bool) {
	d := amxDepth(kc)
	blocks := d / amxKBlock
	whole := kc / (2 * amxKBlock) // blocks without padding
	for ir := 0; ir < mc; ir += amxMR {
		panel := dst[ir*d : ir*d+amxMR*d]
		rows := min(amxMR, mc-ir)
		for i := range rows {
			off := (ic+ir+i)*lda + pc
			row := a[off : off+kc]
			cvtPairBlocksAsm(panel[i*amxKBlock:], row, whole, amxKBlock*amxMR, pairRowAhead*lda*4, cvt)
			if whole == blocks {
				continue
			}
			out := panel[whole*amxKBlock*amxMR+i*amxKBlock:][:amxKBlock]
			tail := row[2*amxKBlock*whole:]
			for q := range out {
				var x0, x1 float32
				if 2*q < len(tail) {
					x0 = tail[2*q]
				}
				if 2*q+1 < len(tail) {
					x1 = tail[2*q+1]
				}
				out[q] = bf16Pair(x0, x1)
			}
		}
		for i := rows; i < amxMR; i++ {
			for kb := range blocks {
				clear(panel[kb*amxKBlock*amxMR+i*amxKBlock:][:amxKBlock])
			}
		}
	}
}

// amxColAhead is how many k-rows ahead packAAMXCols prefetches its source
// (the source is often cold in a step).
const amxColAhead = 16

// packAAMXCols is packAAMX for Aᵀ as stored (A's k-row p at
// a[(pc+p)·lda+ic:], contiguous over i): per whole 16-pair block, the
// block of every 32-row panel goes straight into tile rows
// (amxColBlocksAsm: the pair conversion and a 16×16 word transpose in
// registers), sweeping the 32 source rows across the panels; a last
// block with padding goes through the Go loop.
func packAAMXCols(dst []uint32, a []float32, lda, ic, pc, mc, kc int) {
	packAAMXColsWith(dst, a, lda, ic, pc, mc, kc, true)
}

// packAAMXColsWith is packAAMXCols, converting with VCVTNE2PS2BF16 where
// the CPU has it only if cvt.
func packAAMXColsWith(dst []uint32, a []float32, lda, ic, pc, mc, kc int, cvt bool) {
	d := amxDepth(kc)
	const blk = amxKBlock * amxMR // words of one 16-pair block of a panel
	whole := kc / (2 * amxKBlock)
	full, rest := mc/amxMR, mc%amxMR
	kb0 := 0
	for kb := range whole {
		src := a[(pc+2*amxKBlock*kb)*lda+ic:]
		out := dst[kb*blk:]
		if full > 0 && !amxColBlocksAsm(out, src, lda, full, amxMR, amxMR, amxMR*d, amxColAhead*lda, cvt) {
			break
		}
		if rest > 0 && !amxColBlocksAsm(out[full*amxMR*d:], src[full*amxMR:], lda, 1, rest, amxMR, amxMR*d, amxColAhead*lda, cvt) {
			break
		}
		kb0 = (kb + 1) * amxKBlock
	}
	for ir := 0; ir < mc; ir += amxMR {
		panel := dst[ir*d : ir*d+amxMR*d]
		cols := min(amxMR, mc-ir)
		for kb := kb0; kb < d; kb += amxKBlock {
			out := panel[kb*amxMR : kb*amxMR+blk]
			for i := range amxMR {
				row := out[i*amxKBlock : (i+1)*amxKBlock]
				if i >= cols {
					clear(row)
					continue
				}
				for q := range row {
					k0 := 2 * (kb + q)
					var x0, x1 float32
					if k0 < kc {
						x0 = a[(pc+k0)*lda+ic+ir+i]
					}
					if k0+1 < kc {
						x1 = a[(pc+k0+1)*lda+ic+ir+i]
					}
					row[q] = bf16Pair(x0, x1)
				}
			}
		}
	}
}

// packAAMXGo is packAAMX in Go.
func packAAMXGo(dst []uint32, trans bool, a []float32, lda, ic, pc, mc, kc int) {
	d := amxDepth(kc)
	at := func(i, k int) float32 {
		if trans {
			return a[(pc+k)*lda+ic+i]
		}
		return a[(ic+i)*lda+pc+k]
	}
	for ir := 0; ir < mc; ir += amxMR {
		panel := dst[ir*d : ir*d+amxMR*d]
		rows := min(amxMR, mc-ir)
		for kb := 0; kb < d; kb += amxKBlock {
			blk := panel[kb*amxMR : (kb+amxKBlock)*amxMR]
			for i := 0; i < amxMR; i++ {
				out := blk[i*amxKBlock : (i+1)*amxKBlock]
				if i >= rows {
					clear(out)
					continue
				}
				for q := range out {
					k0 := 2 * (kb + q)
					var x0, x1 float32
					if k0 < kc {
						x0 = at(ir+i, k0)
					}
					if k0+1 < kc {
						x1 = at(ir+i, k0+1)
					}
					out[q] = bf16Pair(x0, x1)
				}
			}
		}
	}
}

// packBAMX packs op(B)[pc:pc+kc, jc:jc+nc] into 32-column pair panels of
// the padded depth (panel of column jr at dst[jr·depth:]).
func packBAMX(dst []uint32, trans bool, b []float32, ldb, pc, jc, kc, nc int) {
	d, dk := amxDepth(kc), (kc+1)/2
	for jr := 0; jr < nc; jr += amxNR {
		panel := dst[jr*d : jr*d+amxNR*d]
		packBBF16(panel, trans, b, ldb, pc, jc+jr, kc, min(amxNR, nc-jr), amxNR)
		clear(panel[dk*amxNR:])
	}
}

// kernelGenericAMX is the AMX kernel's arithmetic and layouts in pure Go
// (k counts k-pairs, a multiple of 16): what kernelAMXBF16 computes, bit
// for bit, on any machine — the oracle of the interpreter test and, in
// tests, an engine kernel that exercises the AMX packing end to end.
func kernelGenericAMX(k int, a, b, c *float32, ldc int, load int, alpha float32) {
	ap := unsafe.Slice((*uint32)(unsafe.Pointer(a)), amxMR*k)
	bp := unsafe.Slice((*uint32)(unsafe.Pointer(b)), amxNR*k)
	cs := unsafe.Slice(c, (amxMR-1)*ldc+amxNR)
	for i := 0; i < amxMR; i++ {
		row := cs[i*ldc : i*ldc+amxNR]
		for j := range row {
			var acc float32
			if load != 0 {
				acc = row[j]
			}
			for p := 0; p < k; p++ {
				acc = tdpbf16(acc, ap[p/amxKBlock*amxKBlock*amxMR+i*amxKBlock+p%amxKBlock], bp[p*amxNR+j])
			}
			if alpha != 1 {
				acc *= alpha
			}
			row[j] = acc
		}
	}
}

// columnGenericAMX is kernelGenericAMX on mb row blocks (kernel.column).
func columnGenericAMX(mb, k int, a, b, c *float32, ldc int, load int, alpha float32) {
	for r := range mb {
		ar := (*float32)(unsafe.Add(unsafe.Pointer(a), 4*r*amxMR*k))
		cr := (*float32)(unsafe.Add(unsafe.Pointer(c), 4*r*amxMR*ldc))
		kernelGenericAMX(k, ar, b, cr, ldc, load, alpha)
	}
}

// genericAMXKernel is kernelGenericAMX as an engine kernel (bf16-amx).
var genericAMXKernel = kernel{name: "generic-amx", precision: BF16, amx: true, mr: amxMR, nr: amxNR, full: kernelGenericAMX, column: columnGenericAMX}

// amxTileConfig is the LDTILECFG block the kernel loads: palette 1, all
// eight tiles 16 rows × 64 bytes.
func amxTileConfig() [64]byte {
	var cfg [64]byte
	cfg[0] = 1 // palette
	for t := 0; t < 8; t++ {
		cfg[16+2*t] = 64 // colsb, little-endian uint16
		cfg[48+t] = 16   // rows
	}
	return cfg
}

// wordPtr is the address of a word buffer as the kernels' *float32.
func wordPtr(w []uint32) *float32 { return (*float32)(unsafe.Pointer(&w[0])) }

// AMXStatus says whether the AMX-BF16 kernel can run here, or why not
// (the CPUID and arch_prctl answers), for logs and benchmarks.
func AMXStatus() string {
	if err := amxAvailable(); err != nil {
		return "AMX unavailable: " + strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	return "AMX available"
}
