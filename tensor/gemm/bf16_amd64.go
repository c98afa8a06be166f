//go:build !purego

package gemm

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// Assembly bf16 pair packing (bf16_amd64.s): ToBF16 on AVX-512F integer
// lanes or, where the CPU has AVX512-BF16, by VCVTNE2PS2BF16; bit for bit
// the Go function either way.

// pairSweepAVX512 is one k-pair of pairColPanels over panels panels of
// width ≤ 32 columns at dst stride pstride words; the last panel reads
// only tail's lanes (0: all width).
//
//go:noescape
func pairSweepAVX512(dst *uint32, r0, r1 *float32, panels, width, pstride int, tail uint32, ahead int)

// pairSweepBF16 is pairSweepAVX512 converting with VCVTNE2PS2BF16
// (AVX512-BF16), whose bits are ToBF16's.
//
//go:noescape
func pairSweepBF16(dst *uint32, r0, r1 *float32, panels, width, pstride int, tail uint32, ahead int)

// cvtPairsAVX512 sets dst[p] = bf16Pair(src[2p], src[2p+1]) for p < n,
// prefetching the 8n bytes at pf (an address, never read: it may lie past
// the matrix).
//
//go:noescape
func cvtPairsAVX512(dst *uint32, src *float32, n int, pf uintptr)

// cvtPairBlocksAVX512 sets dst[b·dstride+q] = bf16Pair(src[32b+2q],
// src[32b+2q+1]) for b < blocks, q < 16, prefetching the run at pf.
//
//go:noescape
func cvtPairBlocksAVX512(dst *uint32, src *float32, blocks, dstride int, pf uintptr)

// cvtPairBlocksBF16 is cvtPairBlocksAVX512 converting with
// VCVTNE2PS2BF16 (AVX512-BF16), whose bits are ToBF16's.
//
//go:noescape
func cvtPairBlocksBF16(dst *uint32, src *float32, blocks, dstride int, pf uintptr)

// useBF16Asm reports whether the bf16 packing routines may run: they
// need AVX512F only.
func useBF16Asm() bool { return cpu.X86.HasAVX512F }

// pairSweepAsm packs k-pair rows r0 and r1 (n columns each) into the
// panels of width columns at dst[q*pstride:] as pairColPanels does, and
// reports false (doing nothing) where the assembly does not apply. With
// cvt (and useBF16Cvt), VCVTNE2PS2BF16 rounds.
func pairSweepAsm(dst []uint32, r0, r1 []float32, n, width, pstride, ahead int, cvt bool) bool {
	if !useBF16Asm() || n == 0 || width > 32 || width < 1 {
		return false
	}
	np := (n + width - 1) / width
	// The bounds the assembly relies on.
	_ = r0[n-1]
	_ = r1[n-1]
	_ = dst[(np-1)*pstride+width-1]
	tail := uint32(0)
	if rem := n % width; rem != 0 {
		tail = laneMask(rem)
	}
	if cvt && useBF16Cvt() {
		pairSweepBF16(&dst[0], &r0[0], &r1[0], np, width, pstride, tail, ahead)
	} else {
		pairSweepAVX512(&dst[0], &r0[0], &r1[0], np, width, pstride, tail, ahead)
	}
	return true
}

// cvtPairsAsm sets dst[p] = bf16Pair(src[2p], src[2p+1]) for p <
// len(dst) (src holds 2·len(dst) floats), prefetching the same run ahead
// bytes on, and reports false where the assembly does not apply.
func cvtPairsAsm(dst []uint32, src []float32, ahead int) bool {
	if !useBF16Asm() {
		return false
	}
	if n := len(dst); n > 0 {
		_ = src[2*n-1]
		cvtPairsAVX512(&dst[0], &src[0], n, uintptr(unsafe.Pointer(&src[0]))+uintptr(ahead))
	}
	return true
}

// cvtPairBlocksAsm sets dst[b·dstride+q] = bf16Pair(src[32b+2q],
// src[32b+2q+1]) for b < blocks and q < 16 (an AMX A row's whole 16-pair
// blocks), and reports false (doing nothing) where the assembly does not
// apply. The same run ahead bytes on is prefetched. With cvt (and
// useBF16Cvt), VCVTNE2PS2BF16 rounds.
func cvtPairBlocksAsm(dst []uint32, src []float32, blocks, dstride, ahead int, cvt bool) bool {
	if !useBF16Asm() {
		return false
	}
	if blocks > 0 {
		_ = src[32*blocks-1]
		_ = dst[(blocks-1)*dstride+15]
		pf := uintptr(unsafe.Pointer(&src[0])) + uintptr(ahead)
		if cvt && useBF16Cvt() {
			cvtPairBlocksBF16(&dst[0], &src[0], blocks, dstride, pf)
		} else {
			cvtPairBlocksAVX512(&dst[0], &src[0], blocks, dstride, pf)
		}
	}
	return true
}

// amxColBlocksAVX512 packs count 32-row × 32-column units of Aᵀ as
// stored (row stride ld floats; unit u at src + u·sstep bytes) into
// 16-pair AMX A blocks (unit u at dst + u·dstep bytes), columns 0–15
// under the lanes of lo and 16–31 under hi, the others zero pairs;
// the line ahead bytes on from each row read is prefetched.
//
//go:noescape
func amxColBlocksAVX512(dst *uint32, src *float32, ld, count, sstep, dstep int, lo, hi uint32, ahead int)

// amxColBlocksBF16 is amxColBlocksAVX512 converting with VCVTNE2PS2BF16
// (AVX512-BF16), whose bits are ToBF16's.
//
//go:noescape
func amxColBlocksBF16(dst *uint32, src *float32, ld, count, sstep, dstep int, lo, hi uint32, ahead int)

// useBF16Cvt reports whether the VCVTNE2PS2BF16 routines
// (amxColBlocksBF16, pairSweepBF16, cvtPairBlocksBF16) may run.
func useBF16Cvt() bool { return cpu.X86.HasAVX512BF16 && cpu.X86.HasAVX512BW }

// amxColBlocksAsm packs count units of Aᵀ as stored (src's row r at
// src[r·ld:], 32 whole k-rows and cols ≤ 32 columns a unit, unit u at
// src[u·sstep:]) into 16-pair AMX A blocks (unit u at dst[u·dstep:]),
// as packAAMXGo would, and reports false (doing nothing) where the
// assembly does not apply. The float ahead floats on from each row read
// is prefetched. With cvt (and useBF16Cvt), VCVTNE2PS2BF16 rounds.
func amxColBlocksAsm(dst []uint32, src []float32, ld, count, cols, sstep, dstep, ahead int, cvt bool) bool {
	if !useBF16Asm() || cols < 1 || cols > amxMR || count < 1 {
		return false
	}
	// The bounds the assembly relies on.
	_ = src[(count-1)*sstep+(2*amxKBlock-1)*ld+cols-1]
	_ = dst[(count-1)*dstep+amxKBlock*amxMR-1]
	lo, hi := laneMask(min(cols, 16)), laneMask(max(cols-16, 0))
	if cvt && useBF16Cvt() {
		amxColBlocksBF16(&dst[0], &src[0], ld, count, sstep*4, dstep*4, lo, hi, ahead*4)
	} else {
		amxColBlocksAVX512(&dst[0], &src[0], ld, count, sstep*4, dstep*4, lo, hi, ahead*4)
	}
	return true
}
