// Package worker owns a Loom worker process: it registers with the
// control plane under a lease, waits for the coordinator to assign it a
// rank of a job's generation, runs the training Engine for that rank,
// reports per-step stats, and cancels the engine when the generation is
// invalidated.
package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/internal/version"
	"github.com/loomtrain/loom/parallel"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Config configures a worker. Zero fields take the defaults named.
type Config struct {
	// Coordinator is a coordinator's gRPC address (or several, separated
	// by commas: the first that answers is used). The worker asks it for
	// etcd's endpoints, the key prefix and the lease TTL, checks that it
	// runs the same Loom version, and sends it step reports.
	Coordinator string
	// Etcd lists etcd client URLs; when set, Coordinator may be empty and
	// reports go to the elected leader.
	Etcd []string
	// Prefix is the etcd key prefix (default: the coordinator's, else
	// coordinator.DefaultPrefix).
	Prefix string
	// Listen is the data-plane listen address (default "127.0.0.1:0").
	Listen string
	// Advertise is the data-plane address peers dial: HOST:PORT, or HOST
	// alone for the listener's port (default: the listener's address; with
	// an unspecified listen host, the local address that reaches the
	// coordinator or etcd).
	Advertise string
	// Threads is how many compute threads the engine may use (default
	// runtime.NumCPU()).
	Threads int
	// LeaseTTL is the registration lease TTL (default: the coordinator's,
	// else coordinator.DefaultLeaseTTL).
	LeaseTTL time.Duration
	// DialTimeout bounds reaching the coordinator and etcd (default 10 s).
	DialTimeout time.Duration
	// ReportInterval is how often step stats are sent (default
	// DefaultReportInterval).
	ReportInterval time.Duration
	// SeriesGrace is how long a finished rank's metrics stay exported
	// (default coordinator.DefaultSeriesGrace).
	SeriesGrace time.Duration
	// StopTimeout bounds what a stopping worker (Run's context done) waits
	// for: its engine to return, the last step report, leaving etcd. An
	// unreachable coordinator or etcd costs at most this (default 3 s).
	StopTimeout time.Duration
	// Version is this worker's Loom version (default version.Version).
	Version string
	// Host names this machine (default os.Hostname()); the rendezvous
	// gives consecutive ranks to workers of one host.
	Host string
	// Engine trains (required).
	Engine Engine
	// Registry receives the worker's step metrics (nil: not exported).
	Registry *prometheus.Registry
	// Logger (nil: discard).
	Logger *slog.Logger
	// CoordinatorDial are added to the options of every connection to a
	// coordinator (credentials: security.Setup.DialOptions).
	CoordinatorDial []grpc.DialOption
	// EtcdTLS, if set, secures the etcd client (https endpoints, this
	// worker's certificate for etcd's client-certificate auth).
	EtcdTLS *tls.Config
	// CheckJob, if set, vets an assignment's spec and resume directory
	// before the engine runs (the allowed directories:
	// security.Roots.CheckJob); its error fails the rank.
	CheckJob func(spec api.JobSpec, resume string) error
	// SnapshotListen is the address of the Snapshot service of in-memory
	// recovery (elastic.snapshot_every), served across generations
	// (default: the data-plane listen host, a free port). Its advertised
	// host is the data plane's.
	SnapshotListen string
	// PeerTLS, if set, secures the Snapshot service, serving and dialling
	// (the data plane's: security.Setup.PeerTLS).
	PeerTLS *tls.Config
}

