//go:build amd64 && !purego

package parallel

import "golang.org/x/sys/cpu"

// The reductions every reducing collective applies to received data, in
// assembly (reduce_amd64.s): AVX-512 where the CPU has it, else AVX2, else
// the pure-Go loops of comm_kernel.go. The assembly does the largest
// multiple of the vector width; Go does the tail.

func hasAVX512() bool { return cpu.X86.HasAVX512F }
func hasAVX2() bool   { return cpu.X86.HasAVX2 }

//go:noescape
func addAVX512(dst, src *float32, n int)

//go:noescape
func addAVX2(dst, src *float32, n int)

//go:noescape
func maxAVX512(dst, src *float32, n int)

//go:noescape
func maxAVX2(dst, src *float32, n int)

//go:noescape
func scaleAVX512(x *float32, n int, d float32)

//go:noescape
func scaleAVX2(x *float32, n int, d float32)

// addTo sets dst[i] += src[i] for i < min(len(dst), len(src)).
func addTo(dst, src []float32) {
	n := min(len(dst), len(src))
	v := 0
	switch {
	case n >= 16 && hasAVX512():
		v = n &^ 15
		addAVX512(&dst[0], &src[0], v)
	case n >= 8 && hasAVX2():
		v = n &^ 7
		addAVX2(&dst[0], &src[0], v)
	}
	if v < n {
		addToGo(dst[v:n], src[v:n])
	}
}

// maxTo sets dst[i] = max(dst[i], src[i]), a NaN on either side giving NaN
// (max32's rule, bit for bit).
func maxTo(dst, src []float32) {
	n := min(len(dst), len(src))
	v := 0
	switch {
	case n >= 16 && hasAVX512():
		v = n &^ 15
		maxAVX512(&dst[0], &src[0], v)
	case n >= 8 && hasAVX2():
		v = n &^ 7
		maxAVX2(&dst[0], &src[0], v)
	}
	if v < n {
		maxToGo(dst[v:n], src[v:n])
	}
}

// scale sets x[i] /= n.
func scale(x []float32, n int) {
	d := float32(n)
	v := 0
	switch {
	case len(x) >= 16 && hasAVX512():
		v = len(x) &^ 15
		scaleAVX512(&x[0], v, d)
	case len(x) >= 8 && hasAVX2():
		v = len(x) &^ 7
		scaleAVX2(&x[0], v, d)
	}
	if v < len(x) {
		scaleGo(x[v:], d)
	}
}
