package fast

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAttentionFused checks the register-tiled forward (attn512_amd64.s,
// for T a multiple of 16 and head size 32 or 64) and backward (head size
// 32) against the float64
// reference, and against the tile path on the same inputs; scores up to
// ±40 put the running max through rescales of O and l. Where the CPU has no
// AVX-512 both runs take the tile path and the test checks only that.
func TestAttentionFused(t *testing.T) {
	shapes := []attnShape{
		{1, 16, 1, 1, 32}, {2, 32, 2, 1, 64}, {1, 128, 4, 4, 32}, {2, 48, 4, 2, 32},
		{1, 256, 2, 2, 64}, {1, 80, 3, 1, 64},
	}
	forThreads(t, func(t *testing.T, k *Kernels) {
		rng := rand.New(rand.NewPCG(21, 22))
		for _, s := range shapes {
			for _, amp := range []float64{1, 6} {
				name := fmt.Sprintf("%+v amp=%g", s, amp)
				if fusedFwdKernel(s.seqLen, s.headDim, k.pool.workers[0].tiles.NR()) == nil {
					t.Logf("%s: no register-tiled kernel on this CPU", name)
				}
				nq := s.batch * s.seqLen * s.heads * s.headDim
				nkv := s.batch * s.seqLen * s.kvHeads * s.headDim
				q, kk, v := randSlice(rng, nq, amp), randSlice(rng, nkv, amp), randSlice(rng, nkv, 1)
				nl := s.batch * s.heads * s.seqLen
				out, lse := randSlice(rng, nq, 1), make([]float32, nl) // garbage: out is "="
				tout, tlse := make([]float32, nq), make([]float32, nl)
				wout, wlse := make([]float32, nq), make([]float32, nl)
				k.attnMode = attnRegTiled
				k.AttentionForward(out, lse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
				k.attnMode = attnTile
				k.AttentionForward(tout, tlse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
				ref.AttentionForward(wout, wlse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
				check(t, name+" out", out, wout, 1e-5)
				check(t, name+" lse", lse, wlse, 1e-6)
				check(t, name+" out vs tile path", out, tout, 1e-5)
				check(t, name+" lse vs tile path", lse, tlse, 1e-6)

				again := slices.Clone(out)
				k.attnMode = attnRegTiled
				k.AttentionForward(again, lse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
				if !slices.Equal(again, out) {
					t.Errorf("%s: a second run gave different bits", name)
				}
				k.attnMode = attnAuto

				dout := randSlice(rng, nq, 1)
				dq, dk, dv := randSlice(rng, nq, 1), randSlice(rng, nkv, 1), randSlice(rng, nkv, 1) // garbage: outputs are "="
				tdq, tdk, tdv := make([]float32, nq), make([]float32, nkv), make([]float32, nkv)
				wdq, wdk, wdv := make([]float32, nq), make([]float32, nkv), make([]float32, nkv)
				k.attnMode = attnRegTiled
				k.AttentionBackward(dq, dk, dv, dout, wout, wlse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
				k.attnMode = attnTile
				k.AttentionBackward(tdq, tdk, tdv, dout, wout, wlse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
				k.attnMode = attnAuto
				ref.AttentionBackward(wdq, wdk, wdv, dout, wout, wlse, q, kk, v, s.batch, s.seqLen, s.heads, s.kvHeads, s.headDim)
				for _, c := range []struct {
					what            string
					got, tile, want []float32
				}{{"dq", dq, tdq, wdq}, {"dk", dk, tdk, wdk}, {"dv", dv, tdv, wdv}} {
					// Scores of ±40 leave the float32 backward (either path)
					// ~1e-5 from float64.
					tol := 1e-5 * max(1, amp/2)
					check(t, name+" "+c.what, c.got, c.want, tol)
					check(t, name+" "+c.what+" vs tile path", c.got, c.tile, tol)
				}
			}
		}
	})
}
