package parallel

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

func TestChooseTransport(t *testing.T) {
	const (
		auto = loomv1.DataTransport_DATA_TRANSPORT_AUTO
		grpc = loomv1.DataTransport_DATA_TRANSPORT_GRPC
		tcp  = loomv1.DataTransport_DATA_TRANSPORT_TCP
		shm  = loomv1.DataTransport_DATA_TRANSPORT_SHM
		old  = loomv1.DataTransport_DATA_TRANSPORT_UNSPECIFIED
	)
	for _, c := range []struct {
		asked    loomv1.DataTransport
		mine     TransportMode
		sameHost bool
		shmOK    bool
		want     loomv1.DataTransport
		err      string // substring of the error, "" for none
	}{
		{auto, ModeAuto, true, true, shm, ""},
		{auto, ModeAuto, false, true, tcp, ""},
		{auto, ModeAuto, true, false, tcp, ""},
		{auto, ModeTCP, true, true, tcp, ""},
		{tcp, ModeAuto, true, true, tcp, ""},
		{auto, ModeGRPC, true, true, grpc, ""},
		{grpc, ModeAuto, false, true, grpc, ""},
		{shm, ModeAuto, true, true, shm, ""},
		{shm, ModeShm, true, true, shm, ""},
		{old, ModeAuto, true, true, grpc, ""},
		{shm, ModeAuto, false, true, 0, "boot ids differ"},
		{auto, ModeShm, false, true, 0, "boot ids differ"},
		{shm, ModeAuto, true, false, 0, "not available"},
		{tcp, ModeShm, true, true, 0, "--transport shm"},
		{grpc, ModeTCP, true, true, 0, "same transport"},
	} {
		host := "host-b"
		if c.sameHost {
			host = "host-a"
		}
		got, reason, err := chooseTransport(c.asked, "host-a", c.mine, host, c.shmOK)
		name := fmt.Sprintf("asked %v, mine %v, same host %v, shm %v", c.asked, c.mine, c.sameHost, c.shmOK)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want one mentioning %q", name, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want || reason == "" {
			t.Errorf("%s: %v (%q), %v; want %v with a reason", name, got, reason, err, c.want)
		}
	}
}

