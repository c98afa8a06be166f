//go:build amd64 && !purego

package fast

func expSub(dst, src []float32, shift float32) float32 { return expSubGo(dst, src, shift) }
func vmax(x []float32) float32                         { return maxGo(x) }
func sumSq(x []float32) float64                        { return sumSqGo(x) }
func dot(x, y []float32) float32                       { return dotGo(x, y) }
func dot3(a, b, c []float32) float64                   { return dot3Go(a, b, c) }
func rmsScale(out, x, w []float32, rs float32)         { rmsScaleGo(out, x, w, rs) }
func rmsBackRow(dx, pw, dy, x, w []float32, rs, c float32) {
	rmsBackRowGo(dx, pw, dy, x, w, rs, c)
}
func addTo(dst, src []float32)                        { addToGo(dst, src) }
func scale(x []float32, alpha float32)                { scaleGo(x, alpha) }
func ropeRotate(x1, x2, c, s []float32, sign float32) { ropeRotateGo(x1, x2, c, s, sign) }
func swigluFwd(out, gate, up []float32)               { swigluFwdGo(out, gate, up) }
func swigluBwd(dgate, dup, dout, gate, up []float32) {
	swigluBwdGo(dgate, dup, dout, gate, up)
}
func adamw(p, g, m, v []float32, c *adamConsts) { adamwGo(p, g, m, v, c) }
