//go:build !purego

#include "textflag.h"

// AVX-512 versions of the row primitives, for any n ≥ 1: full vectors of
// 16 lanes, then one masked vector for the n%16 tail (masked loads do not
// fault past the end, masked stores write nothing there).
//
// EXP16 is vec_amd64.s's EXP8 on 16 lanes, the same operations in the same
// order (so the same bits per element); its constants live in Z16–Z29
// (LOADEXP). X is input and output; T1 and T2 are clobbered.
#define EXP16(X, T1, T2) \
	VMINPS       Z16, X, X   \
	VMAXPS       Z17, X, X   \
	VMOVAPS      Z18, T1     \
	VFMADD213PS  Z19, X, T1  \
	VRNDSCALEPS  $1, T1, T1  \
	VFNMADD231PS Z21, T1, X  \
	VFNMADD231PS Z22, T1, X  \
	VMOVAPS      Z23, T2     \
	VFMADD213PS  Z24, X, T2  \
	VFMADD213PS  Z25, X, T2  \
	VFMADD213PS  Z26, X, T2  \
	VFMADD213PS  Z27, X, T2  \
	VFMADD213PS  Z28, X, T2  \
	VMULPS       X, T2, T2   \
	VFMADD213PS  X, X, T2    \
	VADDPS       Z20, T2, T2 \
	VCVTTPS2DQ   T1, T1      \
	VPADDD       Z29, T1, T1 \
	VPSLLD       $23, T1, T1 \
	VMULPS       T1, T2, X

#define LOADEXP \
	VBROADCASTSS c16exphi<>(SB), Z16 \
	VBROADCASTSS c16explo<>(SB), Z17 \
	VBROADCASTSS c16log2e<>(SB), Z18 \
	VBROADCASTSS c16half<>(SB), Z19  \
	VBROADCASTSS c16one<>(SB), Z20   \
	VBROADCASTSS c16ln2hi<>(SB), Z21 \
	VBROADCASTSS c16ln2lo<>(SB), Z22 \
	VBROADCASTSS c16p0<>(SB), Z23    \
	VBROADCASTSS c16p1<>(SB), Z24    \
	VBROADCASTSS c16p2<>(SB), Z25    \
	VBROADCASTSS c16p3<>(SB), Z26    \
	VBROADCASTSS c16p4<>(SB), Z27    \
	VBROADCASTSS c16p5<>(SB), Z28    \
	VPBROADCASTD c16bias<>(SB), Z29

// TAILMASK sets K1 to the low CX%16 lanes and CX to CX/16 (CX, AX, BX
// clobbered).
#define TAILMASK \
	MOVQ  CX, BX  \
	SHRQ  $4, BX  \
	ANDQ  $15, CX \
	MOVQ  $1, AX  \
	SHLQ  CX, AX  \
	DECQ  AX      \
	KMOVW AX, K1  \
	MOVQ  BX, CX

// HSUM16 leaves the sum of Z's 16 lanes in X's low lane (Y1/X1 clobbered;
// Z must be Z0–Z15 so its low halves are VEX-addressable).
#define HSUM16(Z, Y, X) \
	VEXTRACTF64X4 $1, Z, Y1 \
	VADDPS        Y1, Y, Y  \
	VEXTRACTF128  $1, Y, X1 \
	VADDPS        X1, X, X  \
	VMOVHLPS      X, X1, X1 \
	VADDPS        X1, X, X  \
	VPSHUFD       $1, X, X1 \
	VADDSS        X1, X, X

// func expSubAVX512(dst, src *float32, n int, shift float32) float32
// dst = e^(src − shift), returns Σ dst; dst may alias src.
TEXT ·expSubAVX512(SB), NOSPLIT, $0-36
	MOVQ         dst+0(FP), DI
	MOVQ         src+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSS shift+24(FP), Z7
	LOADEXP
	VPXORD       Z6, Z6, Z6
	TAILMASK
	TESTQ        CX, CX
	JZ           es512_tail

es512_loop:
	VMOVUPS (SI), Z0
	VSUBPS  Z7, Z0, Z0
	EXP16(Z0, Z2, Z3)
	VMOVUPS Z0, (DI)
	VADDPS  Z0, Z6, Z6
	ADDQ    $64, SI
	ADDQ    $64, DI
	DECQ    CX
	JNZ     es512_loop

es512_tail:
	KTESTW  K1, K1
	JZ      es512_done
	VMOVUPS.Z (SI), K1, Z0
	VSUBPS  Z7, Z0, Z0
	EXP16(Z0, Z2, Z3)
	VMOVUPS Z0, K1, (DI)
	VADDPS  Z0, Z6, K1, Z6

es512_done:
	HSUM16(Z6, Y6, X6)
	VMOVSS  X6, ret+32(FP)
	VZEROUPPER
	RET

// func maxAVX512(x *float32, n int) float32
TEXT ·maxAVX512(SB), NOSPLIT, $0-20
	MOVQ         x+0(FP), SI
	MOVQ         n+8(FP), CX
	VBROADCASTSS neginf<>(SB), Z6
	TAILMASK
	TESTQ        CX, CX
	JZ           mx512_tail

