package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loomtrain/loom/tensor/gemm"
)

var oddSizes = []int{1, 7, 17, 63, 65}

func randSlice(rng *rand.Rand, n int, std float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * std)
	}
	return x
}

// weightedSum is the scalar loss Σ c·y used by the gradient checks; its
// gradient with respect to y is c.
func weightedSum(c, y []float32) float64 {
	var s float64
	for i := range y {
		s += float64(c[i]) * float64(y[i])
	}
	return s
}

// gradCheck compares analytic with float32 central differences of loss with
// respect to x, and fails with the worst element if the relative L2 error is
// above tol.
func gradCheck(t *testing.T, name string, x, analytic []float32, loss func() float64, tol float64) {
	t.Helper()
	const h = 1e-2
	var num2, diff2 float64
	worst, worstAt, worstNum := 0.0, -1, 0.0
	for i := range x {
		orig := x[i]
		x[i] = orig + h
		lp := loss()
		x[i] = orig - h
		lm := loss()
		x[i] = orig
		num := (lp - lm) / (2 * h)
		d := num - float64(analytic[i])
		num2 += num * num
		diff2 += d * d
		if math.Abs(d) > worst {
			worst, worstAt, worstNum = math.Abs(d), i, num
		}
	}
	rel := math.Sqrt(diff2) / math.Max(math.Sqrt(num2), 1e-6)
	if rel > tol || math.IsNaN(rel) {
		t.Errorf("%s: relative L2 error %.3g > %.3g; worst at [%d]: numeric %.6g analytic %.6g",
			name, rel, tol, worstAt, worstNum, analytic[worstAt])
	}
}

func maxAbsDiff(a, b []float32) (float64, int) {
	worst, at := 0.0, -1
	for i := range a {
		if d := math.Abs(float64(a[i]) - float64(b[i])); d > worst || math.IsNaN(d) {
			worst, at = d, i
		}
	}
	return worst, at
}

func TestSgemmMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var k Reference
	for _, transA := range []bool{false, true} {
		for _, transB := range []bool{false, true} {
			for _, m := range oddSizes {
				for _, n := range []int{1, 7, 65} {
					for _, kk := range []int{1, 17, 63} {
						for _, beta := range []float32{0, 1, 0.5} {
							name := fmt.Sprintf("tA=%v tB=%v m=%d n=%d k=%d beta=%v", transA, transB, m, n, kk, beta)
							testSgemmCase(t, rng, k, name, transA, transB, m, n, kk, 0.75, beta)
						}
					}
				}
			}
		}
	}
}

func testSgemmCase(t *testing.T, rng *rand.Rand, k Reference, name string, transA, transB bool, m, n, kk int, alpha, beta float32) {
	t.Helper()
	ar, ac := m, kk
	if transA {
		ar, ac = kk, m
	}
	br, bc := kk, n
	if transB {
		br, bc = n, kk
	}
	lda, ldb, ldc := ac+3, bc+1, n+2 // padded strides
	a := randSlice(rng, ar*lda, 1)
	b := randSlice(rng, br*ldb, 1)
	c := randSlice(rng, m*ldc, 1)
	if beta == 0 {
		for i := range c {
			if i%ldc < n {
				c[i] = float32(math.NaN()) // must not propagate when beta == 0
			}
		}
	}
	want := make([]float32, len(c))
	copy(want, c)
	gemm.Reference(transA, transB, m, n, kk, alpha, a, lda, b, ldb, beta, want, ldc)
	k.Sgemm(transA, transB, m, n, kk, alpha, a, lda, b, ldb, beta, c, ldc)
	worst, at := maxAbsDiff(c, want)
	if worst > 1e-4*math.Sqrt(float64(kk)) {
		t.Fatalf("%s: max |diff| %.3g at C[%d,%d] (got %v want %v)", name, worst, at/ldc, at%ldc, c[at], want[at])
	}
	// Padding columns of C must be untouched.
	for i := 0; i < m; i++ {
		for j := n; j < ldc; j++ {
			if c[i*ldc+j] != want[i*ldc+j] {
				t.Fatalf("%s: padding C[%d,%d] was written", name, i, j)
			}
		}
	}
}

func TestRMSNormGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var k Reference
	for _, rows := range []int{1, 7} {
		for _, dim := range oddSizes {
			name := fmt.Sprintf("rows=%d dim=%d", rows, dim)
			x := randSlice(rng, rows*dim, 1)
			w := randSlice(rng, dim, 1)
			c := randSlice(rng, rows*dim, 1)
			out := make([]float32, rows*dim)
			rstd := make([]float32, rows)
			eps := float32(1e-5)
			if dim == 1 {
				eps = 0.5 // with one element, x·rsqrt(x²+eps) is a near-step at 0; smooth it for finite differences
			}
			loss := func() float64 {
				k.RMSNormForward(out, rstd, x, w, rows, dim, eps)
				return weightedSum(c, out)
			}
			loss()
			// Check the forward against the definition.
			for r := 0; r < rows; r++ {
				var ss float64
				for j := 0; j < dim; j++ {
					ss += float64(x[r*dim+j]) * float64(x[r*dim+j])
				}
				rs := 1 / math.Sqrt(ss/float64(dim)+float64(eps))
				for j := 0; j < dim; j++ {
					want := float64(x[r*dim+j]) * rs * float64(w[j])
					if d := math.Abs(float64(out[r*dim+j]) - want); d > 1e-5*math.Max(1, math.Abs(want)) {
						t.Fatalf("%s: forward out[%d,%d]=%v want %v", name, r, j, out[r*dim+j], want)
					}
				}
			}
			dx := make([]float32, rows*dim)
			dw := make([]float32, dim)
			k.RMSNormBackward(dx, dw, c, x, w, rstd, rows, dim)
			gradCheck(t, name+" dx", x, dx, loss, 2e-3)
			gradCheck(t, name+" dw", w, dw, loss, 2e-3)
		}
	}
}

func TestRMSNormBackwardAccumulates(t *testing.T) {
	var k Reference
	rng := rand.New(rand.NewPCG(5, 6))
	rows, dim := 3, 7
	x, w, dout := randSlice(rng, rows*dim, 1), randSlice(rng, dim, 1), randSlice(rng, rows*dim, 1)
	out, rstd := make([]float32, rows*dim), make([]float32, rows)
	k.RMSNormForward(out, rstd, x, w, rows, dim, 1e-6)
	dx1, dw1 := make([]float32, rows*dim), make([]float32, dim)
	k.RMSNormBackward(dx1, dw1, dout, x, w, rstd, rows, dim)
	dx2, dw2 := make([]float32, rows*dim), make([]float32, dim)
	for i := range dx2 {
		dx2[i] = 1
	}
	for i := range dw2 {
		dw2[i] = 2
	}
	k.RMSNormBackward(dx2, dw2, dout, x, w, rstd, rows, dim)
	for i := range dx1 {
		if math.Abs(float64(dx2[i]-1-dx1[i])) > 1e-6 {
			t.Fatalf("dx[%d] did not accumulate: %v vs 1+%v", i, dx2[i], dx1[i])
		}
	}
	for i := range dw1 {
		if math.Abs(float64(dw2[i]-2-dw1[i])) > 1e-5 {
			t.Fatalf("dw[%d] did not accumulate: %v vs 2+%v", i, dw2[i], dw1[i])
		}
	}
}

func TestRoPETables(t *testing.T) {
	cos, sin := RoPETables(65, 8, 10000)
	for tt := 0; tt < 65; tt++ {
		for i := 0; i < 4; i++ {
			angle := float64(tt) / math.Pow(10000, float64(2*i)/8)
			if math.Abs(float64(cos[tt*4+i])-math.Cos(angle)) > 2e-5 || math.Abs(float64(sin[tt*4+i])-math.Sin(angle)) > 2e-5 {
				t.Fatalf("t=%d i=%d: got (%v,%v) want (%v,%v)", tt, i, cos[tt*4+i], sin[tt*4+i], math.Cos(angle), math.Sin(angle))
			}
		}
	}
}

