//go:build !purego

#include "textflag.h"

// bf16 pair packing on AVX-512F (bf16.go's pairColPanels and
// pairRowPanels): ToBF16 on 16 lanes at a time, in integer arithmetic,
// so the packed bits are ToBF16's by construction whatever the CPU's
// VCVTNE2PS2BF16 does (and the CPU needs no AVX512-BF16 for it):
//
//   t = x + 0x7fff + ((x >> 16) & 1)    round to nearest even (bits 16..31)
//   t = x | 0x0040_0000  where |x| > inf (NaN: quiet, sign and payload kept)
//   t = x & 0x8000_0000  where x's exponent is 0 (zero, subnormal: ±0)
//
// then the bf16 is t's high half: t >> 16 for the low half of a pair word,
// t & 0xffff_0000 for the high half. The two special cases are blended in
// under masks (K5, K6), so zeros and NaNs cost no branch. The
// exceptions are amxColBlocksBF16, pairSweepBF16 and cvtPairBlocksBF16
// (the end of this file), which round with VCVTNE2PS2BF16, run only
// where the CPU has AVX512-BF16, and whose bits TestPackAAMX and
// TestPairPanelsAsmMatchesGo check against the Go packing.
//
// Constants: Z16 = 1, Z17 = 0x7fff, Z18 = 0x7fff_ffff (|x|), Z19 =
// 0x7f80_0000 (the exponent, also +inf), Z20 = 0x0040_0000 (the quiet
// bit), Z21 = 0xffff_0000.

#define BF_CONSTS \
	MOVL $1, AX; \
	VPBROADCASTD AX, Z16; \
	MOVL $0x7fff, AX; \
	VPBROADCASTD AX, Z17; \
	MOVL $0x7fffffff, AX; \
	VPBROADCASTD AX, Z18; \
	MOVL $0x7f800000, AX; \
	VPBROADCASTD AX, Z19; \
	MOVL $0x00400000, AX; \
	VPBROADCASTD AX, Z20; \
	MOVL $0xffff0000, AX; \
	VPBROADCASTD AX, Z21

// t = ToBF16(x) << 16 per lane, in t's high half with garbage in the low
// half (a: temporary). Go operand order: VPCMPGTD b, a, k sets k = a > b;
// VPANDND b, a, k, t sets t = ^a & b under k.
#define BF_ROUND(x, t, a) \
	VPSRLD    $16, x, t; \
	VPANDD    Z16, t, t; \
	VPADDD    x, t, t; \
	VPADDD    Z17, t, t; \
	VPANDD    Z18, x, a; \
	VPCMPGTD  Z19, a, K5; \
	VPORD     Z20, x, K5, t; \
	VPTESTNMD Z19, x, K6; \
	VPANDND   x, Z18, K6, t

// w = ToBF16(x0) | ToBF16(x1)<<16 per lane (t: temporary; x0, x1 are
// clobbered).
#define BF_PAIR(x0, x1, w, t) \
	BF_ROUND(x0, w, t); \
	VPSRLD $16, w, w; \
	BF_ROUND(x1, x0, t); \
	VPANDD Z21, x0, x0; \
	VPORD  x0, w, w

