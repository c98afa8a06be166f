//go:build linux

package parallel

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
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
// (PollSpin < 0) never miss each other's wake-up, in small frames through
// the ring and large ones by reference. A missed wake-up (the sleeper's
// flag and the other side's position stored without a full fence between
// store and load; see shmRing) showed as "nothing received" after the
// group's timeout under -race, in about one 3-rank run in 15.
func TestShmWakeups(t *testing.T) {
	const ranks = 3
	c := newCluster(t, ranks, TransportOptions{Mode: ModeShm, PollSpin: -1})
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

// TestPollSpinFollowsOversubscription: bulk readers poll for
// DefaultPollSpin while the processes linked on this host fit its cores
// and sleep at once beyond that, unless PollSpin says otherwise; the spin
// follows links as they open, shm links and inbound tcp links from this
// host count, and tcp peers on other hosts do not.
func TestPollSpinFollowsOversubscription(t *testing.T) {
	cpus := runtime.NumCPU()
	tr0 := newCluster(t, 1, TransportOptions{Mode: ModeShm}).ts[0]
	for _, tc := range []struct {
		peers int
		want  time.Duration
	}{{0, DefaultPollSpin}, {cpus - 1, DefaultPollSpin}, {cpus, oversubscribedSpin}} {
		if got := tr0.pollSpinFor(tc.peers); got != tc.want {
			t.Errorf("%d peers on %d CPUs: spin %v, want %v", tc.peers, cpus, got, tc.want)
		}
	}
	set := newCluster(t, 1, TransportOptions{Mode: ModeShm, PollSpin: 7 * time.Microsecond}).ts[0]
	if got := set.pollSpinFor(cpus); got != 7*time.Microsecond {
		t.Errorf("PollSpin set: spin %v with %d peers, want the option's 7µs", got, cpus)
	}
	for _, tc := range []struct {
		name      string
		opts      TransportOptions
		hosts     bool // every rank pretends to be on its own host
		wantPeers int
	}{
		{"shm", TransportOptions{Mode: ModeShm}, false, 2},
		{"tcp", TransportOptions{Mode: ModeTCP}, false, 2},
		{"tcp/other-hosts", TransportOptions{Mode: ModeTCP}, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &cluster{addrs: map[int]string{}}
			for r := range 3 {
				o := tc.opts
				o.ListenAddr = "127.0.0.1:0"
				if tc.hosts {
					o.HostID = fmt.Sprintf("host-%d", r)
				}
				tr, err := NewTransport(context.Background(), o)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { tr.Close() })
				c.ts = append(c.ts, tr)
				c.addrs[r] = tr.Addr()
			}
			tr := c.ts[0]
			gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(3), Timeout: 10 * time.Second})
			ctx := testCtx(t, 30*time.Second)
			noErrors(t, "barrier", each(3, func(i int) error { return gs[i].Barrier(ctx) }))
			// The barrier's frames were read, so rank 0's inbound links
			// from both others are open.
			want := tr.pollSpinFor(tc.wantPeers)
			tr.hostMu.Lock()
			peers := len(tr.hostPeers)
			tr.hostMu.Unlock()
			if peers != tc.wantPeers { // each peer once, though linked in both directions
				t.Errorf("rank 0 counts %d peers on its host, want %d", peers, tc.wantPeers)
			}
			if got := time.Duration(tr.pollSpin.Load()); got != want {
				t.Errorf("after linking: spin %v, want %v", got, want)
			}
			if got, want := tr.bells.crowded.Load(), tc.wantPeers+1 > cpus; got != want {
				t.Errorf("after linking %d peers on %d CPUs: crowded %v, want %v", tc.wantPeers, cpus, got, want)
			}
		})
	}
}

