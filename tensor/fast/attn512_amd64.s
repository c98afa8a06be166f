//go:build !purego

#include "textflag.h"

// Register-tiled causal attention for head sizes 32 and 64 (AVX-512;
// docs/kernels.md): four query rows against every causal key in blocks of
// 16 keys, with the score tile S (4 rows × 16 keys, one register per row),
// the output rows O (4 × D/16 registers) and the per-lane row sums l in
// registers. Forward, per key block: S = scale·Q·Kᵀ (Kᵀ in 32-key panels,
// Q broadcast from memory), the lazy online softmax (SOFTMAX4), P stored
// to a 256-byte stack tile and O += P·V with P broadcast from it. Nothing
// of S reaches memory but P's one tile per block, which stays in L1.
//
// Forward: R13 counts key blocks. Registers: O Z0–Z15 (row r, chunk c:
// Z(C·r+c), C = D/16), S Z16–Z19, Z20/Z21 exponential temporaries, Z22 loads and shuffles, Z23 the new
// row max, Z24 α, Z25 −∞, Z26 scale, Z27–Z30 l, Z31 zero. K1–K4: lanes
// past row r's causal end in the current block (0 but in the last block).
// Stack: P 0–255, m 256–271, thr = m + τ 272–287, α 288–303, the new m
// 304–319.

// EXPM is vec512_amd64.s's EXP16 with its constants read by embedded
// broadcasts instead of registers: the same operations in the same order.
#define EXPM(X, T1, T2) \
	VMINPS.BCST       aexphi<>(SB), X, X  \
	VMAXPS.BCST       aexplo<>(SB), X, X  \
	VBROADCASTSS      alog2e<>(SB), T1    \
	VFMADD213PS.BCST  ahalf<>(SB), X, T1  \
	VRNDSCALEPS       $1, T1, T1          \
	VFNMADD231PS.BCST aln2hi<>(SB), T1, X \
	VFNMADD231PS.BCST aln2lo<>(SB), T1, X \
	VBROADCASTSS      ap0<>(SB), T2       \
	VFMADD213PS.BCST  ap1<>(SB), X, T2    \
	VFMADD213PS.BCST  ap2<>(SB), X, T2    \
	VFMADD213PS.BCST  ap3<>(SB), X, T2    \
	VFMADD213PS.BCST  ap4<>(SB), X, T2    \
	VFMADD213PS.BCST  ap5<>(SB), X, T2    \
	VMULPS            X, T2, T2           \
	VFMADD213PS       X, X, T2            \
	VADDPS.BCST       aone<>(SB), T2, T2  \
	VCVTTPS2DQ        T1, T1              \
	VPADDD.BCST       abias<>(SB), T1, T1 \
	VPSLLD            $23, T1, T1         \
	VMULPS            T1, T2, X

// HMAXB leaves max over S's 16 lanes in every lane of Z23.
#define HMAXB(S) \
	VSHUFF32X4 $0x4E, S, S, Z22     \
	VMAXPS     Z22, S, Z23          \
	VSHUFF32X4 $0xB1, Z23, Z23, Z22 \
	VMAXPS     Z22, Z23, Z23        \
	VPERMILPS  $0x4E, Z23, Z22      \
	VMAXPS     Z22, Z23, Z23        \
	VPERMILPS  $0xB1, Z23, Z22      \
	VMAXPS     Z22, Z23, Z23

// HSUMB leaves the sum of L's 16 lanes in every lane of Z22 (Z23 clobbered).
#define HSUMB(L) \
	VSHUFF32X4 $0x4E, L, L, Z23     \
	VADDPS     Z23, L, Z22          \
	VSHUFF32X4 $0xB1, Z22, Z22, Z23 \
	VADDPS     Z23, Z22, Z22        \
	VPERMILPS  $0x4E, Z22, Z23      \
	VADDPS     Z23, Z22, Z22        \
	VPERMILPS  $0xB1, Z22, Z23      \
	VADDPS     Z23, Z22, Z22

// Lazy rescale: the softmax shift m of a row moves only when a score
// exceeds m + τ (thr, τ = 8), so P = e^(S − m) ≤ e^8 and the rescale of O
// and l — a horizontal max, an exponential and D/16 multiplies per row —
// runs in a few blocks of a row instead of every block; the exponentials
// of P no longer wait for this block's max. lse = m + log l holds for any
// shift.