// RegisterFlags binds the worker's command-line flags to c.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Coordinator, "coordinator", c.Coordinator, "coordinator gRPC `ADDR` (host:port; several separated by commas); finds etcd through it")
	fs.Func("etcd", "comma-separated etcd client `URLS` (instead of, or besides, --coordinator)", func(s string) error {
		c.Etcd = splitList(s)
		return nil
	})
	fs.StringVar(&c.Prefix, "prefix", c.Prefix, "etcd key `PREFIX` (default: the coordinator's)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "data-plane listen `ADDR` (default 127.0.0.1:0, a free port)")
	fs.StringVar(&c.Advertise, "advertise", c.Advertise, "data-plane `HOST` (or HOST:PORT) peers dial; a host alone takes the bound port (default: the listen address, or with a 0.0.0.0 listen address the one this machine reaches the coordinator from)")
	fs.IntVar(&c.Threads, "threads", c.Threads, "compute threads (default: all cores)")
	fs.DurationVar(&c.LeaseTTL, "ttl", c.LeaseTTL, "registration lease TTL (default: the coordinator's)")
	fs.DurationVar(&c.ReportInterval, "report-interval", c.ReportInterval, "how often step stats go to the coordinator (default 1s); the dashboard's live view updates every 2s")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", c.DialTimeout, "how long to try reaching the coordinator and etcd (default 10s)")
	fs.StringVar(&c.SnapshotListen, "snapshot-listen", c.SnapshotListen, "`ADDR` of the snapshot service of in-memory recovery (elastic.snapshot_every; default: the --listen host, a free port)")
	fs.DurationVar(&c.StopTimeout, "stop-timeout", c.StopTimeout, "on SIGTERM or SIGINT, how long to spend ending the rank and leaving etcd (default 3s); a second signal exits at once")
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// VersionError is a coordinator and a worker built from different Loom
// versions.
type VersionError struct {
	Worker, Coordinator string // versions
	CoordinatorAddr     string // "" when not known
	Generation          uint64 // the refused assignment's, or 0
}

func (e *VersionError) Error() string {
	who := "the coordinator"
	if e.CoordinatorAddr != "" {
		who += " at " + e.CoordinatorAddr
	}
	what := ""
	if e.Generation > 0 {
		what = fmt.Sprintf(" (refusing generation %d)", e.Generation)
	}
	return fmt.Sprintf("this worker runs Loom %s but %s runs Loom %s%s; run the same Loom build on every node",
		e.Worker, who, e.Coordinator, what)
}

// Worker is one registered worker process. Create it with New; Run it once.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	metrics *coordinator.StepMetrics

	keys     coordinator.Keys
	etcd     *clientv3.Client
	mux      *connMux
	addr     string
	reporter *reporter
	// quit ends StopTimeout after Run's context is done: the bound of
	// every wait of a stopping worker.
	quit context.Context
	// coordAddr is the coordinator that answered at connect ("": none
	// given); step reports go there first. etcdEndpoints are etcd's.
	coordAddr     string
	etcdEndpoints []string

	mu sync.Mutex
	id string
	// forget are the timers that remove finished runs' metrics.
	forget []*time.Timer
	// lease is the current registration's (0: none); snapshot holdings
	// are written under it.
	lease clientv3.LeaseID

	// snaps is the process's in-memory snapshot store; snapAddr the
	// advertised address of its Snapshot service.
	snaps    *snapStore
	snapAddr string
}

// New checks cfg and returns a worker.
func New(cfg Config) (*Worker, error) {
	if cfg.Engine == nil {
		return nil, errors.New("worker: Config.Engine is nil; pass the training engine")
	}
	if cfg.Coordinator == "" && len(cfg.Etcd) == 0 {
		return nil, errors.New("worker: neither --coordinator nor --etcd is set; give the coordinator's address")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Threads < 0 {
		return nil, fmt.Errorf("worker: threads %d: must be ≥ 1 (0: all cores)", cfg.Threads)
	}
	if cfg.Threads == 0 {
		cfg.Threads = runtime.NumCPU()
	}
	if cfg.LeaseTTL != 0 && cfg.LeaseTTL < time.Second {
		return nil, fmt.Errorf("worker: lease TTL %v is below etcd's 1 s granularity; use ≥ 1s", cfg.LeaseTTL)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = DefaultReportInterval
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 3 * time.Second
	}
	if cfg.SeriesGrace <= 0 {
		cfg.SeriesGrace = coordinator.DefaultSeriesGrace
	}
	if cfg.Version == "" {
		cfg.Version = version.Version
	}
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var reg prometheus.Registerer
	if cfg.Registry != nil {
		reg = cfg.Registry
	}
	return &Worker{cfg: cfg, log: cfg.Logger, metrics: coordinator.NewStepMetrics(reg)}, nil
}

// ID is the worker's current registration ID ("" before it registers).
func (w *Worker) ID() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.id
}