// TR16_STORE transposes the 16×16 words of Z0–Z15 (row r in Zr: 16 pair
// words of one k-row block) into tile rows and stores them at off(DI),
// 64 bytes a row; it clobbers Z16–Z31.
#define TR16_STORE(off) \
	VPUNPCKLDQ Z1, Z0, Z16 \
	VPUNPCKHDQ Z1, Z0, Z17 \
	VPUNPCKLDQ Z3, Z2, Z18 \
	VPUNPCKHDQ Z3, Z2, Z19 \
	VPUNPCKLDQ Z5, Z4, Z20 \
	VPUNPCKHDQ Z5, Z4, Z21 \
	VPUNPCKLDQ Z7, Z6, Z22 \
	VPUNPCKHDQ Z7, Z6, Z23 \
	VPUNPCKLDQ Z9, Z8, Z24 \
	VPUNPCKHDQ Z9, Z8, Z25 \
	VPUNPCKLDQ Z11, Z10, Z26 \
	VPUNPCKHDQ Z11, Z10, Z27 \
	VPUNPCKLDQ Z13, Z12, Z28 \
	VPUNPCKHDQ Z13, Z12, Z29 \
	VPUNPCKLDQ Z15, Z14, Z30 \
	VPUNPCKHDQ Z15, Z14, Z31 \
	VPUNPCKLQDQ Z18, Z16, Z0 \
	VPUNPCKHQDQ Z18, Z16, Z1 \
	VPUNPCKLQDQ Z19, Z17, Z2 \
	VPUNPCKHQDQ Z19, Z17, Z3 \
	VPUNPCKLQDQ Z22, Z20, Z4 \
	VPUNPCKHQDQ Z22, Z20, Z5 \
	VPUNPCKLQDQ Z23, Z21, Z6 \
	VPUNPCKHQDQ Z23, Z21, Z7 \
	VPUNPCKLQDQ Z26, Z24, Z8 \
	VPUNPCKHQDQ Z26, Z24, Z9 \
	VPUNPCKLQDQ Z27, Z25, Z10 \
	VPUNPCKHQDQ Z27, Z25, Z11 \
	VPUNPCKLQDQ Z30, Z28, Z12 \
	VPUNPCKHQDQ Z30, Z28, Z13 \
	VPUNPCKLQDQ Z31, Z29, Z14 \
	VPUNPCKHQDQ Z31, Z29, Z15 \
	VSHUFI32X4 $0x88, Z4, Z0, Z16 \
	VSHUFI32X4 $0xdd, Z4, Z0, Z17 \
	VSHUFI32X4 $0x88, Z12, Z8, Z18 \
	VSHUFI32X4 $0xdd, Z12, Z8, Z19 \
	VSHUFI32X4 $0x88, Z5, Z1, Z20 \
	VSHUFI32X4 $0xdd, Z5, Z1, Z21 \
	VSHUFI32X4 $0x88, Z13, Z9, Z22 \
	VSHUFI32X4 $0xdd, Z13, Z9, Z23 \
	VSHUFI32X4 $0x88, Z6, Z2, Z24 \
	VSHUFI32X4 $0xdd, Z6, Z2, Z25 \
	VSHUFI32X4 $0x88, Z14, Z10, Z26 \
	VSHUFI32X4 $0xdd, Z14, Z10, Z27 \
	VSHUFI32X4 $0x88, Z7, Z3, Z28 \
	VSHUFI32X4 $0xdd, Z7, Z3, Z29 \
	VSHUFI32X4 $0x88, Z15, Z11, Z30 \
	VSHUFI32X4 $0xdd, Z15, Z11, Z31 \
	VSHUFI32X4 $0x88, Z18, Z16, Z0 \
	VSHUFI32X4 $0xdd, Z18, Z16, Z8 \
	VSHUFI32X4 $0x88, Z19, Z17, Z4 \
	VSHUFI32X4 $0xdd, Z19, Z17, Z12 \
	VSHUFI32X4 $0x88, Z22, Z20, Z1 \
	VSHUFI32X4 $0xdd, Z22, Z20, Z9 \
	VSHUFI32X4 $0x88, Z23, Z21, Z5 \
	VSHUFI32X4 $0xdd, Z23, Z21, Z13 \
	VSHUFI32X4 $0x88, Z26, Z24, Z2 \
	VSHUFI32X4 $0xdd, Z26, Z24, Z10 \
	VSHUFI32X4 $0x88, Z27, Z25, Z6 \
	VSHUFI32X4 $0xdd, Z27, Z25, Z14 \
	VSHUFI32X4 $0x88, Z30, Z28, Z3 \
	VSHUFI32X4 $0xdd, Z30, Z28, Z11 \
	VSHUFI32X4 $0x88, Z31, Z29, Z7 \
	VSHUFI32X4 $0xdd, Z31, Z29, Z15 \
	VMOVDQU32 Z0, off+0(DI) \
	VMOVDQU32 Z1, off+64(DI) \
	VMOVDQU32 Z2, off+128(DI) \
	VMOVDQU32 Z3, off+192(DI) \
	VMOVDQU32 Z4, off+256(DI) \
	VMOVDQU32 Z5, off+320(DI) \
	VMOVDQU32 Z6, off+384(DI) \
	VMOVDQU32 Z7, off+448(DI) \
	VMOVDQU32 Z8, off+512(DI) \
	VMOVDQU32 Z9, off+576(DI) \
	VMOVDQU32 Z10, off+640(DI) \
	VMOVDQU32 Z11, off+704(DI) \
	VMOVDQU32 Z12, off+768(DI) \
	VMOVDQU32 Z13, off+832(DI) \
	VMOVDQU32 Z14, off+896(DI) \
	VMOVDQU32 Z15, off+960(DI)

