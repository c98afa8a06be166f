//go:build amd64 && !purego

package fast

//go:noescape
func attnFwd4x32AVX512(q *float32, ldq int, kt, v *float32, ldv int, o *float32, nblk, v0 int, scale float32, ml *float32)

//go:noescape
func attnFwd4x64AVX512(q *float32, ldq int, kt, v *float32, ldv int, o *float32, nblk, v0 int, scale float32, ml *float32)

// fusedFwdKernel returns the register-tiled forward kernel
// (attn512_amd64.s) for sequence length T and head size D, or nil where it
// does not apply: it needs AVX-512, T a multiple of its 16-key blocks, D =
// 32 or 64 and Kᵀ packed in 32-key panels (nr, the tile kernel's NR).
func fusedFwdKernel(T, D, nr int) func(q *float32, ldq int, kt, v *float32, ldv int, o *float32, nblk, v0 int, scale float32, ml *float32) {
	if !useAVX512 || T%16 != 0 || nr != 32 {
		return nil
	}
	switch D {
	case 32:
		return attnFwd4x32AVX512
	case 64:
		return attnFwd4x64AVX512
	}
	return nil
}

//go:noescape
func attnBwd4x32AVX512(q, dout, dq *float32, ldq int, kt, vt, k, dk, dv *float32, ldk int, lse, dd *float32, nblk, v0 int, scale float32)

// fusedBwdKernel is fusedFwdKernel for the backward: head size 32 only.
func fusedBwdKernel(T, D, nr int) func(q, dout, dq *float32, ldq int, kt, vt, k, dk, dv *float32, ldk int, lse, dd *float32, nblk, v0 int, scale float32) {
	if !useAVX512 || T%16 != 0 || nr != 32 || D != 32 {
		return nil
	}
	return attnBwd4x32AVX512
}
