//go:build !amd64 || purego

package fast

func expSub(dst, src []float32, shift float32) float32 { return expSubGo(dst, src, shift) }
func swigluFwd(out, gate, up []float32)                { swigluFwdGo(out, gate, up) }
func swigluBwd(dgate, dup, dout, gate, up []float32) {
	swigluBwdGo(dgate, dup, dout, gate, up)
}
