//go:build amd64 && !purego

package gemm

func amxKernelForTest() kernel { return amxKernel }
