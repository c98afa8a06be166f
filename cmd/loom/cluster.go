package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/internal/cpuset"
	"github.com/loomtrain/loom/internal/security"
	"github.com/loomtrain/loom/launch"
	"github.com/loomtrain/loom/parallel"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
	"github.com/loomtrain/loom/worker"
)

// defaultCoordinator is where `loom coordinator` listens and where the
// other commands look for it unless told otherwise.
const defaultCoordinator = "127.0.0.1:7070"

func coordinatorFlag(fs interface {
	StringVar(*string, string, string, string)
}, p *string) {
	def := defaultCoordinator
	if env := os.Getenv("LOOM_COORDINATOR"); env != "" {
		def = env
	}
	fs.StringVar(p, "coordinator", def, "coordinator gRPC `ADDR`, or several separated by commas (default $LOOM_COORDINATOR, else "+defaultCoordinator+"); calls fail over to the coordinator's standbys")
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// newRegistry returns a metrics registry with the Go runtime and process
// collectors (go_*, process_*) registered.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// serveMetrics serves reg on addr's /metrics, and the probes /healthz
// (the process serves) and /readyz (ready() is nil), until ctx is done;
// sec secures the listener and guards every path but the probes.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, ready func() error, sec *security.Setup, log *slog.Logger) (net.Listener, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc(security.HealthzPath, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc(security.ReadyzPath, func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	srv := &http.Server{Handler: sec.HTTPGuard(mux), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(sec.HTTPListener(lis)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "addr", addr, "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return lis, nil
}

// newSecurity loads what the flags name and logs how connections are
// secured (a warning for plaintext).
func newSecurity(who string, c security.Config, log *slog.Logger, server bool) (*security.Setup, error) {
	sec, err := security.New(c, log, server)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", who, err)
	}
	sec.LogMode(log, who)
	return sec, nil
}

