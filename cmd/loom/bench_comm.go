package main

// `loom bench allreduce|reduce-scatter|all-gather` and the hidden
// `loom comm-worker`: the benchmark starts --ranks copies of this binary as
// comm-workers on loopback, tells each the others' addresses, and prints
// rank 0's report. Bandwidths follow nccl-tests: algbw = bytes / time,
// busbw = algbw × 2(n−1)/n for all-reduce and × (n−1)/n for reduce-scatter
// and all-gather, where bytes is the whole buffer.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loomtrain/loom/internal/security"
	"github.com/loomtrain/loom/parallel"
)

// commBenchFlags are the options shared by the benchmark and its workers.
type commBenchFlags struct {
	ranks      int
	sizes      string
	factor     int
	op         string
	iters      int
	warmup     int
	algo       string
	codec      string
	chunk      string
	small      string
	window     string
	connWindow string
	readBuf    string
	writeBuf   string
	timeout    time.Duration
	logFormat  string
	network    string
	transport  string
	shmRing    string
	pollSpin   time.Duration
	socketDir  string // set by the parent for --network unix
	profileDir string
	traceDir   string
	tlsDir     string
	bind       string
}

func (f *commBenchFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.ranks, "ranks", 2, "number of ranks (local worker processes)")
	fs.StringVar(&f.sizes, "sizes", "4KiB,1MiB,16MiB,64MiB,256MiB", "buffer sizes: a comma list of sizes and ranges A..B (stepping ×--factor)")
	fs.IntVar(&f.factor, "factor", 4, "step factor of size ranges")
	fs.StringVar(&f.op, "op", "sum", "reduction: sum, mean or max")
	fs.IntVar(&f.iters, "iters", 0, "timed iterations per size (0: about 512 MiB of traffic, 5 to 500, raised to fill 200 ms of timing, up to 20000)")
	fs.IntVar(&f.warmup, "warmup", 3, "untimed iterations per size (at least; warming lasts 100ms)")
	fs.StringVar(&f.algo, "algo", "auto", "all-reduce algorithm: auto, ring, rd, hd (halving-doubling; powers of two only, else ring) or direct (one-shot: every rank sends its buffer to every other)")
	fs.StringVar(&f.codec, "codec", "raw", "wire codec: raw (zero-copy) or proto")
	fs.StringVar(&f.chunk, "chunk", "", "pipelining chunk size (default: the library's)")
	fs.StringVar(&f.small, "small", "", "largest all-reduce using recursive doubling (default: the library's)")
	fs.StringVar(&f.window, "window", "", "HTTP/2 stream window (default: the library's)")
	fs.StringVar(&f.connWindow, "conn-window", "", "HTTP/2 connection window (default: the library's)")
	fs.StringVar(&f.readBuf, "read-buffer", "", "gRPC read buffer size, or -1 for none (default: the library's)")
	fs.StringVar(&f.writeBuf, "write-buffer", "", "gRPC write buffer size, or -1 for none (default: the library's)")
	fs.DurationVar(&f.timeout, "timeout", 60*time.Second, "per-peer progress timeout")
	fs.StringVar(&f.logFormat, "log-format", "text", "output: text (a table) or json (one object per size)")
	fs.StringVar(&f.network, "network", "tcp", "where the Peer service listens: tcp (loopback) or unix (Unix sockets)")
	fs.StringVar(&f.transport, "transport", "auto", "how payloads travel: auto (shm on one host), tcp (raw sockets), shm (shared memory) or grpc")
	fs.StringVar(&f.shmRing, "shm-ring", "", "shared-memory ring size per peer and direction (default: the library's)")
	fs.DurationVar(&f.pollSpin, "poll-spin", 0, "how long a bulk reader (shm ring, tcp socket) polls before sleeping (default: the library's; negative: never)")
	fs.DurationVar(&f.pollSpin, "shm-spin", 0, "the old name of --poll-spin")
	fs.StringVar(&f.socketDir, "socket-dir", "", "internal: where workers put Unix sockets")
	fs.StringVar(&f.profileDir, "cpuprofile-dir", "", "write each worker's CPU profile to DIR/rankN.pprof")
	fs.StringVar(&f.traceDir, "trace-dir", "", "write each worker's execution trace (go tool trace) to DIR/rankN.trace")
	fs.StringVar(&f.bind, "bind", "none", "CPU binding of the ranks: none, or core (rank i on the i-th CPU this process may use, as mpirun binds 2 ranks by default)")
	fs.StringVar(&f.tlsDir, "tls-dir", "", "mutual TLS on the data plane (gRPC streams and tcp links) with the worker certificate in `DIR` (`loom certs init D` makes D/worker); shm links stay as they are")
}

