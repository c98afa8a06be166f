package main

// `loom bench wire --ranks N` for N > 2: N processes joined by plain sockets
// move an N-rank all-reduce's bytes in its ring or halving-doubling
// pattern. See bench_wire.go for what it measures.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// wireListenFD is the file descriptor a ring peer finds its listener on
// (the first of exec.Cmd.ExtraFiles).
const wireListenFD = 3

// wireAcceptTimeout bounds the wait for a ring neighbour's connection.
const wireAcceptTimeout = 30 * time.Second

// benchWireRing runs rank 0 of the ring and starts ranks 1 … N−1 as
// `loom wire-peer` processes. Every listener is opened here before any peer
// starts, and handed to its peer as an inherited descriptor, so no peer
// dials an address that is not yet listening.
func benchWireRing(ctx context.Context, env *cmdEnv, f *wireFlags, sizes []int64) error {
	n := f.ranks
	var dir string
	if f.network == "unix" {
		d, err := os.MkdirTemp("", "loom-wire-")
		if err != nil {
			return fmt.Errorf("bench wire: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	lis := make([]net.Listener, n)
	addrs := make([]string, n)
	defer func() {
		for _, l := range lis {
			if l != nil {
				l.Close()
			}
		}
	}()
	var lc net.ListenConfig
	for i := range n {
		network, addr := "tcp", "127.0.0.1:0"
		if dir != "" {
			network, addr = "unix", filepath.Join(dir, "wire-"+strconv.Itoa(i)+".sock")
		}
		l, err := lc.Listen(ctx, network, addr)
		if err != nil {
			return fmt.Errorf("bench wire: rank %d's listener: %w", i, err)
		}
		if ul, ok := l.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false) // the peer's inherited copy keeps serving the path
		}
		lis[i], addrs[i] = l, l.Addr().String()
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench wire: finding the loom binary: %w", err)
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(f.procs))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil)
	// The peers' stderr goes to one writer; exec copies each from its own
	// goroutine unless the writer is a file.
	stderr := &lockedWriter{w: env.stderr}
	for i := 1; i < n; i++ {
		file, err := listenerFile(lis[i])
		if err != nil {
			return fmt.Errorf("bench wire: rank %d's listener: %w", i, err)
		}
		cmd := exec.CommandContext(ctx, exe, "wire-peer", "--ranks", strconv.Itoa(n), "--rank", strconv.Itoa(i), "--pattern", f.pattern,
			"--addr", strings.Join(addrs, ","), "--network", f.network, "--procs", strconv.Itoa(f.procs),
			"--sizes", f.sizes, "--factor", strconv.Itoa(f.factor), "--iters", strconv.Itoa(f.iters), "--window", strconv.Itoa(f.window))
		cmd.Stderr = stderr
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(f.procs))
		cmd.ExtraFiles = []*os.File{file}
		cmd.WaitDelay = 2 * time.Second
		err = cmd.Start()
		file.Close()
		if err != nil {
			return fmt.Errorf("bench wire: starting rank %d: %w", i, err)
		}
		lis[i].Close() // the peer holds its own copy now
		lis[i] = nil
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cmd.Wait(); err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("rank %d (wire-peer) failed: %w", i, err))
			}
		}()
	}
	conns, err := wireMeshConnect(ctx, lis[0], f.network, 0, addrs, wirePartners(f.pattern, 0, n))
	if err != nil {
		return fmt.Errorf("bench wire: rank 0: %w", err)
	}
	window := ""
	for _, c := range conns {
		window = f.setWindow(c)
	}
	how := map[string]string{"ring": "each writing its share to the next while it reads one from the previous, 2(N-1) steps",
		"pairs": "exchanging with rank XOR 1, 2, 4 ... (halving-doubling's steps)"}[f.pattern]
	title := fmt.Sprintf("raw %s between %d processes, %s, GOMAXPROCS=%d, %s; GB/s = bytes sent per process (2(N-1)/N of the buffer) ÷ p50, 1e9 B/s",
		map[string]string{"tcp": "TCP loopback", "unix": "Unix socket"}[f.network], n, how, f.procs, window)
	err = wireReport(env, f, sizes, title, func(size int64) ([]float64, error) {
		return wireMeshRounds(conns, f.pattern, 0, n, size, wireIters(f.iters, size))
	})
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return fmt.Errorf("%w (%v)", err, cause)
	}
	return err
}