func TestRoPEForwardAndAdjoint(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var k Reference
	for _, seq := range []int{1, 7, 17} {
		for _, hd := range []int{2, 6, 16} {
			batch, heads := 2, 3
			cos, sin := RoPETables(seq, hd, 500)
			n := batch * seq * heads * hd
			x := randSlice(rng, n, 1)
			y := randSlice(rng, n, 1)
			rx := append([]float32(nil), x...)
			k.RoPEForward(rx, cos, sin, batch, seq, heads, hd)
			// Forward against the complex-rotation definition.
			half := hd / 2
			for b := 0; b < batch; b++ {
				for tt := 0; tt < seq; tt++ {
					for h := 0; h < heads; h++ {
						base := ((b*seq+tt)*heads + h) * hd
						for i := 0; i < half; i++ {
							c, s := float64(cos[tt*half+i]), float64(sin[tt*half+i])
							u, w := float64(x[base+i]), float64(x[base+i+half])
							if math.Abs(float64(rx[base+i])-(u*c-w*s)) > 1e-5 || math.Abs(float64(rx[base+i+half])-(w*c+u*s)) > 1e-5 {
								t.Fatalf("seq=%d hd=%d: rotation wrong at b=%d t=%d h=%d i=%d", seq, hd, b, tt, h, i)
							}
						}
					}
				}
			}
			// Backward is the adjoint: <R x, y> == <x, Rᵀ y>.
			ry := append([]float32(nil), y...)
			k.RoPEBackward(ry, cos, sin, batch, seq, heads, hd)
			lhs, rhs := weightedSum(rx, y), weightedSum(x, ry)
			if math.Abs(lhs-rhs) > 1e-4*math.Max(1, math.Abs(lhs)) {
				t.Fatalf("seq=%d hd=%d: <Rx,y>=%v but <x,Rᵀy>=%v", seq, hd, lhs, rhs)
			}
		}
	}
}

func TestSwiGLUGrad(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	var k Reference
	for _, n := range oddSizes {
		gate, up, c := randSlice(rng, n, 2), randSlice(rng, n, 1), randSlice(rng, n, 1)
		out := make([]float32, n)
		loss := func() float64 {
			k.SwiGLUForward(out, gate, up)
			return weightedSum(c, out)
		}
		loss()
		for i := range out {
			g := float64(gate[i])
			want := g / (1 + math.Exp(-g)) * float64(up[i])
			if math.Abs(float64(out[i])-want) > 1e-5*math.Max(1, math.Abs(want)) {
				t.Fatalf("n=%d: out[%d]=%v want %v", n, i, out[i], want)
			}
		}
		dgate, dup := make([]float32, n), make([]float32, n)
		k.SwiGLUBackward(dgate, dup, c, gate, up)
		gradCheck(t, fmt.Sprintf("n=%d dgate", n), gate, dgate, loss, 2e-3)
		gradCheck(t, fmt.Sprintf("n=%d dup", n), up, dup, loss, 2e-3)
		// Aliasing dgate with dout is allowed.
		alias := append([]float32(nil), c...)
		dup2 := make([]float32, n)
		k.SwiGLUBackward(alias, dup2, alias, gate, up)
		if d, at := maxAbsDiff(alias, dgate); d != 0 {
			t.Fatalf("n=%d: aliased dgate differs at %d by %v", n, at, d)
		}
	}
}

