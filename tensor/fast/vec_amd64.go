//go:build amd64 && !purego

package fast

import "golang.org/x/sys/cpu"

// useAVX2 selects the assembly loops (vec_amd64.s); without AVX2+FMA every
// primitive falls back to its pure-Go version.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

//go:noescape
func expSubAVX2(dst, src *float32, n int, shift float32) float32

//go:noescape
func swigluFwdAVX2(out, gate, up *float32, n int)

//go:noescape
func swigluBwdAVX2(dgate, dup, dout, gate, up *float32, n int)

func expSub(dst, src []float32, shift float32) float32 {
	n := len(dst)
	src = src[:n]
	v := n &^ 7
	if !useAVX2 || v == 0 {
		return expSubGo(dst, src, shift)
	}
	s := expSubAVX2(&dst[0], &src[0], v, shift)
	if v < n {
		s += expSubGo(dst[v:], src[v:], shift)
	}
	return s
}

func swigluFwd(out, gate, up []float32) {
	n := len(out)
	gate, up = gate[:n], up[:n]
	v := n &^ 7
	if useAVX2 && v > 0 {
		swigluFwdAVX2(&out[0], &gate[0], &up[0], v)
	} else {
		v = 0
	}
	swigluFwdGo(out[v:], gate[v:], up[v:])
}

func swigluBwd(dgate, dup, dout, gate, up []float32) {
	n := len(dout)
	dgate, dup, gate, up = dgate[:n], dup[:n], gate[:n], up[:n]
	v := n &^ 7
	if useAVX2 && v > 0 {
		swigluBwdAVX2(&dgate[0], &dup[0], &dout[0], &gate[0], &up[0], v)
	} else {
		v = 0
	}
	swigluBwdGo(dgate[v:], dup[v:], dout[v:], gate[v:], up[v:])
}