// args renders the flags for a worker.
func (f *commBenchFlags) args() []string {
	return []string{
		"--ranks", strconv.Itoa(f.ranks), "--sizes", f.sizes, "--factor", strconv.Itoa(f.factor),
		"--op", f.op, "--iters", strconv.Itoa(f.iters), "--warmup", strconv.Itoa(f.warmup),
		"--algo", f.algo, "--codec", f.codec, "--chunk", f.chunk, "--small", f.small,
		"--window", f.window, "--conn-window", f.connWindow, "--read-buffer", f.readBuf, "--write-buffer", f.writeBuf,
		"--timeout", f.timeout.String(), "--log-format", f.logFormat,
		"--network", f.network, "--transport", f.transport, "--shm-ring", f.shmRing, "--poll-spin", f.pollSpin.String(),
		"--socket-dir", f.socketDir, "--cpuprofile-dir", f.profileDir, "--trace-dir", f.traceDir, "--tls-dir", f.tlsDir,
	}
}

// commBenchConfig is the validated form of commBenchFlags.
type commBenchConfig struct {
	kind    string // "allreduce", "reduce-scatter", "all-gather"
	ranks   int
	sizes   []int64
	op      parallel.ReduceOp
	iters   int
	warmup  int
	topts   parallel.TransportOptions
	spec    parallel.GroupSpec
	jsonOut bool
}

