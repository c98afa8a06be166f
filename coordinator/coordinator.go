package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/version"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// DefaultLeaseTTL is the lease TTL of coordinators' elections and workers'
// registrations: a process that stops renewing is gone this long after.
const DefaultLeaseTTL = 10 * time.Second

// Config configures a Coordinator. Zero fields take the defaults named.
type Config struct {
	// Etcd is the client to the cluster holding the state (required).
	Etcd *clientv3.Client
	// EtcdEndpoints are the client URLs Info tells workers (default: the
	// client's endpoints).
	EtcdEndpoints []string
	// Prefix is the key prefix (default DefaultPrefix).
	Prefix string
	// Addr is the gRPC address other processes reach this coordinator at;
	// it is the election value, so workers find the leader by it (required
	// for Serve; Serve fills it from the listener when empty).
	Addr string
	// LeaseTTL is the election lease TTL and the TTL Info tells workers
	// (default DefaultLeaseTTL; at least 1 s).
	LeaseTTL time.Duration
	// Resync is how often the leader reconciles without a change
	// (default 5 s).
	Resync time.Duration
	// Version is this coordinator's Loom version (default version.Version).
	Version string
	// Registry receives the metrics (nil: metrics are not exported).
	Registry *prometheus.Registry
	// Logger (nil: discard).
	Logger *slog.Logger
	// Now returns the current time (default time.Now); tests may fix it.
	Now func() time.Time
	// HistoryPersist is how often the leader writes the jobs' step
	// histories to etcd (default DefaultHistoryPersist).
	HistoryPersist time.Duration
	// SeriesGrace is how long a finished job's series stay in /metrics
	// (default DefaultSeriesGrace).
	SeriesGrace time.Duration
	// BeforeCheckpointManifest, when set, runs after a checkpoint's parts
	// are checked and before its manifest is written; an error abandons
	// that commit. Tests use it to stop a leader at exactly that point.
	BeforeCheckpointManifest func(job string, step int64) error
	// ServerOptions are added to the gRPC server's (credentials, the
	// caller checks, message bounds: security.Setup.ServerOptions).
	ServerOptions []grpc.ServerOption
	// HTTPGuard, if set, wraps the HTTP server's handler (who may read
	// the dashboard and /metrics); /healthz and /readyz must stay open.
	HTTPGuard func(http.Handler) http.Handler
	// CheckJob, if set, vets a submitted spec and resume directory (the
	// directories jobs may name: security.Roots.CheckJob); its error
	// refuses the job as an invalid argument.
	CheckJob func(spec api.JobSpec, resume string) error
	// MaxSpecBytes bounds a submitted spec, which is stored as one etcd
	// value (default DefaultMaxSpecBytes).
	MaxSpecBytes int
}

// DefaultMaxSpecBytes is the default Config.MaxSpecBytes.
const DefaultMaxSpecBytes = 1 << 20

// Coordinator serves the Coordinator gRPC service and, while it is the
// elected leader, reconciles jobs. It is safe for concurrent use.
type Coordinator struct {
	loomv1.UnimplementedCoordinatorServer

	cfg     Config
	keys    Keys
	log     *slog.Logger
	steps   *StepMetrics
	control *controlMetrics
	leader  atomic.Bool
	history *historian
	// assigned is each job's assignment as its last step report saw it.
	assigned assignSeen
	// httpAddr is where Serve serves the dashboard ("" when it does not).
	httpAddr atomic.Value
}

// New checks cfg and returns a Coordinator; call Run or Serve to start it.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Etcd == nil {
		return nil, errors.New("coordinator: Config.Etcd is nil; pass a connected etcd client")
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.LeaseTTL < time.Second {
		return nil, fmt.Errorf("coordinator: lease TTL %v is below etcd's 1 s granularity; use ≥ 1s", cfg.LeaseTTL)
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 5 * time.Second
	}
	if cfg.Version == "" {
		cfg.Version = version.Version
	}
	if len(cfg.EtcdEndpoints) == 0 {
		cfg.EtcdEndpoints = cfg.Etcd.Endpoints()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSpecBytes <= 0 {
		cfg.MaxSpecBytes = DefaultMaxSpecBytes
	}
	var reg prometheus.Registerer
	if cfg.Registry != nil {
		reg = cfg.Registry
	}
	c := &Coordinator{
		cfg:     cfg,
		keys:    NewKeys(cfg.Prefix),
		log:     cfg.Logger,
		steps:   NewStepMetrics(reg),
		control: newControlMetrics(reg),
	}
	c.httpAddr.Store("")
	c.history = newHistorian(cfg.Etcd, c.keys, cfg.Logger, cfg.Now, c.IsLeader, cfg.HistoryPersist)
	if reg != nil {
		reg.MustRegister(newJobCollector(c.history, cfg.SeriesGrace))
	}
	return c, nil
}

