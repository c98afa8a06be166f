package fast

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loomtrain/loom/tensor"
)

var (
	oddSizes     = []int{1, 7, 17, 63, 65, 127, 129}
	threadCounts = []int{1, 3}
)

func randSlice(rng *rand.Rand, n int, std float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * std)
	}
	return x
}

// relErr is ‖got − want‖₂ / max(‖want‖₂, tiny).
func relErr(got, want []float32) float64 {
	var d2, w2 float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		d2 += d * d
		w2 += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(d2) / math.Max(math.Sqrt(w2), 1e-30)
}

// check fails if got differs from want by more than tol relative L2 error or
// any element differs by more than 100·tol relative to the largest |want|;
// it names the worst element.
func check(t *testing.T, name string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: len %d, want %d", name, len(got), len(want))
	}
	var scale float64
	for _, w := range want {
		scale = math.Max(scale, math.Abs(float64(w)))
	}
	worst, at := 0.0, -1
	for i := range want {
		d := math.Abs(float64(got[i]) - float64(want[i]))
		if d > worst || math.IsNaN(d) {
			worst, at = d, i
		}
	}
	rel := relErr(got, want)
	if rel > tol || math.IsNaN(rel) || worst > 100*tol*math.Max(scale, 1e-30) {
		t.Errorf("%s: rel L2 err %.3g (tol %.1g); worst |diff| %.3g at [%d]: got %.8g want %.8g", name, rel, tol, worst, at, got[at], want[at])
	}
}

func checkAbs(t *testing.T, name string, got, want []float32, tol float64) {
	t.Helper()
	for i := range want {
		if d := math.Abs(float64(got[i]) - float64(want[i])); !(d <= tol) {
			t.Errorf("%s[%d] = %g, want %g", name, i, got[i], want[i])
			return
		}
	}
}

func forThreads(t *testing.T, f func(t *testing.T, k *Kernels)) {
	for _, th := range threadCounts {
		t.Run(fmt.Sprintf("threads=%d", th), func(t *testing.T) {
			k := New(th)
			defer k.Close()
			f(t, k)
		})
	}
}

var ref tensor.Reference

func TestExp32(t *testing.T) {
	worst := 0.0
	for x := float32(-104); x < 89; x += 0.0037 {
		got, want := float64(exp32(x)), math.Exp(float64(x))
		if want > math.MaxFloat32 {
			continue
		}
		if want < 1e-37 { // subnormal range: absolute check
			if math.Abs(got-want) > 1e-44 {
				t.Fatalf("exp32(%g) = %g, want %g", x, got, want)
			}
			continue
		}
		worst = math.Max(worst, math.Abs(got-want)/want)
	}
	if worst > 3e-7 {
		t.Errorf("exp32 worst relative error %.3g", worst)
	}
	if !math.IsInf(float64(exp32(float32(math.Inf(1)))), 1) || exp32(float32(math.Inf(-1))) != 0 || exp32(100) != float32(math.Inf(1)) {
		t.Errorf("exp32 special values wrong")
	}
	dst := make([]float32, 37)
	src := make([]float32, 37)
	for i := range src {
		src[i] = float32(i) - 30
	}
	src[3] = float32(math.Inf(-1))
	s := expSub(dst, src, 2)
	var want float64
	for i, x := range src {
		e := math.Exp(float64(x) - 2)
		want += e
		if math.Abs(float64(dst[i])-e) > 3e-7*e {
			t.Errorf("expSub[%d] = %g, want %g", i, dst[i], e)
		}
	}
	if math.Abs(float64(s)-want) > 1e-6*want {
		t.Errorf("expSub sum %g, want %g", s, want)
	}
}