// TestShmLazySendReleased: the ring's sends by reference are lazy (they
// return before the peer has read the payload), so a finished all-reduce
// must have waited for every acknowledgement, and one that fails while its
// peer has not read a payload must not return before it has marked the
// link abandoned and broken it, or the peer could read the caller's buffer
// after the caller got it back. Rank 1's reader is held up here by its
// transport's lock, which it takes to route a group's first frame.
func TestShmLazySendReleased(t *testing.T) {
	c := newCluster(t, 2, TransportOptions{Mode: ModeShm})
	gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(2), Timeout: 10 * time.Second})
	ctx := testCtx(t, 30*time.Second)
	const n = 1 << 18 // 1 MiB: two 512 KiB segments, by reference
	bufs := [][]float32{make([]float32, n), make([]float32, n)}
	for range 3 {
		noErrors(t, "all-reduce", each(2, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
	}
	oc, err := c.ts[0].conn(gs[0].connKey(1))
	if err != nil {
		t.Fatal(err)
	}
	l := oc.bulk.(*shmLink)
	if !l.byRef {
		t.Skip("process_vm_readv is not allowed here: no by-reference sends")
	}
	if a := l.ring.acked.Load(); l.descs == 0 || a != l.descs {
		t.Fatalf("after the all-reduces returned, %d of %d by-reference frames were read", a, l.descs)
	}

	g2 := c.groups(t, GroupSpec{Name: "g2", Ranks: seq(2), Timeout: 300 * time.Millisecond})
	// A second mapping of the ring, which stays readable after rank 0
	// unmaps its own when the link breaks.
	addr, _, errno := unix.Syscall6(unix.SYS_MREMAP, uintptr(unsafe.Pointer(&l.ring.mem[0])), 0, uintptr(len(l.ring.mem)), unix.MREMAP_MAYMOVE, 0, 0)
	if errno != 0 {
		t.Skipf("mremap: %v", errno)
	}
	dup := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(nil), addr)), len(l.ring.mem))
	defer unix.Syscall(unix.SYS_MUNMAP, addr, uintptr(len(dup)), 0)
	abandoned := (*atomic.Uint32)(unsafe.Pointer(&dup[shmOffAbandoned]))

	c.ts[1].mu.Lock()
	err = g2[0].AllReduce(ctx, bufs[0], Sum) // rank 1 never joins
	gotAbandoned, linkErr := abandoned.Load(), l.failure()
	c.ts[1].mu.Unlock()
	checkPeerError(t, err, 1, c.addrs[1], ErrPeerTimeout)
	if gotAbandoned != 1 || linkErr == nil {
		t.Fatalf("the all-reduce returned with a by-reference payload unread, but the link is marked abandoned=%d and its failure is %v", gotAbandoned, linkErr)
	}
	// Rank 1's reader now reads the payload, finds the link abandoned and
	// drops the frame instead of delivering it.
	deadline := time.Now().Add(10 * time.Second)
	for g2[1].Err() == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if g2[1].Err() == nil {
		t.Fatal("rank 1's group did not fail after its link was abandoned")
	}
	b := g2[1].boxes[0]
	b.mu.Lock()
	queued := len(b.q)
	b.mu.Unlock()
	if queued != 0 {
		t.Fatalf("rank 1 queued %d frames read from an abandoned link", queued)
	}
}

// TestSpinForByReference: a wait on by-reference bytes polls in
// proportion to them, also where other waits sleep at once (base 0:
// oversubscribed), never longer than shmSpinMax, never shorter than the
// base, and not at all when PollSpin is negative.
func TestSpinForByReference(t *testing.T) {
	base := int64(DefaultPollSpin)
	for _, tc := range []struct {
		base  int64
		bytes uint64
		want  time.Duration
	}{
		{base, 0, DefaultPollSpin},
		{base, 1 << 10, DefaultPollSpin},
		{base, 1 << 20, shmSpinPerMiB},
		{0, 0, 0},
		{0, 1 << 20, shmSpinPerMiB},
		{0, 256 << 10, shmSpinPerMiB / 4},
		{0, 1 << 30, shmSpinMax},
		{-1, 1 << 20, -1},
	} {
		if got := spinFor(tc.base, tc.bytes); got != tc.want {
			t.Errorf("spinFor(%v, %d bytes) = %v, want %v", time.Duration(tc.base), tc.bytes, got, tc.want)
		}
	}
}

