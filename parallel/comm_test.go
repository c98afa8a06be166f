package parallel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// lengths exercises 0, 1, lengths below, at and above the group size and
// the chunk size, and random ones.
func lengths(rng *rand.Rand, n, chunkElems int) []int {
	ls := []int{0, 1, n - 1, n + 1, 7, 63, 65, chunkElems, chunkElems*n + 3}
	for range 2 {
		ls = append(ls, 1+rng.IntN(5*chunkElems*n))
	}
	return ls
}

// TestCollectives checks every operation against a reference computed
// without communication, for 1 to 8 ranks over real gRPC.
func TestCollectives(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		const chunkBytes = 1024 // small, so that test buffers span many chunks
		for _, n := range []int{1, 2, 3, 4, 5, 8} {
			t.Run(fmt.Sprintf("ranks=%d", n), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(n), 7))
				c := newCluster(t, n, opts)
				mk := func(name string, algo Algorithm) []*Group {
					return c.groups(t, GroupSpec{Name: name, Ranks: seq(n), Timeout: 20 * time.Second,
						ChunkBytes: chunkBytes, SmallBytes: 512, AllReduce: algo})
				}
				groups := map[Algorithm][]*Group{Auto: mk("auto", Auto), Ring: mk("ring", Ring), RecursiveDoubling: mk("rd", RecursiveDoubling), HalvingDoubling: mk("hd", HalvingDoubling)}
				ctx := testCtx(t, 60*time.Second)
				for _, ln := range lengths(rng, n, chunkBytes/4) {
					in := make([][]float32, n)
					for i := range in {
						in[i] = randBuf(rng, ln)
					}
					copies := func() [][]float32 {
						out := make([][]float32, n)
						for i := range out {
							out[i] = slices.Clone(in[i])
						}
						return out
					}
					for algo, gs := range groups {
						for _, op := range []ReduceOp{Sum, Mean, Max} {
							bufs := copies()
							noErrors(t, "all-reduce", each(n, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], op) }))
							want := refReduce(in, op)
							for i := range n {
								if err := closeTo(bufs[i], want, n); err != nil {
									t.Fatalf("all-reduce %v %v len %d member %d: %v", algo, op, ln, i, err)
								}
								if !slices.Equal(bufs[i], bufs[0]) && !hasNaN(bufs[0]) {
									t.Fatalf("all-reduce %v %v len %d: member %d differs from member 0 (results must be bitwise identical)", algo, op, ln, i)
								}
							}
						}
					}
					// Reduce-scatter and all-gather by the ring (Auto) and by
					// halving and doubling (the ring again where n is not a
					// power of two above 2).
					for _, sa := range []Algorithm{Auto, HalvingDoubling} {
						gs := groups[sa]
						for _, op := range []ReduceOp{Sum, Mean, Max} {
							bufs := copies()
							shards := make([][]float32, n)
							noErrors(t, "reduce-scatter", each(n, func(i int) (err error) {
								shards[i], err = gs[i].ReduceScatter(ctx, bufs[i], op)
								return err
							}))
							want := refReduce(in, op)
							for i := range n {
								off, m := ShardRange(ln, n, i)
								if len(shards[i]) != m {
									t.Fatalf("reduce-scatter %v len %d member %d: shard of %d, want %d", sa, ln, i, len(shards[i]), m)
								}
								if err := closeTo(shards[i], want[off:off+m], n); err != nil {
									t.Fatalf("reduce-scatter %v %v len %d member %d: %v", sa, op, ln, i, err)
								}
							}
						}
						{ // all-gather: member i contributes its shard of in[i]
							bufs := make([][]float32, n)
							want := make([]float32, ln)
							for i := range n {
								bufs[i] = make([]float32, ln)
								off, m := ShardRange(ln, n, i)
								copy(bufs[i][off:off+m], in[i][off:off+m])
								copy(want[off:off+m], in[i][off:off+m])
							}
							noErrors(t, "all-gather", each(n, func(i int) error { return gs[i].AllGather(ctx, bufs[i]) }))
							for i := range n {
								if !slices.Equal(bufs[i], want) {
									t.Fatalf("all-gather %v len %d member %d: wrong result", sa, ln, i)
								}
							}
						}
					}
					gs := groups[Auto]
					for _, big := range []bool{false, true} {
						g2 := gs
						if big { // force the chunked chain
							g2 = groups[Ring]
						}
						root := rng.IntN(n)
						bufs := make([][]float32, n)
						for i := range bufs {
							bufs[i] = make([]float32, ln)
						}
						copy(bufs[root], in[root])
						noErrors(t, "broadcast", each(n, func(i int) error { return g2[i].Broadcast(ctx, bufs[i], root) }))
						for i := range n {
							if !slices.Equal(bufs[i], in[root]) {
								t.Fatalf("broadcast len %d root %d member %d: wrong result", ln, root, i)
							}
						}
					}
					noErrors(t, "barrier", each(n, func(i int) error { return gs[i].Barrier(ctx) }))
					if n > 1 { // send/recv around the ring, both directions at once
						got := make([][]float32, n)
						noErrors(t, "send/recv", each(n, func(i int) error {
							got[i] = make([]float32, ln)
							errc := make(chan error, 1)
							go func() { errc <- gs[i].Send(ctx, (i+1)%n, in[i]) }()
							if err := gs[i].Recv(ctx, (i+n-1)%n, got[i]); err != nil {
								return err
							}
							return <-errc
						}))
						for i := range n {
							if !slices.Equal(got[i], in[(i+n-1)%n]) {
								t.Fatalf("recv len %d member %d: wrong data", ln, i)
							}
						}
					}
				}
			})
		}
	})
}

