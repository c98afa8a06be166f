//go:build !purego

#include "textflag.h"

// Micro-kernels: C(MR×NR) = alpha·(C0 + A·B) over packed panels, where C0
// is C itself when load ≠ 0 and zero otherwise (C is then never read). The
// accumulators start from C0 and take one FMA per k in order, so a product
// split into K slices (each continuing from the last one's stored sums)
// rounds exactly as one unsplit pass: the blocking never changes results.
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

// C row = acc.
#define AVX2_STORE(acc0, acc1) \
	VMOVUPS acc0, (DX); \
	VMOVUPS acc1, 32(DX); \
	ADDQ    R8, DX

// acc = C row (R9 walks the rows).
#define AVX2_LOAD(acc0, acc1) \
	VMOVUPS (R9), acc0; \
	VMOVUPS 32(R9), acc1; \
	ADDQ    R8, R9

// Prefetch the 64-byte C row at R9 (≤ 2 lines) and step to the next.
#define AVX2_PREFETCH_ROW \
	PREFETCHT0 (R9); \
	PREFETCHT0 63(R9); \
	ADDQ R8, R9

// func kernelAVX2(k int, a, b, c *float32, ldc int, load int, alpha float32)
TEXT ·kernelAVX2(SB), NOSPLIT, $0-52
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), R8
	SHLQ $2, R8

	// R10 walks the next tile's C rows (6 rows down: the macro loop's
	// next call), one row prefetched per pass of avx2_loop4 while R11 > 0
	// (see kernelAVX512).
	MOVQ R8, R10
	SHLQ $1, R10
	MOVQ R10, R11
	SHLQ $1, R11
	ADDQ R11, R10
	ADDQ DX, R10
	MOVQ $7, R11

	MOVQ load+40(FP), AX
	TESTQ AX, AX
	JNZ  avx2_load

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

	// Warm the C tile for the stores while the k loop runs (a 64-byte row
	// spans ≤ 2 lines).
	MOVQ DX, R9
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	PREFETCHT0 (R9)
	PREFETCHT0 63(R9)
	JMP  avx2_k

avx2_load:
	MOVQ DX, R9
	AVX2_LOAD(Y4, Y5)
	AVX2_LOAD(Y6, Y7)
	AVX2_LOAD(Y8, Y9)
	AVX2_LOAD(Y10, Y11)
	AVX2_LOAD(Y12, Y13)
	AVX2_LOAD(Y14, Y15)

avx2_k:
	MOVQ CX, BX
	SHRQ $2, BX
	ANDQ $3, CX
	TESTQ BX, BX
	JZ   avx2_tail

avx2_loop4:
	DECQ R11
	JLE  avx2_nopf
	PREFETCHT0 (R10)
	PREFETCHT0 63(R10)
	ADDQ R8, R10

avx2_nopf:
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
	VBROADCASTSS alpha+48(FP), Y0
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

	AVX2_STORE(Y4, Y5)
	AVX2_STORE(Y6, Y7)
	AVX2_STORE(Y8, Y9)
	AVX2_STORE(Y10, Y11)
	AVX2_STORE(Y12, Y13)
	AVX2_STORE(Y14, Y15)
	VZEROUPPER
	RET

// ---------------------------------------------------- AVX2 6×16, strided

// kernelAVX2S is kernelAVX2 on operands in place, with kernelAVX512S's
// arguments and registers (rows 0–4 from SI, row 5 at R10).

#define AVX2_ROW_AT(src, t, acc0, acc1) \
	VBROADCASTSS src, t; \
	VFMADD231PS  Y0, t, acc0; \
	VFMADD231PS  Y1, t, acc1

#define AVX2S_STEP \
	VMOVUPS (DI), Y0; \
	VMOVUPS 32(DI), Y1; \
	AVX2_ROW_AT((SI), Y2, Y4, Y5); \
	AVX2_ROW_AT((SI)(AX*1), Y3, Y6, Y7); \
	AVX2_ROW_AT((SI)(AX*2), Y2, Y8, Y9); \
	AVX2_ROW_AT((SI)(R12*1), Y3, Y10, Y11); \
	AVX2_ROW_AT((SI)(AX*4), Y2, Y12, Y13); \
	AVX2_ROW_AT((R10), Y3, Y14, Y15)