// Addr is the worker's advertised data-plane address ("" before Run
// listens).
func (w *Worker) Addr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.addr
}

// Run connects, registers and serves assignments until ctx is done. It
// returns an error, without retrying, when the coordinator or etcd cannot
// be reached within the dial timeout or runs another Loom version.
func (w *Worker) Run(ctx context.Context) error {
	quit, cancelQuit := context.WithCancel(context.Background())
	defer cancelQuit()
	var graceMu sync.Mutex
	var grace *time.Timer
	stopGrace := context.AfterFunc(ctx, func() {
		graceMu.Lock()
		grace = time.AfterFunc(w.cfg.StopTimeout, cancelQuit)
		graceMu.Unlock()
	})
	defer func() {
		stopGrace()
		graceMu.Lock()
		if grace != nil {
			grace.Stop()
		}
		graceMu.Unlock()
	}()
	w.quit = quit
	defer func() {
		w.mu.Lock()
		for _, t := range w.forget {
			t.Stop()
		}
		w.forget = nil
		w.mu.Unlock()
	}()
	if err := w.connect(ctx); err != nil {
		return err
	}
	defer w.etcd.Close()
	lis, err := net.Listen("tcp", w.cfg.Listen)
	if err != nil {
		return fmt.Errorf("worker: data-plane listen on %s: %w; choose another --listen", w.cfg.Listen, err)
	}
	w.mux = newConnMux(lis)
	defer w.mux.close()
	addr, unspecified, err := coordinator.AdvertiseAddr(w.cfg.Advertise, lis.Addr())
	if err != nil {
		return fmt.Errorf("worker: --%w", err)
	}
	if unspecified {
		// Listening on every interface: advertise the one that reaches the
		// control plane, which is where the peers are.
		target := w.coordAddr
		if target == "" && len(w.etcdEndpoints) > 0 {
			target = w.etcdEndpoints[0]
		}
		host, err := coordinator.RouteHost(target)
		if err != nil {
			return fmt.Errorf("worker: --listen %s has no host peers can dial and %v; set --advertise HOST", w.cfg.Listen, err)
		}
		_, port, _ := net.SplitHostPort(addr)
		addr = net.JoinHostPort(host, port)
		w.log.Info("worker: advertising the address that reaches the control plane; set --advertise to choose another", "addr", addr)
	}
	w.mu.Lock()
	w.addr = addr
	w.mu.Unlock()
	stopSnaps, err := w.serveSnapshots(addr)
	if err != nil {
		return err
	}
	defer stopSnaps()
	w.reporter = newReporter(w)
	defer w.reporter.close()

	for ctx.Err() == nil {
		err := w.serveSession(ctx)
		if ctx.Err() != nil {
			break
		}
		w.log.Warn("worker: registration lost; registering again", "addr", addr, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// connect finds etcd (through the coordinator when needed), checks the
// coordinator's version and that etcd answers, within the dial timeout.
func (w *Worker) connect(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, w.cfg.DialTimeout)
	defer cancel()
	endpoints := w.cfg.Etcd
	prefix := w.cfg.Prefix
	if w.cfg.Coordinator != "" {
		c, err := api.Dial(dctx, w.cfg.Coordinator, w.cfg.CoordinatorDial...)
		if err != nil {
			cause := err
			var re *api.RPCError
			if errors.As(err, &re) {
				cause = re.Err
			}
			return fmt.Errorf("worker: cannot reach the coordinator at %s within %v (%w); check --coordinator: it must be the address `loom coordinator --listen` serves",
				w.cfg.Coordinator, w.cfg.DialTimeout, cause)
		}
		info, err := c.Info(dctx)
		w.coordAddr = c.Addr() // of those given, the one that answered
		c.Close()
		if err != nil {
			return fmt.Errorf("worker: %w", err)
		}
		if info.Version != w.cfg.Version {
			return &VersionError{Worker: w.cfg.Version, Coordinator: info.Version, CoordinatorAddr: w.cfg.Coordinator}
		}
		if len(endpoints) == 0 {
			endpoints = info.EtcdEndpoints
		}
		if prefix == "" {
			prefix = info.KeyPrefix
		}
		if w.cfg.LeaseTTL == 0 && info.LeaseTtlSeconds > 0 {
			w.cfg.LeaseTTL = time.Duration(info.LeaseTtlSeconds) * time.Second
		}
	}
	if w.cfg.LeaseTTL == 0 {
		w.cfg.LeaseTTL = coordinator.DefaultLeaseTTL
	}
	w.keys = coordinator.NewKeys(prefix)
	w.etcdEndpoints = endpoints
	if len(endpoints) == 0 {
		return fmt.Errorf("worker: the coordinator at %s named no etcd endpoints; pass --etcd", w.cfg.Coordinator)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: w.cfg.DialTimeout, Logger: zap.NewNop(), TLS: w.cfg.EtcdTLS})
	if err != nil {
		return fmt.Errorf("worker: etcd client for %v: %w; check --etcd", endpoints, err)
	}
	if _, err := cli.Get(dctx, w.keys.Workers(), clientv3.WithCountOnly(), clientv3.WithPrefix()); err != nil {
		cli.Close()
		return fmt.Errorf("worker: etcd at %s did not answer within %v: %w; check --etcd (or the coordinator's --etcd)",
			strings.Join(endpoints, ","), w.cfg.DialTimeout, err)
	}
	w.etcd = cli
	return nil
}

// run is one engine run: one rank of one generation.
type run struct {
	job    string
	gen    uint64
	cancel context.CancelFunc
	done   chan struct{}
	// watch follows the rank's phases; result records how it ended, once:
	// the engine's own outcome, or its watchdog's verdict.
	watch  *rankWatch
	result sync.Once
	// lis is the generation's view of the data-plane listener; it closes
	// as soon as the generation ends, so that a peer's connection for the
	// next generation waits for the next engine instead of being taken
	// by this one as it tears down.
	lis *genListener
}

// serveSession registers under a fresh lease and serves assignments until
// the lease is lost or ctx is done.
func (w *Worker) serveSession(ctx context.Context) error {
	// The lease is granted under ctx (a session's own grant would not
	// return to a signal while etcd is down); its keep-alive runs until
	// the session ends.
	gctx, gcancel := context.WithTimeout(ctx, w.cfg.DialTimeout)
	lease, err := w.etcd.Grant(gctx, int64(ttlSeconds(w.cfg.LeaseTTL)))
	gcancel()
	if err != nil {
		return fmt.Errorf("open etcd session: grant a lease: %w", err)
	}
	kctx, kcancel := context.WithCancel(context.WithoutCancel(ctx))
	sess, err := concurrency.NewSession(w.etcd, concurrency.WithLease(lease.ID), concurrency.WithContext(kctx))
	if err != nil {
		kcancel()
		return fmt.Errorf("open etcd session: %w", err)
	}
	// Revoking the lease makes a worker that leaves gone at once rather
	// than after the TTL — but a stopping worker does not wait long for an
	// etcd that does not answer.
	defer func() {
		sess.Orphan()
		kcancel()
		rctx, cancel := context.WithTimeout(w.quit, 2*time.Second)
		defer cancel()
		if _, err := w.etcd.Revoke(rctx, lease.ID); err != nil {
			w.log.Warn("worker: could not revoke the registration lease; it expires by itself", "ttl", w.cfg.LeaseTTL, "err", err)
		}
	}()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-sctx.Done():
		}
	}()
	id := fmt.Sprintf("w-%x", int64(sess.Lease()))
	info := &loomv1.WorkerInfo{Id: id, Addr: w.Addr(), Version: w.cfg.Version, Host: w.cfg.Host,
		Threads: int32(w.cfg.Threads), Pid: int32(os.Getpid()), RegisteredUnixMs: time.Now().UnixMilli(), SnapshotAddr: w.snapAddr}
	pctx, pcancel := context.WithTimeout(sctx, w.cfg.DialTimeout)
	_, err = w.etcd.Put(pctx, w.keys.Worker(id), coordinator.Encode(info), clientv3.WithLease(sess.Lease()))
	pcancel()
	if err != nil {
		return fmt.Errorf("register %s: %w", id, err)
	}
	w.mu.Lock()
	w.id, w.lease = id, sess.Lease()
	w.mu.Unlock()
	w.log.Info("worker: registered", "id", id, "addr", info.Addr, "version", info.Version, "threads", info.Threads)

	var cur *run
	stop := func() {
		if cur == nil {
			return
		}
		t0 := time.Now()
		cur.lis.Close()
		cur.cancel()
		slow := time.NewTimer(abortBound)
		defer slow.Stop()
		for waiting := true; waiting; {
			select {
			case <-cur.done:
				w.log.Info("worker: rank aborted", "job", cur.job, "generation", cur.gen, "took", time.Since(t0).Round(time.Millisecond))
				waiting = false
			case <-slow.C:
				op, group, since, _ := cur.watch.ops.InFlight()
				w.log.Error("worker: the engine has not returned since its generation ended; waiting on", "job", cur.job,
					"generation", cur.gen, "after", time.Since(t0).Round(time.Millisecond), "op", op, "group", group,
					"in_flight", time.Since(since).Round(time.Millisecond))
			case <-w.quit.Done():
				w.log.Error("worker: the engine did not return within the stop timeout; leaving it", "job", cur.job,
					"generation", cur.gen, "stop_timeout", w.cfg.StopTimeout)
				waiting = false
			}
		}
		cur = nil
	}
	defer stop()

	gctx, gcancel = context.WithTimeout(sctx, w.cfg.DialTimeout)
	resp, err := w.etcd.Get(gctx, w.keys.Jobs(), clientv3.WithPrefix())
	gcancel()
	if err != nil {
		return fmt.Errorf("read assignments: %w", err)
	}
	// announce rewrites the registration once a generation this worker ran
	// has ended: the leader holds the workers of a failed generation out
	// of the next rendezvous until they do, which a worker that died (but
	// whose lease has not expired yet) cannot.
	announce := func(job string, gen uint64) {
		actx, acancel := context.WithTimeout(sctx, w.cfg.DialTimeout)
		defer acancel()
		if _, err := w.etcd.Put(actx, w.keys.Worker(id), coordinator.Encode(info), clientv3.WithLease(sess.Lease())); err != nil {
			w.log.Warn("worker: could not re-register after the generation ended", "job", job, "generation", gen, "err", err)
		}
	}
	handle := func(key string, value []byte, modRev int64, deleted bool) {
		if !strings.HasSuffix(key, "/assignment") {
			return
		}
		if deleted {
			if cur != nil && key == w.keys.Assignment(cur.job) {
				job, gen := cur.job, cur.gen
				w.log.Info("worker: generation ended; cancelling", "job", job, "generation", gen)
				stop()
				announce(job, gen)
			}
			return
		}
		a := &loomv1.Assignment{}
		if err := coordinator.Decode(key, value, a); err != nil {
			w.log.Warn("worker: skipping assignment", "err", err)
			return
		}
		rank := -1
		for _, r := range a.Ranks {
			if r.WorkerId == id {
				rank = int(r.Rank)
			}
		}
		if cur != nil && cur.job == a.Job && (rank < 0 || cur.gen != a.Generation) {
			job, gen := cur.job, cur.gen
			w.log.Info("worker: generation replaced; cancelling", "job", job, "generation", gen)
			stop()
			announce(job, gen)
		}
		if rank < 0 || (cur != nil && cur.job == a.Job && cur.gen == a.Generation) {
			return
		}
		stop() // one run at a time
		cur = w.start(sctx, a, rank, modRev)
	}
	for _, kv := range resp.Kvs {
		handle(string(kv.Key), kv.Value, kv.ModRevision, false)
	}
	wch := w.etcd.Watch(clientv3.WithRequireLeader(sctx), w.keys.Jobs(), clientv3.WithPrefix(),
		clientv3.WithRev(resp.Header.Revision+1))
	for {
		select {
		case <-sctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("lease %s expired", id)
		case wr, ok := <-wch:
			if !ok {
				return errors.New("etcd watch closed")
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("etcd watch: %w", err)
			}
			for _, ev := range wr.Events {
				handle(string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision, ev.Type == clientv3.EventTypeDelete)
			}
		}
	}
}

