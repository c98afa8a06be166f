//go:build !purego

#include "textflag.h"

// Row-to-panel packing (pack.go's packRows): dst[p*width+i] = row_i[p] for
// 8 (or 6) rows row_i = src[i*ld:], one block of 8 k-steps per iteration.
//
// Each block is an 8×8 transpose done as two 4×4 transposes per 128-bit
// lane. The loads already put row i+4 in the high lane of the register that
// holds row i in its low lane:
//
//   Y0 = row0[p:p+4] | row4[p:p+4]     Y4 = row0[p+4:p+8] | row4[p+4:p+8]
//   Y1 = row1[p:p+4] | row5[p:p+4]     Y5 = row1[p+4:p+8] | row5[p+4:p+8]
//   Y2 = row2[p:p+4] | row6[p:p+4]     Y6 = row2[p+4:p+8] | row6[p+4:p+8]
//   Y3 = row3[p:p+4] | row7[p:p+4]     Y7 = row3[p+4:p+8] | row7[p+4:p+8]
//
// so transposing each lane of Y0..Y3 (VUNPCKLPS/VUNPCKHPS, then VSHUFPS)
// yields the packed k-steps p..p+3 whole — rows 0..3 low, 4..7 high — and
// Y4..Y7 yield p+4..p+7. No cross-lane shuffle is needed: VINSERTF128 from
// memory costs a load, not a shuffle.
//
// Loads touch row_i[p:p+8] for full blocks only (p+8 ≤ kc), stores only
// dst[p*width : p*width+8] (6 rows: +6), so nothing outside the rows or the
// lanes of the panel being packed is read or written. The kc%8 tail is left
// to the caller.
//
// Register use, both routines:
//   SI row 0 at p        R10 row 4 at p       R8 ld in bytes    R11 3·ld
//   DI dst at k-step p   R13 dst at p+4       R9 width in bytes R12 3·width
//   R14 8·width (dst advance per block)       CX blocks left
//   Y0..Y7 loaded rows   Y8..Y11 unpack temporaries, Y12 store temporary

// TRANSPOSE4 transposes each 128-bit lane of a, b, c, d in place, as 4×4
// float32 matrices whose rows are the registers:
//   t0 = a0 b0 a1 b1   t1 = a2 b2 a3 b3   t2 = c0 d0 c1 d1   t3 = c2 d2 c3 d3
//   a = a0 b0 c0 d0 (t0[0:2] t2[0:2])     b = a1 b1 c1 d1 (t0[2:4] t2[2:4])
//   c = a2 b2 c2 d2 (t1[0:2] t3[0:2])     d = a3 b3 c3 d3 (t1[2:4] t3[2:4])
// Go operand order: VUNPCKLPS src2, src1, dst interleaves src1 with src2.
#define TRANSPOSE4(a, b, c, d) \
	VUNPCKLPS b, a, Y8; \
	VUNPCKHPS b, a, Y9; \
	VUNPCKLPS d, c, Y10; \
	VUNPCKHPS d, c, Y11; \
	VSHUFPS   $0x44, Y10, Y8, a; \
	VSHUFPS   $0xEE, Y10, Y8, b; \
	VSHUFPS   $0x44, Y11, Y9, c; \
	VSHUFPS   $0xEE, Y11, Y9, d

// LOAD2 loads 4 floats of row r at lo into the low lane of y (x is its low
// half) and 4 floats of row r+4 at hi into the high lane.
#define LOAD2(lo, hi, y, x) \
	VMOVUPS     lo, x; \
	VINSERTF128 $1, hi, y, y

// SETUP reads the arguments and sets up the pointers and strides above.
#define SETUP \
	MOVQ dst+0(FP), DI; \
	MOVQ src+8(FP), SI; \
	MOVQ ld+16(FP), R8; \
	MOVQ kc+24(FP), CX; \
	MOVQ width+32(FP), R9; \
	SHLQ $2, R8; \
	SHLQ $2, R9; \
	LEAQ (R8)(R8*2), R11; \
	LEAQ (SI)(R8*4), R10; \
	LEAQ (R9)(R9*2), R12; \
	LEAQ (DI)(R9*4), R13; \
	LEAQ (R9*8), R14; \
	SHRQ $3, CX