func cmdCoordinator(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "coordinator", "[flags]\n\n"+
		"Serves the control plane: jobs submitted with `loom submit` are scheduled onto\n"+
		"workers started with `loom worker --coordinator ADDR`. State lives in etcd; with\n"+
		"no --etcd an embedded single-member etcd is started. Several coordinators on one\n"+
		"etcd elect a leader; the others stand by.")
	etcdURLs := fs.String("etcd", "", "comma-separated etcd client `URLS` (empty: run an embedded etcd)")
	etcdDir := fs.String("etcd-dir", "", "embedded etcd's data `DIR` (default: a temporary directory, removed on exit)")
	etcdListen := fs.String("etcd-listen", "127.0.0.1:0", "embedded etcd's client `HOST:PORT` (0.0.0.0:PORT: every interface)")
	etcdAdvertise := fs.String("etcd-advertise", "", "embedded etcd's client URL workers and standbys are told: `HOST`, HOST:PORT or http://HOST:PORT; a host alone takes --etcd-listen's port (default: --etcd-listen, or with a 0.0.0.0 listen address this coordinator's --advertise host)")
	listen := fs.String("listen", defaultCoordinator, "gRPC listen `ADDR` (0.0.0.0:PORT: every interface)")
	advertise := fs.String("advertise", "", "`HOST` (or HOST:PORT) workers, standbys and clients reach this coordinator at; a host alone takes --listen's port (default: --listen, or with a 0.0.0.0 listen address this machine's hostname)")
	httpAddr := fs.String("http", "", "serve the dashboard (/), its JSON API (/api/) and Prometheus /metrics on `ADDR` (default: off)")
	prefix := fs.String("prefix", coordinator.DefaultPrefix, "etcd key `PREFIX`")
	ttl := fs.Duration("ttl", coordinator.DefaultLeaseTTL, "lease TTL of coordinators and workers: a process silent this long is gone")
	var secCfg security.Config
	secCfg.RegisterFlags(fs, true)
	var roots security.Roots
	roots.RegisterFlags(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(env.stderr, nil))
	sec, err := newSecurity("coordinator", secCfg, log, true)
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("coordinator: --listen %s: %w", *listen, err)
	}
	defer lis.Close()
	addr, unspecified, err := coordinator.AdvertiseAddr(*advertise, lis.Addr())
	if err != nil {
		return fmt.Errorf("coordinator: --%w", err)
	}
	if unspecified {
		host, err := os.Hostname()
		if err != nil || host == "" {
			return fmt.Errorf("coordinator: --listen %s has no host others can dial and the hostname is unknown (%v); set --advertise HOST", *listen, err)
		}
		_, port, _ := net.SplitHostPort(addr)
		addr = net.JoinHostPort(host, port)
		log.Info("coordinator: advertising this machine's hostname; set --advertise HOST to choose the address others dial", "addr", addr)
	}
	advHost, _, _ := net.SplitHostPort(addr)

	endpoints := splitComma(*etcdURLs)
	if len(endpoints) == 0 {
		etcdAdv := *etcdAdvertise
		if h, _, err := net.SplitHostPort(*etcdListen); etcdAdv == "" && err == nil && (h == "" || net.ParseIP(h) != nil && net.ParseIP(h).IsUnspecified()) {
			etcdAdv = advHost
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cert, key, ca := sec.Files() // the embedded etcd serves with the coordinator's certificate
		e, err := coordinator.StartEtcd(sctx, coordinator.EtcdOptions{Dir: *etcdDir, ClientAddr: *etcdListen, Advertise: etcdAdv, LogOutput: "discard",
			TLSCertFile: cert, TLSKeyFile: key, TLSCAFile: ca, MaxRequestBytes: security.EtcdMaxRequestBytes})
		cancel()
		if err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
		defer e.Close()
		endpoints = e.Endpoints
		log.Info("embedded etcd serving", "endpoints", strings.Join(endpoints, ","), "listen", *etcdListen)
	} else if *etcdAdvertise != "" {
		return errors.New("coordinator: --etcd-advertise is for the embedded etcd; with --etcd the URLs given are the ones workers are told")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second, Logger: zap.NewNop(), TLS: sec.EtcdTLS()})
	if err != nil {
		return fmt.Errorf("coordinator: etcd client for %v: %w", endpoints, err)
	}
	defer cli.Close()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = cli.Get(pctx, *prefix, clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("coordinator: etcd at %s did not answer within 10s: %w; check --etcd", strings.Join(endpoints, ","), err)
	}

	reg := newRegistry()
	ccfg := coordinator.Config{Etcd: cli, EtcdEndpoints: endpoints, Prefix: *prefix, Addr: addr,
		LeaseTTL: *ttl, Registry: reg, Logger: log, ServerOptions: sec.ServerOptions(), HTTPGuard: sec.HTTPGuard,
		MaxSpecBytes: security.MaxSpecBytes}
	if roots.Set() {
		ccfg.CheckJob = roots.CheckJob
	}
	c, err := coordinator.New(ccfg)
	if err != nil {
		return err
	}
	var httpLis net.Listener
	if *httpAddr != "" {
		if httpLis, err = net.Listen("tcp", *httpAddr); err != nil {
			return fmt.Errorf("coordinator: --http %s: %w", *httpAddr, err)
		}
		log.Info("dashboard on "+sec.Scheme()+"://"+httpLis.Addr().String()+"/ (metrics on /metrics, probes on /healthz and /readyz)", "addr", httpLis.Addr().String())
		httpLis = sec.HTTPListener(httpLis)
	}
	log.Info("coordinator serving", "addr", addr, "etcd", strings.Join(endpoints, ","))
	return c.Serve(ctx, lis, httpLis)
}

