package parallel

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// hdReference is halving-doubling's sum of in, in the order halving.go
// documents: after the step with mask n>>k, member r holds
// f(r, k) = f(r, k−1) + f(r ^ (n>>k), k−1), f(r, 0) = in[r]; block b of
// the result is f(b, log2 n) over that block's elements.
func hdReference(in [][]float32) []float32 {
	n, ln := len(in), len(in[0])
	out := make([]float32, ln)
	var f func(r, k, e int) float32
	f = func(r, k, e int) float32 {
		if k == 0 {
			return in[r][e]
		}
		return f(r, k-1, e) + f(r^(n>>k), k-1, e)
	}
	steps := 0
	for 1<<steps < n {
		steps++
	}
	for b := range n {
		off, m := ShardRange(ln, n, b)
		for e := off; e < off+m; e++ {
			out[e] = f(b, steps, e)
		}
	}
	return out
}

// TestHalvingDoublingOrder: halving-doubling's all-reduce gives, on every
// member and on every transport, exactly the bits of its documented
// reduction order (not merely close to the sum), and its reduce-scatter
// the same bits in each member's shard; a chunk smaller than the halves
// makes every step span several frames.
func TestHalvingDoublingOrder(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		for _, n := range []int{4, 8} {
			t.Run(fmt.Sprintf("ranks=%d", n), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(n), 14))
				c := newCluster(t, n, opts)
				gs := c.groups(t, GroupSpec{Name: "hd", Ranks: seq(n), Timeout: 20 * time.Second,
					ChunkBytes: 1024, SmallBytes: 4, AllReduce: HalvingDoubling})
				ctx := testCtx(t, 60*time.Second)
				for _, ln := range []int{n - 1, 3*n + 1, 1000, 2049} {
					in := make([][]float32, n)
					for i := range in {
						in[i] = randBuf(rng, ln)
						for e := range in[i] { // mixed magnitudes: the order shows in the bits
							in[i][e] *= float32(math.Pow(10, float64(rng.IntN(7)-3)))
						}
					}
					want := hdReference(in)
					bufs := make([][]float32, n)
					for i := range bufs {
						bufs[i] = slices.Clone(in[i])
					}
					noErrors(t, "all-reduce", each(n, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
					for i := range n {
						if !slices.Equal(bufs[i], want) {
							t.Fatalf("all-reduce len %d member %d: not the documented order's bits", ln, i)
						}
					}
					for i := range bufs {
						bufs[i] = slices.Clone(in[i])
					}
					shards := make([][]float32, n)
					noErrors(t, "reduce-scatter", each(n, func(i int) (err error) {
						shards[i], err = gs[i].ReduceScatter(ctx, bufs[i], Sum)
						return err
					}))
					for i := range n {
						off, m := ShardRange(ln, n, i)
						if !slices.Equal(shards[i], want[off:off+m]) {
							t.Fatalf("reduce-scatter len %d member %d: not the documented order's bits", ln, i)
						}
					}
				}
			})
		}
	})
}
