package main

// `loom bench wire` and the hidden `loom wire-peer`: the wire's own limit
// for a collective. With --ranks 2 (the default), two processes joined by
// one plain socket (no gRPC, no framing) each write a buffer and read the
// other's at the same time, as the two ranks of an all-reduce do; a round
// ends when both directions have arrived. At 4 KiB this is the floor of a
// 2-rank all-reduce's latency; at 16 MiB and up, bytes ÷ time per direction
// is the ceiling of its bus bandwidth (busbw = algbw for 2 ranks, and each
// rank sends and receives the whole buffer once).
//
// With --ranks N > 2, N processes joined by plain sockets move exactly the
// bytes an N-rank all-reduce moves, without framing or reduction, in one
// of two patterns: --pattern ring (every process writes its share to the
// next while it reads one from the previous, 2(N−1) times, as a ring
// all-reduce's steps do) or --pattern pairs (N a power of two: exchanges
// with rank XOR 1, 2, 4 … of half, a quarter … of the buffer and back, as
// halving-doubling does). Each rank sends and receives 2(N−1)/N of the
// buffer per round, so "GB/s" — bytes sent per process ÷ time — is the
// ceiling of the all-reduce's bus bandwidth (busbw = bytes × 2(N−1)/N ÷
// time) when N processes share the machine's cores.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/loomtrain/loom/parallel"
)

// wireResult is one size's measurement.
type wireResult struct {
	Op        string  `json:"op"`
	Network   string  `json:"network"`
	Procs     int     `json:"procs"`
	Ranks     int     `json:"ranks"`
	Pattern   string  `json:"pattern,omitempty"` // with ranks > 2
	Bytes     int64   `json:"bytes"`
	Iters     int     `json:"iters"`
	TimeUsP50 float64 `json:"time_us_p50"`
	TimeUsP90 float64 `json:"time_us_p90"`
	GBps      float64 `json:"gbps"` // per direction (bytes sent per process with ranks > 2), at p50
}

// wireFlags are the options shared by the benchmark and its peer.
type wireFlags struct {
	sizes     string
	factor    int
	iters     int
	network   string
	procs     int
	ranks     int
	pattern   string
	window    int
	logFormat string
}

func (f *wireFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.sizes, "sizes", "4KiB,1MiB,16MiB,64MiB,256MiB", "buffer sizes: a comma list of sizes and ranges A..B (stepping ×--factor)")
	fs.IntVar(&f.factor, "factor", 4, "step factor of size ranges")
	fs.IntVar(&f.iters, "iters", 0, "timed rounds per size (0: about 512 MiB each way, 5 to 2000)")
	fs.StringVar(&f.network, "network", "tcp", "tcp (loopback) or unix (a Unix socket)")
	fs.IntVar(&f.procs, "procs", 1, "Go scheduler threads (GOMAXPROCS) per process; 1, as the collective benchmark's workers get on 2 cores, is fastest for small rounds, 2 for large ones")
	fs.IntVar(&f.ranks, "ranks", 2, "processes: 2 (one socket, both ways at once) or more (see --pattern)")
	fs.StringVar(&f.pattern, "pattern", "ring", "with --ranks > 2: ring (each writes to the next while it reads from the previous) or pairs (exchanges with rank XOR 1, 2, 4 …; --ranks a power of two)")
	fs.IntVar(&f.window, "window", 0, "TCP socket buffers (SO_SNDBUF and SO_RCVBUF) in bytes: 0 leaves Linux's autotuning on, -1 sets what Loom's same-host tcp links use (half the L2 cache)")
	fs.StringVar(&f.logFormat, "log-format", "text", "output: text (a table) or json (one object per size)")
}

