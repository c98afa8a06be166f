//go:build !amd64 || purego

package fast

// fusedFwdKernel: no register-tiled forward kernel off amd64 (or with
// purego); the tile path of attention.go runs everywhere.
func fusedFwdKernel(T, D, nr int) func(q *float32, ldq int, kt, v *float32, ldv int, o *float32, nblk, v0 int, scale float32, ml *float32) {
	return nil
}

// fusedBwdKernel: none either (see fusedFwdKernel).
func fusedBwdKernel(T, D, nr int) func(q, dout, dq *float32, ldq int, kt, vt, k, dk, dv *float32, ldk int, lse, dd *float32, nblk, v0 int, scale float32) {
	return nil
}
