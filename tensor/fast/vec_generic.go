//go:build !amd64 || purego

package fast

func expSub(dst, src []float32, shift float32) float32 { return expSubGo(dst, src, shift) }
func swigluFwd(out, gate, up []float32)                { swigluFwdGo(out, gate, up) }
func swigluBwd(dgate, dup, dout, gate, up []float32) {
	swigluBwdGo(dgate, dup, dout, gate, up)
}
func vmax(x []float32) float32                { return maxGo(x) }
func dot(x, y []float32) float32              { return dotGo(x, y) }
func scale(x []float32, alpha float32)        { scaleGo(x, alpha) }
func dsRow(ds, p []float32, d, scale float32) { dsRowGo(ds, p, d, scale) }

func expRow(row []float32, valid int, floor float32) (mx, sum float32) {
	return expRowGo(row, valid, floor)
}

func expRows(s []float32, ld, rows, n, v0 int, mx, sum []float32) {
	expRowsGo(s, ld, rows, n, v0, mx, sum)
}

func expShiftRows(s []float32, ld, rows, n, v0 int, shift, sum []float32) {
	expShiftRowsGo(s, ld, rows, n, v0, shift, sum)
}

func sumSq(x []float32) float64                       { return sumSqGo(x) }
func dot3(a, b, c []float32) float64                  { return dot3Go(a, b, c) }
func rmsScale(out, x, w []float32, rs float32)        { rmsScaleGo(out, x, w, rs) }
func ropeRotate(x1, x2, c, s []float32, sign float32) { ropeRotateGo(x1, x2, c, s, sign) }

func ropeRotateHeads(row []float32, heads, headDim int, c, s []float32, sign float32) {
	ropeRotateHeadsGo(row, heads, headDim, c, s, sign)
}
func adamw(p, g, m, v []float32, c *adamConsts) { adamwGo(p, g, m, v, c) }
func rmsBackRow(dx, pw, dy, x, w []float32, rs, c float32) {
	rmsBackRowGo(dx, pw, dy, x, w, rs, c)
}
