package gemm

import "fmt"

// Precision is what an Engine rounds the multiply's inputs to.
type Precision int

const (
	// FP32 multiplies float32 inputs as they are.
	FP32 Precision = iota
	// BF16 rounds A and B to bfloat16 (round to nearest even; subnormals
	// to zero) while packing them, and accumulates the exact products in
	// float32: what PyTorch's autocast(bfloat16) does for a matmul's
	// inputs, with the float32 output kept unrounded.
	BF16
)

// String is "fp32" or "bf16".
func (p Precision) String() string {
	switch p {
	case FP32:
		return "fp32"
	case BF16:
		return "bf16"
	}
	return fmt.Sprintf("Precision(%d)", int(p))
}

// ParsePrecision parses "fp32" or "bf16".
func ParsePrecision(s string) (Precision, error) {
	switch s {
	case "fp32":
		return FP32, nil
	case "bf16":
		return BF16, nil
	}
	return 0, fmt.Errorf("precision %q: allowed: fp32, bf16", s)
}

// kernel is a register-tiled micro-kernel with the packing it reads. full
// computes one MR×NR tile
//
//	C[i*ldc+j] = alpha·(C0[i][j] + Σ_p a(p,i)·b(p,j))
//
// from packed micro-panels of depth k ≥ 1 (k-steps: single float32s, or
// bf16 pairs for the bf16 kernels), one FMA per step and element in order
// of p; C0 is C when load ≠ 0, else 0 and C is not read.
type kernel struct {
	name      string
	precision Precision
	mr, nr    int
	full      func(k int, a, b, c *float32, ldc int, load int, alpha float32)
	// peak runs n iterations of an independent-FMA (or dot-product) loop
	// and returns the FLOPs done, for MeasurePeak; nil when there is none.
	peak func(n int) float64
}

// pairs reports whether a k-step of the packed panels holds two k values
// (a bf16 pair in one 32-bit word).
func (k *kernel) pairs() bool { return k.precision == BF16 }

// depth is the kernel's k argument for a KC slice of kc.
func (k *kernel) depth(kc int) int {
	if k.pairs() {
		return (kc + 1) / 2
	}
	return kc
}

func (k *kernel) packA(dst []float32, trans bool, a []float32, lda, ic, pc, mc, kc, mr int) {
	if k.pairs() {
		packABF16(words(dst), trans, a, lda, ic, pc, mc, kc, mr)
		return
	}
	packA(dst, trans, a, lda, ic, pc, mc, kc, mr)
}

func (k *kernel) packB(dst []float32, trans bool, b []float32, ldb, pc, jc, kc, nc, nr int) {
	if k.pairs() {
		packBBF16(words(dst), trans, b, ldb, pc, jc, kc, nc, nr)
		return
	}
	packB(dst, trans, b, ldb, pc, jc, kc, nc, nr)
}

// genericKernel is the pure-Go 4×4 micro-kernel for CPUs without a
// hand-written one: sixteen scalar accumulators (about 3 GFLOP/s; it
// exists for portability, not speed).
var genericKernel = kernel{name: "generic", mr: 4, nr: 4, full: kernelGeneric}

// genericBF16Kernel is genericKernel over bf16 pairs, computing exactly
// what VDPBF16PS computes (see kernelGenericBF16).
var genericBF16Kernel = kernel{name: "generic-bf16", precision: BF16, mr: 4, nr: 4, full: kernelGenericBF16}

// kernelsFor lists the kernels this build and CPU run for p, best first.
func kernelsFor(p Precision) []kernel {
	var ks []kernel
	for _, k := range availableKernels() {
		if k.precision == p {
			ks = append(ks, k)
		}
	}
	return ks
}

// bestKernelFor is the fastest kernel for p.
func bestKernelFor(p Precision) kernel { return kernelsFor(p)[0] }