// TestShmByRefFollowsOversubscription: payloads go by reference from
// 1 MiB while the linked processes have a core each, and when they
// outnumber the cores from 64 KiB for lazy sends and 256 KiB for sends
// that wait to be read; a 2-rank all-reduce whose frames are below that
// (through the ring) still gives the right sums.
func TestShmByRefFollowsOversubscription(t *testing.T) {
	cpus := runtime.NumCPU()
	c := newCluster(t, 2, TransportOptions{Mode: ModeShm, shmByRefMin: -1})
	tr := c.ts[0]
	for _, tc := range []struct {
		peers int
		lazy  bool
		want  int
	}{
		{0, false, shmByRefRoomy}, {cpus - 1, true, shmByRefRoomy}, {cpus - 1, false, shmByRefRoomy},
		{cpus, true, shmByRefBytes}, {cpus, false, shmByRefWaited},
	} {
		if got := tr.shmByRefFor(tc.peers, tc.lazy); got != tc.want {
			t.Errorf("%d peers on %d CPUs, lazy %v: by reference from %d bytes, want %d", tc.peers, cpus, tc.lazy, got, tc.want)
		}
	}
	for _, lazy := range []bool{true, false} {
		if got := newCluster(t, 1, TransportOptions{Mode: ModeShm, shmByRefMin: 4096}).ts[0].shmByRefFor(cpus, lazy); got != 4096 {
			t.Errorf("shmByRefMin 4096, lazy %v: by reference from %d bytes", lazy, got)
		}
	}
	gs := c.groups(t, GroupSpec{Name: "g", Ranks: seq(2), Timeout: 10 * time.Second})
	ctx := testCtx(t, 30*time.Second)
	bufs := [][]float32{make([]float32, 64<<10), make([]float32, 64<<10)} // 256 KiB: 128 KiB frames
	for i := range bufs {
		for k := range bufs[i] {
			bufs[i][k] = float32(i + 1 + k%7)
		}
	}
	noErrors(t, "all-reduce", each(2, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
	for i := range bufs {
		for k, v := range bufs[i] {
			if want := float32(3 + 2*(k%7)); v != want {
				t.Fatalf("rank %d [%d] = %v, want %v", i, k, v, want)
			}
		}
	}
	if got, wait := tr.shmByRef.Load(), tr.shmByRefWait.Load(); cpus >= 2 && (got != shmByRefRoomy || wait != shmByRefRoomy) {
		t.Errorf("2 ranks on %d CPUs: by reference from %d bytes (waited: %d), want %d", cpus, got, wait, shmByRefRoomy)
	}
}

// TestSockReady: a polling loop sees that the socket of a parked tcp
// reader has data (and so lets the network poller run), and sees nothing
// when there is none or its reader is not parked.
func TestSockReady(t *testing.T) {
	w, r := tcpPair(t)
	rc, err := r.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	bell := &sockBell{}
	rc.Control(func(fd uintptr) { bell.fd.Store(int32(fd)) })
	var d bellBoard
	d.addSock(bell)
	bell.parked.Store(1)
	if d.sockReady() {
		t.Error("ready with nothing to read")
	}
	if _, err := w.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !d.sockReady() {
		if time.Now().After(deadline) {
			t.Fatal("a parked reader's socket with data was never ready")
		}
		time.Sleep(time.Millisecond)
	}
	bell.parked.Store(0)
	if d.sockReady() {
		t.Error("ready although its reader is not parked")
	}
	bell.parked.Store(1)
	d.removeSock(bell)
	if d.sockReady() {
		t.Error("ready after the bell was removed")
	}
}

// TestPollWritev: a large write into a socket without room completes,
// byte for byte, whether the writer parks at once, polls for a while and
// then parks, or polls until the reader drains it; and a write to a
// closed peer fails within the write deadline instead of waiting.
func TestPollWritev(t *testing.T) {
	hdr := []byte("header--")
	pay := make([]byte, 8<<20) // more than the socket buffers hold
	for i := range pay {
		pay[i] = byte(i * 7)
	}
	for _, spin := range []time.Duration{0, 200 * time.Microsecond, 2 * time.Second} {
		w, r := tcpPair(t)
		s := newRawSock(w)
		w.SetWriteDeadline(time.Now().Add(20 * time.Second))
		done := make(chan error, 1)
		go func() {
			n, err := s.pollWritev(hdr, pay, spin, nil)
			if err == nil && n != len(hdr)+len(pay) {
				err = fmt.Errorf("wrote %d bytes, want %d", n, len(hdr)+len(pay))
			}
			done <- err
		}()
		time.Sleep(20 * time.Millisecond) // the writer finds the socket full
		got := make([]byte, len(hdr)+len(pay))
		r.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("spin %v: read: %v", spin, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("spin %v: %v", spin, err)
		}
		if !bytes.Equal(got[:len(hdr)], hdr) || !bytes.Equal(got[len(hdr):], pay) {
			t.Fatalf("spin %v: the bytes read are not the bytes written", spin)
		}
		r.Close()
		w.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := s.pollWritev(hdr, pay, spin, nil); err == nil {
			t.Fatalf("spin %v: a write to a closed peer succeeded", spin)
		}
		w.Close()
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-accepted
	if r == nil {
		w.Close()
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { w.Close(); r.Close() })
	return w, r
}

// TestShmCallsTakeFrames: with a core for each linked process, a call
// waiting on a shm link takes small frames from the ring itself
// (ringPoller) while the link's reader takes the rest, and nothing is
// lost, duplicated or misrouted between them: three groups over the same
// pair of ranks run all-reduces of mixed sizes (through the ring, above
// pollFrameMax, by reference) and point-to-point messages at once. Then
// one rank closes while the other waits polling, which fails naming it.
func TestShmCallsTakeFrames(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("calls poll their rings only while each linked process has a core")
	}
	c := newCluster(t, 2, TransportOptions{Mode: ModeShm})
	names := []string{"a", "b", "c"}
	gs := make([][]*Group, len(names))
	for k, name := range names {
		gs[k] = c.groups(t, GroupSpec{Name: name, Ranks: seq(2), Timeout: 10 * time.Second, ChunkBytes: 16 << 10})
	}
	ctx := testCtx(t, time.Minute)
	iters := 400
	if testing.Short() {
		iters = 100
	}
	sizes := []int{1, 1 << 10, 3000, 20 << 10, 40 << 10} // up to 160 KiB: by reference from 64 KiB in tests
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(names))
	for k := range names {
		for r := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g := gs[k][r]
				for it := range iters {
					n := sizes[(it+k)%len(sizes)]
					buf := make([]float32, n)
					for e := range buf {
						buf[e] = float32(r*7 + k + it%5 + e%3)
					}
					var err error
					if it%4 == 3 { // point to point: rank 0 sends, rank 1 receives
						if r == 0 {
							err = g.Send(ctx, 1, buf)
						} else {
							err = g.Recv(ctx, 0, buf)
						}
					} else {
						err = g.AllReduce(ctx, buf, Sum)
					}
					if err != nil {
						errs <- fmt.Errorf("group %s rank %d iteration %d: %w", names[k], r, it, err)
						return
					}
					for e, v := range buf {
						want := float32(7 + 2*(k+it%5+e%3)) // the sum over both ranks
						if it%4 == 3 {
							want = float32(k + it%5 + e%3) // rank 0's
						}
						if v != want {
							errs <- fmt.Errorf("group %s rank %d iteration %d [%d] = %v, want %v", names[k], r, it, e, v, want)
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
	if t.Failed() {
		return
	}
	if got := c.ts[0].callFrames.Load() + c.ts[1].callFrames.Load(); got == 0 {
		t.Error("no call took a frame from its ring itself")
	} else {
		t.Logf("calls took %d frames themselves", got)
	}
	time.AfterFunc(100*time.Millisecond, func() { c.ts[1].Close() })
	err := gs[0][0].AllReduce(ctx, make([]float32, 1024), Sum)
	checkPeerError(t, err, 1, c.addrs[1], ErrPeerGone)
}