// NEWMAX is one row's exact new shift max(m, S) (S with −∞ past the
// causal end), m at MOFF(SP), written to MOFF+48(SP).
#define NEWMAX(S, MOFF) \
	HMAXB(S)                             \
	VMAXPS.BCST       MOFF(SP), Z23, Z23 \
	VMOVSS            X23, MOFF+48(SP)

// PEXP is one row's P = e^(S − m) with KM's lanes 0, stored to POFF(SP)
// and added to L.
#define PEXP(S, KM, MOFF, POFF, L) \
	VSUBPS.BCST MOFF(SP), S, S \
	EXPM(S, Z20, Z21)          \
	VMOVAPS     Z31, KM, S     \
	VMOVUPS     S, POFF(SP)    \
	VADDPS      S, L, L

// LUPD is one row's rescale: α = e^(m_old − m) from AOFF(SP) into Z24,
// L = α·L.
#define LUPD(AOFF, L) \
	VBROADCASTSS AOFF(SP), Z24 \
	VMULPS       Z24, L, L

// QKBLOCK computes S = scale·Q·Kᵀ for key block R13: half R13%2 of the
// 32-key panel R13/2 of Kᵀ at SI (D rows of 32 keys, 2^PSHIFT bytes each),
// the four query rows at R8–R11, two partial sums per row (Z20/Z21/Z23/Z24
// the odd d) so eight FMA chains are in flight.
#define QKBLOCK(D, PSHIFT) \
	VPXORD  Z16, Z16, Z16 \
	VPXORD  Z17, Z17, Z17 \
	VPXORD  Z18, Z18, Z18 \
	VPXORD  Z19, Z19, Z19 \
	VPXORD  Z20, Z20, Z20 \
	VPXORD  Z21, Z21, Z21 \
	VPXORD  Z23, Z23, Z23 \
	VPXORD  Z24, Z24, Z24 \
	MOVQ    R13, AX       \
	SHRQ    $1, AX        \
	SHLQ    $PSHIFT, AX   \
	ADDQ    SI, AX        \
	MOVQ    R13, R15      \
	ANDQ    $1, R15       \
	SHLQ    $6, R15       \
	ADDQ    R15, AX       \
	XORQ    DX, DX        \
qkloop:                   \
	VMOVUPS (AX), Z22     \
	VFMADD231PS.BCST (R8)(DX*4), Z22, Z16  \
	VFMADD231PS.BCST (R9)(DX*4), Z22, Z17  \
	VFMADD231PS.BCST (R10)(DX*4), Z22, Z18 \
	VFMADD231PS.BCST (R11)(DX*4), Z22, Z19 \
	VMOVUPS 128(AX), Z22  \
	VFMADD231PS.BCST 4(R8)(DX*4), Z22, Z20  \
	VFMADD231PS.BCST 4(R9)(DX*4), Z22, Z21  \
	VFMADD231PS.BCST 4(R10)(DX*4), Z22, Z23 \
	VFMADD231PS.BCST 4(R11)(DX*4), Z22, Z24 \
	ADDQ    $256, AX      \
	ADDQ    $2, DX        \
	CMPQ    DX, $D        \
	JLT     qkloop        \
	VADDPS  Z20, Z16, Z16 \
	VADDPS  Z21, Z17, Z17 \
	VADDPS  Z23, Z18, Z18 \
	VADDPS  Z24, Z19, Z19 \
	VMULPS  Z26, Z16, Z16 \
	VMULPS  Z26, Z17, Z17 \
	VMULPS  Z26, Z18, Z18 \
	VMULPS  Z26, Z19, Z19

// PROLOGUE loads the arguments, sets R8–R11 to the query rows, SI to the
// key panels, DI to V, BX to V's row stride in bytes, CX to the block
// count, m to −∞, l and O (O by the caller's CLEARO) to 0, K1–K4 to 0.
#define PROLOGUE \
	MOVQ         q+0(FP), R8          \
	MOVQ         ldq+8(FP), R12       \
	SHLQ         $2, R12              \
	LEAQ         (R8)(R12*1), R9      \
	LEAQ         (R9)(R12*1), R10     \
	LEAQ         (R10)(R12*1), R11    \
	MOVQ         kt+16(FP), SI        \
	MOVQ         v+24(FP), DI         \
	MOVQ         ldv+32(FP), BX       \
	SHLQ         $2, BX               \
	MOVQ         nblk+48(FP), CX      \
	XORQ         R13, R13             \
	VBROADCASTSS scale+64(FP), Z26    \
	VBROADCASTSS aninf<>(SB), Z25     \
	VPXORD       Z31, Z31, Z31        \
	VMOVUPS      X25, 256(SP)         \
	VMOVUPS      X25, 272(SP)         \
	VPXORD       Z27, Z27, Z27        \
	VPXORD       Z28, Z28, Z28        \
	VPXORD       Z29, Z29, Z29        \
	VPXORD       Z30, Z30, Z30        \
	KXORW        K1, K1, K1           \
	KXORW        K2, K2, K2           \
	KXORW        K3, K3, K3           \
	KXORW        K4, K4, K4

