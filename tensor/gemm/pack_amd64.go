//go:build !purego

package gemm

import "golang.org/x/sys/cpu"

// Assembly row packing (pack_amd64.s): 8×8 transposes in ymm registers.

// packRows8AVX packs 8 rows of src (stride ld) into dst as packRows8 does,
// for the k-steps [0, kc&^7).
//
//go:noescape
func packRows8AVX(dst, src *float32, ld, kc, width int)

// packRows6AVX is packRows8AVX for 6 rows, writing 6 floats per k-step.
//
//go:noescape
func packRows6AVX(dst, src *float32, ld, kc, width int)

// useAVXPack reports whether the routines may run: they need AVX only
// (VINSERTF128, VUNPCK*PS, VSHUFPS on ymm); cpu.X86.HasAVX also checks that
// the OS saves the ymm state.
func useAVXPack() bool { return cpu.X86.HasAVX }

// packRowsGroup8 is packRows8 with the full blocks of 8 k-steps in assembly
// and the kc%8 tail in Go.
func packRowsGroup8(dst, src []float32, ld, kc, width int) {
	k8 := kc &^ 7
	if !useAVXPack() || k8 == 0 || width < 8 {
		packRows8(dst, src, ld, kc, width)
		return
	}
	// The bounds the assembly relies on, checked as packRows8 would.
	_ = src[7*ld+kc-1]
	_ = dst[(kc-1)*width+7]
	packRows8AVX(&dst[0], &src[0], ld, kc, width)
	if k8 < kc {
		packRows8(dst[k8*width:], src[k8:], ld, kc-k8, width)
	}
}

// packRowsGroup6 is packRowsGroup8 for 6 rows (packRows6).
func packRowsGroup6(dst, src []float32, ld, kc, width int) {
	k8 := kc &^ 7
	if !useAVXPack() || k8 == 0 || width < 6 {
		packRows6(dst, src, ld, kc, width)
		return
	}
	_ = src[5*ld+kc-1]
	_ = dst[(kc-1)*width+5]
	packRows6AVX(&dst[0], &src[0], ld, kc, width)
	if k8 < kc {
		packRows6(dst[k8*width:], src[k8:], ld, kc-k8, width)
	}
}

// Assembly column-panel copies (pack_amd64.s), AVX-512 masked moves.

// packColsAVX512 copies kc runs (stride ld floats) into dst at stride
// width: the low bits of lmask select the run's floats, smask's the
// panel's (both ≤ 32 lanes); lanes in smask but not lmask are zeroed.
//
//go:noescape
func packColsAVX512(dst, src *float32, ld, kc, width int, lmask, smask uint32)

// packSweepAVX512 is packColPanels' row sweep over full panels of width ≤
// 32 (mask: its low width bits).
//
//go:noescape
func packSweepAVX512(dst, src *float32, ld, kc, panels, width int, mask uint32)

// useAVX512Pack reports whether the masked-move routines may run.
func useAVX512Pack() bool { return cpu.X86.HasAVX512F }

func laneMask(n int) uint32 { return uint32(uint64(1)<<n - 1) }

// packColsAsm is packCols on AVX-512 for widths 14, 16 and 32; it
// reports false (and does nothing) where it does not apply.
func packColsAsm(dst, src []float32, off, ld, n, kc, width int) bool {
	if !useAVX512Pack() || kc == 0 || n == 0 || (width != 14 && width != 16 && width != 32) {
		return false
	}
	// The bounds the assembly relies on, checked as packCols would.
	_ = src[off+(kc-1)*ld+n-1]
	_ = dst[(kc-1)*width+width-1]
	packColsAVX512(&dst[0], &src[off], ld, kc, width, laneMask(n), laneMask(width))
	return true
}

// packSweepAsm is packColPanels' sweep of full panels on AVX-512 for
// widths 14 and 16; false where it does not apply.
func packSweepAsm(dst, src []float32, off, ld, panels, kc, width int) bool {
	if !useAVX512Pack() || kc == 0 || panels == 0 || (width != 14 && width != 16) {
		return false
	}
	_ = src[off+(kc-1)*ld+panels*width-1]
	_ = dst[panels*width*kc-1]
	packSweepAVX512(&dst[0], &src[off], ld, kc, panels, width, laneMask(width))
	return true
}