// func pairSweepAVX512(dst *uint32, r0, r1 *float32, panels, width, pstride int, tail uint32, ahead int)
//
// One k-pair of pairColPanels: for each panel q < panels, dst[q*pstride +
// j] = ToBF16(r0[q*width+j]) | ToBF16(r1[q*width+j])<<16 for j < width
// (≤ 32). The last panel reads only the lanes in tail's low bits (0: all
// width) and stores zero pairs in the others; nothing past a panel's
// width lanes is read or written. The bytes ahead bytes on from each 64
// read of r0 and r1 are prefetched (rows a few k-pairs on, never read:
// the source is often cold, and the hardware prefetcher does not get far
// along two short strided streams).
//
// Registers: R10, R11 walk r0 and r1 (width floats a panel), DI dst
// (pstride words); K1/K2 the width's lanes (low/high 16), K3/K4 the
// tail's; BX counts the full panels; R12 ahead.
TEXT ·pairSweepAVX512(SB), NOSPLIT, $0-64
	MOVQ dst+0(FP), DI
	MOVQ r0+8(FP), R10
	MOVQ r1+16(FP), R11
	MOVQ panels+24(FP), BX
	MOVQ width+32(FP), R9
	MOVQ pstride+40(FP), R8
	SHLQ $2, R8
	MOVQ ahead+56(FP), R12
	MOVQ $1, AX
	MOVQ R9, CX
	SHLQ CX, AX
	DECQ AX           // width's lanes
	KMOVW AX, K1
	SHRQ $16, AX
	KMOVW AX, K2
	MOVL tail+48(FP), AX
	TESTL AX, AX
	JNZ  ps_tailmask
	MOVQ $1, AX
	SHLQ CX, AX
	DECQ AX
ps_tailmask:
	KMOVW AX, K3
	SHRL $16, AX
	KMOVW AX, K4
	SHLQ $2, R9       // width in bytes
	BF_CONSTS
	TESTQ BX, BX
	JZ   ps_done
	DECQ BX           // the last panel goes under the tail masks
	CMPQ R9, $64
	JGT  ps_wide

ps_loop16:
	TESTQ BX, BX
	JZ   ps_last16
	PREFETCHT0 (R10)(R12*1)
	PREFETCHT0 (R11)(R12*1)
	VMOVDQU32.Z (R10), K1, Z0
	VMOVDQU32.Z (R11), K1, Z1
	BF_PAIR(Z0, Z1, Z2, Z3)
	VMOVDQU32 Z2, K1, (DI)
	ADDQ R9, R10
	ADDQ R9, R11
	ADDQ R8, DI
	DECQ BX
	JMP  ps_loop16

ps_last16:
	VMOVDQU32.Z (R10), K3, Z0
	VMOVDQU32.Z (R11), K3, Z1
	BF_PAIR(Z0, Z1, Z2, Z3)
	VMOVDQU32 Z2, K1, (DI)
	JMP  ps_done

ps_wide:
	TESTQ BX, BX
	JZ   ps_last32
	PREFETCHT0 (R10)(R12*1)
	PREFETCHT0 (R11)(R12*1)
	PREFETCHT0 64(R10)(R12*1)
	PREFETCHT0 64(R11)(R12*1)
	VMOVDQU32.Z (R10), K1, Z0
	VMOVDQU32.Z (R11), K1, Z1
	VMOVDQU32.Z 64(R10), K2, Z4
	VMOVDQU32.Z 64(R11), K2, Z5
	BF_PAIR(Z0, Z1, Z2, Z3)
	BF_PAIR(Z4, Z5, Z6, Z7)
	VMOVDQU32 Z2, K1, (DI)
	VMOVDQU32 Z6, K2, 64(DI)
	ADDQ R9, R10
	ADDQ R9, R11
	ADDQ R8, DI
	DECQ BX
	JMP  ps_wide