// LASTMASKS sets Kr to the lanes past row r's causal end in the last block:
// row r has v0+r valid keys (1 ≤ v0+r ≤ 16).
#define LASTMASKS \
	MOVQ  CX, R14        \
	MOVQ  v0+56(FP), CX  \
	MOVQ  $-1, AX        \
	SHLQ  CX, AX         \
	KMOVW AX, K1         \
	INCQ  CX             \
	MOVQ  $-1, AX        \
	SHLQ  CX, AX         \
	KMOVW AX, K2         \
	INCQ  CX             \
	MOVQ  $-1, AX        \
	SHLQ  CX, AX         \
	KMOVW AX, K3         \
	INCQ  CX             \
	MOVQ  $-1, AX        \
	SHLQ  CX, AX         \
	KMOVW AX, K4         \
	MOVQ  R14, CX

// SOFTMAX4 is the online softmax step of the four rows: −∞ past the
// causal end (K1–K4); if any score exceeds its row's thr, every row's m
// becomes its exact max(m, S), thr = m + τ, α = e^(m_old − m) for the four
// rows in one EXPM (lanes 0–3) and each row's l and O are scaled by its α
// (RSr multiplies row r's O registers by Z24); then P = e^(S − m).
#define SOFTMAX4(RS0, RS1, RS2, RS3) \
	VMOVAPS     Z25, K1, Z16              \
	VMOVAPS     Z25, K2, Z17              \
	VMOVAPS     Z25, K3, Z18              \
	VMOVAPS     Z25, K4, Z19              \
	VCMPPS.BCST $0x1e, 272(SP), Z16, K5   \
	VCMPPS.BCST $0x1e, 276(SP), Z17, K6   \
	KORW        K6, K5, K5                \
	VCMPPS.BCST $0x1e, 280(SP), Z18, K6   \
	KORW        K6, K5, K5                \
	VCMPPS.BCST $0x1e, 284(SP), Z19, K6   \
	KORW        K6, K5, K5                \
	KORTESTW    K5, K5                    \
	JZ          shiftkept                 \
	NEWMAX(Z16, 256)                      \
	NEWMAX(Z17, 260)                      \
	NEWMAX(Z18, 264)                      \
	NEWMAX(Z19, 268)                      \
	VMOVUPS     256(SP), X24              \
	VMOVUPS     304(SP), X22              \
	VSUBPS      X22, X24, X24             \
	VMOVUPS     X22, 256(SP)              \
	VADDPS.BCST atau<>(SB), X22, X22      \
	VMOVUPS     X22, 272(SP)              \
	EXPM(Z24, Z20, Z21)                   \
	VMOVUPS     X24, 288(SP)              \
	LUPD(288, Z27)                        \
	RS0                                   \
	LUPD(292, Z28)                        \
	RS1                                   \
	LUPD(296, Z29)                        \
	RS2                                   \
	LUPD(300, Z30)                        \
	RS3                                   \
shiftkept:                                \
	PEXP(Z16, K1, 256, 0, Z27)            \
	PEXP(Z17, K2, 260, 64, Z28)           \
	PEXP(Z18, K3, 264, 128, Z29)          \
	PEXP(Z19, K4, 268, 192, Z30)