mx512_loop:
	VMAXPS (SI), Z6, Z6
	ADDQ   $64, SI
	DECQ   CX
	JNZ    mx512_loop

mx512_tail:
	KTESTW  K1, K1
	JZ      mx512_done
	VMOVAPS Z6, Z0
	VMOVUPS (SI), K1, Z0 // lanes past n keep the running max
	VMAXPS  Z0, Z6, Z6

mx512_done:
	VEXTRACTF64X4 $1, Z6, Y1
	VMAXPS        Y1, Y6, Y6
	VEXTRACTF128  $1, Y6, X1
	VMAXPS        X1, X6, X6
	VMOVHLPS      X6, X1, X1
	VMAXPS        X1, X6, X6
	VPSHUFD       $1, X6, X1
	VMAXSS        X1, X6, X6
	VMOVSS        X6, ret+16(FP)
	VZEROUPPER
	RET

// func scaleAVX512(x *float32, n int, alpha float32)
TEXT ·scaleAVX512(SB), NOSPLIT, $0-20
	MOVQ         x+0(FP), SI
	MOVQ         n+8(FP), CX
	VBROADCASTSS alpha+16(FP), Z7
	TAILMASK
	TESTQ        CX, CX
	JZ           sc512_tail

sc512_loop:
	VMULPS  (SI), Z7, Z0
	VMOVUPS Z0, (SI)
	ADDQ    $64, SI
	DECQ    CX
	JNZ     sc512_loop

sc512_tail:
	KTESTW    K1, K1
	JZ        sc512_done
	VMOVUPS.Z (SI), K1, Z0
	VMULPS    Z0, Z7, Z0
	VMOVUPS   Z0, K1, (SI)

sc512_done:
	VZEROUPPER
	RET

// func dotAVX512(x, y *float32, n int) float32
TEXT ·dotAVX512(SB), NOSPLIT, $0-28
	MOVQ   x+0(FP), SI
	MOVQ   y+8(FP), DI
	MOVQ   n+16(FP), CX
	VPXORD Z6, Z6, Z6
	TAILMASK
	TESTQ  CX, CX
	JZ     dot512_tail

dot512_loop:
	VMOVUPS     (SI), Z0
	VFMADD231PS (DI), Z0, Z6
	ADDQ        $64, SI
	ADDQ        $64, DI
	DECQ        CX
	JNZ         dot512_loop

dot512_tail:
	KTESTW      K1, K1
	JZ          dot512_done
	VMOVUPS.Z   (SI), K1, Z0
	VMOVUPS.Z   (DI), K1, Z1
	VFMADD231PS Z1, Z0, Z6

dot512_done:
	HSUM16(Z6, Y6, X6)
	VMOVSS X6, ret+24(FP)
	VZEROUPPER
	RET

// func dsRowAVX512(ds, p *float32, n int, d, scale float32)
// ds = (scale·p)·(ds − d), in place.
TEXT ·dsRowAVX512(SB), NOSPLIT, $0-32
	MOVQ         ds+0(FP), DI
	MOVQ         p+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSS d+24(FP), Z6
	VBROADCASTSS scale+28(FP), Z7
	TAILMASK
	TESTQ        CX, CX
	JZ           ds512_tail

ds512_loop:
	VMULPS  (SI), Z7, Z0
	VMOVUPS (DI), Z1
	VSUBPS  Z6, Z1, Z1
	VMULPS  Z1, Z0, Z0
	VMOVUPS Z0, (DI)
	ADDQ    $64, SI
	ADDQ    $64, DI
	DECQ    CX
	JNZ     ds512_loop

ds512_tail:
	KTESTW    K1, K1
	JZ        ds512_done
	VMOVUPS.Z (SI), K1, Z0
	VMULPS    Z0, Z7, Z0
	VMOVUPS.Z (DI), K1, Z1
	VSUBPS    Z6, Z1, Z1
	VMULPS    Z1, Z0, Z0
	VMOVUPS   Z0, K1, (DI)

ds512_done:
	VZEROUPPER
	RET

DATA neginf<>+0(SB)/4, $0xff800000
GLOBL neginf<>(SB), RODATA|NOPTR, $4

// The EXP16 constants, as vec_amd64.s's (one lane each; LOADEXP broadcasts).
#define CONST1(name, bits) \
	DATA name+0(SB)/4, bits \
	GLOBL name(SB), RODATA|NOPTR, $4

CONST1(c16exphi<>, $88.3762626647949)
CONST1(c16explo<>, $-88.3762626647949)
CONST1(c16log2e<>, $1.44269504088896341)
CONST1(c16half<>, $0.5)
CONST1(c16one<>, $1.0)
CONST1(c16ln2hi<>, $0.693359375)
CONST1(c16ln2lo<>, $-2.12194440e-4)
CONST1(c16p0<>, $1.9875691500e-4)
CONST1(c16p1<>, $1.3981999507e-3)
CONST1(c16p2<>, $8.3334519073e-3)
CONST1(c16p3<>, $4.1665795894e-2)
CONST1(c16p4<>, $1.6666665459e-1)
CONST1(c16p5<>, $5.0000001201e-1)
CONST1(c16bias<>, $127)

