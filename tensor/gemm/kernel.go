package gemm

import (
	"fmt"
	"time"
)

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
	// round marks a float32 kernel run on inputs rounded to bf16 while
	// packing (precision BF16, k-steps single values): where VDPBF16PS is
	// no faster than FMA, the same bf16 products at the FMA rate.
	round bool
	// amx marks the AMX-BF16 layouts (amx.go): A in tile-row blocks, the
	// depth padded to 16 k-pairs.
	amx    bool
	mr, nr int
	full   func(k int, a, b, c *float32, ldc int, load int, alpha float32)
	// column, when non-nil, is full on mb ≥ 1 row blocks at once: A
	// panels r = 0…mb-1 (consecutive, MR·k words each) times one B panel
	// into C rows r·MR… — the same arithmetic per element as full, for
	// kernels whose per-call setup (AMX's LDTILECFG) is worth sharing.
	column func(mb, k int, a, b, c *float32, ldc int, load int, alpha float32)
	// strided is full on operands in place: A(i, p) at a[i·rsa + p·csa]
	// and B(p, j) at b[p·ldb + j] (floats), so an operand whose stored
	// layout already is a panel — B not transposed, or A either way, read
	// by broadcasts — needs no packing. The same FMAs in the same order as
	// full: the results are the same bits. nil for kernels over packed
	// pairs or rounded panels (bf16), which must pack.
	strided func(k int, a *float32, rsa, csa int, b *float32, ldb int, c *float32, ldc int, load int, alpha float32)
	// autoInPlace is the largest reuse (N for A, M for B) at which a plan
	// with operandAuto reads an operand in place (plan.inPlace); 0: never.
	autoInPlace int
	// peak runs n iterations of an independent-FMA (or dot-product) loop
	// and returns the FLOPs done, for MeasurePeak; nil when there is none.
	peak func(n int) float64
}

// pairs reports whether a k-step of the packed panels holds two k values
// (a bf16 pair in one 32-bit word).
func (k *kernel) pairs() bool { return k.precision == BF16 && !k.round }

// family names the arithmetic a kernel does per element: kernels of one
// family give the same bits, so the tuner may choose among them.
func (k *kernel) family() string {
	switch {
	case k.name == "generic":
		return "fp32-mul-add" // Go's a*b + c: fused or not as the compiler likes
	case k.precision == FP32:
		return "fp32-fma"
	case k.round:
		return "bf16-fma" // a float32 FMA chain over bf16 values
	case k.amx:
		return "bf16-amx" // TDPBF16PS pairs: lo then hi, subnormals flushed
	}
	return "bf16-dp" // VDPBF16PS pairs: hi then lo, subnormals flushed
}

// kcStep is the multiple of k elements every K slice but the last spans.
// The float32 and VDPBF16PS kernels unroll by 4; for AMX it is 32 (16
// k-pairs, one TDPBF16PS): TDPBF16PS does not round after each pair
// (docs/kernels.md), so its result depends on which 16 pairs one
// instruction sees, and slices of whole 16-pair blocks make those the same
// blocks of K whatever KC a plan has (a cached plan's KC included).
func (k *kernel) kcStep() int {
	if k.amx {
		return 2 * amxKBlock
	}
	return 4
}

// depth is the kernel's k argument for a KC slice of kc.
func (k *kernel) depth(kc int) int {
	if k.amx {
		return amxDepth(kc)
	}
	if k.pairs() {
		return (kc + 1) / 2
	}
	return kc
}

func (k *kernel) packA(dst []float32, trans bool, a []float32, lda, ic, pc, mc, kc, mr int) {
	if k.amx {
		packAAMX(words(dst), trans, a, lda, ic, pc, mc, kc)
		return
	}
	if k.pairs() {
		packABF16(words(dst), trans, a, lda, ic, pc, mc, kc, mr)
		return
	}
	packA(dst, trans, a, lda, ic, pc, mc, kc, mr)
	if k.round {
		roundBF16(dst[:roundUp(mc, mr)*kc])
	}
}

func (k *kernel) packB(dst []float32, trans bool, b []float32, ldb, pc, jc, kc, nc, nr int) {
	if k.amx {
		packBAMX(words(dst), trans, b, ldb, pc, jc, kc, nc)
		return
	}
	if k.pairs() {
		packBBF16(words(dst), trans, b, ldb, pc, jc, kc, nc, nr)
		return
	}
	packB(dst, trans, b, ldb, pc, jc, kc, nc, nr)
	if k.round {
		roundBF16(dst[:roundUp(nc, nr)*kc])
	}
}

// genericKernel is the pure-Go 4×4 micro-kernel for CPUs without a
// hand-written one: sixteen scalar accumulators (about 3 GFLOP/s; it
// exists for portability, not speed).
var genericKernel = kernel{name: "generic", mr: 4, nr: 4, full: kernelGeneric, strided: kernelGenericS}

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

// familyOf returns the kernels of ks in family f, best first.
func familyOf(ks []kernel, f string) []kernel {
	var out []kernel
	for _, k := range ks {
		if k.family() == f {
			out = append(out, k)
		}
	}
	return out
}

// bf16Kernels picks the bf16 family for this CPU: AMX where the CPU and
// Linux allow it (amxAvailable), else the VDPBF16PS kernels
// when their dot-product loop beats the FMA loop by 25% (Zen 5: ≈ 1.8×),
// else float32 FMA kernels on bf16-rounded panels (a Sapphire-Rapids-class
// Xeon VM ran VDPBF16PS at half its FMA rate), else the pure-Go kernel.
// Results depend on the family, never on timing noise: the margin is wide
// and the choice is per machine.
func bf16Kernels() []kernel {
	ks := kernelsFor(BF16)
	// AMX tiles (where CPUID and the OS allow them) beat both by far; a
	// kernel that fails its self-check on the real hardware is passed over.
	if amx := familyOf(ks, "bf16-amx"); len(amx) > 0 && selfCheck(amx[0]) == nil {
		return amx
	}
	dp, fma := familyOf(ks, "bf16-dp"), familyOf(ks, "bf16-fma")
	if len(fma) == 0 || dp[0].peak == nil {
		return dp
	}
	const d = 30 * time.Millisecond
	if measurePeak(dp[0], 1, d) >= 1.25*measurePeak(fma[0], 1, d) {
		return dp
	}
	return fma
}

// bestKernelFor is the fastest kernel for p.
func bestKernelFor(p Precision) kernel { return kernelsFor(p)[0] }