func (f *commBenchFlags) config(kind string) (*commBenchConfig, error) {
	var errs []error
	c := &commBenchConfig{kind: kind, ranks: f.ranks, iters: f.iters, warmup: f.warmup, jsonOut: f.logFormat == "json"}
	if f.bind != "core" && f.bind != "none" {
		errs = append(errs, fmt.Errorf("--bind %q: want none or core", f.bind))
	}
	if f.ranks < 1 || f.ranks > 64 {
		errs = append(errs, fmt.Errorf("--ranks %d: want 1 to 64", f.ranks))
	}
	var err error
	if c.sizes, err = commParseSizes(f.sizes, f.factor); err != nil {
		errs = append(errs, err)
	}
	op, ok := parallel.ParseReduceOp(f.op)
	if !ok {
		errs = append(errs, fmt.Errorf("--op %q: want sum, mean or max", f.op))
	}
	c.op = op
	if f.iters < 0 || f.warmup < 0 {
		errs = append(errs, fmt.Errorf("--iters %d / --warmup %d: want ≥ 0", f.iters, f.warmup))
	}
	if f.network != "tcp" && f.network != "unix" {
		errs = append(errs, fmt.Errorf("--network %q: want tcp or unix", f.network))
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", f.logFormat))
	}
	if c.spec.AllReduce, err = parallel.ParseAlgorithm(f.algo); err != nil {
		errs = append(errs, fmt.Errorf("--algo: %w", err))
	}
	if c.topts.Codec, err = parallel.ParseCodec(f.codec); err != nil {
		errs = append(errs, fmt.Errorf("--codec: %w", err))
	}
	if c.topts.Mode, err = parallel.ParseTransportMode(f.transport); err != nil {
		errs = append(errs, fmt.Errorf("--transport: %w", err))
	}
	c.topts.PollSpin = f.pollSpin
	optSize := func(name, s string) int64 {
		if s == "" {
			return 0
		}
		if s == "-1" {
			return -1
		}
		v, err := commParseSize(s)
		if err != nil || v > math.MaxInt32 {
			errs = append(errs, fmt.Errorf("--%s %q: want a size such as 1MiB below 2GiB", name, s))
		}
		return v
	}
	c.spec.ChunkBytes = int(optSize("chunk", f.chunk))
	c.spec.SmallBytes = int(optSize("small", f.small))
	c.topts.StreamWindowBytes = int32(optSize("window", f.window))
	c.topts.ConnWindowBytes = int32(optSize("conn-window", f.connWindow))
	c.topts.ReadBufferBytes = int(optSize("read-buffer", f.readBuf))
	c.topts.WriteBufferBytes = int(optSize("write-buffer", f.writeBuf))
	c.topts.ShmRingBytes = int(optSize("shm-ring", f.shmRing))
	if c.spec.ChunkBytes > 0 && c.spec.ChunkBytes+4096 > parallel.DefaultMaxFrameBytes {
		c.topts.MaxFrameBytes = c.spec.ChunkBytes + 4096
	}
	c.spec.Timeout = f.timeout
	if f.tlsDir != "" {
		if f.network != "tcp" {
			errs = append(errs, fmt.Errorf("--tls-dir: needs --network tcp (certificates name hosts, not socket paths)"))
		}
		sec, err := security.New(security.Config{Dir: f.tlsDir}, nil, false)
		if err != nil {
			errs = append(errs, fmt.Errorf("--tls-dir: %w", err))
		} else {
			c.topts.TLS = sec.PeerTLS()
		}
	}
	if err := c.topts.Validate(); err != nil && !strings.Contains(err.Error(), "ListenAddr") {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// commParseSize parses "4096", "4KiB", "16MiB", "1GiB" (also KB/MB/GB as
// powers of 1000).
func commParseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}}
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || v < 0 || v > (1<<40)/mult {
		return 0, fmt.Errorf("size %q: want a byte count such as 4096, 4KiB or 16MiB", s)
	}
	return v * mult, nil
}

// commParseSizes parses a comma list of sizes and ranges A..B; sizes must
// be multiples of 4 (float32).
func commParseSizes(s string, factor int) ([]int64, error) {
	if factor < 2 {
		return nil, fmt.Errorf("--factor %d: want ≥ 2", factor)
	}
	var out []int64
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "..")
		a, err := commParseSize(lo)
		if err != nil {
			return nil, fmt.Errorf("--sizes: %w", err)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := commParseSize(hi)
		if err != nil {
			return nil, fmt.Errorf("--sizes: %w", err)
		}
		if a == 0 || b < a {
			return nil, fmt.Errorf("--sizes: range %q: want 0 < A ≤ B", part)
		}
		for v := a; v <= b; v *= int64(factor) {
			out = append(out, v)
		}
	}
	for _, v := range out {
		if v%4 != 0 {
			return nil, fmt.Errorf("--sizes: %d bytes is not a whole number of float32", v)
		}
	}
	return out, nil
}

// commResult is one size's measurement, as printed with --log-format json.
type commResult struct {
	Op        string  `json:"op"`
	Ranks     int     `json:"ranks"`
	Bytes     int64   `json:"bytes"`
	TimeUsP50 float64 `json:"time_us_p50"`
	AlgBW     float64 `json:"algbw_gbps"`
	BusBW     float64 `json:"busbw_gbps"`
	TimeUsP90 float64 `json:"time_us_p90"`
	Iters     int     `json:"iters"`
	Algo      string  `json:"algo,omitempty"`
	Codec     string  `json:"codec"`
	Transport string  `json:"transport"` // what the links chose, e.g. "shm"
	// TimeUsP50Own and BusBWOwn are from rank 0's own times rather than
	// the slowest rank's per iteration (see commMeasure).
	TimeUsP50Own float64 `json:"time_us_p50_rank0"`
	BusBWOwn     float64 `json:"busbw_gbps_rank0"`
	// TimeUsP50Ranks is each rank's own p50, by rank: which rank is slow.
	TimeUsP50Ranks []float64 `json:"time_us_p50_ranks"`
}