func (f *wireFlags) validate() ([]int64, error) {
	var errs []error
	sizes, err := commParseSizes(f.sizes, f.factor)
	if err != nil {
		errs = append(errs, err)
	}
	if f.iters < 0 {
		errs = append(errs, fmt.Errorf("--iters %d: want ≥ 0", f.iters))
	}
	if f.network != "tcp" && f.network != "unix" {
		errs = append(errs, fmt.Errorf("--network %q: want tcp or unix", f.network))
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", f.logFormat))
	}
	if f.procs < 1 || f.procs > 1024 {
		errs = append(errs, fmt.Errorf("--procs %d: want 1 to 1024", f.procs))
	}
	if f.window < -1 {
		errs = append(errs, fmt.Errorf("--window %d: want bytes, 0 (autotuning) or -1 (Loom's)", f.window))
	}
	if f.ranks < 2 || f.ranks > 64 {
		errs = append(errs, fmt.Errorf("--ranks %d: want 2 to 64", f.ranks))
	}
	switch f.pattern {
	case "ring":
	case "pairs":
		if f.ranks&(f.ranks-1) != 0 {
			errs = append(errs, fmt.Errorf("--pattern pairs needs --ranks a power of two, got %d", f.ranks))
		}
	default:
		errs = append(errs, fmt.Errorf("--pattern %q: want ring or pairs", f.pattern))
	}
	return sizes, errors.Join(errs...)
}

// wireIters is the number of timed rounds for size bytes.
func wireIters(iters int, size int64) int {
	if iters > 0 {
		return iters
	}
	return int(min(2000, max(5, (512<<20)/max(size, 1))))
}

// wireDeadline bounds every round: a peer that stops is an error, not a hang.
const wireDeadline = 60 * time.Second

func cmdBenchWire(ctx context.Context, env *cmdEnv, args []string) error {
	var f wireFlags
	fs := newFlagSet(env, "bench wire", "[--sizes 4KiB..256MiB] [--network tcp|unix] [--log-format json]")
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := f.validate()
	if err != nil {
		return fmt.Errorf("bench wire: %w", err)
	}
	if f.ranks > 2 {
		return benchWireRing(ctx, env, &f, sizes)
	}
	var lis net.Listener
	var lc net.ListenConfig
	if f.network == "unix" {
		dir, err := os.MkdirTemp("", "loom-wire-")
		if err != nil {
			return fmt.Errorf("bench wire: %w", err)
		}
		defer os.RemoveAll(dir)
		lis, err = lc.Listen(ctx, "unix", filepath.Join(dir, "wire.sock"))
		if err != nil {
			return fmt.Errorf("bench wire: %w", err)
		}
	} else if lis, err = lc.Listen(ctx, "tcp", "127.0.0.1:0"); err != nil {
		return fmt.Errorf("bench wire: %w", err)
	}
	defer lis.Close()
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench wire: finding the loom binary: %w", err)
	}
	// By default one scheduler thread per process, as the collective
	// benchmark's workers get on 2 cores: the writer and reader goroutines
	// then hand off on one thread (measured: 4 KiB round 42 µs vs 74 with
	// two); with two they copy in parallel (16 MiB: 1.33 GB/s vs 1.18).
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(f.procs))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "wire-peer", "--addr", lis.Addr().String(), "--network", f.network,
		"--sizes", f.sizes, "--factor", strconv.Itoa(f.factor), "--iters", strconv.Itoa(f.iters), "--window", strconv.Itoa(f.window))
	cmd.Stderr = env.stderr
	cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(f.procs))
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("bench wire: starting the peer: %w", err)
	}
	defer cmd.Wait()
	defer cancel()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	var conn net.Conn
	select {
	case c, ok := <-accepted:
		if !ok {
			return errors.New("bench wire: accepting the peer's connection failed")
		}
		conn = c
	case <-time.After(30 * time.Second):
		return errors.New("bench wire: the peer did not connect within 30s")
	case <-ctx.Done():
		return ctx.Err()
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	window := f.setWindow(conn)

	title := fmt.Sprintf("raw %s between two processes, both directions at once, GOMAXPROCS=%d, %s; GB/s per direction = 1e9 B/s",
		map[string]string{"tcp": "TCP loopback", "unix": "Unix socket"}[f.network], f.procs, window)
	return wireReport(env, &f, sizes, title, func(size int64) ([]float64, error) {
		return wireRounds(conn, size, wireIters(f.iters, size))
	})
}