// Keys returns the coordinator's key layout.
func (c *Coordinator) Keys() Keys { return c.keys }

// IsLeader reports whether this coordinator currently leads.
func (c *Coordinator) IsLeader() bool { return c.leader.Load() }

// Serve runs the gRPC service on grpcLis; on httpLis (may be nil) the
// dashboard, its JSON API and /metrics (WebHandler); the step history and
// the leader loop, until ctx is done; then it stops them all, resigning
// leadership so that a standby takes over at once.
func (c *Coordinator) Serve(ctx context.Context, grpcLis, httpLis net.Listener) error {
	if c.cfg.Addr == "" {
		c.cfg.Addr = grpcLis.Addr().String()
	}
	srv := grpc.NewServer(c.cfg.ServerOptions...)
	loomv1.RegisterCoordinatorServer(srv, c)
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() {
		if err := srv.Serve(grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("coordinator gRPC on %s: %w", grpcLis.Addr(), err)
		}
	})
	runCtx, cancelRun := context.WithCancel(ctx)
	var hs *http.Server
	if httpLis != nil {
		mux := http.NewServeMux()
		if c.cfg.Registry != nil {
			mux.Handle("/metrics", promhttp.HandlerFor(c.cfg.Registry, promhttp.HandlerOpts{}))
		}
		mux.Handle("/", c.WebHandler())
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
		mux.HandleFunc("/readyz", c.serveReady)
		// Others reach a listener on every interface at our advertised host.
		haddr := httpLis.Addr().String()
		if a, unspecified, err := AdvertiseAddr("", httpLis.Addr()); err == nil && unspecified {
			if host, _, err := net.SplitHostPort(c.cfg.Addr); err == nil && !isUnspecified(host) {
				_, port, _ := net.SplitHostPort(a)
				haddr = net.JoinHostPort(host, port)
			}
		}
		c.httpAddr.Store(haddr)
		// Requests end with runCtx, so live streams do not hold up Shutdown.
		var h http.Handler = mux
		if c.cfg.HTTPGuard != nil {
			h = c.cfg.HTTPGuard(mux)
		}
		hs = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
			BaseContext: func(net.Listener) context.Context { return runCtx }}
		wg.Go(func() {
			if err := hs.Serve(httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("coordinator metrics on %s: %w", httpLis.Addr(), err)
			}
		})
	}
	wg.Go(func() { c.history.run(runCtx) })
	wg.Go(func() { c.sweepSeries(runCtx) })
	wg.Go(func() { c.Run(runCtx) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancelRun()
	// Watch streams end only when their clients go; give them a moment.
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		srv.Stop()
	}
	if hs != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = hs.Shutdown(sctx)
		cancel()
	}
	wg.Wait()
	return err
}

// serveReady is the readiness probe: ready while etcd answers (every
// coordinator serves every call; the body says whether this one leads).
func (c *Coordinator) serveReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, err := c.cfg.Etcd.Get(ctx, c.keys.Election(), clientv3.WithCountOnly()); err != nil {
		http.Error(w, fmt.Sprintf("not ready: etcd at %s does not answer: %v", strings.Join(c.cfg.EtcdEndpoints, ","), err), http.StatusServiceUnavailable)
		return
	}
	role := "standby"
	if c.IsLeader() {
		role = "leader"
	}
	fmt.Fprintf(w, "ready (%s)\n", role)
}