// abortBound is how long a rank's engine may take to return once its
// generation has ended before the worker logs what it is stuck on: every
// collective and point-to-point call returns promptly when its context is
// cancelled, and the transport's teardown is bounded.
const abortBound = 15 * time.Second

// start runs the engine for one rank of a in a goroutine, with a watchdog
// that ends the rank when a phase outlasts its timeout.
func (w *Worker) start(ctx context.Context, a *loomv1.Assignment, rank int, assignRev int64) *run {
	rctx, cancel := context.WithCancel(ctx)
	spec, specErr := generationSpec(a)
	r := &run{job: a.Job, gen: a.Generation, cancel: cancel, done: make(chan struct{}), lis: w.mux.listener()}
	// A lost peer is reported as soon as a call names it: the engine may
	// take a while to unwind (it waits for its checkpoint write in flight).
	ops := NewOpTracker(func(group string, err error) {
		if rctx.Err() != nil || errors.Is(err, context.Canceled) {
			return // the generation ended: nothing to report
		}
		phase, step := r.watch.where()
		r.result.Do(func() {
			w.log.Error("worker: rank lost a peer", "job", a.Job, "generation", a.Generation, "rank", rank, "group", group, "err", err)
			w.writeResult(rctx, w.failedResult(a, rank, phase, step, group, err), assignRev)
		})
	})
	r.watch = newRankWatch(rank, w.Addr(), spec, ops, time.Now())
	if specErr == nil {
		go w.watchdog(ctx, rctx, r, a, rank, assignRev)
	}
	go func() {
		defer close(r.done)
		// The run's series go SeriesGrace after it ends (unless a newer
		// generation of the job has taken them over).
		defer func() {
			w.mu.Lock()
			w.forget = append(w.forget, time.AfterFunc(w.cfg.SeriesGrace, func() { w.metrics.ForgetEpoch(a.Job, assignRev) }))
			w.mu.Unlock()
		}()
		err := specErr
		if err == nil {
			err = w.runEngine(rctx, a, spec, rank, assignRev, r)
		}
		if rctx.Err() != nil {
			w.log.Info("worker: rank cancelled", "job", a.Job, "generation", a.Generation, "rank", rank)
			return
		}
		phase, step := r.watch.where()
		res := &loomv1.RankResult{Job: a.Job, Generation: a.Generation, Rank: int32(rank), WorkerId: w.ID(),
			Addr: w.Addr(), Ok: err == nil}
		if err != nil {
			res = w.failedResult(a, rank, phase, step, r.watch.ops.PeerGroup(), err)
			w.log.Error("worker: rank failed", "job", a.Job, "generation", a.Generation, "rank", rank, "phase", phase, "step", step, "err", err)
		} else {
			w.log.Info("worker: rank finished", "job", a.Job, "generation", a.Generation, "rank", rank)
		}
		r.result.Do(func() { w.writeResult(rctx, res, assignRev) })
	}()
	return r
}