// func kernelAVX2S(k int, a *float32, rsa, csa int, b *float32, ldb int, c *float32, ldc int, load int, alpha float32)
TEXT ·kernelAVX2S(SB), NOSPLIT, $0-76
	MOVQ c+48(FP), DX
	MOVQ ldc+56(FP), R8
	SHLQ $2, R8

	MOVQ load+64(FP), AX
	TESTQ AX, AX
	JNZ  avx2s_load

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

	MOVQ DX, R9
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	JMP  avx2s_next

avx2s_load:
	MOVQ DX, R9
	AVX2_LOAD(Y4, Y5)
	AVX2_LOAD(Y6, Y7)
	AVX2_LOAD(Y8, Y9)
	AVX2_LOAD(Y10, Y11)
	AVX2_LOAD(Y12, Y13)
	AVX2_LOAD(Y14, Y15)

avx2s_next:
	// R9 is now the next tile's C (6 rows down, the macro loop's next
	// call): start fetching it, so that call's loads and stores hit. (The
	// full kernels spread these over their k loop, which measured better;
	// this loop has no register left to count with.)
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	AVX2_PREFETCH_ROW
	PREFETCHT0 (R9)
	PREFETCHT0 63(R9)

avx2s_k:
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ rsa+16(FP), AX
	SHLQ $2, AX
	MOVQ csa+24(FP), R13
	SHLQ $2, R13
	MOVQ b+32(FP), DI
	MOVQ ldb+40(FP), R9
	SHLQ $2, R9
	MOVQ AX, R12 // R12 = 3·rsa
	ADDQ AX, R12
	ADDQ AX, R12
	MOVQ SI, R10 // R10 = row 5
	ADDQ R12, R10
	ADDQ AX, R10
	ADDQ AX, R10
	TESTQ CX, CX
	JZ   avx2s_done

avx2s_loop:
	AVX2S_STEP
	ADDQ R13, SI
	ADDQ R13, R10
	ADDQ R9, DI
	DECQ CX
	JNZ  avx2s_loop

avx2s_done:
	VBROADCASTSS alpha+72(FP), Y0
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

	AVX2_STORE(Y4, Y5)
	AVX2_STORE(Y6, Y7)
	AVX2_STORE(Y8, Y9)
	AVX2_STORE(Y10, Y11)
	AVX2_STORE(Y12, Y13)
	AVX2_STORE(Y14, Y15)
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

// acc = C row (R9 walks the rows).
#define Z_LOAD(acc0, acc1) \
	VMOVUPS (R9), acc0; \
	VMOVUPS 64(R9), acc1; \
	ADDQ    R8, R9

#define Z_SCALE(acc0, acc1) \
	VMULPS Z0, acc0, acc0; \
	VMULPS Z0, acc1, acc1

// A 128-byte C row spans at most 3 cache lines.
#define Z_PREFETCH_ROW \
	PREFETCHT0 (R9); \
	PREFETCHT0 64(R9); \
	PREFETCHT0 127(R9); \
	ADDQ R8, R9

// The next tile's C (14 rows down): R10 = its first row, R11 = 15, the
// countdown Z_NEXT_ROW's callers test (one row a pass while R11 > 0).
#define Z_NEXT_INIT \
	MOVQ R8, R10; \
	SHLQ $1, R10; \
	MOVQ R10, R11; \
	SHLQ $1, R11; \
	ADDQ R11, R10; \
	SHLQ $1, R11; \
	ADDQ R11, R10; \
	ADDQ DX, R10; \
	MOVQ $15, R11

#define Z_NEXT_ROW \
	PREFETCHT0 (R10); \
	PREFETCHT0 64(R10); \
	PREFETCHT0 127(R10); \
	ADDQ R8, R10

// func kernelAVX512(k int, a, b, c *float32, ldc int, load int, alpha float32)
TEXT ·kernelAVX512(SB), NOSPLIT, $0-52
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), R8
	SHLQ $2, R8

	// R10 walks the next tile's C rows (14 rows down: the macro loop's
	// next call), one row prefetched per pass of z_loop4 while R11 > 0,
	// so that tile's C is in cache when its call loads or stores it. C
	// (M×NC) is far larger than L2, and a call with load set read its 14
	// rows cold before its first FMA: 4096×3072×768 on one thread of a
	// Xeon (model 207) went from 125 to ~148 GFLOP/s with this.
	Z_NEXT_INIT

	MOVQ load+40(FP), AX
	TESTQ AX, AX
	JNZ  z_load

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
	JMP  z_k

