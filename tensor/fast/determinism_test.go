package fast

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loomtrain/loom/tensor"
)

// opsRun runs every op once on fixed inputs and returns all outputs in order.
type opsRun struct {
	rng                                    *rand.Rand
	B, T, H, KV, D, V, ffn                 int
	x, w, q, kk, v, dout, gate, up, logits []float32
	targets                                []int32
	cos, sin                               []float32
}

func newOpsRun(short bool) *opsRun {
	r := &opsRun{rng: rand.New(rand.NewPCG(21, 22)), B: 2, T: 67, H: 4, KV: 2, D: 16, V: 259, ffn: 3*chunkElems/67 + 1}
	if short {
		r.T, r.ffn = 17, 33
	}
	d := r.H * r.D
	n := r.B * r.T
	r.x, r.w = randSlice(r.rng, n*d, 1), randSlice(r.rng, d, 1)
	r.q, r.dout = randSlice(r.rng, n*d, 1), randSlice(r.rng, n*d, 1)
	r.kk, r.v = randSlice(r.rng, n*r.KV*r.D, 1), randSlice(r.rng, n*r.KV*r.D, 1)
	r.gate, r.up = randSlice(r.rng, n*r.ffn, 2), randSlice(r.rng, n*r.ffn, 1)
	r.logits = randSlice(r.rng, n*r.V, 3)
	r.targets = make([]int32, n)
	for i := range r.targets {
		r.targets[i] = int32(r.rng.IntN(r.V))
	}
	r.cos, r.sin = tensor.RoPETables(r.T, r.D, 10000)
	return r
}

func (r *opsRun) run(k tensor.Kernels) [][]float32 {
	d := r.H * r.D
	n := r.B * r.T
	var outs [][]float32
	out, rstd := make([]float32, n*d), make([]float32, n)
	k.RMSNormForward(out, rstd, r.x, r.w, n, d, 1e-5)
	dx, dw := make([]float32, n*d), make([]float32, d)
	k.RMSNormBackward(dx, dw, r.dout, r.x, r.w, rstd, n, d)
	outs = append(outs, out, rstd, dx, dw)

	q := slices.Clone(r.q)
	k.RoPEForward(q, r.cos, r.sin, r.B, r.T, r.H, r.D)
	outs = append(outs, q)

	ao, lse := make([]float32, n*d), make([]float32, r.B*r.H*r.T)
	k.AttentionForward(ao, lse, r.q, r.kk, r.v, r.B, r.T, r.H, r.KV, r.D)
	dq, dk, dv := make([]float32, n*d), make([]float32, len(r.kk)), make([]float32, len(r.v))
	k.AttentionBackward(dq, dk, dv, r.dout, ao, lse, r.q, r.kk, r.v, r.B, r.T, r.H, r.KV, r.D)
	outs = append(outs, ao, lse, dq, dk, dv)

	so := make([]float32, len(r.gate))
	k.SwiGLUForward(so, r.gate, r.up)
	dg, du := make([]float32, len(r.gate)), make([]float32, len(r.gate))
	k.SwiGLUBackward(dg, du, so, r.gate, r.up)
	outs = append(outs, so, dg, du)

	dl := make([]float32, len(r.logits))
	loss := k.CrossEntropy(dl, r.logits, r.targets, n, r.V, 1)
	ss := k.SumSquares(r.gate)
	outs = append(outs, dl, []float32{float32(loss), float32(loss - float64(float32(loss))), float32(ss), float32(ss - float64(float32(ss)))})

	p, m, v := slices.Clone(r.gate), make([]float32, len(r.gate)), make([]float32, len(r.gate))
	k.AdamW(p, r.up, m, v, tensor.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: 1})
	k.Scale(p, 0.3)
	outs = append(outs, p, m, v)
	return outs
}

// TestDeterministic checks that repeated calls, and calls with different
// thread counts, give bit-identical results.
func TestDeterministic(t *testing.T) {
	r := newOpsRun(testing.Short())
	k1, k3 := New(1), New(3)
	defer k1.Close()
	defer k3.Close()
	want := r.run(k1)
	for rep, k := range []*Kernels{k3, k3, k1} {
		got := r.run(k)
		for i := range want {
			for j := range want[i] {
				if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
					t.Fatalf("run %d (threads %d): output %d differs at [%d]: %v vs %v", rep, k.Threads(), i, j, got[i][j], want[i][j])
				}
			}
		}
	}
}

// TestNoAllocs checks that no op allocates once the kernels are warm.
func TestNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	r := newOpsRun(true)
	k := New(2)
	defer k.Close()
	d := r.H * r.D
	n := r.B * r.T
	out, rstd := make([]float32, n*d), make([]float32, n)
	ao, lse := make([]float32, n*d), make([]float32, r.B*r.H*r.T)
	dq, dk, dv := make([]float32, n*d), make([]float32, len(r.kk)), make([]float32, len(r.v))
	so, dg, du := make([]float32, len(r.gate)), make([]float32, len(r.gate)), make([]float32, len(r.gate))
	dl := make([]float32, len(r.logits))
	c := make([]float32, n*n)
	f := func() {
		k.Sgemm(false, true, n, n, d, 1, r.x, d, r.q, d, 0, c, n)
		k.RMSNormForward(out, rstd, r.x, r.w, n, d, 1e-5)
		k.RMSNormBackward(dq, r.w, r.dout, r.x, r.w, rstd, n, d)
		k.RoPEForward(out, r.cos, r.sin, r.B, r.T, r.H, r.D)
		k.RoPEBackward(out, r.cos, r.sin, r.B, r.T, r.H, r.D)
		k.AttentionForward(ao, lse, r.q, r.kk, r.v, r.B, r.T, r.H, r.KV, r.D)
		k.AttentionBackward(dq, dk, dv, r.dout, ao, lse, r.q, r.kk, r.v, r.B, r.T, r.H, r.KV, r.D)
		k.SwiGLUForward(so, r.gate, r.up)
		k.SwiGLUBackward(dg, du, so, r.gate, r.up)
		k.CrossEntropy(dl, r.logits, r.targets, n, r.V, 1)
		k.SumSquares(r.gate)
		k.Scale(so, 0.5)
		k.AdamW(so, r.up, dg, du, tensor.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Step: 1})
	}
	f()
	if a := testing.AllocsPerRun(20, f); a != 0 {
		t.Errorf("%v allocations per round of every op", a)
	}
}