// FINISH4 divides each row of O by its l and stores it (STr multiplies
// row r's O by Z22 and writes it at AX), then m and l to ml.
#define FINISH4(ST0, ST1, ST2, ST3) \
	MOVQ         o+40(FP), AX     \
	MOVQ         ml+72(FP), DX    \
	VBROADCASTSS aone<>(SB), Z24  \
	HSUMB(Z27)                    \
	VMOVSS       X22, 16(DX)      \
	VDIVPS       Z22, Z24, Z22    \
	ST0                           \
	ADDQ         R12, AX          \
	HSUMB(Z28)                    \
	VMOVSS       X22, 20(DX)      \
	VDIVPS       Z22, Z24, Z22    \
	ST1                           \
	ADDQ         R12, AX          \
	HSUMB(Z29)                    \
	VMOVSS       X22, 24(DX)      \
	VDIVPS       Z22, Z24, Z22    \
	ST2                           \
	ADDQ         R12, AX          \
	HSUMB(Z30)                    \
	VMOVSS       X22, 28(DX)      \
	VDIVPS       Z22, Z24, Z22    \
	ST3                           \
	VMOVUPS      256(SP), X22     \
	VMOVUPS      X22, (DX)

// ---- head size 32: O row r in Z(2r), Z(2r+1).

#define R32_0 VMULPS Z24, Z0, Z0; VMULPS Z24, Z1, Z1
#define R32_1 VMULPS Z24, Z2, Z2; VMULPS Z24, Z3, Z3
#define R32_2 VMULPS Z24, Z4, Z4; VMULPS Z24, Z5, Z5
#define R32_3 VMULPS Z24, Z6, Z6; VMULPS Z24, Z7, Z7

#define S32_0 VMULPS Z22, Z0, Z0; VMULPS Z22, Z1, Z1; VMOVUPS Z0, (AX); VMOVUPS Z1, 64(AX)
#define S32_1 VMULPS Z22, Z2, Z2; VMULPS Z22, Z3, Z3; VMOVUPS Z2, (AX); VMOVUPS Z3, 64(AX)
#define S32_2 VMULPS Z22, Z4, Z4; VMULPS Z22, Z5, Z5; VMOVUPS Z4, (AX); VMOVUPS Z5, 64(AX)
#define S32_3 VMULPS Z22, Z6, Z6; VMULPS Z22, Z7, Z7; VMOVUPS Z6, (AX); VMOVUPS Z7, 64(AX)

// PV32 is O += P·V over one block's 16 keys for head size 32 (V rows
// from DI on, DI left at the next block's); LBL names its loop.
#define PV32(LBL) \
	XORQ DX, DX \
LBL:            \
	VMOVUPS          (DI), Z22            \
	VMOVUPS          64(DI), Z23          \
	VFMADD231PS.BCST (SP)(DX*4), Z22, Z0  \
	VFMADD231PS.BCST (SP)(DX*4), Z23, Z1  \
	VFMADD231PS.BCST 64(SP)(DX*4), Z22, Z2  \
	VFMADD231PS.BCST 64(SP)(DX*4), Z23, Z3  \
	VFMADD231PS.BCST 128(SP)(DX*4), Z22, Z4 \
	VFMADD231PS.BCST 128(SP)(DX*4), Z23, Z5 \
	VFMADD231PS.BCST 192(SP)(DX*4), Z22, Z6 \
	VFMADD231PS.BCST 192(SP)(DX*4), Z23, Z7 \
	ADDQ             BX, DI               \
	INCQ             DX                   \
	CMPQ             DX, $16              \
	JLT              LBL

// func attnFwd4x32AVX512(q *float32, ldq int, kt, v *float32, ldv int, o *float32, nblk, v0 int, scale float32, ml *float32)
// Four query rows (q, o: row r at +r·ldq) against nblk blocks of 16 keys
// (Kᵀ at kt in 32-key panels of 32·32 floats, gemm.Tiles.PackB's layout; V rows at v, stride ldv), the last
// block masked to v0+r keys for row r: o = softmax(scale·q·Kᵀ)·V, ml[0:4]
// the row maxima of scale·q·Kᵀ and ml[4:8] the sums of e^(s − max).
TEXT ·attnFwd4x32AVX512(SB), NOSPLIT, $320-80
	PROLOGUE
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7

a32_block:
	CMPQ CX, $1
	JNE  a32_full
	LASTMASKS

a32_full:
	QKBLOCK(32, 12)
	// The previous block's P·V here, independent of this block's Q·Kᵀ, so
	// the two overlap and the softmax below waits only on Q·Kᵀ.
	TESTQ R13, R13
	JZ    a32_sm
	PV32(a32_pv)

a32_sm:
	SOFTMAX4(R32_0, R32_1, R32_2, R32_3)
	INCQ R13
	DECQ CX
	JNZ  a32_block
	PV32(a32_pvlast)

	FINISH4(S32_0, S32_1, S32_2, S32_3)
	VZEROUPPER
	RET

