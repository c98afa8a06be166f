package gemm

// Packed layouts (BLIS): A is cut into MR-row micro-panels, each stored
// k-major (panel[p*MR+i] = A(i,p)); B into NR-column micro-panels, each
// stored k-major (panel[p*NR+j] = B(p,j)). Rows or columns past the matrix
// edge are zero so the micro-kernel always runs on full tiles.

// packA packs op(A)[ic:ic+mc, pc:pc+kc] into dst. With trans, A is stored
// k×m, so each k step of a panel is a contiguous run of MR elements.
func packA(dst []float32, trans bool, a []float32, lda, ic, pc, mc, kc, mr int) {
	if trans {
		packColPanels(dst, a, pc*lda+ic, lda, mc, kc, mr)
		return
	}
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
	if !trans {
		packColPanels(dst, b, pc*ldb+jc, ldb, nc, kc, nr)
		return
	}
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

// packColPanels packs the n columns of kc rows (row p at src[off+p*ld:])
// into ceil(n/width) panels of packCols' layout, panel q at
// dst[q*width*kc:]. Full panels are filled a row at a time across all of
// them, so each source row is read once, sequentially — a stream the
// prefetcher follows; packing panel by panel instead reads one short run
// per row at a stride of ld, a cache line and often a page per run
// (measured on Zen 3: A/mr=6/trans 2.5 → 4.1 GB/s, B/nr=16 6.2 → 7.5; on
// a Sapphire-Rapids-class Xeon A/mr=14/trans 9–14 → 14–15 GB/s). Width 32
// stays panel by panel: its sweep writes 128 bytes into each of ~126
// panels 32 KiB apart per row, and measured 14–19 → 9 GB/s on that Xeon.
func packColPanels(dst, src []float32, off, ld, n, kc, width int) {
	full := n / width
	if full > 0 && !packSweepAsm(dst, src, off, ld, full, kc, width) {
		switch width {
		case 6:
			for p := 0; p < kc; p++ {
				row := src[off+p*ld : off+p*ld+full*6]
				for q := range full {
					s := (*[6]float32)(row[q*6:])
					d := (*[6]float32)(dst[q*6*kc+p*6:])
					*(*[4]float32)(d[0:]) = *(*[4]float32)(s[0:])
					*(*[2]float32)(d[4:]) = *(*[2]float32)(s[4:])
				}
			}
		case 14:
			for p := 0; p < kc; p++ {
				row := src[off+p*ld : off+p*ld+full*14]
				for q := range full {
					s := (*[14]float32)(row[q*14:])
					d := (*[14]float32)(dst[q*14*kc+p*14:])
					*(*[4]float32)(d[0:]) = *(*[4]float32)(s[0:])
					*(*[4]float32)(d[4:]) = *(*[4]float32)(s[4:])
					*(*[4]float32)(d[8:]) = *(*[4]float32)(s[8:])
					*(*[2]float32)(d[12:]) = *(*[2]float32)(s[12:])
				}
			}
		case 16:
			for p := 0; p < kc; p++ {
				row := src[off+p*ld : off+p*ld+full*16]
				for q := range full {
					s := (*[16]float32)(row[q*16:])
					d := (*[16]float32)(dst[q*16*kc+p*16:])
					*(*[4]float32)(d[0:]) = *(*[4]float32)(s[0:])
					*(*[4]float32)(d[4:]) = *(*[4]float32)(s[4:])
					*(*[4]float32)(d[8:]) = *(*[4]float32)(s[8:])
					*(*[4]float32)(d[12:]) = *(*[4]float32)(s[12:])
				}
			}
		default:
			for q := range full {
				packCols(dst[q*width*kc:], src, off+q*width, ld, width, kc, width)
			}
		}
	}
	if rem := n - full*width; rem > 0 {
		packCols(dst[full*width*kc:], src, off+full*width, ld, rem, kc, width)
	}
}

// packCols copies kc runs of n ≤ width contiguous elements, starting at
// src[off] with stride ld, to dst[p*width:], zero-filling each run to width.
// Full runs of the kernel widths move as constant-offset 16-byte array
// copies (one vector load and store each): copy() would call memmove for
// every run, and whole-array copies of 64 bytes compile to memmove too.
func packCols(dst, src []float32, off, ld, n, kc, width int) {
	dst = dst[:kc*width]
	if packColsAsm(dst, src, off, ld, n, kc, width) {
		return
	}
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
// Rows go in groups of 8 or 6 read side by side: several sequential streams
// keep the prefetcher busy (one strided row at a time is 3–4× slower), and
// the group's rows are resliced to one length so the loop has no bounds
// checks.
//
// On amd64 with AVX the groups go through packRowsGroup8/6
// (pack_amd64.s): per block of 8 k-steps, 8 rows are loaded 16 bytes at a
// time with row i+4 inserted into the high lane of row i's register, each
// 128-bit lane is transposed 4×4 (VUNPCKLPS/VUNPCKHPS, VSHUFPS) and every
// register then holds one packed k-step, stored as 8 floats (6 rows: 16 +
// 8 bytes, so the panel's other lanes are untouched); the kc%8 tail stays in
// Go. BenchmarkPack, median of 3 on Zen 3: A/mr=6 2.9 → 10.5 GB/s, A/mr=14
// 2.5 → 11.7, B/nr=16/trans 1.9 → 12.3, B/nr=32/trans 1.55 → 11.8. packRows8
// and packRows6 remain the portable path (purego, other architectures) and
// the oracle of pack_test.go.
func packRows(dst, src []float32, off, ld, n, kc, width int) {
	dst = dst[:kc*width]
	i := 0
	for ; n-i >= 8; i += 8 {
		packRowsGroup8(dst[i:], src[off+i*ld:], ld, kc, width)
	}
	if n-i == 6 {
		packRowsGroup6(dst[i:], src[off+i*ld:], ld, kc, width)
		i += 6
	}
	for ; i < n; i++ { // leftover rows: partial panels and the generic kernel
		row := src[off+i*ld : off+i*ld+kc]
		for p, v := range row {
			dst[p*width+i] = v
		}
	}
	for ; i < width; i++ {
		for p := 0; p < kc; p++ {
			dst[p*width+i] = 0
		}
	}
}

func packRows8(dst, src []float32, ld, kc, width int) {
	r0 := src[:kc]
	r1 := src[ld : ld+kc][:len(r0)]
	r2 := src[2*ld : 2*ld+kc][:len(r0)]
	r3 := src[3*ld : 3*ld+kc][:len(r0)]
	r4 := src[4*ld : 4*ld+kc][:len(r0)]
	r5 := src[5*ld : 5*ld+kc][:len(r0)]
	r6 := src[6*ld : 6*ld+kc][:len(r0)]
	r7 := src[7*ld : 7*ld+kc][:len(r0)]
	for p, v := range r0 {
		d := (*[8]float32)(dst[p*width:])
		d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = v, r1[p], r2[p], r3[p], r4[p], r5[p], r6[p], r7[p]
	}
}

func packRows6(dst, src []float32, ld, kc, width int) {
	r0 := src[:kc]
	r1 := src[ld : ld+kc][:len(r0)]
	r2 := src[2*ld : 2*ld+kc][:len(r0)]
	r3 := src[3*ld : 3*ld+kc][:len(r0)]
	r4 := src[4*ld : 4*ld+kc][:len(r0)]
	r5 := src[5*ld : 5*ld+kc][:len(r0)]
	for p, v := range r0 {
		d := (*[6]float32)(dst[p*width:])
		d[0], d[1], d[2], d[3], d[4], d[5] = v, r1[p], r2[p], r3[p], r4[p], r5[p]
	}
}
