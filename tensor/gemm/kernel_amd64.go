//go:build !purego

package gemm

import "golang.org/x/sys/cpu"

// Assembly micro-kernels (kernel_amd64.s).

//go:noescape
func kernelAVX512(k int, a, b, c *float32, ldc int, load int, alpha float32)

//go:noescape
func kernelAVX2(k int, a, b, c *float32, ldc int, load int, alpha float32)

// kernelAVX512S and kernelAVX2S are kernelAVX512 and kernelAVX2 on
// operands in place (kernel.strided): A(i, p) at a[i·rsa + p·csa], B(p, j)
// at b[p·ldb + j].
//
//go:noescape
func kernelAVX512S(k int, a *float32, rsa, csa int, b *float32, ldb int, c *float32, ldc int, load int, alpha float32)

//go:noescape
func kernelAVX2S(k int, a *float32, rsa, csa int, b *float32, ldb int, c *float32, ldc int, load int, alpha float32)

// kernelAVX512BF16 is kernelAVX512 over bf16 pairs (k counts pairs).
//
//go:noescape
func kernelAVX512BF16(k int, a, b, c *float32, ldc int, load int, alpha float32)

// kernelAMXBF16 is the AMX-BF16 kernel over AMX panels (amx.go): mb ≥ 1
// row blocks of 32×32 (consecutive A panels and C rows, one B panel); k
// counts k-pairs (a multiple of 16), cfg is amxTileConfig's block.
//
//go:noescape
func kernelAMXBF16(k int, a, b, c *float32, ldc int, load int, alpha float32, cfg *byte, mb int)

// kernelAMX is kernelAMXBF16 on one 32×32 block, with the tile
// configuration on the stack.
func kernelAMX(k int, a, b, c *float32, ldc int, load int, alpha float32) {
	cfg := amxTileConfig()
	kernelAMXBF16(k, a, b, c, ldc, load, alpha, &cfg[0], 1)
}

// kernelAMXColumn is kernelAMXBF16 on mb row blocks: a column of a
// macro-kernel's tiles for one LDTILECFG.
func kernelAMXColumn(mb, k int, a, b, c *float32, ldc int, load int, alpha float32) {
	cfg := amxTileConfig()
	kernelAMXBF16(k, a, b, c, ldc, load, alpha, &cfg[0], mb)
}

// amxPeakLoop runs n iterations of four independent TDPBF16PS.
func amxPeakLoop(n int, cfg *byte)

// amxKernel is the AMX-BF16 kernel (bf16-amx), available where
// amxAvailable reports no error.
var amxKernel = kernel{name: "amx", precision: BF16, amx: true, mr: amxMR, nr: amxNR, full: kernelAMX, column: kernelAMXColumn,
	peak: func(n int) float64 {
		cfg := amxTileConfig()
		amxPeakLoop(n, &cfg[0])
		return float64(n) * 4 * 16 * 16 * 32 * 2
	}}

// fmaLoopAVX512 runs n iterations of 24 independent zmm FMAs.
func fmaLoopAVX512(n int)

// fmaLoopAVX2 runs n iterations of 12 independent ymm FMAs.
func fmaLoopAVX2(n int)

// dpLoopAVX512BF16 runs n iterations of 24 independent zmm VDPBF16PS.
func dpLoopAVX512BF16(n int)

// avx512Kernel is 14×32: 28 zmm accumulators, two zmm B rows and two
// broadcast registers use all 32 zmm registers. The 14:32 shape gives the
// most FMAs per load of any tile that fits.
var avx512Kernel = kernel{name: "avx512", mr: 14, nr: 32, full: kernelAVX512, strided: kernelAVX512S, autoInPlace: 0,
	peak: func(n int) float64 { fmaLoopAVX512(n); return float64(n) * 24 * 16 * 2 }}

// avx2Kernel is 6×16 (BLIS Haswell/Zen): 12 ymm accumulators, two ymm B rows
// and two broadcast registers use all 16 ymm registers.
var avx2Kernel = kernel{name: "avx2", mr: 6, nr: 16, full: kernelAVX2, strided: kernelAVX2S,
	peak: func(n int) float64 { fmaLoopAVX2(n); return float64(n) * 12 * 8 * 2 }}

// avx512BF16Kernel is avx512Kernel's 14×32 tile over bf16 pairs: each
// VDPBF16PS does 16 lanes × 2 multiply-adds, twice an FMA's work.
var avx512BF16Kernel = kernel{name: "avx512bf16", precision: BF16, mr: 14, nr: 32, full: kernelAVX512BF16,
	peak: func(n int) float64 { dpLoopAVX512BF16(n); return float64(n) * 24 * 16 * 4 }}

// avx512RoundKernel and avx2RoundKernel are the float32 kernels over
// bf16-rounded panels (the bf16-fma family).
var (
	avx512RoundKernel = kernel{name: "avx512-bf16fma", precision: BF16, round: true, mr: 14, nr: 32, full: kernelAVX512, peak: avx512Kernel.peak}
	avx2RoundKernel   = kernel{name: "avx2-bf16fma", precision: BF16, round: true, mr: 6, nr: 16, full: kernelAVX2, peak: avx2Kernel.peak}
)

func hasAVX512() bool     { return cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL }
func hasAVX2() bool       { return cpu.X86.HasAVX2 && cpu.X86.HasFMA }
func hasAVX512BF16() bool { return hasAVX512() && cpu.X86.HasAVX512BF16 }

func bestKernel() kernel { return bestKernelFor(FP32) }

func availableKernels() []kernel {
	var ks []kernel
	if hasAVX512() {
		ks = append(ks, avx512Kernel)
	}
	if hasAVX2() {
		ks = append(ks, avx2Kernel)
	}
	ks = append(ks, genericKernel)
	if amxAvailable() == nil {
		ks = append(ks, amxKernel)
	}
	if hasAVX512BF16() {
		ks = append(ks, avx512BF16Kernel)
	}
	if hasAVX512() {
		ks = append(ks, avx512RoundKernel)
	}
	if hasAVX2() {
		ks = append(ks, avx2RoundKernel)
	}
	return append(ks, genericBF16Kernel)
}
