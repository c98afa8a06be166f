//go:build !purego

#include "textflag.h"

// Micro-kernels: C(MR×NR) = alpha·A·B + beta·C over packed panels.
// Go operand order is reversed from Intel: VFMADD231PS src2, src1, dst
// computes dst += src1·src2.
//
// Register use, both kernels:
//   SI packed A (MR floats per k)   DI packed B (NR floats per k)
//   DX C row pointer                R8 ldc in bytes
//   BX k/4 (unrolled loop count)    CX k%4
//   0,1 B row   2,3 A broadcasts    4.. accumulators, row i in (4+2i, 5+2i)

// ---------------------------------------------------------------- AVX2 6×16

#define AVX2_ROW(ao, t, acc0, acc1) \
	VBROADCASTSS ao(SI), t; \
	VFMADD231PS  Y0, t, acc0; \
	VFMADD231PS  Y1, t, acc1

// One k step: B row from bo(DI), six A values from ao(SI).
#define AVX2_STEP(ao, bo) \
	VMOVUPS bo(DI), Y0; \
	VMOVUPS bo+32(DI), Y1; \
	AVX2_ROW(ao, Y2, Y4, Y5); \
	AVX2_ROW(ao+4, Y3, Y6, Y7); \
	AVX2_ROW(ao+8, Y2, Y8, Y9); \
	AVX2_ROW(ao+12, Y3, Y10, Y11); \
	AVX2_ROW(ao+16, Y2, Y12, Y13); \
	AVX2_ROW(ao+20, Y3, Y14, Y15)

// C row = acc (beta == 0: C is not read).
#define AVX2_STORE(acc0, acc1) \
	VMOVUPS acc0, (DX); \
	VMOVUPS acc1, 32(DX); \
	ADDQ    R8, DX

// C row = acc + beta·C, beta in Y1.
#define AVX2_ACCUM(acc0, acc1) \
	VFMADD231PS (DX), Y1, acc0; \
	VFMADD231PS 32(DX), Y1, acc1; \
	AVX2_STORE(acc0, acc1)

// func kernelAVX2(k int, a, b, c *float32, ldc int, alpha, beta float32)
TEXT ·kernelAVX2(SB), NOSPLIT, $0-48
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), R8
	SHLQ $2, R8

	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	VXORPS Y12, Y12, Y12
	VXORPS Y13, Y13, Y13
	VXORPS Y14, Y14, Y14
	VXORPS Y15, Y15, Y15

	// Warm the C tile while the k loop runs (a 64-byte row spans ≤ 2 lines).
	MOVQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 63(R9)
	ADDQ R8, R9
	PREFETCHT0 (R9)
	PREFETCHT0 63(R9)
	ADDQ R8, R9
	PREFETCHT0 (R9)
	PREFETCHT0 63(R9)
	ADDQ R8, R9
	PREFETCHT0 (R9)
	PREFETCHT0 63(R9)
	ADDQ R8, R9
	PREFETCHT0 (R9)
	PREFETCHT0 63(R9)
	ADDQ R8, R9
	PREFETCHT0 (R9)
	PREFETCHT0 63(R9)

	MOVQ CX, BX
	SHRQ $2, BX
	ANDQ $3, CX
	TESTQ BX, BX
	JZ   avx2_tail

avx2_loop4:
	AVX2_STEP(0, 0)
	AVX2_STEP(24, 64)
	AVX2_STEP(48, 128)
	AVX2_STEP(72, 192)
	ADDQ $96, SI
	ADDQ $256, DI
	DECQ BX
	JNZ  avx2_loop4

avx2_tail:
	TESTQ CX, CX
	JZ    avx2_done

avx2_loop1:
	AVX2_STEP(0, 0)
	ADDQ $24, SI
	ADDQ $64, DI
	DECQ CX
	JNZ  avx2_loop1

avx2_done:
	VBROADCASTSS alpha+40(FP), Y0
	VMULPS Y0, Y4, Y4
	VMULPS Y0, Y5, Y5
	VMULPS Y0, Y6, Y6
	VMULPS Y0, Y7, Y7
	VMULPS Y0, Y8, Y8
	VMULPS Y0, Y9, Y9
	VMULPS Y0, Y10, Y10
	VMULPS Y0, Y11, Y11
	VMULPS Y0, Y12, Y12
	VMULPS Y0, Y13, Y13
	VMULPS Y0, Y14, Y14
	VMULPS Y0, Y15, Y15

	// beta == ±0 (all bits but the sign clear): overwrite without reading C.
	MOVL beta+44(FP), AX
	SHLL $1, AX
	JNZ  avx2_accum

	AVX2_STORE(Y4, Y5)
	AVX2_STORE(Y6, Y7)
	AVX2_STORE(Y8, Y9)
	AVX2_STORE(Y10, Y11)
	AVX2_STORE(Y12, Y13)
	AVX2_STORE(Y14, Y15)
	VZEROUPPER
	RET