// TestLog32 checks log32 against math.Log within 2 ulp of the result (or
// 1e-7 absolute near ln 1 = 0) over [1, 2^20], where attention uses it,
// and over small normals.
func TestLog32(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	xs := []float32{1, 1.0000001, 0.70710677, 0.7071068, 2, 3, 1e-30, 512, 1 << 20}
	for range 200000 {
		xs = append(xs, float32(math.Exp(rng.Float64()*14)), float32(math.Exp(-rng.Float64()*80)))
	}
	for _, x := range xs {
		got, want := log32(x), math.Log(float64(x))
		ulp := math.Abs(float64(math.Nextafter32(float32(want), float32(math.Inf(1)))) - want)
		if d := math.Abs(float64(got) - want); d > 2*ulp && d > 1e-7 {
			t.Fatalf("log32(%g) = %g, math.Log %g (|diff| %g, %.1f ulp)", x, got, want, d, d/ulp)
		}
	}
}

func TestRMSNorm(t *testing.T) {
	forThreads(t, func(t *testing.T, k *Kernels) {
		rng := rand.New(rand.NewPCG(1, 2))
		for _, rows := range oddSizes {
			for _, dim := range []int{1, 7, 17, 64, 65, 129} {
				x, w := randSlice(rng, rows*dim, 1), randSlice(rng, dim, 1)
				out, rstd := make([]float32, rows*dim), make([]float32, rows)
				wout, wrstd := make([]float32, rows*dim), make([]float32, rows)
				k.RMSNormForward(out, rstd, x, w, rows, dim, 1e-5)
				ref.RMSNormForward(wout, wrstd, x, w, rows, dim, 1e-5)
				name := fmt.Sprintf("rows=%d dim=%d", rows, dim)
				check(t, name+" out", out, wout, 1e-6)
				check(t, name+" rstd", rstd, wrstd, 1e-6)

				dout := randSlice(rng, rows*dim, 1)
				dx0, dw0 := randSlice(rng, rows*dim, 1), randSlice(rng, dim, 1)
				dx, dw := slices.Clone(dx0), slices.Clone(dw0)
				wdx, wdw := slices.Clone(dx0), slices.Clone(dw0)
				k.RMSNormBackward(dx, dw, dout, x, w, rstd, rows, dim)
				ref.RMSNormBackward(wdx, wdw, dout, x, w, rstd, rows, dim)
				check(t, name+" dx", dx, wdx, 1e-5)
				check(t, name+" dw", dw, wdw, 1e-5)

				// out may alias x.
				xa := slices.Clone(x)
				k.RMSNormForward(xa, rstd, xa, w, rows, dim, 1e-5)
				check(t, name+" aliased out", xa, wout, 1e-6)
			}
		}
	})
}

func TestRoPE(t *testing.T) {
	forThreads(t, func(t *testing.T, k *Kernels) {
		rng := rand.New(rand.NewPCG(3, 4))
		for _, T := range oddSizes {
			for _, s := range []struct{ batch, heads, headDim int }{{1, 1, 2}, {2, 3, 8}, {3, 2, 34}} {
				cos, sin := tensor.RoPETables(T, s.headDim, 10000)
				n := s.batch * T * s.heads * s.headDim
				x := randSlice(rng, n, 1)
				got, want := slices.Clone(x), slices.Clone(x)
				k.RoPEForward(got, cos, sin, s.batch, T, s.heads, s.headDim)
				ref.RoPEForward(want, cos, sin, s.batch, T, s.heads, s.headDim)
				name := fmt.Sprintf("T=%d %+v", T, s)
				check(t, name+" fwd", got, want, 1e-6)
				k.RoPEBackward(got, cos, sin, s.batch, T, s.heads, s.headDim)
				ref.RoPEBackward(want, cos, sin, s.batch, T, s.heads, s.headDim)
				check(t, name+" bwd", got, want, 1e-6)
			}
		}
	})
}

