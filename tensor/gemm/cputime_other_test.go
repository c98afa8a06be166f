//go:build !unix

package gemm

// threadCPU is unknown here: benchmarks report wall-clock rates only.
func threadCPU() float64 { return 0 }
