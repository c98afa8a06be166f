//go:build linux

package parallel

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"
)

// TestShmSingleCopy: large shared-memory payloads go by reference where
// the system allows it (and not when ShmNoSingleCopy says so), and arrive
// intact either way, in collectives and point-to-point.
func TestShmSingleCopy(t *testing.T) {
	for _, off := range []bool{false, true} {
		c := newCluster(t, 3, TransportOptions{Mode: ModeShm, ShmNoSingleCopy: off})
		gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(3), Timeout: 10 * time.Second, ChunkBytes: 128 << 10})
		rng := rand.New(rand.NewPCG(10, 10))
		ctx := testCtx(t, 30*time.Second)
		for _, n := range []int{100, 300001} {
			in := [][]float32{randBuf(rng, n), randBuf(rng, n), randBuf(rng, n)}
			bufs := [][]float32{slices.Clone(in[0]), slices.Clone(in[1]), slices.Clone(in[2])}
			noErrors(t, "all-reduce", each(3, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Mean) }))
			for i := range bufs {
				if err := closeTo(bufs[i], refReduce(in, Mean), 3); err != nil {
					t.Fatalf("single copy off=%v n=%d member %d: %v", off, n, i, err)
				}
			}
			got := make([]float32, n)
			noErrors(t, "send/recv", each(2, func(i int) error {
				if i == 0 {
					return gs[0].Send(ctx, 1, in[2])
				}
				return gs[1].Recv(ctx, 0, got)
			}))
			if !slices.Equal(got, in[2]) {
				t.Fatalf("single copy off=%v n=%d: message damaged", off, n)
			}
		}
		oc, err := c.ts[0].conn(gs[0].connKey(1))
		if err != nil {
			t.Fatal(err)
		}
		<-oc.ready
		l := oc.bulk.(*shmLink)
		switch {
		case off && l.byRef:
			t.Error("ShmNoSingleCopy set, but the link reads by reference")
		case !off && !l.byRef:
			t.Log("process_vm_readv is not allowed here: the by-reference path went untested")
		}
	}
}

// TestShmWakeups: readers and writers that go to sleep on every wait
// (ShmSpin < 0) never miss each other's wake-up, in small frames through
// the ring and large ones by reference. A missed wake-up (the sleeper's
// flag and the other side's position stored without a full fence between
// store and load; see shmRing) showed as "nothing received" after the
// group's timeout under -race, in about one 3-rank run in 15.
func TestShmWakeups(t *testing.T) {
	const ranks = 3
	c := newCluster(t, ranks, TransportOptions{Mode: ModeShm, ShmSpin: -1})
	gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(ranks), Timeout: 5 * time.Second, AllReduce: RecursiveDoubling})
	ctx := testCtx(t, 2*time.Minute)
	bufs := make([][]float32, ranks)
	for i := range bufs {
		bufs[i] = make([]float32, 25<<10) // 100 KiB: by reference where allowed
	}
	iters := 3000
	if testing.Short() {
		iters = 300
	}
	for it := range iters {
		n := 1 << 10 // 4 KiB through the ring
		if it%2 == 1 {
			n = len(bufs[0])
		}
		noErrors(t, fmt.Sprintf("all-reduce %d of %d floats", it, n), each(ranks, func(i int) error {
			b := bufs[i][:n]
			for j := range b {
				b[j] = float32(i + 1)
			}
			return gs[i].AllReduce(ctx, b, Sum)
		}))
		for i := range bufs {
			if got := bufs[i][n-1]; got != ranks*(ranks+1)/2 {
				t.Fatalf("all-reduce %d: member %d got %v", it, i, got)
			}
		}
	}
}

// TestShmSpinFollowsOversubscription: shm waits poll for DefaultShmSpin
// while the linked processes fit the host's cores and sleep at once beyond
// that, unless ShmSpin says otherwise; the spin follows links as they open.
func TestShmSpinFollowsOversubscription(t *testing.T) {
	cpus := runtime.NumCPU()
	c := newCluster(t, 3, TransportOptions{Mode: ModeShm})
	tr := c.ts[0]
	for _, tc := range []struct {
		peers int
		want  time.Duration
	}{{0, DefaultShmSpin}, {cpus - 1, DefaultShmSpin}, {cpus, 0}} {
		if got := tr.shmSpinFor(tc.peers); got != tc.want {
			t.Errorf("%d peers on %d CPUs: spin %v, want %v", tc.peers, cpus, got, tc.want)
		}
	}
	set := newCluster(t, 1, TransportOptions{Mode: ModeShm, ShmSpin: 7 * time.Microsecond}).ts[0]
	if got := set.shmSpinFor(cpus); got != 7*time.Microsecond {
		t.Errorf("ShmSpin set: spin %v with %d peers, want the option's 7µs", got, cpus)
	}
	gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(3), Timeout: 10 * time.Second})
	ctx := testCtx(t, 30*time.Second)
	noErrors(t, "barrier", each(3, func(i int) error { return gs[i].Barrier(ctx) }))
	want := tr.shmSpinFor(2) // rank 0 now has shm links with both others
	tr.shmMu.Lock()
	peers := len(tr.shmPeers)
	tr.shmMu.Unlock()
	if peers != 2 { // each peer once, though linked in both directions
		t.Errorf("rank 0 counts %d shm peers, want 2", peers)
	}
	if got := time.Duration(tr.shmSpin.Load()); got != want {
		t.Errorf("after linking 2 peers: spin %v, want %v", got, want)
	}
}