func TestSwiGLU(t *testing.T) {
	forThreads(t, func(t *testing.T, k *Kernels) {
		rng := rand.New(rand.NewPCG(5, 6))
		for _, n := range append(slices.Clone(oddSizes), chunkElems-1, 3*chunkElems+5) {
			gate, up := randSlice(rng, n, 3), randSlice(rng, n, 1)
			if n > 3 {
				gate[0], gate[1], gate[2] = -120, 95, 0
			}
			out, want := make([]float32, n), make([]float32, n)
			k.SwiGLUForward(out, gate, up)
			ref.SwiGLUForward(want, gate, up)
			check(t, fmt.Sprintf("n=%d fwd", n), out, want, 1e-6)

			dout := randSlice(rng, n, 1)
			dg, du, wdg, wdu := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
			k.SwiGLUBackward(dg, du, dout, gate, up)
			ref.SwiGLUBackward(wdg, wdu, dout, gate, up)
			check(t, fmt.Sprintf("n=%d dgate", n), dg, wdg, 1e-6)
			check(t, fmt.Sprintf("n=%d dup", n), du, wdu, 1e-6)
			// dgate and dup may alias dout.
			d := slices.Clone(dout)
			k.SwiGLUBackward(d, du, d, gate, up)
			check(t, fmt.Sprintf("n=%d aliased dgate", n), d, wdg, 1e-6)
		}
	})
}

func TestAdamWSumSquaresScale(t *testing.T) {
	forThreads(t, func(t *testing.T, k *Kernels) {
		rng := rand.New(rand.NewPCG(7, 8))
		for _, n := range append(slices.Clone(oddSizes), chunkElems+1, 5*chunkElems-3) {
			p, g := randSlice(rng, n, 1), randSlice(rng, n, 1e-2)
			m, v := randSlice(rng, n, 1e-3), randSlice(rng, n, 1e-4)
			for i := range v {
				v[i] = float32(math.Abs(float64(v[i])))
			}
			wp, wm, wv := slices.Clone(p), slices.Clone(m), slices.Clone(v)
			for step := 1; step <= 3; step++ {
				h := tensor.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: step}
				k.AdamW(p, g, m, v, h)
				ref.AdamW(wp, g, wm, wv, h)
			}
			name := fmt.Sprintf("n=%d", n)
			check(t, name+" p", p, wp, 1e-6)
			check(t, name+" m", m, wm, 1e-6)
			check(t, name+" v", v, wv, 1e-6)

			got, want := k.SumSquares(g), ref.SumSquares(g)
			if math.Abs(got-want) > 1e-12*want {
				t.Errorf("%s SumSquares %.15g, want %.15g", name, got, want)
			}
			gs, ws := slices.Clone(g), slices.Clone(g)
			k.Scale(gs, 0.37)
			ref.Scale(ws, 0.37)
			check(t, name+" Scale", gs, ws, 0)

			// GradScale folds Scale into the update: the same bits as
			// Scale then AdamW, and g left as it was.
			h := tensor.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: 4}
			p1, m1, v1 := slices.Clone(p), slices.Clone(m), slices.Clone(v)
			p2, m2, v2 := slices.Clone(p), slices.Clone(m), slices.Clone(v)
			g0 := slices.Clone(g)
			k.AdamW(p2, gs, m2, v2, h) // gs = Scale(g, 0.37)
			h.GradScale = 0.37
			k.AdamW(p1, g, m1, v1, h)
			check(t, name+" GradScale p", p1, p2, 0)
			check(t, name+" GradScale m", m1, m2, 0)
			check(t, name+" GradScale v", v1, v2, 0)
			check(t, name+" GradScale leaves g", g, g0, 0)
			rp, rm, rv := slices.Clone(p), slices.Clone(m), slices.Clone(v)
			ref.AdamW(rp, g, rm, rv, h)
			check(t, name+" GradScale p vs Reference", p1, rp, 1e-6)
		}
	})
}