func cmdBenchAllReduce(ctx context.Context, env *cmdEnv, args []string) error {
	return commBench(ctx, env, "allreduce", args)
}

func cmdBenchReduceScatter(ctx context.Context, env *cmdEnv, args []string) error {
	return commBench(ctx, env, "reduce-scatter", args)
}

func cmdBenchAllGather(ctx context.Context, env *cmdEnv, args []string) error {
	return commBench(ctx, env, "all-gather", args)
}

// commBench starts the workers, relays addresses and prints rank 0's
// results. Cancelling ctx (Ctrl-C) or any error kills every worker.
func commBench(ctx context.Context, env *cmdEnv, kind string, args []string) error {
	var f commBenchFlags
	fs := newFlagSet(env, "bench "+kind, "--ranks N [--sizes 4KiB..256MiB] [--op sum|mean|max] [--log-format json]")
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := f.config(kind)
	if err != nil {
		return fmt.Errorf("bench %s: %w", kind, err)
	}
	if f.network == "unix" {
		dir, err := os.MkdirTemp("", "loom-bench-")
		if err != nil {
			return fmt.Errorf("bench %s: %w", kind, err)
		}
		defer os.RemoveAll(dir)
		f.socketDir = dir
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench %s: finding the loom binary: %w", kind, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type worker struct {
		cmd    *exec.Cmd
		stdin  io.WriteCloser
		lines  *bufio.Scanner
		waited bool
	}
	workers := make([]*worker, cfg.ranks)
	var wg sync.WaitGroup
	defer func() {
		cancel() // kills any worker still running
		// Wait also ends exec's goroutine copying the worker's stderr into
		// env.stderr, which the caller reads once this returns.
		for _, w := range workers {
			if w != nil && !w.waited {
				w.cmd.Wait()
			}
		}
		wg.Wait()
	}()
	// Each worker gets its share of the cores as Go scheduler threads
	// (GOMAXPROCS = cores ÷ ranks, at least 1), as one-rank-per-core MPI
	// runs do: goroutine hand-offs inside a worker then stay on one thread
	// instead of waking an idle one. Measured with 2 ranks on 2 cores
	// (GOMAXPROCS 1 vs 2, four alternating runs): 4 KiB p50 144–162 µs vs
	// 167–182, 16 MiB busbw 0.67–0.99 GB/s vs 0.55–0.73; with 4 ranks
	// ~20% faster. A GOMAXPROCS in the environment wins.
	// --bind core binds rank i to the i-th CPU, as mpirun binds ranks to
	// cores by default at 2 ranks (and not at all when oversubscribed).
	// Unbound, two ranks sometimes shared one vCPU for a few hundred ms
	// after start (perf sched: ~3,000 switches between them in 50 ms, the
	// other vCPU idle), and a 500-iteration 4 KiB shm all-reduce measured
	// 7–11 µs instead of 2.1–3.0 (5 alternating rounds, medians: 9.2
	// against 3.3; vader 3.3). Larger sizes were unsettled: in one 4-round
	// run bound took 74 µs at 256 KiB against 51 (the process's other
	// threads then share its one CPU), in others both were level. So it
	// is not the default.
	cpus := commCPUs()
	bind := f.bind == "core"
	if bind && cfg.ranks > len(cpus) {
		return fmt.Errorf("bench %s: --bind core: %d ranks, %d CPUs (want --bind none)", kind, cfg.ranks, len(cpus))
	}
	procs := ""
	if bind {
		ids := make([]string, cfg.ranks)
		for r := range ids {
			ids[r] = strconv.Itoa(cpus[r])
		}
		procs = "bound to CPUs " + strings.Join(ids, ",") + " "
	}
	if os.Getenv("GOMAXPROCS") == "" && cfg.ranks > 1 {
		if p := max(1, runtime.NumCPU()/cfg.ranks); p < runtime.NumCPU() {
			procs += "GOMAXPROCS=" + strconv.Itoa(p)
		}
	}
	// The workers' stderr goes to one writer; exec copies each from its own
	// goroutine unless the writer is a file.
	stderr := &lockedWriter{w: env.stderr}
	for r := range cfg.ranks {
		cmd := exec.CommandContext(ctx, exe, append([]string{"comm-worker", "--kind", kind, "--rank", strconv.Itoa(r)}, f.args()...)...)
		cmd.Stderr = stderr
		if procs != "" {
			cmd.Env = append(os.Environ(), procs)
		}
		cmd.WaitDelay = 2 * time.Second
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		start := cmd.Start
		if bind {
			start = func() error { return startBound(cmd, cpus[r]) }
		}
		if err := start(); err != nil {
			return fmt.Errorf("bench %s: starting rank %d: %w", kind, r, err)
		}
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		workers[r] = &worker{cmd: cmd, stdin: stdin, lines: sc}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ctx.Done()
			stdin.Close()
		}()
	}
	// Each worker first prints its address.
	addrs := make([]string, cfg.ranks)
	for r, w := range workers {
		line, err := commReadLine(ctx, w.lines, 60*time.Second)
		if err != nil {
			return fmt.Errorf("bench %s: rank %d did not report its address: %w", kind, r, err)
		}
		a, ok := strings.CutPrefix(line, "addr ")
		if !ok {
			return fmt.Errorf("bench %s: rank %d said %q, want its address", kind, r, line)
		}
		addrs[r] = a
	}
	for r, w := range workers {
		if _, err := fmt.Fprintf(w.stdin, "addrs %s\n", strings.Join(addrs, " ")); err != nil {
			return fmt.Errorf("bench %s: rank %d: %w", kind, r, err)
		}
	}
	// Other ranks print nothing more; drain them so they never block.
	for _, w := range workers[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w.lines.Scan() {
			}
		}()
	}
	if !cfg.jsonOut {
		fmt.Fprintf(env.stdout, "# %s, op %s, %d ranks, --transport %s, Peer service on %s, codec %s, algo %s, GB/s = 1e9 B/s %s\n",
			kind, cfg.op, cfg.ranks, cfg.topts.Mode, map[string]string{"tcp": "TCP loopback", "unix": "Unix sockets"}[f.network], cfg.topts.Codec, cfg.spec.AllReduce, procs)
		fmt.Fprintf(env.stdout, "# p50, p90 and bandwidths: the slowest rank's time per iteration; rank0 p50: rank 0's own\n")
		fmt.Fprintf(env.stdout, "%12s %7s %11s %11s %12s %12s %12s %9s  %s\n", "bytes", "iters", "p50 (µs)", "p90 (µs)", "algbw (GB/s)", "busbw (GB/s)", "rank0 p50", "links", "p50 by rank")
	}
	for range cfg.sizes {
		line, err := commReadLine(ctx, workers[0].lines, 0)
		if err != nil {
			return fmt.Errorf("bench %s: rank 0: %w", kind, err)
		}
		var res commResult
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "result ")), &res); err != nil {
			return fmt.Errorf("bench %s: rank 0 said %q: %w", kind, line, err)
		}
		if cfg.jsonOut {
			b, _ := json.Marshal(res)
			fmt.Fprintln(env.stdout, string(b))
		} else {
			byRank := make([]string, len(res.TimeUsP50Ranks))
			for i, v := range res.TimeUsP50Ranks {
				byRank[i] = fmt.Sprintf("%.1f", v)
			}
			fmt.Fprintf(env.stdout, "%12s %7d %11.1f %11.1f %12.3f %12.3f %12.1f %9s  %s\n", commFormatSize(res.Bytes), res.Iters, res.TimeUsP50, res.TimeUsP90, res.AlgBW, res.BusBW, res.TimeUsP50Own, res.Transport, strings.Join(byRank, " "))
		}
	}
	// Workers exit on their own once done.
	var errs []error
	for r, w := range workers {
		w.waited = true
		if err := w.cmd.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("rank %d: %w", r, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bench %s: %w", kind, err)
	}
	return nil
}