z_load:
	MOVQ DX, R9
	Z_LOAD(Z4, Z5)
	Z_LOAD(Z6, Z7)
	Z_LOAD(Z8, Z9)
	Z_LOAD(Z10, Z11)
	Z_LOAD(Z12, Z13)
	Z_LOAD(Z14, Z15)
	Z_LOAD(Z16, Z17)
	Z_LOAD(Z18, Z19)
	Z_LOAD(Z20, Z21)
	Z_LOAD(Z22, Z23)
	Z_LOAD(Z24, Z25)
	Z_LOAD(Z26, Z27)
	Z_LOAD(Z28, Z29)
	Z_LOAD(Z30, Z31)

z_k:
	MOVQ CX, BX
	SHRQ $2, BX
	ANDQ $3, CX
	TESTQ BX, BX
	JZ   z_tail

z_loop4:
	DECQ R11
	JLE  z_nopf
	Z_NEXT_ROW

z_nopf:
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
	// alpha = 1 (every call but a K loop's last slice with alpha ≠ 1)
	// skips the 28 multiplies: x·1 = x, the same bits.
	MOVL alpha+48(FP), AX
	CMPL AX, $0x3f800000
	JZ   z_store
	VBROADCASTSS alpha+48(FP), Z0
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

z_store:
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

// ------------------------------------------------- AVX-512 14×32, strided

// kernelAVX512S is kernelAVX512 on operands in place: element (i, p) of A
// at a + i·rsa + p·csa (floats), row p of B at b + p·ldb. Packed panels are
// the case rsa = 1, csa = MR, ldb = NR; a row-major A is rsa = lda, csa = 1,
// a transposed one rsa = 1, csa = lda. The FMAs are kernelAVX512's, in the
// same order, so both give the same bits.
//
// Registers: SI, R10, R11 point at rows 0, 5 and 10 of A's column p; AX is
// rsa and R12 3·rsa in bytes, so rows 0–4 of each group are (SI), (SI)(AX*1),
// (SI)(AX*2), (SI)(R12*1), (SI)(AX*4). R13 is csa and R9 ldb in bytes, DI
// walks B, CX counts k, DX and R8 are C and ldc.

#define Z_ROW_AT(src, t, acc0, acc1) \
	VBROADCASTSS src, t; \
	VFMADD231PS  Z0, t, acc0; \
	VFMADD231PS  Z1, t, acc1

#define ZS_STEP \
	VMOVUPS (DI), Z0; \
	VMOVUPS 64(DI), Z1; \
	Z_ROW_AT((SI), Z2, Z4, Z5); \
	Z_ROW_AT((SI)(AX*1), Z3, Z6, Z7); \
	Z_ROW_AT((SI)(AX*2), Z2, Z8, Z9); \
	Z_ROW_AT((SI)(R12*1), Z3, Z10, Z11); \
	Z_ROW_AT((SI)(AX*4), Z2, Z12, Z13); \
	Z_ROW_AT((R10), Z3, Z14, Z15); \
	Z_ROW_AT((R10)(AX*1), Z2, Z16, Z17); \
	Z_ROW_AT((R10)(AX*2), Z3, Z18, Z19); \
	Z_ROW_AT((R10)(R12*1), Z2, Z20, Z21); \
	Z_ROW_AT((R10)(AX*4), Z3, Z22, Z23); \
	Z_ROW_AT((R11), Z2, Z24, Z25); \
	Z_ROW_AT((R11)(AX*1), Z3, Z26, Z27); \
	Z_ROW_AT((R11)(AX*2), Z2, Z28, Z29); \
	Z_ROW_AT((R11)(R12*1), Z3, Z30, Z31)

// func kernelAVX512S(k int, a *float32, rsa, csa int, b *float32, ldb int, c *float32, ldc int, load int, alpha float32)
TEXT ·kernelAVX512S(SB), NOSPLIT, $0-76
	MOVQ c+48(FP), DX
	MOVQ ldc+56(FP), R8
	SHLQ $2, R8

	MOVQ load+64(FP), AX
	TESTQ AX, AX
	JNZ  zs_load

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
	JMP  zs_next

