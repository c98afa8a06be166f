package parallel

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestQuickAllReduce(t *testing.T) {
	for _, n := range []int{2, 3} {
		c := newCluster(t, n, TransportOptions{})
		gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(n), Timeout: 5 * time.Second, ChunkBytes: 4096, SmallBytes: 256})
		rng := rand.New(rand.NewPCG(1, 2))
		for _, ln := range []int{1, 5, 100, 3000} {
			in := make([][]float32, n)
			bufs := make([][]float32, n)
			for i := range n {
				in[i] = randBuf(rng, ln)
				bufs[i] = append([]float32(nil), in[i]...)
			}
			ctx := testCtx(t, 10*time.Second)
			noErrors(t, "all-reduce", each(n, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
			want := refReduce(in, Sum)
			for i := range n {
				if err := closeTo(bufs[i], want, n); err != nil {
					t.Fatalf("n=%d len=%d member %d: %v", n, ln, i, err)
				}
			}
		}
	}
}