avx2_accum:
	VBROADCASTSS beta+44(FP), Y1
	AVX2_ACCUM(Y4, Y5)
	AVX2_ACCUM(Y6, Y7)
	AVX2_ACCUM(Y8, Y9)
	AVX2_ACCUM(Y10, Y11)
	AVX2_ACCUM(Y12, Y13)
	AVX2_ACCUM(Y14, Y15)
	VZEROUPPER
	RET

// ------------------------------------------------------------- AVX-512 14×32

#define Z_ROW(ao, t, acc0, acc1) \
	VBROADCASTSS ao(SI), t; \
	VFMADD231PS  Z0, t, acc0; \
	VFMADD231PS  Z1, t, acc1

// One k step: B row (32 floats) from bo(DI), 14 A values from ao(SI).
#define Z_STEP(ao, bo) \
	VMOVUPS bo(DI), Z0; \
	VMOVUPS bo+64(DI), Z1; \
	Z_ROW(ao, Z2, Z4, Z5); \
	Z_ROW(ao+4, Z3, Z6, Z7); \
	Z_ROW(ao+8, Z2, Z8, Z9); \
	Z_ROW(ao+12, Z3, Z10, Z11); \
	Z_ROW(ao+16, Z2, Z12, Z13); \
	Z_ROW(ao+20, Z3, Z14, Z15); \
	Z_ROW(ao+24, Z2, Z16, Z17); \
	Z_ROW(ao+28, Z3, Z18, Z19); \
	Z_ROW(ao+32, Z2, Z20, Z21); \
	Z_ROW(ao+36, Z3, Z22, Z23); \
	Z_ROW(ao+40, Z2, Z24, Z25); \
	Z_ROW(ao+44, Z3, Z26, Z27); \
	Z_ROW(ao+48, Z2, Z28, Z29); \
	Z_ROW(ao+52, Z3, Z30, Z31)

#define Z_STORE(acc0, acc1) \
	VMOVUPS acc0, (DX); \
	VMOVUPS acc1, 64(DX); \
	ADDQ    R8, DX

// beta in Z1.
#define Z_ACCUM(acc0, acc1) \
	VFMADD231PS (DX), Z1, acc0; \
	VFMADD231PS 64(DX), Z1, acc1; \
	Z_STORE(acc0, acc1)

#define Z_SCALE(acc0, acc1) \
	VMULPS Z0, acc0, acc0; \
	VMULPS Z0, acc1, acc1

// A 128-byte C row spans at most 3 cache lines.
#define Z_PREFETCH_ROW \
	PREFETCHT0 (R9); \
	PREFETCHT0 64(R9); \
	PREFETCHT0 127(R9); \
	ADDQ R8, R9

// func kernelAVX512(k int, a, b, c *float32, ldc int, alpha, beta float32)
TEXT ·kernelAVX512(SB), NOSPLIT, $0-48
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), R8
	SHLQ $2, R8

	// VPXORD, not VXORPS: the zmm form of VXORPS needs AVX512DQ.
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	VPXORD Z8, Z8, Z8
	VPXORD Z9, Z9, Z9
	VPXORD Z10, Z10, Z10
	VPXORD Z11, Z11, Z11
	VPXORD Z12, Z12, Z12
	VPXORD Z13, Z13, Z13
	VPXORD Z14, Z14, Z14
	VPXORD Z15, Z15, Z15
	VPXORD Z16, Z16, Z16
	VPXORD Z17, Z17, Z17
	VPXORD Z18, Z18, Z18
	VPXORD Z19, Z19, Z19
	VPXORD Z20, Z20, Z20
	VPXORD Z21, Z21, Z21
	VPXORD Z22, Z22, Z22
	VPXORD Z23, Z23, Z23
	VPXORD Z24, Z24, Z24
	VPXORD Z25, Z25, Z25
	VPXORD Z26, Z26, Z26
	VPXORD Z27, Z27, Z27
	VPXORD Z28, Z28, Z28
	VPXORD Z29, Z29, Z29
	VPXORD Z30, Z30, Z30
	VPXORD Z31, Z31, Z31

	MOVQ DX, R9
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW
	Z_PREFETCH_ROW

	MOVQ CX, BX
	SHRQ $2, BX
	ANDQ $3, CX
	TESTQ BX, BX
	JZ   z_tail

z_loop4:
	Z_STEP(0, 0)
	Z_STEP(56, 128)
	Z_STEP(112, 256)
	Z_STEP(168, 384)
	ADDQ $224, SI
	ADDQ $512, DI
	DECQ BX
	JNZ  z_loop4

z_tail:
	TESTQ CX, CX
	JZ    z_done

z_loop1:
	Z_STEP(0, 0)
	ADDQ $56, SI
	ADDQ $128, DI
	DECQ CX
	JNZ  z_loop1