// wireReport measures every size with rounds and prints one line (or JSON
// object) per size.
func wireReport(env *cmdEnv, f *wireFlags, sizes []int64, title string, rounds func(size int64) ([]float64, error)) error {
	if f.logFormat == "text" {
		fmt.Fprintf(env.stdout, "# %s\n", title)
		gb := "GB/s each way"
		if f.ranks > 2 {
			gb = "GB/s sent"
		}
		fmt.Fprintf(env.stdout, "%12s %7s %11s %11s %12s\n", "bytes", "iters", "p50 (µs)", "p90 (µs)", gb)
	}
	for _, size := range sizes {
		times, err := rounds(size)
		if err != nil {
			return fmt.Errorf("bench wire: %d bytes: %w", size, err)
		}
		slices.Sort(times)
		p50 := times[len(times)/2]
		sent := float64(size)
		r := wireResult{Op: "wire", Network: f.network, Procs: f.procs, Ranks: f.ranks, Bytes: size, Iters: len(times), TimeUsP50: p50,
			TimeUsP90: times[min(len(times)-1, len(times)*9/10)]}
		if f.ranks > 2 {
			r.Pattern = f.pattern
			sent = float64(wireSent(f.pattern, f.ranks, size))
		}
		r.GBps = sent / (p50 * 1e-6) / 1e9
		if f.logFormat == "json" {
			b, _ := json.Marshal(r)
			fmt.Fprintln(env.stdout, string(b))
		} else {
			fmt.Fprintf(env.stdout, "%12s %7d %11.1f %11.1f %12.3f\n", commFormatSize(r.Bytes), r.Iters, r.TimeUsP50, r.TimeUsP90, r.GBps)
		}
	}
	return nil
}

// cmdWirePeer is the other end of `loom bench wire`.
func cmdWirePeer(ctx context.Context, env *cmdEnv, args []string) error {
	var f wireFlags
	var addr string
	var rank int
	fs := newFlagSet(env, "wire-peer", "--addr A [--rank R --ranks N] [bench wire flags]")
	f.register(fs)
	fs.StringVar(&addr, "addr", "", "the benchmark's address (with --ranks > 2: every rank's, comma-separated)")
	fs.IntVar(&rank, "rank", 1, "this process's rank (with --ranks > 2; it listens on file descriptor 3)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := f.validate()
	if err != nil {
		return fmt.Errorf("wire-peer: %w", err)
	}
	if f.ranks > 2 {
		return wireRingPeer(ctx, &f, sizes, rank, strings.Split(addr, ","))
	}
	d := net.Dialer{Timeout: 30 * time.Second}
	conn, err := d.DialContext(ctx, f.network, addr)
	if err != nil {
		return fmt.Errorf("wire-peer: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	f.setWindow(conn)
	for _, size := range sizes {
		if _, err := wireRounds(conn, size, wireIters(f.iters, size)); err != nil {
			return fmt.Errorf("wire-peer: %d bytes: %w", size, err)
		}
	}
	return nil
}

// setWindow sets conn's socket buffers as --window asks and describes
// what it did.
func (f *wireFlags) setWindow(conn net.Conn) string {
	w := f.window
	if w < 0 {
		w = parallel.SameHostSocketBuffer()
	}
	tc, ok := conn.(*net.TCPConn)
	if w == 0 || !ok {
		return "autotuned buffers"
	}
	// Go's SetReadBuffer/SetWriteBuffer are SO_RCVBUF/SO_SNDBUF.
	if errors.Join(tc.SetReadBuffer(w), tc.SetWriteBuffer(w)) != nil {
		return "autotuned buffers (setting them failed)"
	}
	return fmt.Sprintf("socket buffers %s", commFormatSize(int64(w)))
}

// wireRounds runs two untimed and then iters timed rounds of size bytes
// each way on conn and returns each timed round's duration in µs.
func wireRounds(conn net.Conn, size int64, iters int) ([]float64, error) {
	out := make([]byte, size)
	in := make([]byte, size)
	for i := range out {
		out[i] = byte(i)
	}
	return wireTime(func() error {
		if err := conn.SetDeadline(time.Now().Add(wireDeadline)); err != nil {
			return err
		}
		return wireExchange(conn, conn, out, in)
	}, iters)
}