// ---- head size 64: O row r in Z(4r) … Z(4r+3).

#define R64_0 VMULPS Z24, Z0, Z0; VMULPS Z24, Z1, Z1; VMULPS Z24, Z2, Z2; VMULPS Z24, Z3, Z3
#define R64_1 VMULPS Z24, Z4, Z4; VMULPS Z24, Z5, Z5; VMULPS Z24, Z6, Z6; VMULPS Z24, Z7, Z7
#define R64_2 VMULPS Z24, Z8, Z8; VMULPS Z24, Z9, Z9; VMULPS Z24, Z10, Z10; VMULPS Z24, Z11, Z11
#define R64_3 VMULPS Z24, Z12, Z12; VMULPS Z24, Z13, Z13; VMULPS Z24, Z14, Z14; VMULPS Z24, Z15, Z15

#define S64(a, b, c, d) \
	VMULPS Z22, a, a; VMULPS Z22, b, b; VMULPS Z22, c, c; VMULPS Z22, d, d; \
	VMOVUPS a, (AX); VMOVUPS b, 64(AX); VMOVUPS c, 128(AX); VMOVUPS d, 192(AX)
#define S64_0 S64(Z0, Z1, Z2, Z3)
#define S64_1 S64(Z4, Z5, Z6, Z7)
#define S64_2 S64(Z8, Z9, Z10, Z11)
#define S64_3 S64(Z12, Z13, Z14, Z15)

// PV64 is one key of O += P·V for head size 64: V's row at DI in four
// chunks against the four rows' P entry at POFF(SP)(DX*4).
#define PV64(CH, A, B, C, D) \
	VMOVUPS          CH(DI), Z22 \
	VFMADD231PS.BCST (SP)(DX*4), Z22, A    \
	VFMADD231PS.BCST 64(SP)(DX*4), Z22, B  \
	VFMADD231PS.BCST 128(SP)(DX*4), Z22, C \
	VFMADD231PS.BCST 192(SP)(DX*4), Z22, D

// PV64BLOCK is PV32 for head size 64.
#define PV64BLOCK(LBL) \
	XORQ DX, DX                 \
LBL:                            \
	PV64(0, Z0, Z4, Z8, Z12)    \
	PV64(64, Z1, Z5, Z9, Z13)   \
	PV64(128, Z2, Z6, Z10, Z14) \
	PV64(192, Z3, Z7, Z11, Z15) \
	ADDQ BX, DI                 \
	INCQ DX                     \
	CMPQ DX, $16                \
	JLT  LBL

// func attnFwd4x64AVX512(q *float32, ldq int, kt, v *float32, ldv int, o *float32, nblk, v0 int, scale float32, ml *float32)
// attnFwd4x32AVX512 for head size 64 (Kᵀ panels of 32·64 floats).
TEXT ·attnFwd4x64AVX512(SB), NOSPLIT, $320-80
	PROLOGUE
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
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

a64_block:
	CMPQ CX, $1
	JNE  a64_full
	LASTMASKS

a64_full:
	QKBLOCK(64, 13)
	TESTQ R13, R13
	JZ    a64_sm
	PV64BLOCK(a64_pv)

a64_sm:
	SOFTMAX4(R64_0, R64_1, R64_2, R64_3)
	INCQ R13
	DECQ CX
	JNZ  a64_block
	PV64BLOCK(a64_pvlast)

	FINISH4(S64_0, S64_1, S64_2, S64_3)
	VZEROUPPER
	RET

// ---- backward, head size 32: four query rows against their causal keys
// in 16-key blocks. Per block: S = scale·Q·Kᵀ and dP = dO·Vᵀ (Kᵀ, Vᵀ in
// 32-key panels) in registers, P = e^(S − lse) (0 past the causal end),
// dS = scale·P∘(dP − D); dQ += dS·K with dQ in registers, dV += Pᵀ·dO and
// dK += dSᵀ·Q into the key rows (memory, the caller's task owns them).
// Stack: Q rows 0–511, dO rows 512–1023, P 1024–1279, dS 1280–1535.

