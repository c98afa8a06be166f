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
// under masks (K5, K6), so zeros and NaNs cost no branch.
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