// func expRowAVX512(row *float32, valid, n int, floor float32) (mx, sum float32)
// mx = max(floor, row[0:valid]); row[0:valid] = e^(row − mx), sum = Σ of
// them; row[valid:n] = 0. valid ≥ 1, n ≥ valid. One call per softmax row:
// the max pass, the exp pass and the zeroed tail without three calls.
TEXT ·expRowAVX512(SB), NOSPLIT, $0-40
	MOVQ         row+0(FP), SI
	MOVQ         valid+8(FP), CX
	VBROADCASTSS floor+24(FP), Z6
	MOVQ         CX, R8             // valid
	TAILMASK                        // CX = valid/16, K1 = tail
	MOVQ         CX, R9             // full vectors
	MOVQ         SI, DI
	TESTQ        CX, CX
	JZ           er_maxtail

er_maxloop:
	VMAXPS (DI), Z6, Z6
	ADDQ   $64, DI
	DECQ   CX
	JNZ    er_maxloop

er_maxtail:
	KTESTW  K1, K1
	JZ      er_maxdone
	VMOVAPS Z6, Z0
	VMOVUPS (DI), K1, Z0
	VMAXPS  Z0, Z6, Z6

er_maxdone:
	VEXTRACTF64X4 $1, Z6, Y1
	VMAXPS        Y1, Y6, Y6
	VEXTRACTF128  $1, Y6, X1
	VMAXPS        X1, X6, X6
	VMOVHLPS      X6, X1, X1
	VMAXPS        X1, X6, X6
	VPSHUFD       $1, X6, X1
	VMAXSS        X1, X6, X6
	VMOVSS        X6, mx+32(FP)
	VBROADCASTSS  X6, Z7            // the shift
	LOADEXP
	VPXORD        Z6, Z6, Z6
	MOVQ          R9, CX
	MOVQ          SI, DI
	TESTQ         CX, CX
	JZ            er_exptail

er_exploop:
	VMOVUPS (DI), Z0
	VSUBPS  Z7, Z0, Z0
	EXP16(Z0, Z2, Z3)
	VMOVUPS Z0, (DI)
	VADDPS  Z0, Z6, Z6
	ADDQ    $64, DI
	DECQ    CX
	JNZ     er_exploop

er_exptail:
	KTESTW    K1, K1
	JZ        er_expdone
	VMOVUPS.Z (DI), K1, Z0
	VSUBPS    Z7, Z0, Z0
	EXP16(Z0, Z2, Z3)
	VMOVUPS.Z Z0, K1, Z0           // lanes past valid: 0, stored as the tail's start
	VMOVUPS   Z0, K1, (DI)
	VADDPS    Z0, Z6, Z6

er_expdone:
	HSUM16(Z6, Y6, X6)
	VMOVSS    X6, sum+36(FP)
	// Zero row[valid:n].
	MOVQ      n+16(FP), CX
	SUBQ      R8, CX
	JLE       er_done
	LEAQ      (SI)(R8*4), DI
	VPXORD    Z0, Z0, Z0
	TAILMASK
	TESTQ     CX, CX
	JZ        er_zerotail

er_zeroloop:
	VMOVUPS Z0, (DI)
	ADDQ    $64, DI
	DECQ    CX
	JNZ     er_zeroloop

er_zerotail:
	KTESTW  K1, K1
	JZ      er_done
	VMOVUPS Z0, K1, (DI)

er_done:
	VZEROUPPER
	RET

// VALID sets R9 = clamp(R13, 0, R12): the causal row's count of keys.
#define VALID \
	MOVQ    R13, R9  \
	XORQ    AX, AX   \
	CMPQ    R9, AX   \
	CMOVQLT AX, R9   \
	CMPQ    R9, R12  \
	CMOVQGT R12, R9

// func expRowsAVX512(s *float32, ld, rows, n, v0 int, mx, sum *float32, findMax int)
// expRow for a tile of rows: row r (at s + r·ld, n wide) has
// valid = clamp(v0 + r, 0, n) entries; mx[r] = max(mx[r], row[:valid])
// (when findMax ≠ 0; else mx is the shift as given and not written),
// row[:valid] = e^(row − mx[r]), sum[r] = Σ of them, row[valid:] = 0 (a
// row with valid = 0: all zero, sum 0, mx unchanged). Two passes over the
// tile — every row's max, then every row's exps — so that the rows'
// reduction chains overlap instead of each row waiting on its own.
TEXT ·expRowsAVX512(SB), NOSPLIT, $0-64
	MOVQ ld+8(FP), R10
	SHLQ $2, R10
	MOVQ n+24(FP), R12
	MOVQ s+0(FP), SI
	MOVQ rows+16(FP), R11
	MOVQ v0+32(FP), R13
	MOVQ mx+40(FP), DX
	TESTQ R11, R11
	JZ   ers_done
	MOVQ findMax+56(FP), AX
	TESTQ AX, AX
	JZ   ers_exp_start