// ADVANCE moves to the next block of 8 k-steps.
#define ADVANCE \
	ADDQ $32, SI; \
	ADDQ $32, R10; \
	ADDQ R14, DI; \
	ADDQ R14, R13; \
	DECQ CX

// func packRows8AVX(dst, src *float32, ld, kc, width int)
// Packs 8 rows, k-steps [0, kc&^7). width ≥ 8.
TEXT ·packRows8AVX(SB), NOSPLIT, $0-40
	SETUP
	JZ   done8

loop8:
	LOAD2((SI), (R10), Y0, X0)
	LOAD2((SI)(R8*1), (R10)(R8*1), Y1, X1)
	LOAD2((SI)(R8*2), (R10)(R8*2), Y2, X2)
	LOAD2((SI)(R11*1), (R10)(R11*1), Y3, X3)
	LOAD2(16(SI), 16(R10), Y4, X4)
	LOAD2(16(SI)(R8*1), 16(R10)(R8*1), Y5, X5)
	LOAD2(16(SI)(R8*2), 16(R10)(R8*2), Y6, X6)
	LOAD2(16(SI)(R11*1), 16(R10)(R11*1), Y7, X7)
	TRANSPOSE4(Y0, Y1, Y2, Y3)
	TRANSPOSE4(Y4, Y5, Y6, Y7)

	// k-step p+j is in Yj: 8 floats to dst[(p+j)*width:].
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, (DI)(R9*1)
	VMOVUPS Y2, (DI)(R9*2)
	VMOVUPS Y3, (DI)(R12*1)
	VMOVUPS Y4, (R13)
	VMOVUPS Y5, (R13)(R9*1)
	VMOVUPS Y6, (R13)(R9*2)
	VMOVUPS Y7, (R13)(R12*1)

	ADVANCE
	JNZ loop8

done8:
	VZEROUPPER
	RET

// STORE6 stores the 6 packed floats of a k-step, rows 0..3 in the low lane
// of y and rows 4, 5 in the two lowest floats of its high lane: 16 bytes,
// then 8 — dst[p*width+6:] belongs to other rows and is not touched.
#define STORE6(y, x, m, m16) \
	VMOVUPS      x, m; \
	VEXTRACTF128 $1, y, X12; \
	VMOVSD       X12, m16

// func packRows6AVX(dst, src *float32, ld, kc, width int)
// Packs 6 rows, k-steps [0, kc&^7). width ≥ 6. As packRows8AVX, with rows 6
// and 7 absent: Y2, Y3, Y6, Y7 get row 2 or 3 alone (a VEX load of X zeroes
// the high lane), so the high lanes transpose to row4, row5, 0, 0.
TEXT ·packRows6AVX(SB), NOSPLIT, $0-40
	SETUP
	JZ   done6

loop6:
	LOAD2((SI), (R10), Y0, X0)
	LOAD2((SI)(R8*1), (R10)(R8*1), Y1, X1)
	VMOVUPS (SI)(R8*2), X2
	VMOVUPS (SI)(R11*1), X3
	LOAD2(16(SI), 16(R10), Y4, X4)
	LOAD2(16(SI)(R8*1), 16(R10)(R8*1), Y5, X5)
	VMOVUPS 16(SI)(R8*2), X6
	VMOVUPS 16(SI)(R11*1), X7
	TRANSPOSE4(Y0, Y1, Y2, Y3)
	TRANSPOSE4(Y4, Y5, Y6, Y7)

	STORE6(Y0, X0, (DI), 16(DI))
	STORE6(Y1, X1, (DI)(R9*1), 16(DI)(R9*1))
	STORE6(Y2, X2, (DI)(R9*2), 16(DI)(R9*2))
	STORE6(Y3, X3, (DI)(R12*1), 16(DI)(R12*1))
	STORE6(Y4, X4, (R13), 16(R13))
	STORE6(Y5, X5, (R13)(R9*1), 16(R13)(R9*1))
	STORE6(Y6, X6, (R13)(R9*2), 16(R13)(R9*2))
	STORE6(Y7, X7, (R13)(R12*1), 16(R13)(R12*1))

	ADVANCE
	JNZ loop6