// The vocabulary-parallel cross-entropy's pieces match the reference:
// row maxima exactly, exponentials and row sums within float32 rounding,
// over strided rows (ld > n, the padding columns left alone).
func TestRowMaxAndExpShiftRows(t *testing.T) {
	forThreads(t, func(t *testing.T, k *Kernels) {
		rng := rand.New(rand.NewPCG(11, 12))
		for _, rows := range oddSizes {
			for _, n := range []int{1, 7, 65, 258, 1031} {
				ld := n + 5
				s := randSlice(rng, rows*ld, 4)
				name := fmt.Sprintf("rows=%d n=%d", rows, n)
				mx, wmx := make([]float32, rows), make([]float32, rows)
				k.RowMax(mx, s, rows, n, ld)
				ref.RowMax(wmx, s, rows, n, ld)
				check(t, name+" row max", mx, wmx, 0)
				got, want := slices.Clone(s), slices.Clone(s)
				sum, wsum := make([]float32, rows), make([]float32, rows)
				k.ExpShiftRows(sum, got, mx, rows, n, ld)
				ref.ExpShiftRows(wsum, want, wmx, rows, n, ld)
				check(t, name+" exp", got, want, 1e-6)
				check(t, name+" row sums", sum, wsum, 1e-6)
				for r := range rows {
					if !slices.Equal(got[r*ld+n:r*ld+ld], s[r*ld+n:r*ld+ld]) {
						t.Fatalf("%s: row %d's columns past n were written", name, r)
					}
				}
			}
		}
	})
}

func TestCrossEntropy(t *testing.T) {
	forThreads(t, func(t *testing.T, k *Kernels) {
		rng := rand.New(rand.NewPCG(9, 10))
		for _, rows := range oddSizes {
			for _, vocab := range []int{1, 7, 65, 258, 1031} {
				logits := randSlice(rng, rows*vocab, 3)
				targets := make([]int32, rows)
				for i := range targets {
					targets[i] = int32(rng.IntN(vocab))
					if i%5 == 3 {
						targets[i] = -100
					}
				}
				name := fmt.Sprintf("rows=%d vocab=%d", rows, vocab)
				wantLoss := ref.CrossEntropy(nil, logits, targets, rows, vocab, 1)
				if got := k.CrossEntropy(nil, logits, targets, rows, vocab, 1); math.Abs(got-wantLoss) > 1e-6*math.Max(math.Abs(wantLoss), 1) {
					t.Errorf("%s loss %.10g, want %.10g", name, got, wantLoss)
				}
				d, wd := make([]float32, rows*vocab), make([]float32, rows*vocab)
				gl := k.CrossEntropy(d, logits, targets, rows, vocab, 0.5)
				ref.CrossEntropy(wd, logits, targets, rows, vocab, 0.5)
				if math.Abs(gl-wantLoss) > 1e-6*math.Max(math.Abs(wantLoss), 1) {
					t.Errorf("%s loss with grad %.10g, want %.10g", name, gl, wantLoss)
				}
				check(t, name+" dlogits", d, wd, 1e-5)
				// dlogits may alias logits.
				a := slices.Clone(logits)
				k.CrossEntropy(a, a, targets, rows, vocab, 0.5)
				check(t, name+" aliased dlogits", a, wd, 1e-5)
			}
		}
		// No counted row.
		d := []float32{1, 2, 3, 4}
		if l := k.CrossEntropy(d, []float32{1, 2, 3, 4}, []int32{-1, -1}, 2, 2, 1); l != 0 || slices.ContainsFunc(d, func(x float32) bool { return x != 0 }) {
			t.Errorf("all-ignored: loss %v, dlogits %v", l, d)
		}
	})
}

type attnShape struct{ batch, seqLen, heads, kvHeads, headDim int }

func attnShapes() []attnShape {
	var s []attnShape
	for _, T := range oddSizes {
		s = append(s, attnShape{2, T, 4, 2, 16})
	}
	s = append(s, attnShape{1, 65, 3, 1, 7}, attnShape{3, 17, 2, 2, 64}, attnShape{1, 129, 4, 4, 33}, attnShape{1, 1, 1, 1, 1})
	// Past attnMaxCols keys: the forward's running rescale across key
	// blocks, the backward's several key blocks per query block.
	s = append(s, attnShape{1, 2*attnMaxCols + 77, 2, 1, 8})
	return s
}