ers_max_row:
	VALID
	TESTQ R9, R9
	JZ    ers_max_next
	MOVQ  R9, CX
	TAILMASK
	VBROADCASTSS (DX), Z6
	MOVQ  SI, DI
	TESTQ CX, CX
	JZ    ers_max_tail

ers_max_loop:
	VMAXPS (DI), Z6, Z6
	ADDQ   $64, DI
	DECQ   CX
	JNZ    ers_max_loop

ers_max_tail:
	KTESTW  K1, K1
	JZ      ers_max_red
	VMOVAPS Z6, Z0
	VMOVUPS (DI), K1, Z0
	VMAXPS  Z0, Z6, Z6

ers_max_red:
	VEXTRACTF64X4 $1, Z6, Y1
	VMAXPS        Y1, Y6, Y6
	VEXTRACTF128  $1, Y6, X1
	VMAXPS        X1, X6, X6
	VMOVHLPS      X6, X1, X1
	VMAXPS        X1, X6, X6
	VPSHUFD       $1, X6, X1
	VMAXSS        X1, X6, X6
	VMOVSS        X6, (DX)

ers_max_next:
	ADDQ R10, SI
	ADDQ $4, DX
	INCQ R13
	DECQ R11
	JNZ  ers_max_row

ers_exp_start:
	LOADEXP
	MOVQ s+0(FP), SI
	MOVQ rows+16(FP), R11
	MOVQ v0+32(FP), R13
	MOVQ mx+40(FP), DX
	MOVQ sum+48(FP), R8

ers_exp_row:
	VALID
	VPXORD Z6, Z6, Z6
	TESTQ  R9, R9
	JZ     ers_exp_sum
	VBROADCASTSS (DX), Z7
	MOVQ   R9, CX
	TAILMASK
	MOVQ   SI, DI
	TESTQ  CX, CX
	JZ     ers_exp_tail

ers_exp_loop:
	VMOVUPS (DI), Z0
	VSUBPS  Z7, Z0, Z0
	EXP16(Z0, Z2, Z3)
	VMOVUPS Z0, (DI)
	VADDPS  Z0, Z6, Z6
	ADDQ    $64, DI
	DECQ    CX
	JNZ     ers_exp_loop

ers_exp_tail:
	KTESTW    K1, K1
	JZ        ers_exp_sum
	VMOVUPS.Z (DI), K1, Z0
	VSUBPS    Z7, Z0, Z0
	EXP16(Z0, Z2, Z3)
	VMOVUPS.Z Z0, K1, Z0
	VMOVUPS   Z0, K1, (DI)
	VADDPS    Z0, Z6, Z6

ers_exp_sum:
	HSUM16(Z6, Y6, X6)
	VMOVSS X6, (R8)
	// Zero row[valid:n].
	MOVQ   R12, CX
	SUBQ   R9, CX
	JLE    ers_exp_next
	LEAQ   (SI)(R9*4), DI
	VPXORD Z0, Z0, Z0
	TAILMASK
	TESTQ  CX, CX
	JZ     ers_zero_tail

ers_zero_loop:
	VMOVUPS Z0, (DI)
	ADDQ    $64, DI
	DECQ    CX
	JNZ     ers_zero_loop

ers_zero_tail:
	KTESTW  K1, K1
	JZ      ers_exp_next
	VMOVUPS Z0, K1, (DI)

ers_exp_next:
	ADDQ R10, SI
	ADDQ $4, DX
	ADDQ $4, R8
	INCQ R13
	DECQ R11
	JNZ  ers_exp_row

ers_done:
	VZEROUPPER
	RET

// ---- normalization, RoPE, AdamW: the Go forms' operations one for one
// (no FMA where Go rounds a product first), so the same bits.

// func rmsScaleAVX512(out, x, w *float32, n int, rs float32)
// out = (x·rs)·w.
TEXT ·rmsScaleAVX512(SB), NOSPLIT, $0-36
	MOVQ         out+0(FP), DI
	MOVQ         x+8(FP), SI
	MOVQ         w+16(FP), DX
	MOVQ         n+24(FP), CX
	VBROADCASTSS rs+32(FP), Z7
	TAILMASK
	TESTQ        CX, CX
	JZ           rsc_tail

rsc_loop:
	VMULPS  (SI), Z7, Z0
	VMULPS  (DX), Z0, Z0
	VMOVUPS Z0, (DI)
	ADDQ    $64, SI
	ADDQ    $64, DX
	ADDQ    $64, DI
	DECQ    CX
	JNZ     rsc_loop

rsc_tail:
	KTESTW    K1, K1
	JZ        rsc_done
	VMOVUPS.Z (SI), K1, Z0
	VMOVUPS.Z (DX), K1, Z1
	VMULPS    Z0, Z7, Z0
	VMULPS    Z1, Z0, Z0
	VMOVUPS   Z0, K1, (DI)

