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