// listenerFile returns a descriptor of l for a child process to inherit.
func listenerFile(l net.Listener) (*os.File, error) {
	switch l := l.(type) {
	case *net.TCPListener:
		return l.File()
	case *net.UnixListener:
		return l.File()
	}
	return nil, fmt.Errorf("listener %T cannot be passed on", l)
}

// wireRingPeer is rank `rank` of the mesh: it listens on the inherited
// descriptor and connects to its partners at addrs (every rank's address).
func wireRingPeer(ctx context.Context, f *wireFlags, sizes []int64, rank int, addrs []string) error {
	if rank < 1 || rank >= f.ranks {
		return fmt.Errorf("wire-peer: --rank %d: want 1 to %d", rank, f.ranks-1)
	}
	if len(addrs) != f.ranks {
		return fmt.Errorf("wire-peer: --addr: want %d comma-separated addresses, got %d", f.ranks, len(addrs))
	}
	l, err := net.FileListener(os.NewFile(wireListenFD, "wire-listener"))
	if err != nil {
		return fmt.Errorf("wire-peer: rank %d: the inherited listener (fd %d): %w", rank, wireListenFD, err)
	}
	defer l.Close()
	conns, err := wireMeshConnect(ctx, l, f.network, rank, addrs, wirePartners(f.pattern, rank, f.ranks))
	if err != nil {
		return fmt.Errorf("wire-peer: rank %d: %w", rank, err)
	}
	for _, c := range conns {
		f.setWindow(c)
	}
	for _, size := range sizes {
		if _, err := wireMeshRounds(conns, f.pattern, rank, f.ranks, size, wireIters(f.iters, size)); err != nil {
			return fmt.Errorf("wire-peer: rank %d: %d bytes: %w", rank, size, err)
		}
	}
	return nil
}

// wirePartners lists the ranks rank exchanges bytes with.
func wirePartners(pattern string, rank, n int) []int {
	if pattern == "pairs" {
		var ps []int
		for d := 1; d < n; d <<= 1 {
			ps = append(ps, rank^d)
		}
		return ps
	}
	return []int{(rank + 1) % n, (rank + n - 1) % n}
}

// wireMeshConnect opens one connection to each partner: the lower rank of a
// pair dials and names itself in 4 bytes, the higher accepts. Every wait is
// bounded, and the connections close when ctx ends.
func wireMeshConnect(ctx context.Context, l net.Listener, network string, rank int, addrs []string, partners []int) (map[int]net.Conn, error) {
	conns := make(map[int]net.Conn, len(partners))
	fail := func(err error) (map[int]net.Conn, error) {
		for _, c := range conns {
			c.Close()
		}
		return nil, err
	}
	want := 0
	d := net.Dialer{Timeout: wireAcceptTimeout}
	for _, p := range partners {
		if p < rank {
			want++
			continue
		}
		c, err := d.DialContext(ctx, network, addrs[p])
		if err != nil {
			return fail(fmt.Errorf("dialing rank %d at %s: %w", p, addrs[p], err))
		}
		conns[p] = c
		var hello [4]byte
		binary.LittleEndian.PutUint32(hello[:], uint32(rank))
		c.SetDeadline(time.Now().Add(wireAcceptTimeout))
		if _, err := c.Write(hello[:]); err != nil {
			return fail(fmt.Errorf("greeting rank %d at %s: %w", p, addrs[p], err))
		}
	}
	type accepted struct {
		c    net.Conn
		from int
		err  error
	}
	ch := make(chan accepted, want)
	go func() {
		for range want {
			c, err := l.Accept()
			if err != nil {
				ch <- accepted{err: err}
				return
			}
			var hello [4]byte
			c.SetDeadline(time.Now().Add(wireAcceptTimeout))
			if _, err := io.ReadFull(c, hello[:]); err != nil {
				c.Close()
				ch <- accepted{err: fmt.Errorf("reading a partner's greeting: %w", err)}
				return
			}
			ch <- accepted{c: c, from: int(binary.LittleEndian.Uint32(hello[:]))}
		}
	}()
	timeout := time.NewTimer(wireAcceptTimeout)
	defer timeout.Stop()
	for range want {
		select {
		case a := <-ch:
			if a.err != nil {
				return fail(fmt.Errorf("accepting a partner: %w", a.err))
			}
			if a.from < 0 || a.from >= rank || conns[a.from] != nil {
				a.c.Close()
				return fail(fmt.Errorf("a connection named itself rank %d, not a partner still expected", a.from))
			}
			conns[a.from] = a.c
		case <-timeout.C:
			l.Close() // ends the Accept
			return fail(fmt.Errorf("partners did not connect within %v", wireAcceptTimeout))
		case <-ctx.Done():
			l.Close()
			return fail(context.Cause(ctx))
		}
	}
	context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns, nil
}

