package gemm

// Packed layouts (BLIS): A is cut into MR-row micro-panels, each stored
// k-major (panel[p*MR+i] = A(i,p)); B into NR-column micro-panels, each
// stored k-major (panel[p*NR+j] = B(p,j)). Rows or columns past the matrix
// edge are zero so the micro-kernel always runs on full tiles.

// packA packs op(A)[ic:ic+mc, pc:pc+kc] into dst. With trans, A is stored
// k×m, so each k step of a panel is a contiguous run of MR elements.
func packA(dst []float32, trans bool, a []float32, lda, ic, pc, mc, kc, mr int) {
	for ir := 0; ir < mc; ir += mr {
		rows := min(mr, mc-ir)
		panel := dst[ir*kc : ir*kc+kc*mr]
		if trans {
			packCols(panel, a, pc*lda+ic+ir, lda, rows, kc, mr)
			continue
		}
		packRows(panel, a, (ic+ir)*lda+pc, lda, rows, kc, mr)
	}
}

// packB packs op(B)[pc:pc+kc, jc:jc+nc] into dst. Without trans, B is stored
// k×n, so each k step of a panel is a contiguous run of NR elements.
func packB(dst []float32, trans bool, b []float32, ldb, pc, jc, kc, nc, nr int) {
	for jr := 0; jr < nc; jr += nr {
		cols := min(nr, nc-jr)
		panel := dst[jr*kc : jr*kc+kc*nr]
		if !trans {
			packCols(panel, b, pc*ldb+jc+jr, ldb, cols, kc, nr)
			continue
		}
		packRows(panel, b, (jc+jr)*ldb+pc, ldb, cols, kc, nr)
	}
}

// packCols copies kc runs of n ≤ width contiguous elements, starting at
// src[off] with stride ld, to dst[p*width:], zero-filling each run to width.
// Full runs of the kernel widths move as constant-offset 16-byte array
// copies (one vector load and store each): copy() would call memmove for
// every run, and whole-array copies of 64 bytes compile to memmove too.
func packCols(dst, src []float32, off, ld, n, kc, width int) {
	dst = dst[:kc*width]
	if n == width {
		switch width {
		case 6:
			for p := 0; p < kc; p++ {
				s := (*[6]float32)(src[off+p*ld:])
				d := (*[6]float32)(dst[p*6:])
				*(*[4]float32)(d[0:]) = *(*[4]float32)(s[0:])
				*(*[2]float32)(d[4:]) = *(*[2]float32)(s[4:])
			}
			return
		case 14:
			for p := 0; p < kc; p++ {
				s := (*[14]float32)(src[off+p*ld:])
				d := (*[14]float32)(dst[p*14:])
				*(*[4]float32)(d[0:]) = *(*[4]float32)(s[0:])
				*(*[4]float32)(d[4:]) = *(*[4]float32)(s[4:])
				*(*[4]float32)(d[8:]) = *(*[4]float32)(s[8:])
				*(*[2]float32)(d[12:]) = *(*[2]float32)(s[12:])
			}
			return
		case 16:
			for p := 0; p < kc; p++ {
				s := (*[16]float32)(src[off+p*ld:])
				d := (*[16]float32)(dst[p*16:])
				*(*[4]float32)(d[0:]) = *(*[4]float32)(s[0:])
				*(*[4]float32)(d[4:]) = *(*[4]float32)(s[4:])
				*(*[4]float32)(d[8:]) = *(*[4]float32)(s[8:])
				*(*[4]float32)(d[12:]) = *(*[4]float32)(s[12:])
			}
			return
		case 32:
			for p := 0; p < kc; p++ {
				s := (*[32]float32)(src[off+p*ld:])
				d := (*[32]float32)(dst[p*32:])
				*(*[4]float32)(d[0:]) = *(*[4]float32)(s[0:])
				*(*[4]float32)(d[4:]) = *(*[4]float32)(s[4:])
				*(*[4]float32)(d[8:]) = *(*[4]float32)(s[8:])
				*(*[4]float32)(d[12:]) = *(*[4]float32)(s[12:])
				*(*[4]float32)(d[16:]) = *(*[4]float32)(s[16:])
				*(*[4]float32)(d[20:]) = *(*[4]float32)(s[20:])
				*(*[4]float32)(d[24:]) = *(*[4]float32)(s[24:])
				*(*[4]float32)(d[28:]) = *(*[4]float32)(s[28:])
			}
			return
		}
	}
	for p := 0; p < kc; p++ {
		d := dst[p*width : p*width+width]
		copy(d, src[off+p*ld:off+p*ld+n])
		clear(d[n:])
	}
}

// packRows interleaves n ≤ width rows of length kc, starting at src[off]
// with stride ld, into dst[p*width+i] = row_i[p], zero-filling rows n..width.
// Reading all rows in the same pass keeps several sequential streams going
// (one strided row at a time defeats the prefetcher) and writes dst
// sequentially.
func packRows(dst, src []float32, off, ld, n, kc, width int) {
	var rows [32][]float32
	for i := 0; i < n; i++ {
		rows[i] = src[off+i*ld : off+i*ld+kc]
	}
	dst = dst[:kc*width]
	if n == width && width == 6 {
		r0, r1, r2, r3, r4, r5 := rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]
		for p := 0; p < kc; p++ {
			d := dst[p*6 : p*6+6 : p*6+6]
			d[0], d[1], d[2], d[3], d[4], d[5] = r0[p], r1[p], r2[p], r3[p], r4[p], r5[p]
		}
		return
	}
	for p := 0; p < kc; p++ {
		d := dst[p*width : p*width+width]
		for i := 0; i < n; i++ {
			d[i] = rows[i][p]
		}
		clear(d[n:])
	}
}
