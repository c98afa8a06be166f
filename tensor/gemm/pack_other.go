//go:build purego || !amd64

package gemm

// Without assembly the row groups are packed by the Go helpers.

func packRowsGroup8(dst, src []float32, ld, kc, width int) { packRows8(dst, src, ld, kc, width) }

func packRowsGroup6(dst, src []float32, ld, kc, width int) { packRows6(dst, src, ld, kc, width) }

func packColsAsm(dst, src []float32, off, ld, n, kc, width int) bool { return false }

func packSweepAsm(dst, src []float32, off, ld, panels, kc, width int) bool { return false }
