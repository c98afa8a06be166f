package gemm

import "unsafe"

// kernelGeneric is the pure-Go 4×4 kernel over packed panels: the
// strided form with the panels' strides (A: rsa 1, csa 4; B: 4).
func kernelGeneric(k int, a, b, c *float32, ldc int, load int, alpha float32) {
	kernelGenericS(k, a, 1, 4, b, 4, c, ldc, load, alpha)
}

// kernelGenericS is kernelGeneric on operands in place: A(i, p) at
// a[i·rsa + p·csa], B(p, j) at b[p·ldb + j].
func kernelGenericS(k int, a *float32, rsa, csa int, b *float32, ldb int, c *float32, ldc int, load int, alpha float32) {
	var ap, bp []float32
	if k > 0 {
		ap = unsafe.Slice(a, 3*rsa+(k-1)*csa+1)
		bp = unsafe.Slice(b, (k-1)*ldb+4)
	}
	cs := unsafe.Slice(c, 3*ldc+4)
	var acc [4][4]float32
	if load != 0 {
		for i := range 4 {
			acc[i] = *(*[4]float32)(cs[i*ldc:])
		}
	}
	c00, c01, c02, c03 := acc[0][0], acc[0][1], acc[0][2], acc[0][3]
	c10, c11, c12, c13 := acc[1][0], acc[1][1], acc[1][2], acc[1][3]
	c20, c21, c22, c23 := acc[2][0], acc[2][1], acc[2][2], acc[2][3]
	c30, c31, c32, c33 := acc[3][0], acc[3][1], acc[3][2], acc[3][3]
	for p := 0; p < k; p++ {
		o := p * csa
		a0, a1, a2, a3 := ap[o], ap[o+rsa], ap[o+2*rsa], ap[o+3*rsa]
		bv := bp[p*ldb : p*ldb+4 : p*ldb+4]
		b0, b1, b2, b3 := bv[0], bv[1], bv[2], bv[3]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		c20 += a2 * b0
		c21 += a2 * b1
		c22 += a2 * b2
		c23 += a2 * b3
		c30 += a3 * b0
		c31 += a3 * b1
		c32 += a3 * b2
		c33 += a3 * b3
	}
	acc = [4][4]float32{
		{c00, c01, c02, c03},
		{c10, c11, c12, c13},
		{c20, c21, c22, c23},
		{c30, c31, c32, c33},
	}
	for i := 0; i < 4; i++ {
		row := cs[i*ldc : i*ldc+4 : i*ldc+4]
		for j := 0; j < 4; j++ {
			row[j] = alpha * acc[i][j]
		}
	}
}