// func attnBwd4x32AVX512(q, dout, dq *float32, ldq int, kt, vt, k, dk, dv *float32, ldk int, lse, dd *float32, nblk, v0 int, scale float32)
// Four query rows (q, dout, dq: row r at +r·ldq) against nblk blocks of 16
// keys (Kᵀ, Vᵀ at kt, vt in 32-key panels of 32·32 floats; K, dK, dV rows
// at k, dk, dv with stride ldk), the last block masked to v0+r keys for
// row r; lse, dd the rows' log-sum-exp and dO·O. dq = dS·K (overwritten);
// dk += dSᵀ·Q and dv += Pᵀ·dO over the blocks' keys.
TEXT ·attnBwd4x32AVX512(SB), 0, $1536-116
// BSTEP is one key of dV += Pᵀ·dO and dK += dSᵀ·Q for key row R9 (dK),
// R10 (dV): dO chunks in Z8–Z15 (row r: Z(8+2r), Z(9+2r)), Q chunks in
// Z16–Z19, Z24–Z27 (row r chunk 0: Z16+r, chunk 1: Z24+r); DX the key.
#define BSTEP \
	VMOVUPS          (R10), Z22                 \
	VMOVUPS          64(R10), Z23               \
	VFMADD231PS.BCST 1024(SP)(DX*4), Z8, Z22    \
	VFMADD231PS.BCST 1024(SP)(DX*4), Z9, Z23    \
	VFMADD231PS.BCST 1088(SP)(DX*4), Z10, Z22   \
	VFMADD231PS.BCST 1088(SP)(DX*4), Z11, Z23   \
	VFMADD231PS.BCST 1152(SP)(DX*4), Z12, Z22   \
	VFMADD231PS.BCST 1152(SP)(DX*4), Z13, Z23   \
	VFMADD231PS.BCST 1216(SP)(DX*4), Z14, Z22   \
	VFMADD231PS.BCST 1216(SP)(DX*4), Z15, Z23   \
	VMOVUPS          Z22, (R10)                 \
	VMOVUPS          Z23, 64(R10)               \
	VMOVUPS          (R9), Z20                  \
	VMOVUPS          64(R9), Z21                \
	VFMADD231PS.BCST 1280(SP)(DX*4), Z16, Z20   \
	VFMADD231PS.BCST 1280(SP)(DX*4), Z24, Z21   \
	VFMADD231PS.BCST 1344(SP)(DX*4), Z17, Z20   \
	VFMADD231PS.BCST 1344(SP)(DX*4), Z25, Z21   \
	VFMADD231PS.BCST 1408(SP)(DX*4), Z18, Z20   \
	VFMADD231PS.BCST 1408(SP)(DX*4), Z26, Z21   \
	VFMADD231PS.BCST 1472(SP)(DX*4), Z19, Z20   \
	VFMADD231PS.BCST 1472(SP)(DX*4), Z27, Z21   \
	VMOVUPS          Z20, (R9)                  \
	VMOVUPS          Z21, 64(R9)