zs_load:
	MOVQ DX, R9
	Z_LOAD(Z4, Z5)
	Z_LOAD(Z6, Z7)
	Z_LOAD(Z8, Z9)
	Z_LOAD(Z10, Z11)
	Z_LOAD(Z12, Z13)
	Z_LOAD(Z14, Z15)
	Z_LOAD(Z16, Z17)
	Z_LOAD(Z18, Z19)
	Z_LOAD(Z20, Z21)
	Z_LOAD(Z22, Z23)
	Z_LOAD(Z24, Z25)
	Z_LOAD(Z26, Z27)
	Z_LOAD(Z28, Z29)
	Z_LOAD(Z30, Z31)

zs_next:
	// R9 is now the next tile's C (14 rows down): start fetching it (see
	// kernelAVX2S).
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

zs_k:
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ rsa+16(FP), AX
	SHLQ $2, AX
	MOVQ csa+24(FP), R13
	SHLQ $2, R13
	MOVQ b+32(FP), DI
	MOVQ ldb+40(FP), R9
	SHLQ $2, R9
	MOVQ AX, R12 // R12 = 3·rsa
	ADDQ AX, R12
	ADDQ AX, R12
	MOVQ SI, R10 // R10 = row 5
	ADDQ R12, R10
	ADDQ AX, R10
	ADDQ AX, R10
	MOVQ R10, R11 // R11 = row 10
	ADDQ R12, R11
	ADDQ AX, R11
	ADDQ AX, R11
	TESTQ CX, CX
	JZ   zs_done

zs_loop:
	ZS_STEP
	ADDQ R13, SI
	ADDQ R13, R10
	ADDQ R13, R11
	ADDQ R9, DI
	DECQ CX
	JNZ  zs_loop

zs_done:
	// alpha = 1 (every call but a K loop's last slice with alpha ≠ 1)
	// skips the 28 multiplies: x·1 = x, the same bits.
	MOVL alpha+72(FP), AX
	CMPL AX, $0x3f800000
	JZ   zs_store
	VBROADCASTSS alpha+72(FP), Z0
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

zs_store:
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

// ------------------------------------------------------- AVX512-BF16 14×32

// VDPBF16PS zmm(d), zmm(s1), zmm(s2) (Intel operand order; arguments are
// register numbers): for each float32 lane i,
//   d[i] += s1.bf16[2i+1]·s2.bf16[2i+1]; d[i] += s1.bf16[2i]·s2.bf16[2i]
// EVEX.512.F3.0F38.W0 52 /r, register form. The Go assembler has no
// mnemonic for it, so the six bytes are computed here: P0 holds the
// inverted R, X, B, R' bits and map 0F38; P1 W=0, the inverted vvvv (s1)
// and pp=F3; P2 L'L=512 and the inverted V'; then the opcode and ModRM
// (mod 11, reg d, rm s2). objdump decodes them as vdpbf16ps.
#define DPBF(d, s1, s2) \
	BYTE $0x62; \
	BYTE $((((((d)^31)>>3)&1)<<7) | (((((s2)^31)>>4)&1)<<6) | (((((s2)^31)>>3)&1)<<5) | (((((d)^31)>>4)&1)<<4) | 2); \
	BYTE $(((((s1)^31)&15)<<3) | 6); \
	BYTE $(0x40 | (((((s1)^31)>>4)&1)<<3)); \
	BYTE $0x52; \
	BYTE $(0xC0 | (((d)&7)<<3) | ((s2)&7))

// One row: broadcast the row's bf16 pair (one 32-bit word) into register
// t (number tn) and accumulate both halves of the B row pair.
#define BF_ROW(ao, t, tn, acc0, acc1) \
	VBROADCASTSS ao(SI), t; \
	DPBF(acc0, 0, tn); \
	DPBF(acc1, 1, tn)

// One k-pair step: B (32 columns × a pair = 128 bytes) from bo(DI), 14 A
// pairs (56 bytes) from ao(SI): the strides of the float32 kernel.
#define BF_STEP(ao, bo) \
	VMOVUPS bo(DI), Z0; \
	VMOVUPS bo+64(DI), Z1; \
	BF_ROW(ao, Z2, 2, 4, 5); \
	BF_ROW(ao+4, Z3, 3, 6, 7); \
	BF_ROW(ao+8, Z2, 2, 8, 9); \
	BF_ROW(ao+12, Z3, 3, 10, 11); \
	BF_ROW(ao+16, Z2, 2, 12, 13); \
	BF_ROW(ao+20, Z3, 3, 14, 15); \
	BF_ROW(ao+24, Z2, 2, 16, 17); \
	BF_ROW(ao+28, Z3, 3, 18, 19); \
	BF_ROW(ao+32, Z2, 2, 20, 21); \
	BF_ROW(ao+36, Z3, 3, 22, 23); \
	BF_ROW(ao+40, Z2, 2, 24, 25); \
	BF_ROW(ao+44, Z3, 3, 26, 27); \
	BF_ROW(ao+48, Z2, 2, 28, 29); \
	BF_ROW(ao+52, Z3, 3, 30, 31)