// commReadLine reads one line, failing when ctx ends, the worker exits, or
// (if limit > 0) limit passes.
func commReadLine(ctx context.Context, sc *bufio.Scanner, limit time.Duration) (string, error) {
	type line struct {
		s  string
		ok bool
	}
	ch := make(chan line, 1)
	go func() {
		ok := sc.Scan()
		ch <- line{sc.Text(), ok}
	}()
	var timeout <-chan time.Time
	if limit > 0 {
		t := time.NewTimer(limit)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case l := <-ch:
		if !l.ok {
			if err := sc.Err(); err != nil {
				return "", err
			}
			return "", errors.New("worker exited (see its error above)")
		}
		return l.s, nil
	case <-ctx.Done():
		return "", ctx.Err()
	case <-timeout:
		return "", fmt.Errorf("no answer within %v", limit)
	}
}

func commFormatSize(b int64) string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", b>>30)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", b>>20)
	case b >= 1<<10 && b%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", b>>10)
	}
	return fmt.Sprintf("%d B", b)
}

// cmdCommWorker is one rank of a collective benchmark: it prints
// "addr HOST:PORT", reads "addrs A0 A1 ...", runs every size, and (rank 0)
// prints "result {json}" per size. It exits when its stdin closes.
func cmdCommWorker(ctx context.Context, env *cmdEnv, args []string) error {
	var f commBenchFlags
	var kind string
	var rank int
	fs := newFlagSet(env, "comm-worker", "--kind K --rank R [bench flags]")
	f.register(fs)
	fs.StringVar(&kind, "kind", "allreduce", "allreduce, reduce-scatter or all-gather")
	fs.IntVar(&rank, "rank", 0, "this worker's rank")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := f.config(kind)
	if err != nil {
		return fmt.Errorf("comm-worker: %w", err)
	}
	if rank < 0 || rank >= cfg.ranks {
		return fmt.Errorf("comm-worker: --rank %d: want 0 to %d", rank, cfg.ranks-1)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if f.profileDir != "" {
		stop, err := startCPUProfile(filepath.Join(f.profileDir, fmt.Sprintf("rank%d.pprof", rank)))
		if err != nil {
			return fmt.Errorf("comm-worker: %w", err)
		}
		defer stop()
	}
	if f.traceDir != "" {
		stop, err := startTrace(filepath.Join(f.traceDir, fmt.Sprintf("rank%d.trace", rank)))
		if err != nil {
			return fmt.Errorf("comm-worker: %w", err)
		}
		defer stop()
	}
	cfg.topts.ListenAddr = "127.0.0.1:0"
	if f.network == "unix" {
		if f.socketDir == "" {
			return fmt.Errorf("comm-worker: --network unix needs --socket-dir")
		}
		cfg.topts.ListenAddr = fmt.Sprintf("unix://%s/rank%d.sock", f.socketDir, rank)
	}
	tr, err := parallel.NewTransport(ctx, cfg.topts)
	if err != nil {
		return fmt.Errorf("comm-worker rank %d: %w", rank, err)
	}
	defer func() {
		// Graceful: peers still in the last barrier get our frames.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tr.Shutdown(sctx)
	}()
	fmt.Fprintf(env.stdout, "addr %s\n", tr.Addr())

	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return fmt.Errorf("comm-worker rank %d: no addresses on stdin", rank)
	}
	fields := strings.Fields(in.Text())
	if len(fields) != cfg.ranks+1 || fields[0] != "addrs" {
		return fmt.Errorf("comm-worker rank %d: bad address line %q", rank, in.Text())
	}
	go func() { // the parent closing stdin (or dying) ends the worker
		for in.Scan() {
		}
		cancel()
	}()
	spec := cfg.spec
	spec.Job, spec.Name, spec.Ranks, spec.MyRank = "bench", kind, make([]int, cfg.ranks), rank
	spec.Addrs = map[int]string{}
	for r := range cfg.ranks {
		spec.Ranks[r] = r
		spec.Addrs[r] = fields[1+r]
	}
	g, err := tr.NewGroup(spec)
	if err != nil {
		return fmt.Errorf("comm-worker rank %d: %w", rank, err)
	}
	if err := g.Barrier(ctx); err != nil {
		return fmt.Errorf("comm-worker rank %d: %w", rank, err)
	}
	for _, size := range cfg.sizes {
		res, err := commMeasure(ctx, g, cfg, size)
		if err != nil {
			return fmt.Errorf("comm-worker rank %d: %d bytes: %w", rank, size, err)
		}
		res.Transport = linkTransports(tr.Links())
		if rank == 0 {
			b, _ := json.Marshal(res)
			fmt.Fprintf(env.stdout, "result %s\n", b)
		}
	}
	// Wait for everyone before closing, so no peer sees us vanish early.
	return g.Barrier(ctx)
}