// PDS is one row's P = e^(S − lse) (KM's lanes 0) and dS = scale·P∘(dP −
// D), stored to POFF(SP) and POFF+256(SP); lse and D at LOFF(AX) of the
// lse and D arrays (R12, R13).
#define PDS(S, DP, KM, LOFF, POFF) \
	VMULPS      Z28, S, S           \
	VSUBPS.BCST LOFF(R12), S, S     \
	EXPM(S, Z20, Z21)               \
	VMOVAPS     Z31, KM, S          \
	VMOVUPS     S, POFF(SP)         \
	VSUBPS.BCST LOFF(R13), DP, DP   \
	VMULPS      S, DP, DP           \
	VMULPS      Z28, DP, DP         \
	VMOVUPS     DP, POFF+256(SP)

	// Q and dO rows to the stack.
	MOVQ    ldq+24(FP), BX
	SHLQ    $2, BX
	MOVQ    q+0(FP), AX
	MOVQ    dout+8(FP), DX
	VMOVUPS (AX), Z0
	VMOVUPS 64(AX), Z1
	VMOVUPS Z0, 0(SP)
	VMOVUPS Z1, 64(SP)
	VMOVUPS (DX), Z0
	VMOVUPS 64(DX), Z1
	VMOVUPS Z0, 512(SP)
	VMOVUPS Z1, 576(SP)
	ADDQ    BX, AX
	ADDQ    BX, DX
	VMOVUPS (AX), Z0
	VMOVUPS 64(AX), Z1
	VMOVUPS Z0, 128(SP)
	VMOVUPS Z1, 192(SP)
	VMOVUPS (DX), Z0
	VMOVUPS 64(DX), Z1
	VMOVUPS Z0, 640(SP)
	VMOVUPS Z1, 704(SP)
	ADDQ    BX, AX
	ADDQ    BX, DX
	VMOVUPS (AX), Z0
	VMOVUPS 64(AX), Z1
	VMOVUPS Z0, 256(SP)
	VMOVUPS Z1, 320(SP)
	VMOVUPS (DX), Z0
	VMOVUPS 64(DX), Z1
	VMOVUPS Z0, 768(SP)
	VMOVUPS Z1, 832(SP)
	ADDQ    BX, AX
	ADDQ    BX, DX
	VMOVUPS (AX), Z0
	VMOVUPS 64(AX), Z1
	VMOVUPS Z0, 384(SP)
	VMOVUPS Z1, 448(SP)
	VMOVUPS (DX), Z0
	VMOVUPS 64(DX), Z1
	VMOVUPS Z0, 896(SP)
	VMOVUPS Z1, 960(SP)

	MOVQ         kt+32(FP), SI
	MOVQ         vt+40(FP), DI
	MOVQ         k+48(FP), R8
	MOVQ         dk+56(FP), R9
	MOVQ         dv+64(FP), R10
	MOVQ         ldk+72(FP), BX
	SHLQ         $2, BX
	MOVQ         lse+80(FP), R12
	MOVQ         dd+88(FP), R13
	MOVQ         nblk+96(FP), CX
	VBROADCASTSS scale+112(FP), Z28
	VPXORD       Z31, Z31, Z31
	XORQ         R11, R11
	KXORW        K1, K1, K1
	KXORW        K2, K2, K2
	KXORW        K3, K3, K3
	KXORW        K4, K4, K4
	VPXORD       Z0, Z0, Z0
	VPXORD       Z1, Z1, Z1
	VPXORD       Z2, Z2, Z2
	VPXORD       Z3, Z3, Z3
	VPXORD       Z4, Z4, Z4
	VPXORD       Z5, Z5, Z5
	VPXORD       Z6, Z6, Z6
	VPXORD       Z7, Z7, Z7

b32_block:
	CMPQ CX, $1
	JNE  b32_full
	MOVQ  CX, R14
	MOVQ  v0+104(FP), CX
	MOVQ  $-1, AX
	SHLQ  CX, AX
	KMOVW AX, K1
	INCQ  CX
	MOVQ  $-1, AX
	SHLQ  CX, AX
	KMOVW AX, K2
	INCQ  CX
	MOVQ  $-1, AX
	SHLQ  CX, AX
	KMOVW AX, K3
	INCQ  CX
	MOVQ  $-1, AX
	SHLQ  CX, AX
	KMOVW AX, K4
	MOVQ  R14, CX

b32_full:
	// S (Z16–Z19) and dP (Z8–Z11) over d, Kᵀ and Vᵀ rows of this block's
	// half panel: AX, R15 = panel base + (R11/2)·4096 + (R11%2)·64.
	MOVQ   R11, AX
	SHRQ   $1, AX
	SHLQ   $12, AX
	MOVQ   R11, R14
	ANDQ   $1, R14
	SHLQ   $6, R14
	ADDQ   R14, AX
	LEAQ   (DI)(AX*1), R15
	ADDQ   SI, AX
	VPXORD Z16, Z16, Z16
	VPXORD Z17, Z17, Z17
	VPXORD Z18, Z18, Z18
	VPXORD Z19, Z19, Z19
	VPXORD Z8, Z8, Z8
	VPXORD Z9, Z9, Z9
	VPXORD Z10, Z10, Z10
	VPXORD Z11, Z11, Z11
	XORQ   DX, DX

b32_sdp:
	VMOVUPS          (AX), Z22
	VMOVUPS          (R15), Z23
	VFMADD231PS.BCST 0(SP)(DX*4), Z22, Z16
	VFMADD231PS.BCST 128(SP)(DX*4), Z22, Z17
	VFMADD231PS.BCST 256(SP)(DX*4), Z22, Z18
	VFMADD231PS.BCST 384(SP)(DX*4), Z22, Z19
	VFMADD231PS.BCST 512(SP)(DX*4), Z23, Z8
	VFMADD231PS.BCST 640(SP)(DX*4), Z23, Z9
	VFMADD231PS.BCST 768(SP)(DX*4), Z23, Z10
	VFMADD231PS.BCST 896(SP)(DX*4), Z23, Z11
	ADDQ             $128, AX
	ADDQ             $128, R15
	INCQ             DX
	CMPQ             DX, $32
	JLT              b32_sdp

	PDS(Z16, Z8, K1, 0, 1024)
	PDS(Z17, Z9, K2, 4, 1088)
	PDS(Z18, Z10, K3, 8, 1152)
	PDS(Z19, Z11, K4, 12, 1216)

	// dQ += dS·K over the block's 16 keys (K rows from R8 on).
	XORQ DX, DX
	MOVQ R8, AX