ps_last32:
	VMOVDQU32.Z (R10), K3, Z0
	VMOVDQU32.Z (R11), K3, Z1
	VMOVDQU32.Z 64(R10), K4, Z4
	VMOVDQU32.Z 64(R11), K4, Z5
	BF_PAIR(Z0, Z1, Z2, Z3)
	BF_PAIR(Z4, Z5, Z6, Z7)
	VMOVDQU32 Z2, K1, (DI)
	VMOVDQU32 Z6, K2, 64(DI)

ps_done:
	VZEROUPPER
	RET

// func cvtPairsAVX512(dst *uint32, src *float32, n int, pf uintptr)
//
// dst[p] = ToBF16(src[2p]) | ToBF16(src[2p+1])<<16 for p < n: a row's
// adjacent k values as pairs. Each 64 bytes of src read, the 64 bytes at
// the same offset from pf are prefetched (a row a few rows on: rows are
// strided, and the hardware prefetcher does not get far along a run of
// a few cache lines); pf is never read. 8 pairs an iteration: BF_ROUND's high
// halves shifted down and truncated to 16 bits each (VPMOVDW), so
// bf16 j of the run is word j of dst; the n%8 tail goes under the mask
// K1 (its floats, which are also its 16-bit words), reading and writing
// nothing past it.
TEXT ·cvtPairsAVX512(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ pf+24(FP), R10
	SUBQ SI, R10      // pf as an offset from SI
	BF_CONSTS
	MOVQ CX, BX
	SHRQ $3, BX
	ANDQ $7, CX
	TESTQ BX, BX
	JZ   cp_tail

cp_loop:
	PREFETCHT0 (SI)(R10*1)
	VMOVDQU32 (SI), Z0
	BF_ROUND(Z0, Z1, Z2)
	VPSRLD  $16, Z1, Z1
	VPMOVDW Z1, (DI)
	ADDQ $64, SI
	ADDQ $32, DI
	DECQ BX
	JNZ  cp_loop

cp_tail:
	TESTQ CX, CX
	JZ   cp_done
	SHLQ $1, CX       // floats (and 16-bit words) in the tail
	MOVQ $1, AX
	SHLQ CX, AX
	DECQ AX
	KMOVW AX, K1
	VMOVDQU32.Z (SI), K1, Z0
	BF_ROUND(Z0, Z1, Z2)
	VPSRLD  $16, Z1, Z1
	VPMOVDW Z1, K1, (DI)

cp_done:
	VZEROUPPER
	RET

// func cvtPairBlocksAVX512(dst *uint32, src *float32, blocks, dstride int, pf uintptr)
//
// cvtPairsAVX512 by blocks of 16 pairs (32 floats of src, contiguous) into
// 16 words at dst + b·dstride words for b < blocks: a row of an AMX A
// panel (amx.go), whose 16-pair blocks lie 512 words apart. As in
// cvtPairsAVX512, the 128 bytes at the same offset from pf as each
// block's are prefetched (pf is never read).
TEXT ·cvtPairBlocksAVX512(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ blocks+16(FP), BX
	MOVQ dstride+24(FP), R8
	SHLQ $2, R8
	MOVQ pf+32(FP), R10
	SUBQ SI, R10      // pf as an offset from SI
	BF_CONSTS
	TESTQ BX, BX
	JZ   cb_done

cb_loop:
	PREFETCHT0 (SI)(R10*1)
	PREFETCHT0 64(SI)(R10*1)
	VMOVDQU32 (SI), Z0
	VMOVDQU32 64(SI), Z3
	BF_ROUND(Z0, Z1, Z2)
	BF_ROUND(Z3, Z4, Z5)
	VPSRLD  $16, Z1, Z1
	VPSRLD  $16, Z4, Z4
	VPMOVDW Z1, (DI)
	VPMOVDW Z4, 32(DI)
	ADDQ $128, SI
	ADDQ R8, DI
	DECQ BX
	JNZ  cb_loop

cb_done:
	VZEROUPPER
	RET

// func amxColBlocksAVX512(dst *uint32, src *float32, ld, count, sstep, dstep int, lo, hi uint32, ahead int)
//
// packAAMX for Aᵀ as stored, by whole blocks: count units, each 32 k-rows
// (16 whole k-pairs) × 32 columns of src (row r at src + r·ld floats)
// into one 16-pair block of an AMX A panel (2 KiB: column j's 16 pairs
// are the 64-byte tile row j). Unit u reads src + u·sstep bytes and
// writes dst + u·dstep bytes. Columns 0–15 read the lanes in lo, 16–31
// those in hi; the others (nothing past them is read) become zero pairs,
// as the Go packing's padding rows. Per half (16 columns): the 16 pair
// rows w_q = BF_PAIR(row 2q, row 2q+1) in Z0–Z15, then a 16×16 dword
// transpose in four shuffle stages (dwords, qwords, 128-bit lanes twice)
// through Z16–Z31, which clobbers the BF_CONSTS (reloaded per half).
// Each row read prefetches the line ahead bytes on (never read).
//
// Registers: DI dst, SI src (unit), DX the half's row pointer, R10 DX +
// ahead, R8 ld in bytes, R9 3·ld, R11 4·ld, R12 ahead, R13 sstep, CX
// dstep, BX count, K1/K2 lo/hi.
TEXT ·amxColBlocksAVX512(SB), NOSPLIT, $0-64
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), R8
	SHLQ $2, R8
	MOVQ count+24(FP), BX
	MOVQ sstep+32(FP), R13
	MOVQ dstep+40(FP), CX
	MOVL lo+48(FP), AX
	KMOVW AX, K1
	MOVL hi+52(FP), AX
	KMOVW AX, K2
	MOVQ ahead+56(FP), R12
	LEAQ (R8)(R8*2), R9
	MOVQ R8, R11
	SHLQ $2, R11
	TESTQ BX, BX
	JZ   amxColBlocksAVX512_done

amxColBlocksAVX512_loop:
	BF_CONSTS
	LEAQ 0(SI), DX
	LEAQ (DX)(R12*1), R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	BF_PAIR(Z22, Z23, Z0, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	BF_PAIR(Z22, Z23, Z1, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	BF_PAIR(Z22, Z23, Z2, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	BF_PAIR(Z22, Z23, Z3, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	BF_PAIR(Z22, Z23, Z4, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	BF_PAIR(Z22, Z23, Z5, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	BF_PAIR(Z22, Z23, Z6, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	BF_PAIR(Z22, Z23, Z7, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	BF_PAIR(Z22, Z23, Z8, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	BF_PAIR(Z22, Z23, Z9, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	BF_PAIR(Z22, Z23, Z10, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	BF_PAIR(Z22, Z23, Z11, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	BF_PAIR(Z22, Z23, Z12, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	BF_PAIR(Z22, Z23, Z13, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	BF_PAIR(Z22, Z23, Z14, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	BF_PAIR(Z22, Z23, Z15, Z24)
	TR16_STORE(0)
	BF_CONSTS
	LEAQ 64(SI), DX
	LEAQ (DX)(R12*1), R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	BF_PAIR(Z22, Z23, Z0, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	BF_PAIR(Z22, Z23, Z1, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	BF_PAIR(Z22, Z23, Z2, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	BF_PAIR(Z22, Z23, Z3, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	BF_PAIR(Z22, Z23, Z4, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	BF_PAIR(Z22, Z23, Z5, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	BF_PAIR(Z22, Z23, Z6, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	BF_PAIR(Z22, Z23, Z7, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	BF_PAIR(Z22, Z23, Z8, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	BF_PAIR(Z22, Z23, Z9, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	BF_PAIR(Z22, Z23, Z10, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	BF_PAIR(Z22, Z23, Z11, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	BF_PAIR(Z22, Z23, Z12, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	BF_PAIR(Z22, Z23, Z13, Z24)
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	BF_PAIR(Z22, Z23, Z14, Z24)
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	BF_PAIR(Z22, Z23, Z15, Z24)
	TR16_STORE(1024)
	ADDQ R13, SI
	ADDQ CX, DI
	DECQ BX
	JNZ  amxColBlocksAVX512_loop

amxColBlocksAVX512_done:
	VZEROUPPER
	RET

// VCVTNE2PS2BF16 Z22, Z23, Z24 (Go's operand order; the assembler does
// not know it): Z24's words 0–15 are Z22's floats rounded to bf16, 16–31
// Z23's, to nearest even, NaNs quieted and subnormals read as ±0 — ToBF16
// bit for bit (TestPackAAMX checks it on the CPU at hand).
#define VCVTNE2PS2BF16_Z22_Z23_Z24 BYTE $0x62; BYTE $0x22; BYTE $0x47; BYTE $0x40; BYTE $0x72; BYTE $0xc6

// amxPairIdx is VPERMW's index interleaving Z24's halves into pair words:
// word 2j = j, word 2j+1 = 16+j.
DATA ·amxPairIdx<>+0(SB)/8, $0x0011000100100000
DATA ·amxPairIdx<>+8(SB)/8, $0x0013000300120002
DATA ·amxPairIdx<>+16(SB)/8, $0x0015000500140004
DATA ·amxPairIdx<>+24(SB)/8, $0x0017000700160006
DATA ·amxPairIdx<>+32(SB)/8, $0x0019000900180008
DATA ·amxPairIdx<>+40(SB)/8, $0x001b000b001a000a
DATA ·amxPairIdx<>+48(SB)/8, $0x001d000d001c000c
DATA ·amxPairIdx<>+56(SB)/8, $0x001f000f001e000e
GLOBL ·amxPairIdx<>(SB), RODATA|NOPTR, $64

// func amxColBlocksBF16(dst *uint32, src *float32, ld, count, sstep, dstep int, lo, hi uint32, ahead int)
//
// amxColBlocksAVX512 with the pairs converted by VCVTNE2PS2BF16 and a
// VPERMW interleave (AVX512-BF16 and AVX512BW) instead of BF_PAIR's
// integer rounding: 2 instructions a pair row instead of 21.
TEXT ·amxColBlocksBF16(SB), NOSPLIT, $0-64
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), R8
	SHLQ $2, R8
	MOVQ count+24(FP), BX
	MOVQ sstep+32(FP), R13
	MOVQ dstep+40(FP), CX
	MOVL lo+48(FP), AX
	KMOVW AX, K1
	MOVL hi+52(FP), AX
	KMOVW AX, K2
	MOVQ ahead+56(FP), R12
	LEAQ (R8)(R8*2), R9
	MOVQ R8, R11
	SHLQ $2, R11
	TESTQ BX, BX
	JZ   amxColBlocksBF16_done

amxColBlocksBF16_loop:
	VMOVDQU32 ·amxPairIdx<>(SB), Z25
	LEAQ 0(SI), DX
	LEAQ (DX)(R12*1), R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z0
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z1
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z2
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z3
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z4
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z5
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z6
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z7
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z8
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z9
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z10
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z11
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z12
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z13
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K1, Z22
	VMOVDQU32.Z (DX)(R8*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z14
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K1, Z22
	VMOVDQU32.Z (DX)(R9*1), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z15
	TR16_STORE(0)
	VMOVDQU32 ·amxPairIdx<>(SB), Z25
	LEAQ 64(SI), DX
	LEAQ (DX)(R12*1), R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z0
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z1
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z2
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z3
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z4
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z5
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z6
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z7
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z8
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z9
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z10
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z11
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z12
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z13
	ADDQ R11, DX
	ADDQ R11, R10
	PREFETCHT0 (R10)
	PREFETCHT0 (R10)(R8*1)
	VMOVDQU32.Z (DX), K2, Z22
	VMOVDQU32.Z (DX)(R8*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z14
	PREFETCHT0 (R10)(R8*2)
	PREFETCHT0 (R10)(R9*1)
	VMOVDQU32.Z (DX)(R8*2), K2, Z22
	VMOVDQU32.Z (DX)(R9*1), K2, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z15
	TR16_STORE(1024)
	ADDQ R13, SI
	ADDQ CX, DI
	DECQ BX
	JNZ  amxColBlocksBF16_loop

amxColBlocksBF16_done:
	VZEROUPPER
	RET

// func pairSweepBF16(dst *uint32, r0, r1 *float32, panels, width, pstride int, tail uint32, ahead int)
//
// pairSweepAVX512 with the pairs converted by VCVTNE2PS2BF16 and the
// amxPairIdx VPERMW interleave (AVX512-BF16 and AVX512BW) instead of
// BF_PAIR's integer rounding. Masked-off lanes load as +0, whose pair is
// the zero word, as in pairSweepAVX512.
TEXT ·pairSweepBF16(SB), NOSPLIT, $0-64
	MOVQ dst+0(FP), DI
	MOVQ r0+8(FP), R10
	MOVQ r1+16(FP), R11
	MOVQ panels+24(FP), BX
	MOVQ width+32(FP), R9
	MOVQ pstride+40(FP), R8
	SHLQ $2, R8
	MOVQ ahead+56(FP), R12
	MOVQ $1, AX
	MOVQ R9, CX
	SHLQ CX, AX
	DECQ AX           // width's lanes
	KMOVW AX, K1
	SHRQ $16, AX
	KMOVW AX, K2
	MOVL tail+48(FP), AX
	TESTL AX, AX
	JNZ  psb_tailmask
	MOVQ $1, AX
	SHLQ CX, AX
	DECQ AX
psb_tailmask:
	KMOVW AX, K3
	SHRL $16, AX
	KMOVW AX, K4
	SHLQ $2, R9       // width in bytes
	VMOVDQU32 ·amxPairIdx<>(SB), Z25
	TESTQ BX, BX
	JZ   psb_done
	DECQ BX           // the last panel goes under the tail masks
	CMPQ R9, $64
	JGT  psb_wide

psb_loop16:
	TESTQ BX, BX
	JZ   psb_last16
	PREFETCHT0 (R10)(R12*1)
	PREFETCHT0 (R11)(R12*1)
	VMOVDQU32.Z (R10), K1, Z22
	VMOVDQU32.Z (R11), K1, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z2
	VMOVDQU32 Z2, K1, (DI)
	ADDQ R9, R10
	ADDQ R9, R11
	ADDQ R8, DI
	DECQ BX
	JMP  psb_loop16

psb_last16:
	VMOVDQU32.Z (R10), K3, Z22
	VMOVDQU32.Z (R11), K3, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z2
	VMOVDQU32 Z2, K1, (DI)
	JMP  psb_done

psb_wide:
	TESTQ BX, BX
	JZ   psb_last32
	PREFETCHT0 (R10)(R12*1)
	PREFETCHT0 (R11)(R12*1)
	PREFETCHT0 64(R10)(R12*1)
	PREFETCHT0 64(R11)(R12*1)
	VMOVDQU32.Z (R10), K1, Z22
	VMOVDQU32.Z (R11), K1, Z23
	VMOVDQU32.Z 64(R10), K2, Z26
	VMOVDQU32.Z 64(R11), K2, Z27
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z2
	VMOVDQA32 Z26, Z22
	VMOVDQA32 Z27, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z6
	VMOVDQU32 Z2, K1, (DI)
	VMOVDQU32 Z6, K2, 64(DI)
	ADDQ R9, R10
	ADDQ R9, R11
	ADDQ R8, DI
	DECQ BX
	JMP  psb_wide

psb_last32:
	VMOVDQU32.Z (R10), K3, Z22
	VMOVDQU32.Z (R11), K3, Z23
	VMOVDQU32.Z 64(R10), K4, Z26
	VMOVDQU32.Z 64(R11), K4, Z27
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z2
	VMOVDQA32 Z26, Z22
	VMOVDQA32 Z27, Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VPERMW Z24, Z25, Z6
	VMOVDQU32 Z2, K1, (DI)
	VMOVDQU32 Z6, K2, 64(DI)

psb_done:
	VZEROUPPER
	RET

// func cvtPairBlocksBF16(dst *uint32, src *float32, blocks, dstride int, pf uintptr)
//
// cvtPairBlocksAVX512 converting with VCVTNE2PS2BF16 (AVX512-BF16): the
// 32 floats of a block in two registers give its 32 bf16 in order, which
// are its 16 pair words as they lie, so no interleave is needed.
TEXT ·cvtPairBlocksBF16(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ blocks+16(FP), BX
	MOVQ dstride+24(FP), R8
	SHLQ $2, R8
	MOVQ pf+32(FP), R10
	SUBQ SI, R10      // pf as an offset from SI
	TESTQ BX, BX
	JZ   cbb_done

cbb_loop:
	PREFETCHT0 (SI)(R10*1)
	PREFETCHT0 64(SI)(R10*1)
	VMOVDQU32 (SI), Z22
	VMOVDQU32 64(SI), Z23
	VCVTNE2PS2BF16_Z22_Z23_Z24
	VMOVDQU32 Z24, (DI)
	ADDQ $128, SI
	ADDQ R8, DI
	DECQ BX
	JNZ  cbb_loop

cbb_done:
	VZEROUPPER
	RET
