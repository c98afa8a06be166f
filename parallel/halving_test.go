package parallel

import (
	"fmt"
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
					in := mixedInputs(rng, n, ln) // mixed magnitudes: the order shows in the bits
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

// TestAutoAlgorithm: Auto's choice by transport mode, group size and
// buffer size — recursive doubling up to SmallBytes; in groups of 4, 8 …
// members halving-doubling above it over tcp and above 1 MiB over shm and
// auto; the ring otherwise — and a forced algorithm wins (HalvingDoubling
// falls back to the ring for sizes that are not powers of two).
func TestAutoAlgorithm(t *testing.T) {
	const big, mib = 1 << 20, 1 << 18 // elements: 4 MiB and 1 MiB
	for _, tc := range []struct {
		mode  TransportMode
		ranks int
		spec  Algorithm
		elems int
		want  Algorithm
	}{
		{ModeTCP, 4, Auto, tcpSmallBytes / 4, RecursiveDoubling},
		{ModeTCP, 4, Auto, tcpSmallBytes/4 + 1, HalvingDoubling},
		{ModeTCP, 4, Auto, big, HalvingDoubling},
		{ModeTCP, 8, Auto, big, HalvingDoubling},
		{ModeTCP, 2, Auto, big, Ring},
		{ModeTCP, 3, Auto, big, Ring},
		{ModeTCP, 6, Auto, big, Ring},
		{ModeTCP, 4, Ring, big, Ring},
		{ModeTCP, 4, RecursiveDoubling, big, RecursiveDoubling},
		{ModeShm, 4, Auto, shmSmallBytes / 4, RecursiveDoubling},
		{ModeShm, 4, Auto, shmSmallBytes/4 + 1, HalvingDoubling},
		{ModeShm, 4, Auto, shmHalvingSmallBytes / 4, HalvingDoubling},
		{ModeShm, 4, Auto, shmHalvingSmallBytes/4 + 1, Ring},
		{ModeShm, 3, Auto, shmHalvingSmallBytes / 4, Ring},
		{ModeShm, 2, Auto, shmHalvingSmallBytes / 4, Ring},
		{ModeAuto, 4, Auto, shmHalvingSmallBytes / 4, RecursiveDoubling},
		{ModeShm, 4, Auto, mib, Ring},
		{ModeShm, 4, Auto, mib + 1, HalvingDoubling},
		{ModeShm, 8, Auto, big, HalvingDoubling},
		{ModeShm, 2, Auto, big, Ring},
		{ModeShm, 6, Auto, big, Ring},
		{ModeAuto, 4, Auto, mib, Ring},
		{ModeAuto, 4, Auto, big, HalvingDoubling},
		{ModeGRPC, 4, Auto, big, Ring},
		{ModeShm, 4, Ring, big, Ring},
		{ModeShm, 4, HalvingDoubling, 1000, HalvingDoubling},
		{ModeShm, 3, HalvingDoubling, big, Ring},
		// Direct only when asked for (see allReduceAlgorithm): small buffers at
		// 3 and 4 ranks stay with recursive doubling.
		{ModeShm, 3, Auto, 1024, RecursiveDoubling},
		{ModeTCP, 3, Auto, 1024, RecursiveDoubling},
		{ModeShm, 4, Auto, 1024, RecursiveDoubling},
		{ModeShm, 4, Direct, big, Direct},
		{ModeTCP, 2, Direct, 10, Direct},
	} {
		g := &Group{t: &Transport{opts: TransportOptions{Mode: tc.mode}}, ranks: seq(tc.ranks), spec: GroupSpec{AllReduce: tc.spec}}
		if got := g.allReduceAlgorithm(tc.elems); got != tc.want {
			t.Errorf("%v, %d ranks, %v, %d bytes: %v, want %v", tc.mode, tc.ranks, tc.spec, 4*tc.elems, got, tc.want)
		}
	}
	// SmallBytes above the shm bound moves it: recursive doubling first.
	g := &Group{t: &Transport{opts: TransportOptions{Mode: ModeShm}}, ranks: seq(4), small: 2 << 20}
	if got := g.allReduceAlgorithm(mib + 1); got != RecursiveDoubling {
		t.Errorf("shm, SmallBytes 2 MiB, 1 MiB + 4 bytes: %v, want rd", got)
	}
	if got := g.allReduceAlgorithm(2*mib + 1); got != HalvingDoubling {
		t.Errorf("shm, SmallBytes 2 MiB, 2 MiB + 4 bytes: %v, want hd", got)
	}
}

// TestAutoHalvingDoubling: a 4-rank Auto all-reduce above the bound gives
// halving-doubling's bits, the ones its documented order gives: over tcp
// above SmallBytes, over shm above 1 MiB.
func TestAutoHalvingDoubling(t *testing.T) {
	const n = 4
	for _, tc := range []struct {
		mode  TransportMode
		ln    int // elements
		small int
	}{
		{ModeTCP, 8 << 10, 4 << 10}, // 32 KiB, above SmallBytes 4 KiB
		{ModeShm, shmHalvingBytes/4 + 3, 0},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			c := newCluster(t, n, TransportOptions{Mode: tc.mode})
			gs := c.groups(t, GroupSpec{Name: "auto", Ranks: seq(n), Timeout: 20 * time.Second, SmallBytes: tc.small})
			ctx := testCtx(t, 60*time.Second)
			rng := rand.New(rand.NewPCG(4, 14))
			in := mixedInputs(rng, n, tc.ln)
			bufs := make([][]float32, n)
			for i := range in {
				bufs[i] = slices.Clone(in[i])
			}
			want := hdReference(in)
			noErrors(t, "all-reduce", each(n, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
			for i := range n {
				if !slices.Equal(bufs[i], want) {
					t.Fatalf("member %d: not halving-doubling's bits", i)
				}
			}
		})
	}
}