func hasNaN(b []float32) bool {
	for _, x := range b {
		if x != x {
			return true
		}
	}
	return false
}

// TestConcurrentGroups runs collectives on overlapping groups at once over
// the same connections: tensor-parallel pairs, data-parallel pairs and the
// whole world.
func TestConcurrentGroups(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		const n = 4
		c := newCluster(t, n, opts)
		spec := GroupSpec{Timeout: 20 * time.Second, ChunkBytes: 2048, SmallBytes: 1024}
		type member struct {
			g     *Group
			ranks []int
		}
		byRank := make([][]member, n) // groups each rank is in
		add := func(name string, ranks []int) {
			s := spec
			s.Name, s.Ranks = name, ranks
			for i, g := range c.groups(t, s) {
				byRank[ranks[i]] = append(byRank[ranks[i]], member{g, ranks})
			}
		}
		add("tp0", []int{0, 1})
		add("tp1", []int{2, 3})
		add("dp0", []int{0, 2})
		add("dp1", []int{3, 1}) // ring order differs from rank order
		add("world", []int{0, 1, 2, 3})
		ctx := testCtx(t, 60*time.Second)
		// Member value for (rank, group, iteration, element) is known to all,
		// so each rank can check its own results.
		val := func(rank, gi, it, e int) float32 { return float32(rank*1000+gi*100+it) + float32(e%7) }
		const iters = 15
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for r := range n {
			for gi, m := range byRank[r] {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for it := range iters {
						ln := 1 + (it*977+gi*131)%3000
						buf := make([]float32, ln)
						for e := range buf {
							buf[e] = val(r, gi, it, e)
						}
						if err := m.g.AllReduce(ctx, buf, Sum); err != nil {
							errs <- err
							return
						}
						for e := range buf {
							var want float32
							for _, pr := range m.ranks {
								// gi is the same on every member: groups were
								// added in the same order everywhere.
								want += val(pr, gi, it, e)
							}
							if math.Abs(float64(buf[e]-want)) > 1e-3*math.Abs(float64(want)) {
								errs <- fmt.Errorf("group %s rank %d iter %d elem %d: got %v want %v", m.g.spec.Name, r, it, e, buf[e], want)
								return
							}
						}
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// TestPeerClosedMidCollective closes one rank's transport while the others
// wait in an all-reduce: they fail quickly, long before the timeout, with
// an error naming that rank, and so does every later call.
func TestPeerClosedMidCollective(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		const n = 3
		c := newCluster(t, n, opts)
		gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(n), Timeout: 3 * time.Second, ChunkBytes: 4096})
		ctx := testCtx(t, 30*time.Second)
		start := time.Now()
		time.AfterFunc(100*time.Millisecond, func() { c.ts[2].Close() })
		errs := each(2, func(i int) error { return gs[i].AllReduce(ctx, make([]float32, 100000), Sum) })
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("failing took %v", d)
		}
		for i, err := range errs {
			checkPeerError(t, err, 2, c.addrs[2], ErrPeerGone)
			// later calls fail at once, naming the same peer
			err = gs[i].Barrier(ctx)
			checkPeerError(t, err, 2, c.addrs[2], ErrPeerGone)
			if pe := new(PeerError); errors.As(err, &pe) && pe.Op != "barrier" {
				t.Errorf("later call: Op %q, want barrier", pe.Op)
			}
		}
	})
}