// func kernelAVX512BF16(k int, a, b, c *float32, ldc int, load int, alpha float32)
// k counts bf16 pairs; the loop is kernelAVX512's with VDPBF16PS for VFMADD231PS.
TEXT ·kernelAVX512BF16(SB), NOSPLIT, $0-52
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), R8
	SHLQ $2, R8

	// R10 walks the next tile's C rows, as in kernelAVX512.
	Z_NEXT_INIT

	MOVQ load+40(FP), AX
	TESTQ AX, AX
	JNZ  bf_load

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
	JMP  bf_k

bf_load:
	MOVQ DX, R9
	Z_LOAD(Z4, Z5)
	Z_LOAD(Z6, Z7)
	Z_LOAD(Z8, Z9)
	Z_LOAD(Z10, Z11)
	Z_LOAD(Z12, Z13)
	Z_LOAD(Z14, Z15)
	Z_LOAD(Z16, Z17)
	Z_LOAD(Z18, Z19)
	Z_LOAD(Z20, Z21)
	Z_LOAD(Z22, Z23)
	Z_LOAD(Z24, Z25)
	Z_LOAD(Z26, Z27)
	Z_LOAD(Z28, Z29)
	Z_LOAD(Z30, Z31)

bf_k:
	MOVQ CX, BX
	SHRQ $2, BX
	ANDQ $3, CX
	TESTQ BX, BX
	JZ   bf_tail

bf_loop4:
	DECQ R11
	JLE  bf_nopf
	Z_NEXT_ROW

bf_nopf:
	BF_STEP(0, 0)
	BF_STEP(56, 128)
	BF_STEP(112, 256)
	BF_STEP(168, 384)
	ADDQ $224, SI
	ADDQ $512, DI
	DECQ BX
	JNZ  bf_loop4

bf_tail:
	TESTQ CX, CX
	JZ    bf_done

bf_loop1:
	BF_STEP(0, 0)
	ADDQ $56, SI
	ADDQ $128, DI
	DECQ CX
	JNZ  bf_loop1

bf_done:
	VBROADCASTSS alpha+48(FP), Z0
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

// ------------------------------------------------------------ AMX-BF16 32×32

// The Go assembler has no AMX mnemonics, so the instructions are BYTEs,
// computed here from their VEX encodings (C4, then R̄X̄B̄ and map 0F38 = 2,
// then W0, v̄v̄v̄v̄, L0 and pp, the opcode, ModRM, SIB and displacement).
// Tile numbers are 0–7; general registers by hardware number (DX 2, BX 3,
// SI 6, DI 7, R8–R10 8–10). objdump decodes them as the mnemonics here.

// LDTILECFG (AX): VEX.128.NP.0F38.W0 49 /0, ModRM mod 00 rm AX.
#define LDTILECFG_AX \
	BYTE $0xC4; BYTE $0xE2; BYTE $0x78; BYTE $0x49; BYTE $0x00

// TILERELEASE: VEX.128.NP.0F38.W0 49 C0.
#define TILERELEASE \
	BYTE $0xC4; BYTE $0xE2; BYTE $0x78; BYTE $0x49; BYTE $0xC0

// TILEZERO tmm(t): VEX.128.F2.0F38.W0 49 11:t:000.
#define TILEZERO(t) \
	BYTE $0xC4; BYTE $0xE2; BYTE $0x7B; BYTE $0x49; BYTE $(0xC0 | ((t)<<3))

// TDPBF16PS tmm(d), tmm(a), tmm(b) — d += a·b: VEX.128.F3.0F38.W0 5C
// 11:d:a with vvvv = b (operand 2, the A tile, is ModRM.rm; operand 3,
// the B tile, is VEX.vvvv).
#define TDPBF16PS(d, a, b) \
	BYTE $0xC4; BYTE $0xE2; BYTE $((((b)^15)<<3) | 2); BYTE $0x5C; BYTE $(0xC0 | ((d)<<3) | (a))