// naiveAttention materializes the masked score matrix in float64.
func naiveAttention(q, k, v []float32, batch, seq, heads, kvHeads, hd int) (out, lse []float64) {
	out = make([]float64, batch*seq*heads*hd)
	lse = make([]float64, batch*heads*seq)
	group := heads / kvHeads
	scale := 1 / math.Sqrt(float64(hd))
	for b := 0; b < batch; b++ {
		for h := 0; h < heads; h++ {
			for i := 0; i < seq; i++ {
				s := make([]float64, i+1)
				mx := math.Inf(-1)
				for j := 0; j <= i; j++ {
					for d := 0; d < hd; d++ {
						s[j] += float64(q[((b*seq+i)*heads+h)*hd+d]) * float64(k[((b*seq+j)*kvHeads+h/group)*hd+d])
					}
					s[j] *= scale
					mx = math.Max(mx, s[j])
				}
				var sum float64
				for j := range s {
					sum += math.Exp(s[j] - mx)
				}
				lse[(b*heads+h)*seq+i] = mx + math.Log(sum)
				for j := range s {
					p := math.Exp(s[j]-mx) / sum
					for d := 0; d < hd; d++ {
						out[((b*seq+i)*heads+h)*hd+d] += p * float64(v[((b*seq+j)*kvHeads+h/group)*hd+d])
					}
				}
			}
		}
	}
	return out, lse
}

func TestAttention(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	var kern Reference
	type shape struct{ batch, seq, heads, kvHeads, hd int }
	shapes := []shape{
		{1, 1, 1, 1, 2},
		{2, 7, 4, 2, 6},
		{1, 17, 4, 1, 4},
		{2, 5, 3, 3, 8},
		{1, 9, 6, 2, 1},
	}
	for _, s := range shapes {
		name := fmt.Sprintf("%+v", s)
		nq := s.batch * s.seq * s.heads * s.hd
		nkv := s.batch * s.seq * s.kvHeads * s.hd
		q, k, v := randSlice(rng, nq, 1), randSlice(rng, nkv, 1), randSlice(rng, nkv, 1)
		c := randSlice(rng, nq, 1)
		out := make([]float32, nq)
		lse := make([]float32, s.batch*s.heads*s.seq)
		loss := func() float64 {
			kern.AttentionForward(out, lse, q, k, v, s.batch, s.seq, s.heads, s.kvHeads, s.hd)
			return weightedSum(c, out)
		}
		loss()
		wantOut, wantLse := naiveAttention(q, k, v, s.batch, s.seq, s.heads, s.kvHeads, s.hd)
		for i := range out {
			if math.Abs(float64(out[i])-wantOut[i]) > 1e-5 {
				t.Fatalf("%s: out[%d]=%v want %v", name, i, out[i], wantOut[i])
			}
		}
		for i := range lse {
			if math.Abs(float64(lse[i])-wantLse[i]) > 1e-5 {
				t.Fatalf("%s: lse[%d]=%v want %v", name, i, lse[i], wantLse[i])
			}
		}
		dq, dk, dv := make([]float32, nq), make([]float32, nkv), make([]float32, nkv)
		for i := range dk { // must be overwritten, not accumulated
			dk[i], dv[i] = 9, 9
		}
		kern.AttentionBackward(dq, dk, dv, c, out, lse, q, k, v, s.batch, s.seq, s.heads, s.kvHeads, s.hd)
		gradCheck(t, name+" dq", q, dq, loss, 3e-3)
		gradCheck(t, name+" dk", k, dk, loss, 3e-3)
		gradCheck(t, name+" dv", v, dv, loss, 3e-3)
	}
}