z_done:
	VBROADCASTSS alpha+40(FP), Z0
	Z_SCALE(Z4, Z5)
	Z_SCALE(Z6, Z7)
	Z_SCALE(Z8, Z9)
	Z_SCALE(Z10, Z11)
	Z_SCALE(Z12, Z13)
	Z_SCALE(Z14, Z15)
	Z_SCALE(Z16, Z17)
	Z_SCALE(Z18, Z19)
	Z_SCALE(Z20, Z21)
	Z_SCALE(Z22, Z23)
	Z_SCALE(Z24, Z25)
	Z_SCALE(Z26, Z27)
	Z_SCALE(Z28, Z29)
	Z_SCALE(Z30, Z31)

	MOVL beta+44(FP), AX
	SHLL $1, AX
	JNZ  z_accum

	Z_STORE(Z4, Z5)
	Z_STORE(Z6, Z7)
	Z_STORE(Z8, Z9)
	Z_STORE(Z10, Z11)
	Z_STORE(Z12, Z13)
	Z_STORE(Z14, Z15)
	Z_STORE(Z16, Z17)
	Z_STORE(Z18, Z19)
	Z_STORE(Z20, Z21)
	Z_STORE(Z22, Z23)
	Z_STORE(Z24, Z25)
	Z_STORE(Z26, Z27)
	Z_STORE(Z28, Z29)
	Z_STORE(Z30, Z31)
	VZEROUPPER
	RET

z_accum:
	VBROADCASTSS beta+44(FP), Z1
	Z_ACCUM(Z4, Z5)
	Z_ACCUM(Z6, Z7)
	Z_ACCUM(Z8, Z9)
	Z_ACCUM(Z10, Z11)
	Z_ACCUM(Z12, Z13)
	Z_ACCUM(Z14, Z15)
	Z_ACCUM(Z16, Z17)
	Z_ACCUM(Z18, Z19)
	Z_ACCUM(Z20, Z21)
	Z_ACCUM(Z22, Z23)
	Z_ACCUM(Z24, Z25)
	Z_ACCUM(Z26, Z27)
	Z_ACCUM(Z28, Z29)
	Z_ACCUM(Z30, Z31)
	VZEROUPPER
	RET

// ------------------------------------------------------------ FMA peak loops

// func fmaLoopAVX2(n int)
// 12 independent accumulators cover FMA latency (4–5 cycles) × 2 pipes.
TEXT ·fmaLoopAVX2(SB), NOSPLIT, $0-8
	MOVQ n+0(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	VXORPS Y12, Y12, Y12
	VXORPS Y13, Y13, Y13
	VXORPS Y14, Y14, Y14
	VXORPS Y15, Y15, Y15
	TESTQ CX, CX
	JLE   fma2_done

fma2_loop:
	VFMADD231PS Y0, Y1, Y4
	VFMADD231PS Y0, Y1, Y5
	VFMADD231PS Y0, Y1, Y6
	VFMADD231PS Y0, Y1, Y7
	VFMADD231PS Y0, Y1, Y8
	VFMADD231PS Y0, Y1, Y9
	VFMADD231PS Y0, Y1, Y10
	VFMADD231PS Y0, Y1, Y11
	VFMADD231PS Y0, Y1, Y12
	VFMADD231PS Y0, Y1, Y13
	VFMADD231PS Y0, Y1, Y14
	VFMADD231PS Y0, Y1, Y15
	DECQ CX
	JNZ  fma2_loop

fma2_done:
	VZEROUPPER
	RET

#define Z_FMA8(a, b, c, d, e, f, g, h) \
	VFMADD231PS Z0, Z1, a; \
	VFMADD231PS Z0, Z1, b; \
	VFMADD231PS Z0, Z1, c; \
	VFMADD231PS Z0, Z1, d; \
	VFMADD231PS Z0, Z1, e; \
	VFMADD231PS Z0, Z1, f; \
	VFMADD231PS Z0, Z1, g; \
	VFMADD231PS Z0, Z1, h

// func fmaLoopAVX512(n int)
// 24 independent zmm accumulators.
TEXT ·fmaLoopAVX512(SB), NOSPLIT, $0-8
	MOVQ n+0(FP), CX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z8, Z8, Z8
	VPXORD Z9, Z9, Z9
	VPXORD Z10, Z10, Z10
	VPXORD Z11, Z11, Z11
	VPXORD Z12, Z12, Z12
	VPXORD Z13, Z13, Z13
	VPXORD Z14, Z14, Z14
	VPXORD Z15, Z15, Z15
	VPXORD Z16, Z16, Z16
	VPXORD Z17, Z17, Z17
	VPXORD Z18, Z18, Z18
	VPXORD Z19, Z19, Z19
	VPXORD Z20, Z20, Z20
	VPXORD Z21, Z21, Z21
	VPXORD Z22, Z22, Z22
	VPXORD Z23, Z23, Z23
	VPXORD Z24, Z24, Z24
	VPXORD Z25, Z25, Z25
	VPXORD Z26, Z26, Z26
	VPXORD Z27, Z27, Z27
	VPXORD Z28, Z28, Z28
	VPXORD Z29, Z29, Z29
	VPXORD Z30, Z30, Z30
	VPXORD Z31, Z31, Z31
	TESTQ CX, CX
	JLE   fma512_done

fma512_loop:
	Z_FMA8(Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15)
	Z_FMA8(Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23)
	Z_FMA8(Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31)
	DECQ CX
	JNZ  fma512_loop

fma512_done:
	VZEROUPPER
	RET