func cmdWorker(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "worker", "--coordinator ADDR | --etcd URLS [flags]\n\n"+
		"Joins the control plane as a worker: registers under a lease, trains the ranks\n"+
		"the coordinator assigns it, and reports each step.")
	var cfg worker.Config
	cfg.RegisterFlags(fs)
	httpAddr := fs.String("http", "", "serve Prometheus /metrics on `ADDR` (default: off)")
	cpus := fs.String("cpus", "", "bind this worker's threads to the CPU list `LIST` (e.g. 0-3,6; default: no binding)")
	transport := fs.String("transport", "", "how tensors travel to peers: `auto` (shared memory on this host, tcp across hosts), tcp, shm or grpc (default: the job spec's parallel.transport)")
	var secCfg security.Config
	secCfg.RegisterFlags(fs, false)
	var roots security.Roots
	roots.RegisterFlags(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *transport != "" {
		if _, err := parallel.ParseTransportMode(*transport); err != nil {
			return fmt.Errorf("worker: --transport: %w", err)
		}
	}
	log := slog.New(slog.NewTextHandler(env.stderr, nil))
	if *cpus != "" {
		set, err := cpuset.Parse(*cpus)
		if err != nil {
			return fmt.Errorf("worker: --cpus: %w", err)
		}
		if err := cpuset.Bind(set); err != nil {
			return fmt.Errorf("worker: --cpus %s: %w", *cpus, err)
		}
		log.Info("worker: bound to CPUs", "cpus", set.String())
	}
	sec, err := newSecurity("worker", secCfg, log, false)
	if err != nil {
		return err
	}
	cfg.Logger = log
	cfg.Engine = newTrainingEngine(*transport, sec.PeerTLS())
	cfg.PeerTLS = sec.PeerTLS()
	cfg.Registry = newRegistry()
	cfg.CoordinatorDial = sec.DialOptions()
	cfg.EtcdTLS = sec.EtcdTLS()
	if roots.Set() {
		cfg.CheckJob = roots.CheckJob
	}
	w, err := worker.New(cfg)
	if err != nil {
		return err
	}
	if *httpAddr != "" {
		ready := func() error {
			if w.ID() == "" {
				return errors.New("not registered with the control plane yet")
			}
			return nil
		}
		lis, err := serveMetrics(ctx, *httpAddr, cfg.Registry, ready, sec, log)
		if err != nil {
			return fmt.Errorf("worker: %w", err)
		}
		log.Info("metrics on /metrics, probes on /healthz and /readyz", "addr", lis.Addr().String())
	}
	done := make(chan struct{})
	defer close(done)
	go exitIfStuck(ctx, done, cfg.StopTimeout, log)
	return w.Run(ctx)
}

// exitIfStuck backs up a worker's bounded shutdown: once ctx is done (the
// first SIGTERM or SIGINT), a second signal, or the worker still running
// stopTimeout plus a margin later, ends the process.
func exitIfStuck(ctx context.Context, done <-chan struct{}, stopTimeout time.Duration, log *slog.Logger) {
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	if stopTimeout <= 0 {
		stopTimeout = 3 * time.Second
	}
	log.Info("worker: stopping; a second signal exits at once")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case <-done:
	case s := <-sig:
		log.Error("worker: second signal; exiting now", "signal", s)
		os.Exit(1)
	case <-time.After(stopTimeout + 5*time.Second):
		log.Error("worker: still not stopped; exiting", "after", stopTimeout+5*time.Second)
		os.Exit(1)
	}
}

// dialCoordinator connects to the first of addr (comma-separated) that
// answers. A coordinator that refuses connections gets a few seconds (it
// may be starting); the error says why each address was not reached.
func dialCoordinator(ctx context.Context, addr string, sec *security.Setup) (*api.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return api.Dial(dctx, addr, sec.DialOptions()...)
}

// clientSecurity binds a coordinator client's TLS and token flags; call
// the result after parsing.
func clientSecurity(fs *flag.FlagSet) func() (*security.Setup, error) {
	var c security.Config
	c.RegisterFlags(fs, false)
	return func() (*security.Setup, error) { return security.New(c, nil, false) }
}