// TestPeerSilentTimesOut: a rank that is alive but never joins makes the
// others fail after the group's Timeout, naming it.
func TestPeerSilentTimesOut(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		const n = 2
		c := newCluster(t, n, opts)
		gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(n), Timeout: 300 * time.Millisecond})
		start := time.Now()
		err := gs[0].AllReduce(testCtx(t, 10*time.Second), make([]float32, 10), Sum)
		if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
			t.Errorf("timed out after %v, want about 300ms", d)
		}
		checkPeerError(t, err, 1, c.addrs[1], ErrPeerTimeout)
	})
}

// TestContextDeadline: the caller's deadline ends a wait too, and names
// the peer waited for.
func TestContextDeadline(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		c := newCluster(t, 2, opts)
		gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(2), Timeout: time.Minute})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		err := gs[1].Recv(ctx, 0, make([]float32, 3))
		checkPeerError(t, err, 0, c.addrs[0], context.DeadlineExceeded)
	})
}

func checkPeerError(t *testing.T, err error, rank int, addr string, cause error) {
	t.Helper()
	var pe *PeerError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T), want *PeerError", err, err)
	}
	if pe.Rank != rank || pe.Addr != addr {
		t.Errorf("error names rank %d (%s), want rank %d (%s): %v", pe.Rank, pe.Addr, rank, addr, err)
	}
	if !errors.Is(err, cause) {
		t.Errorf("error %v is not %v", err, cause)
	}
}

// TestStaleGeneration: frames from an older generation are rejected, never
// delivered, and the stale sender's group fails with ErrStaleGeneration.
func TestStaleGeneration(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		c := newCluster(t, 2, opts)
		spec := func(gen uint64, me int) GroupSpec {
			return GroupSpec{Job: "j", Generation: gen, Name: "g", Ranks: []int{0, 1}, MyRank: me, Addrs: c.addrs, Timeout: 2 * time.Second}
		}
		recv, err := c.ts[0].NewGroup(spec(2, 0))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ts[0].NewGroup(spec(1, 0)); !errors.Is(err, ErrStaleGeneration) {
			t.Errorf("creating an older generation: %v, want ErrStaleGeneration", err)
		}
		old, err := c.ts[1].NewGroup(spec(1, 1))
		if err != nil {
			t.Fatal(err)
		}
		ctx := testCtx(t, 10*time.Second)
		if err := old.Send(ctx, 0, []float32{666, 666}); err != nil {
			t.Fatal(err)
		}
		// The rejection comes back to the old group asynchronously.
		deadline := time.Now().Add(5 * time.Second)
		for old.Err() == nil && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if !errors.Is(old.Err(), ErrStaleGeneration) {
			t.Fatalf("old group error %v, want ErrStaleGeneration", old.Err())
		}
		cur, err := c.ts[1].NewGroup(spec(2, 1))
		if err != nil {
			t.Fatal(err)
		}
		if err := cur.Send(ctx, 0, []float32{1, 2}); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 2)
		if err := recv.Recv(ctx, 1, got); err != nil {
			t.Fatal(err)
		}
		if got[0] != 1 || got[1] != 2 {
			t.Fatalf("received %v, want [1 2] (stale data mixed in?)", got)
		}
	})
}