// wireStep is one step of a round: write out[off:off+n] to one partner
// while reading in[off:off+n] from another (the same one for pairs).
type wireStep struct {
	to, from net.Conn
	off, n   int64
}

// wireSteps lists the steps of one round of size bytes at rank.
func wireSteps(conns map[int]net.Conn, pattern string, rank, n int, size int64) []wireStep {
	var steps []wireStep
	if pattern == "pairs" {
		var lens []int64
		for d := 1; d < n; d <<= 1 {
			lens = append(lens, size>>bits.Len(uint(d)))
		}
		for i, d := 0, 1; d < n; i, d = i+1, d<<1 {
			c := conns[rank^d]
			steps = append(steps, wireStep{to: c, from: c, n: lens[i]})
		}
		for i := len(lens) - 1; i >= 0; i-- {
			c := conns[rank^(1<<i)]
			steps = append(steps, wireStep{to: c, from: c, n: lens[i]})
		}
		return steps
	}
	chunk := size / int64(n)
	next, prev := conns[(rank+1)%n], conns[(rank+n-1)%n]
	for i := range 2 * (n - 1) {
		off := int64(i%n) * chunk
		steps = append(steps, wireStep{to: next, from: prev, off: off, n: chunk})
	}
	return steps
}

// wireSent is the bytes one rank sends in a round of size bytes.
func wireSent(pattern string, n int, size int64) int64 {
	var sent int64
	for _, s := range wireSteps(nil, pattern, 0, n, size) {
		sent += s.n
	}
	return sent
}

// wireMeshRounds runs two untimed and then iters timed rounds of size
// bytes and returns each timed round's duration in µs.
func wireMeshRounds(conns map[int]net.Conn, pattern string, rank, n int, size int64, iters int) ([]float64, error) {
	out := make([]byte, size)
	in := make([]byte, size)
	for i := range out {
		out[i] = byte(i)
	}
	steps := wireSteps(conns, pattern, rank, n, size)
	round := func() error {
		dl := time.Now().Add(wireDeadline)
		for _, c := range conns {
			if err := c.SetDeadline(dl); err != nil {
				return err
			}
		}
		for _, s := range steps {
			if err := wireExchange(s.to, s.from, out[s.off:s.off+s.n], in[s.off:s.off+s.n]); err != nil {
				return err
			}
		}
		return nil
	}
	return wireTime(round, iters)
}

// wireTime runs round twice untimed, then iters times, and returns each
// timed run's duration in µs.
func wireTime(round func() error, iters int) ([]float64, error) {
	for range 2 {
		if err := round(); err != nil {
			return nil, err
		}
	}
	times := make([]float64, iters)
	for i := range times {
		t0 := time.Now()
		if err := round(); err != nil {
			return nil, err
		}
		times[i] = float64(time.Since(t0).Nanoseconds()) / 1e3
	}
	return times, nil
}

// wireExchange writes out to `to` (in 1 MiB writes, the anchors' size)
// while it reads len(in) bytes from `from`.
func wireExchange(to, from net.Conn, out, in []byte) error {
	const writeBytes = 1 << 20
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for off := 0; off < len(out); off += writeBytes {
			if _, err := to.Write(out[off:min(len(out), off+writeBytes)]); err != nil {
				werr = fmt.Errorf("writing: %w", err)
				return
			}
		}
	}()
	_, rerr := io.ReadFull(from, in)
	if rerr != nil {
		rerr = fmt.Errorf("reading: %w", rerr)
	}
	wg.Wait()
	return errors.Join(werr, rerr)
}