b32_dq:
	VMOVUPS          (AX), Z22
	VMOVUPS          64(AX), Z23
	VFMADD231PS.BCST 1280(SP)(DX*4), Z22, Z0
	VFMADD231PS.BCST 1280(SP)(DX*4), Z23, Z1
	VFMADD231PS.BCST 1344(SP)(DX*4), Z22, Z2
	VFMADD231PS.BCST 1344(SP)(DX*4), Z23, Z3
	VFMADD231PS.BCST 1408(SP)(DX*4), Z22, Z4
	VFMADD231PS.BCST 1408(SP)(DX*4), Z23, Z5
	VFMADD231PS.BCST 1472(SP)(DX*4), Z22, Z6
	VFMADD231PS.BCST 1472(SP)(DX*4), Z23, Z7
	ADDQ             BX, AX
	INCQ             DX
	CMPQ             DX, $16
	JLT              b32_dq
	MOVQ             AX, R8

	// dV += Pᵀ·dO, dK += dSᵀ·Q: dO and Q chunks in registers.
	VMOVUPS 512(SP), Z8
	VMOVUPS 576(SP), Z9
	VMOVUPS 640(SP), Z10
	VMOVUPS 704(SP), Z11
	VMOVUPS 768(SP), Z12
	VMOVUPS 832(SP), Z13
	VMOVUPS 896(SP), Z14
	VMOVUPS 960(SP), Z15
	VMOVUPS 0(SP), Z16
	VMOVUPS 128(SP), Z17
	VMOVUPS 256(SP), Z18
	VMOVUPS 384(SP), Z19
	VMOVUPS 64(SP), Z24
	VMOVUPS 192(SP), Z25
	VMOVUPS 320(SP), Z26
	VMOVUPS 448(SP), Z27
	XORQ    DX, DX

b32_dkv:
	BSTEP
	ADDQ BX, R9
	ADDQ BX, R10
	INCQ DX
	CMPQ DX, $16
	JLT  b32_dkv

	INCQ R11
	DECQ CX
	JNZ  b32_block

	// dq = the accumulated dQ rows.
	MOVQ    dq+16(FP), AX
	MOVQ    ldq+24(FP), BX
	SHLQ    $2, BX
	VMOVUPS Z0, (AX)
	VMOVUPS Z1, 64(AX)
	ADDQ    BX, AX
	VMOVUPS Z2, (AX)
	VMOVUPS Z3, 64(AX)
	ADDQ    BX, AX
	VMOVUPS Z4, (AX)
	VMOVUPS Z5, 64(AX)
	ADDQ    BX, AX
	VMOVUPS Z6, (AX)
	VMOVUPS Z7, 64(AX)
	VZEROUPPER
	RET

#define ACONST(name, bits) \
	DATA name+0(SB)/4, bits \
	GLOBL name(SB), RODATA|NOPTR, $4

ACONST(aexphi<>, $88.3762626647949)
ACONST(aexplo<>, $-88.3762626647949)
ACONST(alog2e<>, $1.44269504088896341)
ACONST(ahalf<>, $0.5)
ACONST(aone<>, $1.0)
ACONST(aln2hi<>, $0.693359375)
ACONST(aln2lo<>, $-2.12194440e-4)
ACONST(ap0<>, $1.9875691500e-4)
ACONST(ap1<>, $1.3981999507e-3)
ACONST(ap2<>, $8.3334519073e-3)
ACONST(ap3<>, $4.1665795894e-2)
ACONST(ap4<>, $1.6666665459e-1)
ACONST(ap5<>, $5.0000001201e-1)
ACONST(abias<>, $127)
ACONST(atau<>, $8.0)
DATA aninf<>+0(SB)/4, $0xff800000
GLOBL aninf<>(SB), RODATA|NOPTR, $4