func TestCrossEntropy(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	var k Reference
	for _, vocab := range oddSizes {
		rows := 7
		logits := randSlice(rng, rows*vocab, 2)
		targets := make([]int32, rows)
		for i := range targets {
			targets[i] = int32(rng.IntN(vocab))
		}
		targets[3] = -100 // ignored
		// Naive loss: mean over counted rows.
		var want float64
		for r := 0; r < rows; r++ {
			if targets[r] < 0 {
				continue
			}
			var sum float64
			for j := 0; j < vocab; j++ {
				sum += math.Exp(float64(logits[r*vocab+j]))
			}
			want += math.Log(sum) - float64(logits[r*vocab+int(targets[r])])
		}
		want /= float64(rows - 1)
		const scale = 0.5
		dl := make([]float32, rows*vocab)
		got := k.CrossEntropy(dl, logits, targets, rows, vocab, scale)
		if math.Abs(got-want) > 1e-9*math.Max(1, want) {
			t.Fatalf("vocab=%d: loss %v want %v", vocab, got, want)
		}
		if lossOnly := k.CrossEntropy(nil, logits, targets, rows, vocab, scale); lossOnly != got {
			t.Fatalf("vocab=%d: loss-only %v != %v", vocab, lossOnly, got)
		}
		loss := func() float64 { return scale * k.CrossEntropy(nil, logits, targets, rows, vocab, 1) }
		gradCheck(t, fmt.Sprintf("vocab=%d dlogits", vocab), logits, dl, loss, 2e-3)
		for j := 0; j < vocab; j++ {
			if dl[3*vocab+j] != 0 {
				t.Fatalf("vocab=%d: ignored row has gradient", vocab)
			}
		}
		// In-place: dlogits aliasing logits.
		inPlace := append([]float32(nil), logits...)
		if l := k.CrossEntropy(inPlace, inPlace, targets, rows, vocab, scale); l != got {
			t.Fatalf("vocab=%d: in-place loss %v != %v", vocab, l, got)
		}
		if d, at := maxAbsDiff(inPlace, dl); d != 0 {
			t.Fatalf("vocab=%d: in-place gradient differs at %d by %v", vocab, at, d)
		}
	}
}

func TestAdamWMatchesFloat64(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	var k Reference
	n := 65
	p, m, v := randSlice(rng, n, 1), make([]float32, n), make([]float32, n)
	p64, m64, v64 := make([]float64, n), make([]float64, n), make([]float64, n)
	for i := range p {
		p64[i] = float64(p[i])
	}
	h := AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
	for step := 1; step <= 5; step++ {
		g := randSlice(rng, n, 1)
		h.Step = step
		k.AdamW(p, g, m, v, h)
		for i := range p64 {
			gi := float64(g[i])
			p64[i] *= 1 - h.LR*h.WeightDecay
			m64[i] = h.Beta1*m64[i] + (1-h.Beta1)*gi
			v64[i] = h.Beta2*v64[i] + (1-h.Beta2)*gi*gi
			mhat := m64[i] / (1 - math.Pow(h.Beta1, float64(step)))
			vhat := v64[i] / (1 - math.Pow(h.Beta2, float64(step)))
			p64[i] -= h.LR * mhat / (math.Sqrt(vhat) + h.Eps)
		}
	}
	for i := range p {
		if math.Abs(float64(p[i])-p64[i]) > 1e-6 {
			t.Fatalf("p[%d]=%v want %v", i, p[i], p64[i])
		}
	}
}

func TestSumSquaresAndScale(t *testing.T) {
	var k Reference
	x := []float32{1, -2, 3}
	if got := k.SumSquares(x); got != 14 {
		t.Fatalf("SumSquares=%v want 14", got)
	}
	k.Scale(x, 0.5)
	if x[0] != 0.5 || x[1] != -1 || x[2] != 1.5 {
		t.Fatalf("Scale: got %v", x)
	}
}

// TestAdamWGradScale: GradScale is Scale(g, GradScale) folded into the
// update — the same bits — and g is left unwritten.
func TestAdamWGradScale(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	var k Reference
	n := 65
	p, g := randSlice(rng, n, 1), randSlice(rng, n, 1)
	m, v := make([]float32, n), make([]float32, n)
	p2, m2, v2 := append([]float32(nil), p...), append([]float32(nil), m...), append([]float32(nil), v...)
	g0 := append([]float32(nil), g...)
	h := AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: 1, GradScale: 0.3}
	k.AdamW(p, g, m, v, h)
	gs := append([]float32(nil), g...)
	k.Scale(gs, 0.3)
	h.GradScale = 0
	k.AdamW(p2, gs, m2, v2, h)
	for i := range p {
		if p[i] != p2[i] || m[i] != m2[i] || v[i] != v2[i] || g[i] != g0[i] {
			t.Fatalf("[%d]: fused p %v m %v v %v g %v; Scale then AdamW p %v m %v v %v, g %v", i, p[i], m[i], v[i], g[i], p2[i], m2[i], v2[i], g0[i])
		}
	}
}
