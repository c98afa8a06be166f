package gemm

// kernel is a register-tiled micro-kernel. full computes one MR×NR tile
//
//	C[i*ldc+j] = alpha·Σ_p a[p*MR+i]·b[p*NR+j] + beta·C[i*ldc+j]
//
// from packed micro-panels of depth k ≥ 1; with beta == 0 it never reads C.
type kernel struct {
	name   string
	mr, nr int
	full   func(k int, a, b, c *float32, ldc int, alpha, beta float32)
	// peak runs n iterations of an independent-FMA loop and returns the
	// FLOPs done, for MeasurePeak; nil when there is no FMA loop.
	peak func(n int) float64
}

// genericKernel is the pure-Go 4×4 micro-kernel for CPUs without a
// hand-written one: sixteen scalar accumulators (about 3 GFLOP/s; it
// exists for portability, not speed).
var genericKernel = kernel{name: "generic", mr: 4, nr: 4, full: kernelGeneric}