// The tile's rows at base + disp8 + r·index: VEX prefix bytes 1–2 and the
// ModRM (mod 01, rm 100: SIB follows), SIB (scale 1) and disp8 shared by
// TILELOADD (pp F2: 0x7B) and TILESTORED (pp F3: 0x7A).
#define TILE_SIB8(pp, op, t, base, index, disp) \
	BYTE $0xC4; \
	BYTE $(0x80 | (((((index)>>3)&1)^1)<<6) | (((((base)>>3)&1)^1)<<5) | 2); \
	BYTE $(pp); BYTE $(op); \
	BYTE $(0x44 | ((t)<<3)); \
	BYTE $((((index)&7)<<3) | ((base)&7)); \
	BYTE $(disp)

// The same with a 32-bit displacement (mod 10).
#define TILE_SIB32(pp, op, t, base, index, disp) \
	BYTE $0xC4; \
	BYTE $(0x80 | (((((index)>>3)&1)^1)<<6) | (((((base)>>3)&1)^1)<<5) | 2); \
	BYTE $(pp); BYTE $(op); \
	BYTE $(0x84 | ((t)<<3)); \
	BYTE $((((index)&7)<<3) | ((base)&7)); \
	BYTE $((disp)&255); BYTE $(((disp)>>8)&255); BYTE $(((disp)>>16)&255); BYTE $(((disp)>>24)&255)

#define TILELOADD(t, base, index, disp) TILE_SIB8(0x7B, 0x4B, t, base, index, disp)
#define TILELOADD32(t, base, index, disp) TILE_SIB32(0x7B, 0x4B, t, base, index, disp)
#define TILESTORED(t, base, index, disp) TILE_SIB8(0x7A, 0x4B, t, base, index, disp)

// func kernelAMXBF16(k int, a, b, c *float32, ldc int, load int, alpha float32, cfg *byte, mb int)
//
// C(32·mb × 32) = alpha·(C0 + A·B) over mb ≥ 1 consecutive AMX panels of
// A (amx.go; panel r at a + r·128·k bytes) and one B panel, of k k-pairs,
// k a multiple of 16, with the tile configuration at cfg (amxTileConfig):
// row block r of C (at c + r·32·ldc floats) is A panel r times B. The
// tiles are configured once per call, so one call covers a column of a
// macro-kernel's tiles (kernelAMX is the mb = 1 micro-kernel). C0 is C
// (loaded by TILELOADD) or zero (TILEZERO; C then not read before it is
// written). tmm0–3 hold C's four 16×16 quarters, tmm4–5 the A tiles,
// tmm6–7 the B tiles. Alpha ≠ 1 scales each stored block with AVX-512.
//
// Registers: SI A (after a block's k loop it points at the next panel),
// DI B, DX C, R10 C row 16, BX ldc in bytes (the C tiles' stride), R8 64
// (A's), R9 128 (B's), CX k, R11 blocks left, R12 the scaling's row, R13
// the next block's C row to prefetch (4 rows a k step: C is often cold,
// and each of a tile's 16 rows is a cache line of its own), R14 its rows
// left.
TEXT ·kernelAMXBF16(SB), NOSPLIT, $0-72
	MOVQ cfg+56(FP), AX
	LDTILECFG_AX
	MOVQ a+8(FP), SI
	MOVQ c+24(FP), DX
	MOVQ ldc+32(FP), BX
	SHLQ $2, BX
	MOVQ $64, R8
	MOVQ $128, R9
	MOVQ mb+64(FP), R11

amx_block:
	MOVQ k+0(FP), CX
	MOVQ b+16(FP), DI
	MOVQ BX, R10
	SHLQ $4, R10
	ADDQ DX, R10
	MOVQ BX, R13
	SHLQ $5, R13
	ADDQ DX, R13      // the next block's C: 32 rows on
	MOVQ $32, R14     // its rows left to prefetch (none after the last block)
	MOVQ R11, AX
	DECQ AX
	JNZ  amx_pf
	MOVQ $0, R14

amx_pf:
	MOVQ load+40(FP), AX
	TESTQ AX, AX
	JNZ  amx_load
	TILEZERO(0)
	TILEZERO(1)
	TILEZERO(2)
	TILEZERO(3)
	JMP  amx_k