// TestAutoChoosesByHost: auto links same-host peers with shared memory and
// others with tcp, and says so per peer (Links, OnLink).
func TestAutoChoosesByHost(t *testing.T) {
	for _, c := range []struct {
		hosts [2]string
		want  string
	}{{[2]string{"h", "h"}, "shm"}, {[2]string{"h1", "h2"}, "tcp"}} {
		if c.want == "shm" && runtime.GOOS != "linux" {
			continue
		}
		var mu sync.Mutex
		var told []LinkInfo
		ts := make([]*Transport, 2)
		addrs := map[int]string{}
		for r := range 2 {
			tr, err := NewTransport(context.Background(), TransportOptions{ListenAddr: "127.0.0.1:0", HostID: c.hosts[r],
				OnLink: func(li LinkInfo) { mu.Lock(); told = append(told, li); mu.Unlock() }})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			ts[r], addrs[r] = tr, tr.Addr()
		}
		gs := make([]*Group, 2)
		for r := range 2 {
			g, err := ts[r].NewGroup(GroupSpec{Job: "j", Generation: 4, Name: "g", Ranks: seq(2), MyRank: r, Addrs: addrs, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			gs[r] = g
		}
		ctx := testCtx(t, 20*time.Second)
		noErrors(t, "all-reduce", each(2, func(i int) error { return gs[i].AllReduce(ctx, []float32{1, 2, 3}, Sum) }))
		for r, tr := range ts {
			ls := tr.Links()
			if len(ls) != 1 || ls[0].Transport != c.want || ls[0].Peer != addrs[1-r] || ls[0].Job != "j" || ls[0].Generation != 4 || ls[0].Reason == "" {
				t.Errorf("hosts %v: rank %d links %+v, want one %s link to %s", c.hosts, r, ls, c.want, addrs[1-r])
			}
		}
		mu.Lock()
		if len(told) != 2 {
			t.Errorf("hosts %v: OnLink told %d links, want 2: %+v", c.hosts, len(told), told)
		}
		mu.Unlock()
	}
}

// TestTransportMismatchNamesPeer: workers asking for incompatible
// transports fail the group with an error that names the peer and says
// what to change, instead of hanging.
func TestTransportMismatchNamesPeer(t *testing.T) {
	type side struct {
		mode TransportMode
		host string
	}
	cases := [][2]side{{{ModeTCP, "h"}, {ModeGRPC, "h"}}}
	if runtime.GOOS == "linux" {
		cases = append(cases, [2]side{{ModeShm, "h1"}, {ModeShm, "h2"}})
	}
	for _, sides := range cases {
		ts := make([]*Transport, 2)
		addrs := map[int]string{}
		for r, s := range sides {
			tr, err := NewTransport(context.Background(), TransportOptions{ListenAddr: "127.0.0.1:0", Mode: s.mode, HostID: s.host})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			ts[r], addrs[r] = tr, tr.Addr()
		}
		gs := make([]*Group, 2)
		for r := range 2 {
			g, err := ts[r].NewGroup(GroupSpec{Job: "j", Name: "g", Ranks: seq(2), MyRank: r, Addrs: addrs, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			gs[r] = g
		}
		ctx := testCtx(t, 20*time.Second)
		errs := each(2, func(i int) error { return gs[i].AllReduce(ctx, []float32{1}, Sum) })
		for r, err := range errs {
			var pe *PeerError
			if !errors.As(err, &pe) || pe.Rank != 1-r || pe.Addr != addrs[1-r] {
				t.Errorf("%v: rank %d: %v, want a PeerError naming rank %d (%s)", sides, r, err, 1-r, addrs[1-r])
				continue
			}
			if !strings.Contains(err.Error(), "transport") {
				t.Errorf("%v: rank %d: %v does not say the transports disagree", sides, r, err)
			}
		}
	}
}

// TestBulkRefusesUnknownSecret: a connection that does not present a
// secret the transport minted is closed, and its frames never arrive.
func TestBulkRefusesUnknownSecret(t *testing.T) {
	modes := []TransportMode{ModeTCP}
	if runtime.GOOS == "linux" {
		modes = append(modes, ModeShm)
	}
	for _, m := range modes {
		c := newCluster(t, 2, TransportOptions{Mode: m})
		gs := c.groups(t, GroupSpec{Job: "j", Name: "g", Ranks: seq(2), Timeout: 2 * time.Second})
		ctx := testCtx(t, 10*time.Second)
		noErrors(t, "barrier", each(2, func(i int) error { return gs[i].Barrier(ctx) }))
		var conn net.Conn
		var err error
		var hello []byte
		if m == ModeShm {
			conn, err = net.Dial("unix", c.ts[0].shm.addr)
			hello = shmPreamble[:]
		} else {
			conn, err = net.Dial("tcp", c.addrs[0])
			hello = tcpPreamble[:]
		}
		if err != nil {
			t.Fatal(err)
		}
		var s secret
		crand.Read(s[:])
		hello = append(slices.Clone(hello), s[:]...)
		// A frame for the group, as a stray sender would write it.
		var hdr [maxBulkHdr]byte
		n := putBulkHeader(hdr[:], &wireFrame{kind: loomv1.FrameKind_FRAME_KIND_P2P, group: "g", srcRank: 1, length: 1}, 4, 4)
		conn.Write(append(append(hello, hdr[:n]...), 1, 2, 3, 4))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if k, err := conn.Read(make([]byte, 1)); err == nil || k != 0 {
			t.Errorf("%v: the transport answered %d bytes to an unknown secret (err %v); want the connection closed", m, k, err)
		} else if errors.Is(err, io.EOF) == false && !strings.Contains(err.Error(), "reset") {
			t.Logf("%v: read after a bad secret: %v", m, err)
		}
		conn.Close()
		// Nothing was delivered: the group's next message is the real one.
		got := make([]float32, 1)
		noErrors(t, "send/recv", each(2, func(i int) error {
			if i == 1 {
				return gs[1].Send(ctx, 0, []float32{7})
			}
			return gs[0].Recv(ctx, 1, got)
		}))
		if got[0] != 7 {
			t.Errorf("%v: received %v, want 7 (a stray frame was delivered)", m, got[0])
		}
	}
}

// TestBulkLargeFrames: frames far larger than a shared-memory ring stream
// through it, and large frames cross tcp, in both point-to-point and ring
// all-reduce.
func TestBulkLargeFrames(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) {
		opts.ShmRingBytes = 64 << 10
		opts.MaxFrameBytes = 8 << 20
		c := newCluster(t, 3, opts)
		gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(3), Timeout: 10 * time.Second, ChunkBytes: 1 << 20})
		rng := rand.New(rand.NewPCG(8, 8))
		ctx := testCtx(t, 30*time.Second)
		in := [][]float32{randBuf(rng, 1<<20+5), randBuf(rng, 1<<20+5), randBuf(rng, 1<<20+5)}
		bufs := [][]float32{slices.Clone(in[0]), slices.Clone(in[1]), slices.Clone(in[2])}
		noErrors(t, "all-reduce", each(3, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
		for i := range bufs {
			if err := closeTo(bufs[i], refReduce(in, Sum), 3); err != nil {
				t.Fatalf("member %d: %v", i, err)
			}
		}
		got := make([]float32, len(in[0]))
		noErrors(t, "send/recv", each(2, func(i int) error {
			if i == 0 {
				return gs[0].Send(ctx, 1, in[0])
			}
			return gs[1].Recv(ctx, 0, got)
		}))
		if !slices.Equal(got, in[0]) {
			t.Fatal("a 4 MiB message arrived damaged")
		}
	})
}

// TestNoAllocationsInSteadyState: once warm, an all-reduce on a bulk
// transport allocates nothing, in either rank (both run in this process).
func TestNoAllocationsInSteadyState(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates, and empties sync.Pools at random")
	}
	for _, m := range testModes() {
		if m == ModeGRPC {
			continue
		}
		for _, n := range []int{1 << 10, 1 << 18} { // recursive doubling, ring
			c := newCluster(t, 2, TransportOptions{Mode: m})
			gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(2), Timeout: 10 * time.Second})
			bufs := [][]float32{make([]float32, n), make([]float32, n)}
			ctx := testCtx(t, 60*time.Second)
			const runs = 200
			peer := make(chan error, 1)
			go func() {
				for range runs + 11 { // AllocsPerRun runs once more to warm up
					if err := gs[1].AllReduce(ctx, bufs[1], Sum); err != nil {
						peer <- err
						return
					}
				}
				peer <- nil
			}()
			for range 10 {
				if err := gs[0].AllReduce(ctx, bufs[0], Sum); err != nil {
					t.Fatal(err)
				}
			}
			allocs := testing.AllocsPerRun(runs, func() {
				if err := gs[0].AllReduce(ctx, bufs[0], Sum); err != nil {
					t.Error(err)
				}
			})
			if err := <-peer; err != nil {
				t.Fatal(err)
			}
			if allocs != 0 {
				t.Errorf("%v, %d floats: %v allocations per all-reduce (both ranks), want 0", m, n, allocs)
			}
		}
	}
}

