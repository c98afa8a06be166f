//go:build purego || !amd64

package gemm

// Without assembly the bf16 pairs are packed by the Go loops.

func useBF16Asm() bool { return false }

func pairSweepAsm(dst []uint32, r0, r1 []float32, n, width, pstride, ahead int, cvt bool) bool {
	return false
}

func cvtPairsAsm(dst []uint32, src []float32, ahead int) bool { return false }

func cvtPairBlocksAsm(dst []uint32, src []float32, blocks, dstride, ahead int, cvt bool) bool {
	return false
}

func amxColBlocksAsm(dst []uint32, src []float32, ld, count, cols, sstep, dstep, ahead int, cvt bool) bool {
	return false
}