amx_load:
	TILELOADD(0, 2, 3, 0)
	TILELOADD(1, 2, 3, 64)
	TILELOADD(2, 10, 3, 0)
	TILELOADD(3, 10, 3, 64)

amx_k:
	TESTQ CX, CX
	JZ    amx_store

amx_loop:
	TILELOADD(4, 6, 8, 0)
	TILELOADD(6, 7, 9, 0)
	TDPBF16PS(0, 4, 6)
	TILELOADD(7, 7, 9, 64)
	TDPBF16PS(1, 4, 7)
	TILELOADD32(5, 6, 8, 1024)
	TDPBF16PS(2, 5, 6)
	TDPBF16PS(3, 5, 7)
	TESTQ R14, R14
	JZ    amx_nopf
	PREFETCHT0 (R13)
	PREFETCHT0 64(R13)
	ADDQ BX, R13
	PREFETCHT0 (R13)
	PREFETCHT0 64(R13)
	ADDQ BX, R13
	PREFETCHT0 (R13)
	PREFETCHT0 64(R13)
	ADDQ BX, R13
	PREFETCHT0 (R13)
	PREFETCHT0 64(R13)
	ADDQ BX, R13
	ADDQ $-4, R14

amx_nopf:
	ADDQ $2048, SI
	ADDQ $2048, DI
	ADDQ $-16, CX
	JNZ  amx_loop

amx_store:
	TILESTORED(0, 2, 3, 0)
	TILESTORED(1, 2, 3, 64)
	TILESTORED(2, 10, 3, 0)
	TILESTORED(3, 10, 3, 64)

	MOVL alpha+48(FP), AX
	CMPL AX, $0x3f800000
	JZ   amx_next
	VBROADCASTSS alpha+48(FP), Z0
	MOVQ DX, R12
	MOVQ $32, CX

amx_scale:
	VMULPS  (R12), Z0, Z1
	VMOVUPS Z1, (R12)
	VMULPS  64(R12), Z0, Z2
	VMOVUPS Z2, 64(R12)
	ADDQ    BX, R12
	DECQ    CX
	JNZ     amx_scale

amx_next:
	MOVQ BX, AX
	SHLQ $5, AX
	ADDQ AX, DX
	DECQ R11
	JNZ  amx_block

	TILERELEASE
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

#define BF_DP8(a, b, c, d, e, f, g, h) \
	DPBF(a, 0, 1); \
	DPBF(b, 0, 1); \
	DPBF(c, 0, 1); \
	DPBF(d, 0, 1); \
	DPBF(e, 0, 1); \
	DPBF(f, 0, 1); \
	DPBF(g, 0, 1); \
	DPBF(h, 0, 1)

// func dpLoopAVX512BF16(n int)
// 24 independent zmm accumulators, one VDPBF16PS (32 multiply-adds) each.
TEXT ·dpLoopAVX512BF16(SB), NOSPLIT, $0-8
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
	JLE   bfdp_done

bfdp_loop:
	BF_DP8(8, 9, 10, 11, 12, 13, 14, 15)
	BF_DP8(16, 17, 18, 19, 20, 21, 22, 23)
	BF_DP8(24, 25, 26, 27, 28, 29, 30, 31)
	DECQ CX
	JNZ  bfdp_loop

bfdp_done:
	VZEROUPPER
	RET

// func amxPeakLoop(n int, cfg *byte)
// n iterations of four independent TDPBF16PS (16×16 outputs × 16 pairs,
// 16384 FLOPs each) on tiles configured by cfg (amxTileConfig).
TEXT ·amxPeakLoop(SB), NOSPLIT, $0-16
	MOVQ cfg+8(FP), AX
	LDTILECFG_AX
	MOVQ n+0(FP), CX
	TILEZERO(0)
	TILEZERO(1)
	TILEZERO(2)
	TILEZERO(3)
	TILEZERO(4)
	TILEZERO(5)
	TILEZERO(6)
	TILEZERO(7)
	TESTQ CX, CX
	JLE   amxpeak_done

amxpeak_loop:
	TDPBF16PS(0, 4, 5)
	TDPBF16PS(1, 6, 7)
	TDPBF16PS(2, 4, 7)
	TDPBF16PS(3, 6, 5)
	DECQ CX
	JNZ  amxpeak_loop

amxpeak_done:
	TILERELEASE
	RET