rsc_done:
	VZEROUPPER
	RET

// func rmsBackRowAVX512(dx, pw, dy, x, w *float32, n int, rs, c float32)
// dx += ((rs·w)·dy − c·x); pw += (dy·x)·rs.
TEXT ·rmsBackRowAVX512(SB), NOSPLIT, $0-56
	MOVQ         dx+0(FP), DI
	MOVQ         pw+8(FP), R8
	MOVQ         dy+16(FP), SI
	MOVQ         x+24(FP), DX
	MOVQ         w+32(FP), R9
	MOVQ         n+40(FP), CX
	VBROADCASTSS rs+48(FP), Z6
	VBROADCASTSS c+52(FP), Z7
	TAILMASK
	TESTQ        CX, CX
	JZ           rbr_tail

rbr_loop:
	VMOVUPS (SI), Z0   // dy
	VMOVUPS (DX), Z1   // x
	VMULPS  (R9), Z6, Z2
	VMULPS  Z0, Z2, Z2 // (rs·w)·dy
	VMULPS  Z1, Z7, Z3 // c·x
	VSUBPS  Z3, Z2, Z2
	VADDPS  (DI), Z2, Z2
	VMOVUPS Z2, (DI)
	VMULPS  Z1, Z0, Z4 // dy·x
	VMULPS  Z6, Z4, Z4
	VADDPS  (R8), Z4, Z4
	VMOVUPS Z4, (R8)
	ADDQ    $64, SI
	ADDQ    $64, DX
	ADDQ    $64, R9
	ADDQ    $64, DI
	ADDQ    $64, R8
	DECQ    CX
	JNZ     rbr_loop

rbr_tail:
	KTESTW    K1, K1
	JZ        rbr_done
	VMOVUPS.Z (SI), K1, Z0
	VMOVUPS.Z (DX), K1, Z1
	VMOVUPS.Z (R9), K1, Z5
	VMULPS    Z5, Z6, Z2
	VMULPS    Z0, Z2, Z2
	VMULPS    Z1, Z7, Z3
	VSUBPS    Z3, Z2, Z2
	VMOVUPS.Z (DI), K1, Z5
	VADDPS    Z5, Z2, Z2
	VMOVUPS   Z2, K1, (DI)
	VMULPS    Z1, Z0, Z4
	VMULPS    Z6, Z4, Z4
	VMOVUPS.Z (R8), K1, Z5
	VADDPS    Z5, Z4, Z4
	VMOVUPS   Z4, K1, (R8)

rbr_done:
	VZEROUPPER
	RET

// func ropeRotateAVX512(x1, x2, c, s *float32, n int, sign float32)
// si = sign·s; x1' = u·c − w·si; x2' = w·c + u·si.
TEXT ·ropeRotateAVX512(SB), NOSPLIT, $0-44
	MOVQ         x1+0(FP), DI
	MOVQ         x2+8(FP), R8
	MOVQ         c+16(FP), SI
	MOVQ         s+24(FP), DX
	MOVQ         n+32(FP), CX
	VBROADCASTSS sign+40(FP), Z7
	TAILMASK
	TESTQ        CX, CX
	JZ           rope_tail

rope_loop:
	VMOVUPS (SI), Z0    // c
	VMULPS  (DX), Z7, Z1 // si
	VMOVUPS (DI), Z2    // u
	VMOVUPS (R8), Z3    // w
	VMULPS  Z0, Z2, Z4
	VMULPS  Z1, Z3, Z5
	VSUBPS  Z5, Z4, Z4
	VMULPS  Z0, Z3, Z5
	VMULPS  Z1, Z2, Z6
	VADDPS  Z6, Z5, Z5
	VMOVUPS Z4, (DI)
	VMOVUPS Z5, (R8)
	ADDQ    $64, SI
	ADDQ    $64, DX
	ADDQ    $64, DI
	ADDQ    $64, R8
	DECQ    CX
	JNZ     rope_loop

rope_tail:
	KTESTW    K1, K1
	JZ        rope_done
	VMOVUPS.Z (SI), K1, Z0
	VMOVUPS.Z (DX), K1, Z1
	VMULPS    Z1, Z7, Z1
	VMOVUPS.Z (DI), K1, Z2
	VMOVUPS.Z (R8), K1, Z3
	VMULPS    Z0, Z2, Z4
	VMULPS    Z1, Z3, Z5
	VSUBPS    Z5, Z4, Z4
	VMULPS    Z0, Z3, Z5
	VMULPS    Z1, Z2, Z6
	VADDPS    Z6, Z5, Z5
	VMOVUPS   Z4, K1, (DI)
	VMOVUPS   Z5, K1, (R8)

rope_done:
	VZEROUPPER
	RET

