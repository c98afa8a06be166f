//go:build purego || !amd64

package gemm

// bestKernel: without assembly only the generic kernel exists.
func bestKernel() kernel { return genericKernel }

// availableKernels lists the kernels this build and CPU can run, best first
// per precision.
func availableKernels() []kernel { return []kernel{genericKernel, genericBF16Kernel} }