// TestMismatchFailsLoudly: ranks calling different operations get
// ErrMismatch, not mixed data.
func TestMismatchFailsLoudly(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		c := newCluster(t, 2, opts)
		gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(2), Timeout: 2 * time.Second})
		ctx := testCtx(t, 10*time.Second)
		errs := each(2, func(i int) error { return gs[i].AllReduce(ctx, make([]float32, 10+i), Sum) })
		for i, err := range errs {
			if !errors.Is(err, ErrMismatch) {
				t.Errorf("member %d: %v, want ErrMismatch", i, err)
			}
		}
	})
}

// TestLateGroupGetsEarlyFrames: a peer may send before the receiver has
// created its side of the group.
func TestLateGroupGetsEarlyFrames(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		c := newCluster(t, 2, opts)
		ctx := testCtx(t, 10*time.Second)
		s := GroupSpec{Job: "j", Name: "late", Ranks: []int{0, 1}, Addrs: c.addrs, Timeout: 5 * time.Second}
		s.MyRank = 1
		g1, err := c.ts[1].NewGroup(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := g1.Send(ctx, 0, []float32{3}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		s.MyRank = 0
		g0, err := c.ts[0].NewGroup(s)
		if err != nil {
			t.Fatal(err)
		}
		got := []float32{0}
		if err := g0.Recv(ctx, 1, got); err != nil || got[0] != 3 {
			t.Fatalf("got %v, %v", got, err)
		}
	})
}

func TestProtoCodecCollectives(t *testing.T) {
	c := newCluster(t, 3, TransportOptions{Codec: CodecProto, Mode: ModeGRPC})
	gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(3), Timeout: 10 * time.Second, ChunkBytes: 64 << 10})
	rng := rand.New(rand.NewPCG(3, 3))
	in := [][]float32{randBuf(rng, 100003), randBuf(rng, 100003), randBuf(rng, 100003)}
	bufs := [][]float32{slices.Clone(in[0]), slices.Clone(in[1]), slices.Clone(in[2])}
	ctx := testCtx(t, 20*time.Second)
	noErrors(t, "all-reduce", each(3, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
	for i := range bufs {
		if err := closeTo(bufs[i], refReduce(in, Sum), 3); err != nil {
			t.Fatal(err)
		}
	}
}

func TestGroupSpecValidate(t *testing.T) {
	err := GroupSpec{Ranks: []int{0, 0, -1}, MyRank: 5, Timeout: -1, ChunkBytes: 3}.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"Job", "Name", "listed twice", "out of range", "MyRank", "Timeout", "ChunkBytes"} {
		if !containsStr(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func containsStr(s, sub string) bool { return strings.Contains(s, sub) }

// TestShutdownAfterBarrier: members that leave right after a barrier, with
// Shutdown, never make a slower member's barrier fail.
func TestShutdownAfterBarrier(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		for round := range 5 {
			n := 3 + round%3
			c := newCluster(t, n, opts)
			gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(n), Timeout: 10 * time.Second})
			ctx := testCtx(t, 20*time.Second)
			noErrors(t, fmt.Sprintf("round %d", round), each(n, func(i int) error {
				if err := gs[i].Barrier(ctx); err != nil {
					return err
				}
				return c.ts[i].Shutdown(ctx)
			}))
		}
	})
}

// TestUnixSockets runs collectives over Unix-socket transports.
func TestUnixSockets(t *testing.T) {
	for _, m := range []TransportMode{ModeGRPC, ModeTCP} {
		t.Run(m.String(), func(t *testing.T) { testUnixSockets(t, m) })
	}
}

func testUnixSockets(t *testing.T, mode TransportMode) {
	const n = 3
	c := newUnixCluster(t, n, TransportOptions{Mode: mode})
	gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(n), Timeout: 10 * time.Second, ChunkBytes: 4096})
	rng := rand.New(rand.NewPCG(4, 4))
	in := [][]float32{randBuf(rng, 10007), randBuf(rng, 10007), randBuf(rng, 10007)}
	bufs := [][]float32{slices.Clone(in[0]), slices.Clone(in[1]), slices.Clone(in[2])}
	ctx := testCtx(t, 20*time.Second)
	noErrors(t, "all-reduce", each(n, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
	for i := range bufs {
		if err := closeTo(bufs[i], refReduce(in, Sum), n); err != nil {
			t.Fatal(err)
		}
	}
}
