package parallel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// directReference is the direct all-reduce's result: the n contributions
// reduced in rank order, ((in[0] ⊕ in[1]) ⊕ in[2]) ⊕ …, in float32.
func directReference(in [][]float32, op ReduceOp) []float32 {
	out := slices.Clone(in[0])
	for _, b := range in[1:] {
		applyFloats(reduceApply(op), out, b)
	}
	if op == Mean {
		scale(out, len(in))
	}
	return out
}

// mixedInputs returns n buffers of ln elements whose magnitudes span seven
// decades, so that a sum's order shows in its bits.
func mixedInputs(rng *rand.Rand, n, ln int) [][]float32 {
	in := make([][]float32, n)
	for i := range in {
		in[i] = randBuf(rng, ln)
		for e := range in[i] {
			in[i][e] *= float32(math.Pow(10, float64(rng.IntN(7)-3)))
		}
	}
	return in
}

// TestDirectOrder: the direct all-reduce gives, on every member and on
// every transport, exactly the bits of the rank-order reduction (not
// merely close to the sum), for every op, at 3 and 4 ranks; a small chunk
// makes a buffer span several frames per peer.
func TestDirectOrder(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		for _, n := range []int{3, 4} {
			t.Run(fmt.Sprintf("ranks=%d", n), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(n), 77))
				c := newCluster(t, n, opts)
				gs := c.groups(t, GroupSpec{Name: "direct", Ranks: seq(n), Timeout: 20 * time.Second,
					ChunkBytes: 1024, AllReduce: Direct})
				ctx := testCtx(t, 60*time.Second)
				for _, ln := range []int{1, n + 1, 256, 1000} {
					in := mixedInputs(rng, n, ln)
					for _, op := range []ReduceOp{Sum, Mean, Max} {
						want := directReference(in, op)
						bufs := make([][]float32, n)
						for i := range bufs {
							bufs[i] = slices.Clone(in[i])
						}
						noErrors(t, "all-reduce", each(n, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], op) }))
						for i := range n {
							if !slices.Equal(bufs[i], want) {
								t.Fatalf("%v len %d member %d: not the rank-order reduction's bits", op, ln, i)
							}
						}
					}
				}
			})
		}
	})
}

// TestDirectFailures: on the direct path, a member that never joins fails
// the others after the group's Timeout, and a caller's deadline ends the
// wait first, both naming that member; a member whose transport closes
// mid-run fails the others at once, naming it; and a member that moved
// to a newer generation fails the others with ErrStaleGeneration rather
// than a hang.
func TestDirectFailures(t *testing.T) {
	const n = 3
	spec := GroupSpec{Name: "g", Ranks: seq(n), AllReduce: Direct}
	forModes(t, func(t *testing.T, opts TransportOptions) {
		t.Run("silent", func(t *testing.T) {
			c := newCluster(t, n, opts)
			s := spec
			s.Timeout = 300 * time.Millisecond
			gs := c.groups(t, s)
			start := time.Now()
			errs := each(2, func(i int) error { return gs[i].AllReduce(testCtx(t, 10*time.Second), make([]float32, 10), Sum) })
			if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
				t.Errorf("timed out after %v, want about 300ms", d)
			}
			for _, err := range errs {
				checkPeerError(t, err, 2, c.addrs[2], ErrPeerTimeout)
			}
		})
		t.Run("deadline", func(t *testing.T) {
			c := newCluster(t, n, opts)
			s := spec
			s.Timeout = time.Minute
			gs := c.groups(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			errs := each(2, func(i int) error { return gs[i].AllReduce(ctx, make([]float32, 10), Sum) })
			for _, err := range errs {
				checkPeerError(t, err, 2, c.addrs[2], context.DeadlineExceeded)
			}
		})
		t.Run("closed", func(t *testing.T) {
			c := newCluster(t, n, opts)
			s := spec
			s.Timeout = 20 * time.Second
			gs := c.groups(t, s)
			ctx := testCtx(t, 30*time.Second)
			stop := make(chan struct{})
			time.AfterFunc(100*time.Millisecond, func() { c.ts[2].Close(); close(stop) })
			start := time.Now()
			errs := each(n, func(i int) error {
				buf := make([]float32, 1024)
				for {
					if err := gs[i].AllReduce(ctx, buf, Sum); err != nil {
						return err
					}
				}
			})
			<-stop
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("failing took %v", d)
			}
			for i, err := range errs[:2] {
				checkPeerError(t, err, 2, c.addrs[2], ErrPeerGone)
				checkPeerError(t, gs[i].AllReduce(ctx, make([]float32, 4), Sum), 2, c.addrs[2], ErrPeerGone)
			}
		})
		t.Run("stale", func(t *testing.T) {
			c := newCluster(t, n, opts)
			gen := func(g uint64, me int) GroupSpec {
				s := spec
				s.Job, s.Generation, s.MyRank, s.Addrs, s.Timeout = "j", g, me, c.addrs, 20*time.Second
				return s
			}
			old := make([]*Group, n)
			for r := range n {
				g, err := c.ts[r].NewGroup(gen(1, r))
				if err != nil {
					t.Fatal(err)
				}
				old[r] = g
			}
			ctx := testCtx(t, 30*time.Second)
			noErrors(t, "generation 1", each(n, func(i int) error { return old[i].AllReduce(ctx, make([]float32, 64), Sum) }))
			if _, err := c.ts[0].NewGroup(gen(2, 0)); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			errs := each(n-1, func(i int) error { return old[i+1].AllReduce(ctx, make([]float32, 64), Sum) })
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("failing took %v", d)
			}
			for i, err := range errs {
				if !errors.Is(err, ErrStaleGeneration) {
					t.Errorf("member %d of generation 1: %v, want ErrStaleGeneration", i+1, err)
				}
			}
		})
	})
}