// Run campaigns for leadership and, while leader, reconciles; it returns
// when ctx is done. Losing leadership (a lost lease, a fenced write that
// fails) sends it back to campaigning.
func (c *Coordinator) Run(ctx context.Context) {
	for ctx.Err() == nil {
		err := c.campaignAndLead(ctx)
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("coordinator: leadership ended; campaigning again", "addr", c.cfg.Addr, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Coordinator) campaignAndLead(ctx context.Context) error {
	// The session outlives ctx so that Close can revoke its lease: a
	// standby then wins at once rather than after the TTL.
	sess, err := concurrency.NewSession(c.cfg.Etcd, concurrency.WithTTL(ttlSeconds(c.cfg.LeaseTTL)),
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return fmt.Errorf("open etcd session: %w", err)
	}
	defer sess.Close()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	e := concurrency.NewElection(sess, c.keys.Election())
	if err := e.Campaign(lctx, c.cfg.Addr); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	c.leader.Store(true)
	c.control.leader.Set(1)
	defer func() {
		c.leader.Store(false)
		c.control.leader.Set(0)
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = e.Resign(rctx)
		rcancel()
	}()
	c.log.Info("coordinator: elected leader", "addr", c.cfg.Addr, "key", e.Key(), "rev", e.Rev())
	return c.lead(lctx, e.Key(), e.Rev())
}

// lead reconciles on every change under the prefix (progress reports
// excepted) and every Resync, until ctx is done or a write is fenced off.
func (c *Coordinator) lead(ctx context.Context, leaderKey string, leaderRev int64) error {
	wch := c.cfg.Etcd.Watch(clientv3.WithRequireLeader(ctx), c.keys.Prefix, clientv3.WithPrefix())
	tick := time.NewTicker(c.cfg.Resync)
	defer tick.Stop()
	for {
		if err := c.reconcile(ctx, leaderKey, leaderRev); err != nil {
			if errors.Is(err, ErrNotLeader) || ctx.Err() != nil {
				return err
			}
			c.log.Warn("coordinator: reconcile failed; retrying", "err", err)
		}
		for relevant := false; !relevant; {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
				relevant = true
			case resp, ok := <-wch:
				if !ok {
					return errors.New("etcd watch closed")
				}
				if err := resp.Err(); err != nil {
					return fmt.Errorf("etcd watch: %w", err)
				}
				for _, ev := range resp.Events {
					if !strings.Contains(string(ev.Kv.Key), "/progress/") {
						relevant = true
					}
				}
			}
		}
	}
}

// reconcile is one observe–decide–act round.
func (c *Coordinator) reconcile(ctx context.Context, leaderKey string, leaderRev int64) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	snap, err := readSnapshot(rctx, c.cfg.Etcd, c.keys, c.cfg.Version)
	if err != nil {
		return err
	}
	for _, p := range snap.Problems {
		c.log.Warn("coordinator: skipping undecodable key", "err", p)
	}
	snap.Observed.NowUnixMs = c.cfg.Now().UnixMilli()
	acts, err := c.commitCheckpoints(rctx, Decide(snap.Observed))
	if err != nil {
		return err
	}
	if err := apply(rctx, c.cfg.Etcd, c.keys, leaderKey, leaderRev, acts, c.cfg.Now().UnixMilli()); err != nil {
		return err
	}
	for _, a := range acts {
		c.log.Info("coordinator: " + a.String())
	}
	grace := c.cfg.SeriesGrace
	if grace <= 0 {
		grace = DefaultSeriesGrace
	}
	c.control.observe(snap.Observed, acts, c.cfg.Now(), grace)
	return nil
}

// LeaderAddr returns the current leader's advertised address, or "" when
// no coordinator leads.
func LeaderAddr(ctx context.Context, cli *clientv3.Client, keys Keys) (string, error) {
	resp, err := cli.Get(ctx, keys.Election()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("find the leader coordinator in etcd: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// Coordinators returns the addresses of every coordinator campaigning
// under keys (the leader and its standbys: each holds a key of the
// election while it runs), the leader first.
func Coordinators(ctx context.Context, cli *clientv3.Client, keys Keys) ([]string, error) {
	resp, err := cli.Get(ctx, keys.Election()+"/", clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("list the coordinators in etcd: %w", err)
	}
	var addrs []string
	seen := map[string]bool{}
	for _, kv := range resp.Kvs {
		if a := string(kv.Value); a != "" && !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	return addrs, nil
}

func ttlSeconds(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}