// failedResult is the result of a rank that failed with err in phase at
// step; a *parallel.PeerError in err names the peer, lost on group.
func (w *Worker) failedResult(a *loomv1.Assignment, rank int, phase string, step int, group string, err error) *loomv1.RankResult {
	res := &loomv1.RankResult{Job: a.Job, Generation: a.Generation, Rank: int32(rank), WorkerId: w.ID(),
		Addr: w.Addr(), Error: err.Error(), Phase: phase, Step: int64(step)}
	var pe *parallel.PeerError
	if errors.As(err, &pe) {
		// The coordinator names the peer as the rank lost (or hung: it
		// stopped answering within the step timeout).
		res.LostPeer = &loomv1.PeerLoss{Rank: int32(pe.Rank), Addr: pe.Addr, Op: pe.Op, Group: group,
			Timeout: errors.Is(err, parallel.ErrPeerTimeout)}
	}
	return res
}

// watchdog ends the rank of r when one of its phases (setup, a step, a
// checkpoint's write, the final save) outlasts the spec's timeout: it
// records the rank as hung, naming what it had in flight, then cancels
// its engine. It returns when the run ends.
func (w *Worker) watchdog(ctx, rctx context.Context, r *run, a *loomv1.Assignment, rank int, assignRev int64) {
	t := time.NewTicker(watchInterval(r.watch.spec.Elastic))
	defer t.Stop()
	for {
		select {
		case <-rctx.Done():
			return
		case <-r.done:
			return
		case now := <-t.C:
			h := r.watch.check(now)
			if h == nil {
				continue
			}
			r.result.Do(func() {
				w.log.Error("worker: rank hung; ending it", "job", a.Job, "generation", a.Generation, "rank", rank, "err", h)
				res := &loomv1.RankResult{Job: a.Job, Generation: a.Generation, Rank: int32(rank), WorkerId: w.ID(),
					Addr: w.Addr(), Error: h.Error(), Phase: h.Phase, Step: int64(h.Step), Hung: true, Op: h.Op, Group: h.Group}
				w.writeResult(ctx, res, assignRev)
			})
			r.cancel()
			return
		}
	}
}