// func ropeRotateHeadsAVX512(x *float32, heads, headDim int, c, s *float32, sign float32)
// ropeRotateAVX512 for each of heads heads of one row (head h's halves at
// x[h·headDim:] and x[h·headDim+headDim/2:]), all by the same angles, in
// one call. headDim even, ≥ 2; heads ≥ 1.
TEXT ·ropeRotateHeadsAVX512(SB), NOSPLIT, $0-44
	MOVQ         x+0(FP), R9
	MOVQ         heads+8(FP), R10
	MOVQ         headDim+16(FP), R11
	MOVQ         c+24(FP), R12
	MOVQ         s+32(FP), R13
	VBROADCASTSS sign+40(FP), Z7
	MOVQ         R11, CX
	SHRQ         $1, CX
	LEAQ         (R9)(CX*4), R14 // head 0's second half
	TAILMASK
	MOVQ         CX, AX // full vectors per half
	SHLQ         $2, R11 // headDim in bytes

rh_head:
	MOVQ  R9, DI
	MOVQ  R14, R8
	MOVQ  R12, SI
	MOVQ  R13, DX
	MOVQ  AX, CX
	TESTQ CX, CX
	JZ    rh_tail

rh_loop:
	VMOVUPS (SI), Z0     // c
	VMULPS  (DX), Z7, Z1 // si
	VMOVUPS (DI), Z2     // u
	VMOVUPS (R8), Z3     // w
	VMULPS  Z0, Z2, Z4
	VMULPS  Z1, Z3, Z5
	VSUBPS  Z5, Z4, Z4
	VMULPS  Z0, Z3, Z5
	VMULPS  Z1, Z2, Z6
	VADDPS  Z6, Z5, Z5
	VMOVUPS Z4, (DI)
	VMOVUPS Z5, (R8)
	ADDQ    $64, SI
	ADDQ    $64, DX
	ADDQ    $64, DI
	ADDQ    $64, R8
	DECQ    CX
	JNZ     rh_loop

rh_tail:
	KTESTW    K1, K1
	JZ        rh_next
	VMOVUPS.Z (SI), K1, Z0
	VMOVUPS.Z (DX), K1, Z1
	VMULPS    Z1, Z7, Z1
	VMOVUPS.Z (DI), K1, Z2
	VMOVUPS.Z (R8), K1, Z3
	VMULPS    Z0, Z2, Z4
	VMULPS    Z1, Z3, Z5
	VSUBPS    Z5, Z4, Z4
	VMULPS    Z0, Z3, Z5
	VMULPS    Z1, Z2, Z6
	VADDPS    Z6, Z5, Z5
	VMOVUPS   Z4, K1, (DI)
	VMOVUPS   Z5, K1, (R8)

rh_next:
	ADDQ R11, R9
	ADDQ R11, R14
	DECQ R10
	JNZ  rh_head
	VZEROUPPER
	RET

// func adamwAVX512(p, grad, m, v *float32, n int, c *adamConsts)
// adamConsts: decay, b1, omb1, b2, omb2, stepSize, bc2Sqrt, eps, gscale
// (float32s); g below is g·gscale.
//   p' = p·decay − stepSize·(m'/(√v'/bc2Sqrt + eps))
//   m' = m·b1 + g·omb1;  v' = v·b2 + (omb2·g)·g
TEXT ·adamwAVX512(SB), NOSPLIT, $0-48
	MOVQ         p+0(FP), DI
	MOVQ         grad+8(FP), SI
	MOVQ         m+16(FP), DX
	MOVQ         v+24(FP), R8
	MOVQ         n+32(FP), CX
	MOVQ         c+40(FP), R9
	VBROADCASTSS 0(R9), Z8   // decay
	VBROADCASTSS 4(R9), Z9   // b1
	VBROADCASTSS 8(R9), Z10  // omb1
	VBROADCASTSS 12(R9), Z11 // b2
	VBROADCASTSS 16(R9), Z12 // omb2
	VBROADCASTSS 20(R9), Z13 // stepSize
	VBROADCASTSS 24(R9), Z14 // bc2Sqrt
	VBROADCASTSS 28(R9), Z15 // eps
	VBROADCASTSS 32(R9), Z16 // gscale
	TAILMASK
	TESTQ        CX, CX
	JZ           adam_tail

adam_loop:
	VMULPS  (SI), Z16, Z0 // g·gscale
	VMULPS  (DI), Z8, Z1  // p·decay
	VMULPS  (DX), Z9, Z2  // m·b1
	VMULPS  Z10, Z0, Z3   // g·omb1
	VADDPS  Z3, Z2, Z2    // m'
	VMULPS  (R8), Z11, Z3 // v·b2
	VMULPS  Z12, Z0, Z4   // omb2·g
	VMULPS  Z0, Z4, Z4    // ·g
	VADDPS  Z4, Z3, Z3    // v'
	VSQRTPS Z3, Z4
	VDIVPS  Z14, Z4, Z4
	VADDPS  Z15, Z4, Z4   // denom
	VDIVPS  Z4, Z2, Z5    // m'/denom
	VMULPS  Z13, Z5, Z5
	VSUBPS  Z5, Z1, Z1
	VMOVUPS Z1, (DI)
	VMOVUPS Z2, (DX)
	VMOVUPS Z3, (R8)
	ADDQ    $64, DI
	ADDQ    $64, SI
	ADDQ    $64, DX
	ADDQ    $64, R8
	DECQ    CX
	JNZ     adam_loop