done6:
	VZEROUPPER
	RET

// ------------------------------------------- AVX-512 column-panel copies
//
// pack.go's packCols and packColPanels for the AVX-512 kernels' widths
// (≤ 32 floats per k-step): each k-step's run of up to 32 contiguous
// floats moves as two zmm loads and stores under masks, so a short run
// (the matrix edge) is zero-filled to the panel width by the load's
// zeroing mask and nothing past the run is read (masked-off lanes do not
// fault) or past the panel written. K1/K2 mask the loads (the run's n
// lanes), K3/K4 the stores (the panel's width lanes).

// func packColsAVX512(dst, src *float32, ld, kc, width int, lmask, smask uint32)
//
// dst[p*width+j] = src[p*ld+j] for j < n, 0 for n ≤ j < width (n and width
// given as the masks' low bits). Row p+8 is prefetched while row p moves:
// every row is in another page when ld is large, where the hardware
// prefetcher does not follow.
TEXT ·packColsAVX512(SB), NOSPLIT, $0-48
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), R8
	SHLQ $2, R8
	MOVQ kc+24(FP), CX
	MOVQ width+32(FP), R9
	SHLQ $2, R9
	MOVL lmask+40(FP), AX
	KMOVW AX, K1
	SHRL $16, AX
	KMOVW AX, K2
	MOVL smask+44(FP), AX
	KMOVW AX, K3
	SHRL $16, AX
	KMOVW AX, K4
	MOVQ R8, R10
	SHLQ $3, R10 // 8 rows ahead
	TESTQ CX, CX
	JZ   pc_done

pc_loop:
	PREFETCHT0 (SI)(R10*1)
	PREFETCHT0 64(SI)(R10*1)
	PREFETCHT0 127(SI)(R10*1)
	VMOVUPS.Z (SI), K1, Z0
	VMOVUPS.Z 64(SI), K2, Z1
	VMOVUPS Z0, K3, (DI)
	VMOVUPS Z1, K4, 64(DI)
	ADDQ R8, SI
	ADDQ R9, DI
	DECQ CX
	JNZ  pc_loop

pc_done:
	VZEROUPPER
	RET

// func packSweepAVX512(dst, src *float32, ld, kc, panels, width int, mask uint32)
//
// packColPanels' row sweep: for each k-step p, the full panels' runs
// src[p*ld + q*width : +width] to dst[q*width*kc + p*width:], q < panels,
// so each source row is read once, in order. (Prefetching 4 rows
// ahead measured no faster: the rows stream in order.)
TEXT ·packSweepAVX512(SB), NOSPLIT, $0-52
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), R8
	SHLQ $2, R8
	MOVQ kc+24(FP), CX
	MOVQ panels+32(FP), R12
	MOVQ width+40(FP), R9
	SHLQ $2, R9 // run bytes, also dst's k-step stride
	MOVQ R9, R13
	IMULQ CX, R13 // panel stride in dst
	MOVL mask+48(FP), AX
	KMOVW AX, K1
	SHRL $16, AX
	KMOVW AX, K2
	TESTQ CX, CX
	JZ   ps_done
	TESTQ R12, R12
	JZ   ps_done

ps_row:
	MOVQ SI, R10
	MOVQ DI, R11
	MOVQ R12, BX

ps_panel:
	VMOVUPS.Z (R10), K1, Z0
	VMOVUPS.Z 64(R10), K2, Z1
	VMOVUPS Z0, K1, (R11)
	VMOVUPS Z1, K2, 64(R11)
	ADDQ R9, R10
	ADDQ R13, R11
	DECQ BX
	JNZ  ps_panel

	ADDQ R8, SI
	ADDQ R9, DI
	DECQ CX
	JNZ  ps_row

ps_done:
	VZEROUPPER
	RET