// generationSpec is the spec a generation runs: the submitted one at the
// generation's data-parallel size (Assignment.dp), validated.
func generationSpec(a *loomv1.Assignment) (api.JobSpec, error) {
	spec, err := api.ParseSpec(a.SpecYaml, "job "+a.Job)
	if err != nil {
		return spec, err
	}
	if a.Dp > 0 && int(a.Dp) != spec.Parallel.DP {
		spec = spec.ForDP(int(a.Dp))
		if err := spec.Validate(); err != nil {
			return spec, fmt.Errorf("generation %d at dp %d: %w", a.Generation, a.Dp, err)
		}
	}
	if w := spec.Parallel.WorldSize(); w != int(a.WorldSize) || len(a.Ranks) != w {
		return spec, fmt.Errorf("generation %d: %d ranks and world size %d for a layout of %d (dp %d × tp %d × pp %d)",
			a.Generation, len(a.Ranks), a.WorldSize, w, spec.Parallel.DP, spec.Parallel.TP, spec.Parallel.PP)
	}
	return spec, nil
}

// runEngine checks the assignment and calls the engine.
func (w *Worker) runEngine(ctx context.Context, a *loomv1.Assignment, spec api.JobSpec, rank int, assignRev int64, run *run) (err error) {
	if a.CoordinatorVersion != w.cfg.Version {
		return &VersionError{Worker: w.cfg.Version, Coordinator: a.CoordinatorVersion, Generation: a.Generation}
	}
	if w.cfg.CheckJob != nil {
		if err := w.cfg.CheckJob(spec, a.Resume); err != nil {
			return fmt.Errorf("job %s refused by this worker: %w", a.Job, err)
		}
	}
	r := a.Ranks[rank]
	peers := make([]string, len(a.Ranks))
	for _, p := range a.Ranks {
		if int(p.Rank) < len(peers) {
			peers[p.Rank] = p.Addr
		}
	}
	lis := run.lis
	defer lis.Close()
	resumeFrom := a.Resume
	if a.Memory != nil {
		// Every rank restores the same state or none does: a rank that
		// cannot gather the snapshot fails its generation, and the next
		// one resumes from disk (Decide takes only the ended generation's
		// snapshots).
		t0 := time.Now()
		dir, err := w.snaps.materialize(ctx, a.Job, a.Memory, w.cfg.PeerTLS, spec.Elastic.SetupTimeout)
		if err != nil {
			return fmt.Errorf("resume from the in-memory snapshot of step %d: %w; the next generation resumes from the disk checkpoint (%s)",
				a.Memory.Step, err, orNone(a.Resume))
		}
		w.log.Info("worker: gathered the in-memory snapshot", "job", a.Job, "generation", a.Generation, "rank", rank,
			"step", a.Memory.Step, "dir", dir, "took", time.Since(t0).Round(time.Millisecond))
		resumeFrom = dir
	}
	asg := Assignment{
		Job: a.Job, Generation: a.Generation, Spec: spec, Rank: rank, WorldSize: int(a.WorldSize),
		DP: int(r.Dp), PP: int(r.Pp), TP: int(r.Tp), Peers: peers, Threads: int(r.Threads), Listener: lis,
		Metrics: Metrics{steps: w.metrics, rep: w.reporter, job: a.Job, gen: a.Generation, epoch: assignRev, rank: rank, watch: run.watch},
		Resume:  resumeFrom,
		Ops:     run.watch.ops,
		ReportCheckpoint: func(cctx context.Context, step int, part []byte) error {
			// The writer's context outlives the step loop's on purpose (files
			// stay whole); the report to etcd ends with the rank.
			rctx, cancel := context.WithCancel(cctx)
			defer cancel()
			defer context.AfterFunc(ctx, cancel)()
			err := w.reportCheckpoint(rctx, a, rank, assignRev, step, part)
			if err == nil {
				run.watch.checkpointed(step)
			}
			return err
		},
	}
	if asg.Threads <= 0 {
		asg.Threads = w.cfg.Threads
	}
	if resumeFrom != a.Resume {
		var once sync.Once
		asg.Metrics.restored = func() { once.Do(func() { os.RemoveAll(resumeFrom) }) }
		defer asg.Metrics.restored()
	}
	if spec.Elastic.SnapshotEvery > 0 && w.snaps != nil {
		asg.SnapshotDir = w.snaps.writeDir(a.Job, a.Generation)
		asg.ReportSnapshot = func(sctx context.Context, p checkpoint.RankPart) error {
			rctx, cancel := context.WithTimeout(sctx, spec.Elastic.CheckpointTimeout)
			defer cancel()
			defer context.AfterFunc(ctx, cancel)()
			return w.reportSnapshot(rctx, a, spec, rank, p)
		}
	}
	w.log.Info("worker: training", "job", a.Job, "generation", a.Generation, "rank", rank,
		"dp", asg.DP, "pp", asg.PP, "tp", asg.TP, "world", asg.WorldSize)
	send := w.reporter.forRank(a.Job, a.Generation, assignRev, rank)
	var first sync.Once
	rep := func(s StepStats) {
		now := time.Now()
		run.watch.stepped(s.Step, now)
		first.Do(func() {
			setup := now.Add(-s.StepTime).Sub(run.watch.start)
			w.reporter.setFirstStep(a.Job, a.Generation, setup.Seconds(), now.UnixMilli())
		})
		send(s)
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("engine panicked on rank %d: %v", rank, p)
		}
		// Steps must reach the coordinator before the result does; a
		// stopping worker gives up on a coordinator that does not answer.
		fctx, cancel := context.WithTimeout(w.quit, w.cfg.DialTimeout)
		w.reporter.flushAll(fctx)
		cancel()
	}()
	err = w.cfg.Engine.Run(ctx, asg, rep)
	if err == nil && spec.Elastic.SnapshotEvery > 0 && w.snaps != nil {
		// The rank finished: its job's snapshots are of no more use.
		w.dropSnapshots(a.Job)
	}
	return err
}

// writeResult records how a rank ended, only while its assignment is the
// one it ran (a late result of an ended generation is dropped).
func (w *Worker) writeResult(ctx context.Context, res *loomv1.RankResult, assignRev int64) {
	wctx, cancel := context.WithTimeout(ctx, w.cfg.DialTimeout)
	defer cancel()
	akey := w.keys.Assignment(res.Job)
	txn, err := w.etcd.Txn(wctx).
		If(clientv3.Compare(clientv3.ModRevision(akey), "=", assignRev)).
		Then(clientv3.OpPut(w.keys.Result(res.Job, res.Generation, int(res.Rank)), coordinator.Encode(res))).Commit()
	switch {
	case err != nil:
		w.log.Error("worker: could not record the rank's result", "job", res.Job, "rank", res.Rank, "err", err)
	case !txn.Succeeded:
		w.log.Info("worker: generation ended before the result was recorded", "job", res.Job, "generation", res.Generation)
	}
}

func ttlSeconds(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}