adam_tail:
	KTESTW    K1, K1
	JZ        adam_done
	VMOVUPS.Z (SI), K1, Z0
	VMULPS    Z16, Z0, Z0
	VMOVUPS.Z (DI), K1, Z1
	VMULPS    Z8, Z1, Z1
	VMOVUPS.Z (DX), K1, Z2
	VMULPS    Z9, Z2, Z2
	VMULPS    Z10, Z0, Z3
	VADDPS    Z3, Z2, Z2
	VMOVUPS.Z (R8), K1, Z3
	VMULPS    Z11, Z3, Z3
	VMULPS    Z12, Z0, Z4
	VMULPS    Z0, Z4, Z4
	VADDPS    Z4, Z3, Z3
	VSQRTPS   Z3, Z4
	VDIVPS    Z14, Z4, Z4
	VADDPS    Z15, Z4, Z4
	VDIVPS    Z4, Z2, Z5
	VMULPS    Z13, Z5, Z5
	VSUBPS    Z5, Z1, Z1
	VMOVUPS   Z1, K1, (DI)
	VMOVUPS   Z2, K1, (DX)
	VMOVUPS   Z3, K1, (R8)

adam_done:
	VZEROUPPER
	RET

// ---- float64 reductions (Σ x², Σ a·b·c): 8 doubles per zmm, two
// accumulators (lanes of 16 floats: low 8, high 8), summed at the end.

// CVT16(off, base, lo, hi): 16 floats at off(base) as doubles.
#define CVT16(src, src8, lo, hi) \
	VCVTPS2PD src, lo \
	VCVTPS2PD src8, hi

// HSUM8D leaves the sum of Z's 8 doubles in X's low lane (Y1/X1 clobbered).
#define HSUM8D(Z, Y, X) \
	VEXTRACTF64X4 $1, Z, Y1 \
	VADDPD        Y1, Y, Y  \
	VEXTRACTF128  $1, Y, X1 \
	VADDPD        X1, X, X  \
	VPERMILPD     $1, X, X1 \
	VADDSD        X1, X, X

// TAILMASK2 splits the n%16 tail into K1 (lanes 0–7) and K2 (8–15).
#define TAILMASK2 \
	TAILMASK      \
	KMOVW K1, AX  \
	MOVQ  AX, BX  \
	SHRQ  $8, BX  \
	KMOVW BX, K2  \
	ANDQ  $255, AX \
	KMOVW AX, K1

// func sumSqAVX512(x *float32, n int) float64
TEXT ·sumSqAVX512(SB), NOSPLIT, $0-24
	MOVQ   x+0(FP), SI
	MOVQ   n+8(FP), CX
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	TAILMASK2
	TESTQ  CX, CX
	JZ     ssq_tail

ssq_loop:
	CVT16((SI), 32(SI), Z0, Z1)
	VFMADD231PD Z0, Z0, Z6
	VFMADD231PD Z1, Z1, Z7
	ADDQ        $64, SI
	DECQ        CX
	JNZ         ssq_loop

ssq_tail:
	VCVTPS2PD.Z (SI), K1, Z0
	VCVTPS2PD.Z 32(SI), K2, Z1
	VFMADD231PD Z0, Z0, Z6
	VFMADD231PD Z1, Z1, Z7
	VADDPD      Z7, Z6, Z6
	HSUM8D(Z6, Y6, X6)
	VMOVSD      X6, ret+16(FP)
	VZEROUPPER
	RET

// func dot3AVX512(a, b, c *float32, n int) float64
TEXT ·dot3AVX512(SB), NOSPLIT, $0-40
	MOVQ   a+0(FP), SI
	MOVQ   b+8(FP), DI
	MOVQ   c+16(FP), DX
	MOVQ   n+24(FP), CX
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	TAILMASK2
	TESTQ  CX, CX
	JZ     d3_tail

d3_loop:
	CVT16((SI), 32(SI), Z0, Z1)
	CVT16((DI), 32(DI), Z2, Z3)
	CVT16((DX), 32(DX), Z4, Z5)
	VMULPD      Z2, Z0, Z0
	VMULPD      Z3, Z1, Z1
	VFMADD231PD Z4, Z0, Z6
	VFMADD231PD Z5, Z1, Z7
	ADDQ        $64, SI
	ADDQ        $64, DI
	ADDQ        $64, DX
	DECQ        CX
	JNZ         d3_loop