// commWarmTime is how long each size is warmed up before it is timed.
const commWarmTime = 100 * time.Millisecond

// commTimedWindow is the least time the timed iterations of a size span
// when --iters is 0, up to commMaxIters. 500 iterations of a 4 KiB
// all-reduce at 2 µs spanned 1 ms, so one stall of the host (or the
// first size's, after the processes started) moved its p50: on a Zen 4
// VM the 4 KiB shm p50 read 5.3–7.2 µs when 4 KiB was the first size
// timed and 1.5–2.7 µs when it came after another.
const (
	commTimedWindow = 200 * time.Millisecond
	commMaxIters    = 20000
)

// commIters is the iterations to time for a default count of iters when
// one iteration took per (the warm-up's mean, the same on every rank:
// its time is all-reduced and its count shared), so every rank times as
// many.
func commIters(iters int, per time.Duration) int {
	if per <= 0 {
		return iters
	}
	want := int(commTimedWindow / per)
	return max(iters, min(want, commMaxIters))
}

// commMeasure times one size: the time of an iteration is the slowest
// rank's.
func commMeasure(ctx context.Context, g *parallel.Group, cfg *commBenchConfig, size int64) (commResult, error) {
	n := g.Size()
	elems := int(size / 4)
	buf := make([]float32, elems)
	fill := func() {
		v := float32(g.Rank() + 1)
		for i := range buf {
			buf[i] = v
		}
	}
	fill()
	run := func() error {
		switch cfg.kind {
		case "reduce-scatter":
			_, err := g.ReduceScatter(ctx, buf, cfg.op)
			return err
		case "all-gather":
			return g.AllGather(ctx, buf)
		}
		return g.AllReduce(ctx, buf, cfg.op)
	}
	// Check the first result: a benchmark of wrong answers is worthless.
	if err := run(); err != nil {
		return commResult{}, err
	}
	if cfg.kind == "allreduce" && elems > 0 {
		want := map[parallel.ReduceOp]float32{parallel.Sum: float32(n * (n + 1) / 2), parallel.Mean: float32(n+1) / 2, parallel.Max: float32(n)}[cfg.op]
		for _, i := range []int{0, elems / 2, elems - 1} {
			if math.Abs(float64(buf[i]-want)) > 1e-5*float64(want) {
				return commResult{}, fmt.Errorf("wrong all-reduce result: [%d] = %v, want %v", i, buf[i], want)
			}
		}
	}
	iters := cfg.iters
	if iters == 0 {
		iters = int(min(500, max(5, (512<<20)/max(size, 1))))
	}
	// Warm up for at least --warmup iterations and commWarmTime: an idle
	// VM's first thousand small operations ran at half speed (vCPUs and
	// clocks waking up). Every rank must run as many, so they agree after
	// each batch, on the shortest time any has warmed.
	start := time.Now()
	for done := 0; ; {
		for range max(1, min(cfg.warmup, 16)) {
			if err := run(); err != nil {
				return commResult{}, err
			}
			done++
		}
		warm := []float32{float32(time.Since(start).Seconds())}
		if err := g.AllReduce(ctx, warm, parallel.Max); err != nil {
			return commResult{}, err
		}
		if done >= cfg.warmup && (warm[0] >= float32(commWarmTime.Seconds()) || cfg.warmup == 0) {
			if cfg.iters == 0 && done > 0 {
				iters = commIters(iters, time.Duration(float64(warm[0])*float64(time.Second)/float64(done)))
			}
			break
		}
	}
	if cfg.op == parallel.Sum {
		fill() // keep values finite-ish; timing does not depend on them
	}
	times := make([]float32, iters)
	for i := range times {
		t0 := time.Now()
		if err := run(); err != nil {
			return commResult{}, err
		}
		times[i] = float32(time.Since(t0).Seconds() * 1e6)
	}
	// The slowest rank defines each iteration (as gloo_allreduce.py
	// times); rank 0's own times are kept too, which is how the OpenMPI
	// anchor and `loom bench wire` time (one side's view). On a noisy
	// machine the slowest of two is the higher figure.
	own := slices.Clone(times)
	slices.Sort(own)
	ranks := make([]float32, n) // each rank's own p50, summed into place
	ranks[g.Rank()] = own[len(own)/2]
	if err := g.AllReduce(ctx, ranks, parallel.Sum); err != nil {
		return commResult{}, err
	}
	if err := g.AllReduce(ctx, times, parallel.Max); err != nil {
		return commResult{}, err
	}
	slices.Sort(times)
	p50 := float64(times[len(times)/2])
	p90 := float64(times[min(len(times)-1, len(times)*9/10)])
	algbw := float64(size) / (p50 * 1e-6) / 1e9
	factor := float64(n-1) / float64(n)
	if cfg.kind == "allreduce" {
		factor *= 2
	}
	res := commResult{
		Op: cfg.kind, Ranks: n, Bytes: size, TimeUsP50: p50, TimeUsP90: p90,
		AlgBW: algbw, BusBW: algbw * factor, Iters: iters, Codec: cfg.topts.Codec.String(),
		TimeUsP50Own: float64(own[len(own)/2]),
	}
	for _, v := range ranks {
		res.TimeUsP50Ranks = append(res.TimeUsP50Ranks, float64(v))
	}
	res.BusBWOwn = float64(size) / (res.TimeUsP50Own * 1e-6) / 1e9 * factor
	if cfg.kind == "allreduce" {
		res.Algo = g.AllReduceAlgorithm(int(size / 4)).String()
	}
	return res, nil
}

// lockedWriter serializes writes to w. Safe for concurrent use.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// linkTransports summarizes the transports a worker's links chose: one
// name, or several joined by "+" when they differ.
func linkTransports(ls []parallel.LinkInfo) string {
	var names []string
	for _, l := range ls {
		if !slices.Contains(names, l.Transport) {
			names = append(names, l.Transport)
		}
	}
	slices.Sort(names)
	return strings.Join(names, "+")
}

// startTrace writes the process's execution trace to path until stop.
func startTrace(path string) (stop func(), err error) {
	return startRecording(path, "execution trace", trace.Start, trace.Stop)
}