// poisonScratch fills every worker's scratch with NaNs (capacity for
// TestAttention's largest shapes), so that a kernel reading scratch it did
// not write first fails the comparison instead of reading old zeros.
func poisonScratch(k *Kernels) {
	nan := float32(math.NaN())
	for _, w := range k.pool.workers {
		if cap(w.buf) < 1<<19 {
			w.buf = make([]float32, 1<<19)
		}
		b := w.buf[:cap(w.buf)]
		for i := range b {
			b[i] = nan
		}
	}
}

func TestAttention(t *testing.T) {
	forThreads(t, func(t *testing.T, k *Kernels) {
		rng := rand.New(rand.NewPCG(11, 12))
		for _, s := range attnShapes() {
			if testing.Short() && s.seqLen > 65 {
				continue
			}
			nq := s.batch * s.seqLen * s.heads * s.headDim
			nkv := s.batch * s.seqLen * s.kvHeads * s.headDim
			q, kk, v := randSlice(rng, nq, 1), randSlice(rng, nkv, 1), randSlice(rng, nkv, 1)
			out, lse := make([]float32, nq), make([]float32, s.batch*s.heads*s.seqLen)
			wout, wlse := make([]float32, nq), make([]float32, s.batch*s.heads*s.seqLen)
			poisonScratch(k)
			k.AttentionForward(out, lse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
			ref.AttentionForward(wout, wlse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
			name := fmt.Sprintf("%+v", s)
			check(t, name+" out", out, wout, 1e-5)
			check(t, name+" lse", lse, wlse, 1e-6)

			dout := randSlice(rng, nq, 1)
			dq, dk, dv := randSlice(rng, nq, 1), randSlice(rng, nkv, 1), randSlice(rng, nkv, 1) // garbage: outputs are "="
			wdq, wdk, wdv := make([]float32, nq), make([]float32, nkv), make([]float32, nkv)
			poisonScratch(k)
			k.AttentionBackward(dq, dk, dv, dout, wout, wlse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
			ref.AttentionBackward(wdq, wdk, wdv, dout, wout, wlse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
			if s.seqLen == 1 { // dq = dk = 0 exactly in float64; float32 leaves rounding noise
				for i := range dq {
					wdq[i] = 0
				}
				checkAbs(t, name+" dq", dq, wdq, 1e-5)
				checkAbs(t, name+" dk", dk, wdk, 1e-5)
			} else {
				check(t, name+" dq", dq, wdq, 1e-5)
				check(t, name+" dk", dk, wdk, 1e-5)
			}
			check(t, name+" dv", dv, wdv, 1e-5)
		}
	})
}

func TestSgemm(t *testing.T) {
	forThreads(t, func(t *testing.T, k *Kernels) {
		rng := rand.New(rand.NewPCG(13, 14))
		for _, m := range []int{1, 17, 65} {
			for _, n := range []int{7, 129} {
				for _, kk := range []int{1, 63} {
					for _, tr := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
						a, b := randSlice(rng, m*kk, 1), randSlice(rng, kk*n, 1)
						lda, ldb := kk, n
						if tr[0] {
							lda = m
						}
						if tr[1] {
							ldb = kk
						}
						c := randSlice(rng, m*n, 1)
						wc := slices.Clone(c)
						k.Sgemm(tr[0], tr[1], m, n, kk, 0.7, a, lda, b, ldb, 0.5, c, n)
						ref.Sgemm(tr[0], tr[1], m, n, kk, 0.7, a, lda, b, ldb, 0.5, wc, n)
						check(t, fmt.Sprintf("m=%d n=%d k=%d trans=%v", m, n, kk, tr), c, wc, 1e-5)
					}
				}
			}
		}
	})
}