func cmdSubmit(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "submit", "JOB.yaml [--coordinator ADDR] [flags]\n\n"+
		"Submits a job and follows it with a progress line per step until it finishes.")
	var addr string
	coordinatorFlag(fs, &addr)
	secFlags := clientSecurity(fs)
	detach := fs.Bool("detach", false, "return once submitted instead of following the job")
	pendingTimeout := fs.Duration("pending-timeout", 10*time.Minute, "fail the job when it waits this long for enough workers (before it starts, or for a restart); 0: wait for ever")
	maxRestarts := fs.Int("max-restarts", -1, "generations that may end early (a worker lost, failed or hung) before the job fails; each restart resumes from the newest complete checkpoint (default: the spec's elastic.max_restarts)")
	resume := fs.String("resume", "", "continue a stopped or crashed job from a checkpoint: `latest` (the newest complete one under checkpoint.dir/NAME, skipping broken ones) or a step directory; the workers restore it (a shared filesystem is assumed)")
	logFormat := fs.String("log-format", "text", "progress format: text, or json (one object per step and per status change)")
	overwrite := fs.Bool("overwrite", false, "start afresh although checkpoint.dir/NAME holds another run's checkpoints: move that directory aside (to NAME.replaced-TIME) first")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("submit: need exactly one JOB.yaml")
	}
	if *pendingTimeout < 0 {
		return fmt.Errorf("submit: --pending-timeout %v: must be ≥ 0 (0: wait for ever)", *pendingTimeout)
	}
	if *logFormat != "text" && *logFormat != "json" {
		return fmt.Errorf("submit: --log-format %q: allowed: text, json", *logFormat)
	}
	src, err := os.ReadFile(pos[0])
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	// Validate here too, so an invalid spec fails without a coordinator,
	// and with the same checks as `loom run`.
	spec, err := api.ParseSpec(src, pos[0])
	if err != nil {
		return err
	}
	if err := api.Supported(spec, pos[0]); err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	sec, err := secFlags()
	if err != nil {
		return err
	}
	c, err := dialCoordinator(ctx, addr, sec)
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	defer c.Close()
	// A job of this name still running keeps its checkpoint directory:
	// refuse before looking at (or moving) it.
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	cur, err := c.Get(gctx, spec.Name)
	cancel()
	switch {
	case err == nil && !coordinator.Terminal(cur.Status.State):
		return fmt.Errorf("submit: job %q is already %s (generation %d); stop it with `loom stop %s` or change the spec's name",
			spec.Name, launch.StateName(cur.Status.State), cur.Status.Generation, spec.Name)
	case err != nil && !errors.Is(err, api.ErrNotFound):
		return fmt.Errorf("submit: %w", err)
	}
	var from *checkpoint.Checkpoint
	if *resume != "" {
		// Checked here too, so a missing checkpoint fails before the job
		// is scheduled (the workers see the same filesystem).
		if from, err = checkResumable(env, spec, *resume); err != nil {
			return fmt.Errorf("submit: --resume %s: %w", *resume, err)
		}
	}
	runID, err := claimCheckpoints(env, "submit", pos[0], spec, from, *overwrite)
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = c.SubmitJob(sctx, &loomv1.SubmitRequest{SpecYaml: src, Source: pos[0], MaxRestarts: int32(*maxRestarts),
		Resume: *resume, RunId: runID, PendingTimeoutMs: pendingTimeout.Milliseconds()})
	cancel()
	if err != nil {
		return err
	}
	said := env.stdout
	if *logFormat == "json" {
		said = env.stderr // stdout holds only JSON objects
	}
	fmt.Fprintf(said, "submitted %s (world size %d) to %s\n", spec.Name, spec.Parallel.WorldSize(), addr)
	if *detach {
		return nil
	}
	st, err := launch.Follow(ctx, c, spec.Name, spec.Train.Steps, env.stdout, *logFormat == "json")
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(env.stderr, "stopped following %s; it keeps running (`loom stop %s` stops it)\n", spec.Name, spec.Name)
		}
		return err
	}
	if st.State != loomv1.JobState_JOB_STATE_SUCCEEDED {
		return &launch.JobError{Job: spec.Name, Status: st}
	}
	return nil
}