d3_tail:
	VCVTPS2PD.Z (SI), K1, Z0
	VCVTPS2PD.Z 32(SI), K2, Z1
	VCVTPS2PD.Z (DI), K1, Z2
	VCVTPS2PD.Z 32(DI), K2, Z3
	VCVTPS2PD.Z (DX), K1, Z4
	VCVTPS2PD.Z 32(DX), K2, Z5
	VMULPD      Z2, Z0, Z0
	VMULPD      Z3, Z1, Z1
	VFMADD231PD Z4, Z0, Z6
	VFMADD231PD Z5, Z1, Z7
	VADDPD      Z7, Z6, Z6
	HSUM8D(Z6, Y6, X6)
	VMOVSD      X6, ret+32(FP)
	VZEROUPPER
	RET

// ---- SwiGLU: vec_amd64.s's AVX2 loops on 16 lanes, same operations.

// SIGMOID16 sets S = 1/(1+e^(−G)); Z must be zero; T1..T3 clobbered.
#define SIGMOID16(G, S, Z, T1, T2, T3) \
	VSUBPS  G, Z, T3   \
	EXP16(T3, T1, T2)  \
	VADDPS  Z20, T3, T3 \
	VMOVAPS Z20, S     \
	VDIVPS  T3, S, S

// func swigluFwdAVX512(out, gate, up *float32, n int)
TEXT ·swigluFwdAVX512(SB), NOSPLIT, $0-32
	MOVQ   out+0(FP), DI
	MOVQ   gate+8(FP), SI
	MOVQ   up+16(FP), DX
	MOVQ   n+24(FP), CX
	LOADEXP
	VPXORD Z15, Z15, Z15
	TAILMASK
	TESTQ  CX, CX
	JZ     swf512_tail

swf512_loop:
	VMOVUPS (SI), Z0
	SIGMOID16(Z0, Z4, Z15, Z1, Z2, Z3)
	VMULPS  Z4, Z0, Z0
	VMULPS  (DX), Z0, Z0
	VMOVUPS Z0, (DI)
	ADDQ    $64, SI
	ADDQ    $64, DX
	ADDQ    $64, DI
	DECQ    CX
	JNZ     swf512_loop

swf512_tail:
	KTESTW    K1, K1
	JZ        swf512_done
	VMOVUPS.Z (SI), K1, Z0
	SIGMOID16(Z0, Z4, Z15, Z1, Z2, Z3)
	VMULPS    Z4, Z0, Z0
	VMOVUPS.Z (DX), K1, Z5
	VMULPS    Z5, Z0, Z0
	VMOVUPS   Z0, K1, (DI)

swf512_done:
	VZEROUPPER
	RET

// func swigluBwdAVX512(dgate, dup, dout, gate, up *float32, n int)
// dgate = dout·up·σ·(1+g·(1−σ)), dup = dout·g·σ; dgate or dup may alias
// dout (all loads of a vector happen before its stores).
TEXT ·swigluBwdAVX512(SB), NOSPLIT, $0-48
	MOVQ   dgate+0(FP), DI
	MOVQ   dup+8(FP), R8
	MOVQ   dout+16(FP), SI
	MOVQ   gate+24(FP), DX
	MOVQ   up+32(FP), R9
	MOVQ   n+40(FP), CX
	LOADEXP
	VPXORD Z15, Z15, Z15
	TAILMASK
	TESTQ  CX, CX
	JZ     swb512_tail

swb512_loop:
	VMOVUPS (DX), Z0 // g
	VMOVUPS (SI), Z5 // d
	VMOVUPS (R9), Z6 // u
	SIGMOID16(Z0, Z4, Z15, Z1, Z2, Z3)
	VMULPS      Z4, Z0, Z7   // g·σ
	VMULPS      Z5, Z7, Z8   // dup = d·g·σ
	VSUBPS      Z4, Z20, Z10 // 1−σ
	VFMADD213PS Z20, Z0, Z10 // 1 + g·(1−σ)
	VMULPS      Z6, Z5, Z11  // d·u
	VMULPS      Z4, Z11, Z11 // d·u·σ
	VMULPS      Z10, Z11, Z11
	VMOVUPS     Z11, (DI)
	VMOVUPS     Z8, (R8)
	ADDQ        $64, DX
	ADDQ        $64, SI
	ADDQ        $64, R9
	ADDQ        $64, DI
	ADDQ        $64, R8
	DECQ        CX
	JNZ         swb512_loop

swb512_tail:
	KTESTW      K1, K1
	JZ          swb512_done
	VMOVUPS.Z   (DX), K1, Z0
	VMOVUPS.Z   (SI), K1, Z5
	VMOVUPS.Z   (R9), K1, Z6
	SIGMOID16(Z0, Z4, Z15, Z1, Z2, Z3)
	VMULPS      Z4, Z0, Z7
	VMULPS      Z5, Z7, Z8
	VSUBPS      Z4, Z20, Z10
	VFMADD213PS Z20, Z0, Z10
	VMULPS      Z6, Z5, Z11
	VMULPS      Z4, Z11, Z11
	VMULPS      Z10, Z11, Z11
	VMOVUPS     Z11, K1, (DI)
	VMOVUPS     Z8, K1, (R8)

swb512_done:
	VZEROUPPER
	RET
