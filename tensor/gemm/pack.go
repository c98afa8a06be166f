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
			for p := 0; p < kc; p++ {
				src := a[(pc+p)*lda+ic+ir:]
				d := panel[p*mr : p*mr+mr]
				copy(d, src[:rows])
				clear(d[rows:])
			}
			continue
		}
		for i := 0; i < rows; i++ {
			src := a[(ic+ir+i)*lda+pc : (ic+ir+i)*lda+pc+kc]
			gather(panel[i:], src, mr)
		}
		for i := rows; i < mr; i++ {
			for p := 0; p < kc; p++ {
				panel[p*mr+i] = 0
			}
		}
	}
}

// packB packs op(B)[pc:pc+kc, jc:jc+nc] into dst. Without trans, B is stored
// k×n, so each k step of a panel is a contiguous run of NR elements.
func packB(dst []float32, trans bool, b []float32, ldb, pc, jc, kc, nc, nr int) {
	for jr := 0; jr < nc; jr += nr {
		cols := min(nr, nc-jr)
		panel := dst[jr*kc : jr*kc+kc*nr]
		if !trans {
			for p := 0; p < kc; p++ {
				src := b[(pc+p)*ldb+jc+jr:]
				d := panel[p*nr : p*nr+nr]
				copy(d, src[:cols])
				clear(d[cols:])
			}
			continue
		}
		for j := 0; j < cols; j++ {
			src := b[(jc+jr+j)*ldb+pc : (jc+jr+j)*ldb+pc+kc]
			gather(panel[j:], src, nr)
		}
		for j := cols; j < nr; j++ {
			for p := 0; p < kc; p++ {
				panel[p*nr+j] = 0
			}
		}
	}
}

// gather writes src[p] to dst[p*stride] for every p.
func gather(dst, src []float32, stride int) {
	if len(src) == 0 {
		return
	}
	_ = dst[(len(src)-1)*stride]
	for p, v := range src {
		dst[p*stride] = v
	}
}