// TestShmDoorbells: with polling off every wait sleeps on the doorbell
// socket, so a lost wake-up would stall a collective until its timeout.
// Then, idle, the shared-memory readers cost no CPU.
func TestShmDoorbells(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("shared memory needs Linux")
	}
	c := newCluster(t, 3, TransportOptions{Mode: ModeShm, PollSpin: -1, ShmRingBytes: 64 << 10})
	gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(3), Timeout: 5 * time.Second, ChunkBytes: 16 << 10})
	ctx := testCtx(t, 60*time.Second)
	rng := rand.New(rand.NewPCG(9, 9))
	for it := range 60 {
		n := []int{1, 100, 5000, 70000}[it%4]
		in := [][]float32{randBuf(rng, n), randBuf(rng, n), randBuf(rng, n)}
		bufs := [][]float32{slices.Clone(in[0]), slices.Clone(in[1]), slices.Clone(in[2])}
		noErrors(t, fmt.Sprintf("all-reduce %d", it), each(3, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
		for i := range bufs {
			if err := closeTo(bufs[i], refReduce(in, Sum), 3); err != nil {
				t.Fatalf("iteration %d member %d: %v", it, i, err)
			}
		}
	}
	// Idle: every reader sleeps. Six readers polling would burn ~6× the
	// window's CPU; sleeping ones next to nothing.
	time.Sleep(50 * time.Millisecond)
	const window = 400 * time.Millisecond
	cpu0 := cpuNanos()
	time.Sleep(window)
	if used := time.Duration(cpuNanos() - cpu0); used > window/4 {
		t.Errorf("idle shared-memory links used %v of CPU in %v", used, window)
	}
}

// TestShmIdleAfterPolling: with the default polling, readers stop polling
// once the traffic stops.
func TestShmIdleAfterPolling(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("shared memory needs Linux")
	}
	c := newCluster(t, 2, TransportOptions{Mode: ModeShm})
	gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(2), Timeout: 5 * time.Second})
	ctx := testCtx(t, 30*time.Second)
	for range 100 {
		noErrors(t, "all-reduce", each(2, func(i int) error { return gs[i].AllReduce(ctx, make([]float32, 1024), Sum) }))
	}
	time.Sleep(50 * time.Millisecond)
	const window = 400 * time.Millisecond
	cpu0 := cpuNanos()
	time.Sleep(window)
	if used := time.Duration(cpuNanos() - cpu0); used > window/4 {
		t.Errorf("idle shared-memory links used %v of CPU in %v", used, window)
	}
}
