//go:build purego || !amd64

package gemm

// Without assembly the row groups are packed by the Go helpers.

func packRowsGroup8(dst, src []float32, ld, kc, width int) { packRows8(dst, src, ld, kc, width) }

func packRowsGroup6(dst, src []float32, ld, kc, width int) { packRows6(dst, src, ld, kc, width) }