func cmdStatus(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "status", "[JOB] [--coordinator ADDR]\n\n"+
		"Without JOB lists every job; with JOB shows its state, generation, and each\n"+
		"rank's address, step and throughput.")
	var addr string
	coordinatorFlag(fs, &addr)
	secFlags := clientSecurity(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		fs.Usage()
		return errors.New("status: at most one JOB")
	}
	sec, err := secFlags()
	if err != nil {
		return err
	}
	c, err := dialCoordinator(ctx, addr, sec)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer c.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if len(pos) == 0 {
		jobs, err := c.List(rctx)
		if err != nil {
			return err
		}
		printJobs(env.stdout, jobs)
		return nil
	}
	j, err := c.Get(rctx, pos[0])
	if err != nil {
		return err
	}
	printJob(env.stdout, j)
	return nil
}

func latestStep(j *loomv1.Job) (step int64, tokPerSec float64) {
	for _, p := range j.Latest {
		if p.Rank == 0 && len(p.Steps) > 0 {
			return p.Steps[0].Step, p.Steps[0].TokensPerSec
		}
	}
	return 0, 0
}

func printJobs(w io.Writer, jobs []*loomv1.Job) {
	if len(jobs) == 0 {
		fmt.Fprintln(w, "no jobs")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTATE\tGEN\tWORLD\tDP\tSTEP\tTOK/S\tRESTARTS\tCHECKPOINT\tMESSAGE")
	for _, j := range jobs {
		s := j.Status
		step, tps := latestStep(j)
		ck := "-"
		if j.Checkpoint != nil {
			ck = fmt.Sprint(j.Checkpoint.Step)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%d\t%.0f\t%d\t%s\t%s\n", s.Name, launch.StateName(s.State), s.Generation, s.WorldSize,
			dpOf(s), step, tps, s.Restarts, ck, s.Message)
	}
	tw.Flush()
}

// dpOf renders a status's data-parallel size ("-" before a generation).
func dpOf(s *loomv1.JobStatus) string {
	if s.Dp == 0 {
		return "-"
	}
	return fmt.Sprint(s.Dp)
}

// elasticRange describes the dp range a job's spec allows ("" when fixed).
func elasticRange(specYAML []byte) string {
	spec, err := api.ParseSpec(specYAML, "job spec")
	if err != nil {
		return ""
	}
	lo, hi := spec.DPRange()
	if lo == hi {
		return ""
	}
	return fmt.Sprintf(" (elastic %d–%d; reachable %s)", lo, hi, strings.Trim(fmt.Sprint(spec.ReachableDP()), "[]"))
}

func printJob(w io.Writer, j *loomv1.Job) {
	s := j.Status
	fmt.Fprintf(w, "job:        %s\nstate:      %s\ngeneration: %d\nworld size: %d\nmessage:    %s\n",
		s.Name, launch.StateName(s.State), s.Generation, s.WorldSize, s.Message)
	if s.Dp > 0 {
		fmt.Fprintf(w, "dp size:    %d%s\n", s.Dp, elasticRange(j.SpecYaml))
	}
	if ck := j.Checkpoint; ck != nil {
		fmt.Fprintf(w, "checkpoint: step %d (generation %d, committed %s): %s\n", ck.Step, ck.Generation,
			time.UnixMilli(ck.CommittedUnixMs).Format("15:04:05"), ck.Dir)
	} else {
		fmt.Fprintf(w, "checkpoint: none complete yet\n")
	}
	if s.Restarts > 0 {
		fmt.Fprintf(w, "restarts:   %d\n", s.Restarts)
	}
	if s.WaitingFor > 0 && !coordinator.Terminal(s.State) {
		since := ""
		if s.WaitingSinceUnixMs > 0 {
			since = fmt.Sprintf(", for %v", time.Since(time.UnixMilli(s.WaitingSinceUnixMs)).Round(time.Second))
		}
		fmt.Fprintf(w, "waiting:    %d more worker%s of %d%s\n", s.WaitingFor, map[bool]string{true: "", false: "s"}[s.WaitingFor == 1], s.WorldSize, since)
	}
	if len(s.Ranks) > 0 {
		latest := map[int32]*loomv1.StepStats{}
		for _, p := range j.Latest {
			if len(p.Steps) > 0 {
				latest[p.Rank] = p.Steps[len(p.Steps)-1]
			}
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RANK\t(DP,PP,TP)\tADDRESS\tWORKER\tSTEP\tLOSS\tTOK/S\tSTEP TIME")
		for _, r := range s.Ranks {
			step, loss, tps, st := "-", "-", "-", "-"
			if l := latest[r.Rank]; l != nil {
				step, loss, tps = fmt.Sprint(l.Step), fmt.Sprintf("%.4f", l.Loss), fmt.Sprintf("%.0f", l.TokensPerSec)
				st = time.Duration(l.StepSeconds * float64(time.Second)).Round(time.Microsecond).String()
			}
			fmt.Fprintf(tw, "%d\t(%d,%d,%d)\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Rank, r.Dp, r.Pp, r.Tp, r.Addr, r.WorkerId, step, loss, tps, st)
		}
		tw.Flush()
	}
	if len(s.Recoveries) > 0 {
		fmt.Fprintln(w, "\nrecoveries:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  GEN\tREASON\tDP\tLAST STEP\tRESUMED FROM\tSTEPS LOST\tRENDEZVOUS\tSETUP (LOAD)\tDOWN FOR\tWHY")
		for _, r := range s.Recoveries {
			next, dp, rdv, down, setup, resumed := "…", fmt.Sprintf("%d→…", r.DpBefore), "-", "-", "-", "-"
			if r.NextGeneration > 0 {
				next = fmt.Sprint(r.NextGeneration)
				dp = fmt.Sprintf("%d→%d", r.DpBefore, r.DpAfter)
				rdv = msDuration(r.AssignedUnixMs - r.EndedUnixMs)
				resumed = fmt.Sprint(r.ResumeStep)
				if r.ResumeSource != "" {
					resumed = r.ResumeSource + " step " + resumed
				}
			}
			if r.ResumedUnixMs > 0 {
				down = msDuration(r.ResumedUnixMs - r.EndedUnixMs)
				setup = fmt.Sprintf("%.2fs (%.2fs)", r.SetupSeconds, r.LoadSeconds)
			}
			lost := "-"
			if r.NextGeneration > 0 {
				lost = fmt.Sprint(r.LostSteps)
			}
			fmt.Fprintf(tw, "  %d→%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Generation, next, r.Reason, dp, r.LastStep, resumed, lost,
				rdv, setup, down, r.Message)
		}
		tw.Flush()
	}
	if len(s.Failures) > 0 {
		fmt.Fprintln(w, "\nfailures:")
		for _, f := range s.Failures {
			fmt.Fprintf(w, "  %s\n", coordinator.DescribeFailure(f))
		}
	}
}

// msDuration renders milliseconds as a duration.
func msDuration(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).String()
}

func cmdStop(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "stop", "JOB [--coordinator ADDR]\n\nStops a job: its workers' engines are cancelled.")
	var addr string
	coordinatorFlag(fs, &addr)
	secFlags := clientSecurity(fs)
	reason := fs.String("reason", "stopped by `loom stop`", "why, shown in the job's status")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("stop: need exactly one JOB")
	}
	sec, err := secFlags()
	if err != nil {
		return err
	}
	c, err := dialCoordinator(ctx, addr, sec)
	if err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	defer c.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	j, err := c.Stop(rctx, pos[0], *reason)
	if err != nil {
		return err
	}
	if coordinator.Terminal(j.Status.State) {
		fmt.Fprintf(env.stdout, "%s already %s\n", pos[0], launch.StateName(j.Status.State))
		return nil
	}
	fmt.Fprintf(env.stdout, "stopping %s\n", pos[0])
	return nil
}
