//go:build !amd64 || purego

package gemm

// amxKernelForTest is never reached here: amxAvailable always fails.
func amxKernelForTest() kernel { return genericAMXKernel }
