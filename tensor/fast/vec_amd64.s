//go:build !purego

#include "textflag.h"

// Vectorized e^x for 8 float32 lanes (AVX2+FMA), the Cephes expf scheme of
// exp32: clamp to ±88.376 (below −88.376 the result flushes to 0), split
// x = n·ln2 + r, degree-6 polynomial for e^r, scale by 2^n through the
// exponent bits. ≈1 ulp in the normal range. X is input and output; T1 and
// T2 are clobbered.
#define EXP8(X, T1, T2) \
	VMINPS       exphi<>(SB), X, X  \
	VMAXPS       explo<>(SB), X, X  \
	VMOVUPS      log2e<>(SB), T1    \
	VFMADD213PS  half<>(SB), X, T1  \
	VROUNDPS     $1, T1, T1         \
	VFNMADD231PS ln2hi<>(SB), T1, X \
	VFNMADD231PS ln2lo<>(SB), T1, X \
	VMOVUPS      p0<>(SB), T2       \
	VFMADD213PS  p1<>(SB), X, T2    \
	VFMADD213PS  p2<>(SB), X, T2    \
	VFMADD213PS  p3<>(SB), X, T2    \
	VFMADD213PS  p4<>(SB), X, T2    \
	VFMADD213PS  p5<>(SB), X, T2    \
	VMULPS       X, T2, T2          \
	VFMADD213PS  X, X, T2           \
	VADDPS       one<>(SB), T2, T2  \
	VCVTTPS2DQ   T1, T1             \
	VPADDD       bias<>(SB), T1, T1 \
	VPSLLD       $23, T1, T1        \
	VMULPS       T1, T2, X

#define CONST8(name, bits) \
	DATA name+0(SB)/4, bits  \
	DATA name+4(SB)/4, bits  \
	DATA name+8(SB)/4, bits  \
	DATA name+12(SB)/4, bits \
	DATA name+16(SB)/4, bits \
	DATA name+20(SB)/4, bits \
	DATA name+24(SB)/4, bits \
	DATA name+28(SB)/4, bits \
	GLOBL name(SB), RODATA|NOPTR, $32

CONST8(exphi<>, $88.3762626647949)
CONST8(explo<>, $-88.3762626647949)
CONST8(log2e<>, $1.44269504088896341)
CONST8(half<>, $0.5)
CONST8(one<>, $1.0)
CONST8(ln2hi<>, $0.693359375)
CONST8(ln2lo<>, $-2.12194440e-4)
CONST8(p0<>, $1.9875691500e-4)
CONST8(p1<>, $1.3981999507e-3)
CONST8(p2<>, $8.3334519073e-3)
CONST8(p3<>, $4.1665795894e-2)
CONST8(p4<>, $1.6666665459e-1)
CONST8(p5<>, $5.0000001201e-1)
CONST8(bias<>, $127)

// func expSubAVX2(dst, src *float32, n int, shift float32) float32
// n is a positive multiple of 8.
TEXT ·expSubAVX2(SB), NOSPLIT, $0-36
	MOVQ         dst+0(FP), DI
	MOVQ         src+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSS shift+24(FP), Y7
	VXORPS       Y6, Y6, Y6

expsub_loop:
	VMOVUPS (SI), Y0
	VSUBPS  Y7, Y0, Y0
	EXP8(Y0, Y1, Y2)
	VMOVUPS Y0, (DI)
	VADDPS  Y0, Y6, Y6
	ADDQ    $32, SI
	ADDQ    $32, DI
	SUBQ    $8, CX
	JNZ     expsub_loop

	VEXTRACTF128 $1, Y6, X1
	VADDPS       X1, X6, X6
	VMOVHLPS     X6, X1, X1
	VADDPS       X1, X6, X6
	VPSHUFD      $1, X6, X1
	VADDSS       X1, X6, X6
	VMOVSS       X6, ret+32(FP)
	VZEROUPPER
	RET

// SIGMOID8 sets S = 1/(1+e^(−G)); Z must be zero; T1..T3 are clobbered.
#define SIGMOID8(G, S, Z, T1, T2, T3) \
	VSUBPS  G, Z, T3          \
	EXP8(T3, T1, T2)          \
	VADDPS  one<>(SB), T3, T3 \
	VMOVUPS one<>(SB), S      \
	VDIVPS  T3, S, S

// func swigluFwdAVX2(out, gate, up *float32, n int)
// out = gate·σ(gate)·up; n is a positive multiple of 8.
TEXT ·swigluFwdAVX2(SB), NOSPLIT, $0-32
	MOVQ   out+0(FP), DI
	MOVQ   gate+8(FP), SI
	MOVQ   up+16(FP), DX
	MOVQ   n+24(FP), CX
	VXORPS Y15, Y15, Y15

swf_loop:
	VMOVUPS (SI), Y0
	SIGMOID8(Y0, Y4, Y15, Y1, Y2, Y3)
	VMULPS  Y4, Y0, Y0
	VMULPS  (DX), Y0, Y0
	VMOVUPS Y0, (DI)
	ADDQ    $32, SI
	ADDQ    $32, DX
	ADDQ    $32, DI
	SUBQ    $8, CX
	JNZ     swf_loop
	VZEROUPPER
	RET

// func swigluBwdAVX2(dgate, dup, dout, gate, up *float32, n int)
// dgate = dout·up·σ·(1+g·(1−σ)), dup = dout·g·σ; dgate or dup may alias
// dout (all loads of a vector happen before its stores).
TEXT ·swigluBwdAVX2(SB), NOSPLIT, $0-48
	MOVQ   dgate+0(FP), DI
	MOVQ   dup+8(FP), R8
	MOVQ   dout+16(FP), SI
	MOVQ   gate+24(FP), DX
	MOVQ   up+32(FP), R9
	MOVQ   n+40(FP), CX
	VXORPS Y15, Y15, Y15

swb_loop:
	VMOVUPS (DX), Y0              // g
	VMOVUPS (SI), Y5              // d
	VMOVUPS (R9), Y6              // u
	SIGMOID8(Y0, Y4, Y15, Y1, Y2, Y3)
	VMULPS  Y4, Y0, Y7            // g·σ
	VMULPS  Y5, Y7, Y8            // dup = d·g·σ
	VMOVUPS one<>(SB), Y9
	VSUBPS  Y4, Y9, Y10           // 1−σ
	VFMADD213PS Y9, Y0, Y10       // 1 + g·(1−σ)
	VMULPS  Y6, Y5, Y11           // d·u
	VMULPS  Y4, Y11, Y11          // d·u·σ
	VMULPS  Y10, Y11, Y11
	VMOVUPS Y11, (DI)
	VMOVUPS Y8, (R8)
	ADDQ    $32, DX
	ADDQ    $32, SI
	ADDQ    $32, R9
	ADDQ    $32, DI
	ADDQ    $32, R8
	SUBQ    $8, CX
	JNZ     swb_loop
	VZEROUPPER
	RET
