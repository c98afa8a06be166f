// Package launch owns zero-set-up, one-machine runs of multi-worker jobs:
// it starts an embedded etcd, a coordinator and one local worker process
// per rank, all on loopback, submits the job, streams its progress and
// stops everything — on completion, on error and on cancellation.
package launch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/internal/cpuset"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Options configures Local. Zero fields take the defaults named.
type Options struct {
	// SpecYAML is the spec as the user wrote it, sent to the coordinator
	// (default: spec marshalled to YAML).
	SpecYAML []byte
	// Source names the spec in errors (a file name).
	Source string
	// ThreadsPerWorker is each worker's compute threads (default: this
	// machine's cores ÷ world size, at least 1).
	ThreadsPerWorker int
	// EtcdDir holds etcd's data (default: a temporary directory, removed).
	EtcdDir string
	// Executable is the loom binary workers run as `EXE worker ...`
	// (default os.Executable()).
	Executable string
	// WorkerArgs are appended to each worker's command line.
	WorkerArgs []string
	// Env is appended to each worker's environment.
	Env []string
	// LeaseTTL is the workers' and coordinator's lease TTL (default
	// coordinator.DefaultLeaseTTL).
	LeaseTTL time.Duration
	// MaxRestarts is how many generations may end early before the job
	// fails; < 0 takes the spec's elastic.max_restarts. While restarts are
	// left, a worker process that exits before the job has finished (a
	// crash, kill -9) is replaced by a new one, as torchrun does, and the
	// job recovers from its latest checkpoint; with 0 such an exit ends the
	// run.
	MaxRestarts int
	// Resume is where the job starts: "" (fresh), "latest" or a checkpoint
	// step directory (loomv1.JobDesired.resume).
	Resume string
	// RunID is the run's id in its checkpoints ("": the coordinator makes
	// a new one; a resumed run passes its checkpoint's).
	RunID string
	// Progress receives a line per status change and per step (nil: discard).
	// With JSON it receives nothing else, so every line parses.
	Progress io.Writer
	// Info receives Local's own lines: where the coordinator and etcd
	// serve (default os.Stderr).
	Info io.Writer
	// JSON makes every Progress line a JSON object (see Follow).
	JSON bool
	// WorkerOutput receives the workers' output, each line prefixed with
	// its worker number (default os.Stderr).
	WorkerOutput io.Writer
	// StopTimeout is how long workers get to exit after SIGTERM before
	// SIGKILL (default 5 s).
	StopTimeout time.Duration
	// Logger receives the coordinator's log (nil: discard).
	Logger *slog.Logger
	// HTTPAddr is where the coordinator serves its dashboard, JSON API and
	// /metrics ("": nowhere); Local prints the page's URL to Info.
	HTTPAddr string
	// BindCores binds each worker process to ThreadsPerWorker CPUs of its
	// own (`loom worker --cpus`), physical cores first, when all of them fit
	// in the CPUs this process may use; otherwise (or false) workers float.
	// A replacement worker takes the CPUs of the one it replaces.
	BindCores bool
}

// JobError is a local job that did not succeed.
type JobError struct {
	Job    string
	Status *loomv1.JobStatus
}

func (e *JobError) Error() string {
	return fmt.Sprintf("job %s %s: %s", e.Job, StateName(e.Status.State), e.Status.Message)
}

// Local runs spec on this machine with one worker process per rank and
// returns when the job has finished (nil only if it succeeded), failed to
// start, or ctx was cancelled. Every process and port it started is gone
// when it returns.
func Local(ctx context.Context, spec api.JobSpec, opts Options) (err error) {
	if verr := spec.Validate(); verr != nil {
		return verr
	}
	if serr := api.Supported(spec, opts.Source); serr != nil {
		return serr
	}
	world := spec.Parallel.WorldSize()
	specYAML := opts.SpecYAML
	if specYAML == nil {
		if specYAML, err = yaml.Marshal(spec); err != nil {
			return fmt.Errorf("launch: marshal job spec: %w", err)
		}
	}
	if opts.ThreadsPerWorker <= 0 {
		opts.ThreadsPerWorker = max(1, runtime.NumCPU()/world)
	}
	if opts.LeaseTTL == 0 {
		opts.LeaseTTL = coordinator.DefaultLeaseTTL
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = 5 * time.Second
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.WorkerOutput == nil {
		opts.WorkerOutput = os.Stderr
	}
	if opts.Info == nil {
		opts.Info = os.Stderr
	}
	if opts.Executable == "" {
		if opts.Executable, err = os.Executable(); err != nil {
			return fmt.Errorf("launch: find the loom executable to start workers: %w", err)
		}
	}

	// Control plane: embedded etcd and a coordinator, on loopback.
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	etcd, err := coordinator.StartEtcd(sctx, coordinator.EtcdOptions{Dir: opts.EtcdDir, LogOutput: "discard"})
	cancel()
	if err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	defer etcd.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("launch: etcd client: %w", err)
	}
	defer cli.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("launch: coordinator listener: %w", err)
	}
	var httpLis net.Listener
	var reg *prometheus.Registry
	if opts.HTTPAddr != "" {
		if httpLis, err = net.Listen("tcp", opts.HTTPAddr); err != nil {
			lis.Close()
			return fmt.Errorf("launch: --http %s: %w", opts.HTTPAddr, err)
		}
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	coord, err := coordinator.New(coordinator.Config{Etcd: cli, Addr: lis.Addr().String(), LeaseTTL: opts.LeaseTTL,
		Resync: time.Second, Logger: opts.Logger, Registry: reg})
	if err != nil {
		lis.Close()
		if httpLis != nil {
			httpLis.Close()
		}
		return fmt.Errorf("launch: %w", err)
	}
	cctx, stopCoord := context.WithCancel(context.WithoutCancel(ctx))
	coordDone := make(chan error, 1)
	go func() { coordDone <- coord.Serve(cctx, lis, httpLis) }()
	defer func() {
		stopCoord()
		if cerr := <-coordDone; cerr != nil && err == nil {
			err = fmt.Errorf("launch: coordinator: %w", cerr)
		}
	}()

	// Workers: one process per rank.
	args := []string{"worker", "--coordinator", lis.Addr().String(), "--listen", "127.0.0.1:0",
		"--threads", strconv.Itoa(opts.ThreadsPerWorker), "--ttl", opts.LeaseTTL.String()}
	args = append(args, opts.WorkerArgs...)
	cpus := bindPlan(world, opts)
	argsFor := func(slot int) []string {
		if cpus == nil {
			return args
		}
		return append(slices.Clone(args), "--cpus", cpus[slot].String())
	}
	procs := newProcs(opts)
	defer procs.stop(opts.StopTimeout)
	// Local's own lines and the progress are often written where the
	// workers' output goes (a terminal, a test's buffer): every writer
	// takes the workers' output lock.
	opts.Info = &lockedWriter{mu: &procs.out.mu, w: opts.Info}
	opts.Progress = &lockedWriter{mu: &procs.out.mu, w: opts.Progress}
	for slot := range world {
		if err := procs.start(slot, opts.Executable, argsFor(slot)); err != nil {
			return fmt.Errorf("launch: %w", err)
		}
	}

	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	client, err := api.Dial(dctx, lis.Addr().String())
	cancel()
	if err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	defer client.Close()
	subctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = client.SubmitJob(subctx, &loomv1.SubmitRequest{SpecYaml: specYAML, Source: opts.Source,
		MaxRestarts: int32(opts.MaxRestarts), Resume: opts.Resume, RunId: opts.RunID})
	cancel()
	if err != nil {
		return err
	}
	bound := ""
	if cpus != nil {
		names := make([]string, len(cpus))
		for i, c := range cpus {
			names[i] = c.String()
		}
		bound = " (bound to CPUs " + strings.Join(names, " | ") + ")"
	}
	fmt.Fprintf(opts.Info, "%s: %d local workers, %d threads each%s; coordinator %s, etcd %s\n",
		spec.Name, world, opts.ThreadsPerWorker, bound, lis.Addr(), etcd.Endpoints[0])
	if httpLis != nil {
		fmt.Fprintf(opts.Info, "%s: dashboard http://%s/ (metrics on /metrics)\n", spec.Name, httpLis.Addr())
	}

	// Follow the job until it ends, a worker process exits early, or ctx
	// is cancelled.
	fctx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	type outcome struct {
		st  *loomv1.JobStatus
		err error
	}
	followed := make(chan outcome, 1)
	go func() {
		st, err := Follow(fctx, client, spec.Name, spec.Train.Steps, opts.Progress, opts.JSON)
		followed <- outcome{st, err}
	}()
	// A worker that exits early is replaced while restarts are left: the
	// coordinator sees the lost rank, and the next generation takes the
	// replacement (or, for an elastic job, runs without it until it is up).
	replacements := opts.MaxRestarts
	if replacements < 0 {
		replacements = spec.Elastic.MaxRestarts
	}
	exitedForGood := make(chan exit, 1)
	go func() {
		for {
			select {
			case <-fctx.Done():
				return
			case ex := <-procs.exited:
				if fctx.Err() != nil {
					return // the run is ending: exits are expected
				}
				if replacements <= 0 {
					exitedForGood <- ex
					return
				}
				replacements--
				fmt.Fprintf(opts.Info, "%s: worker %d (pid %d) exited before the job finished (%v); starting a replacement (%d more allowed)\n",
					spec.Name, ex.n, ex.pid, ex.err, replacements)
				if err := procs.start(ex.slot, opts.Executable, argsFor(ex.slot)); err != nil {
					exitedForGood <- exit{n: ex.n, slot: ex.slot, pid: ex.pid, err: fmt.Errorf("%v; and its replacement did not start: %w", ex.err, err)}
					return
				}
			}
		}
	}()
	select {
	case o := <-followed:
		if o.err != nil {
			return fmt.Errorf("launch: follow job %s: %w", spec.Name, o.err)
		}
		if o.st.State != loomv1.JobState_JOB_STATE_SUCCEEDED {
			return &JobError{Job: spec.Name, Status: o.st}
		}
		return nil
	case ex := <-exitedForGood:
		stopFollow()
		<-followed
		return fmt.Errorf("launch: worker %d (pid %d) exited before job %s finished: %v; its output is above",
			ex.n, ex.pid, spec.Name, ex.err)
	case <-ctx.Done():
		stopFollow()
		<-followed
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_, _ = client.Stop(sctx, spec.Name, "interrupted")
		cancel()
		return fmt.Errorf("launch: job %s interrupted: %w", spec.Name, ctx.Err())
	}
}

// bindPlan is each worker slot's CPUs under opts.BindCores, or nil (no
// binding: not asked for, unsupported, or the workers do not fit), saying
// which on opts.Info.
func bindPlan(world int, opts Options) []cpuset.Set {
	if !opts.BindCores {
		return nil
	}
	allowed, err := cpuset.Allowed()
	if err != nil {
		fmt.Fprintf(opts.Info, "launch: not binding workers to cores: %v\n", err)
		return nil
	}
	sets, ok := cpuset.Split(cpuset.Topology("/sys", allowed), world, opts.ThreadsPerWorker)
	if !ok {
		fmt.Fprintf(opts.Info, "launch: not binding workers to cores: %d workers × %d threads need more than the %d CPUs (%s) this process may use\n",
			world, opts.ThreadsPerWorker, len(allowed), allowed)
		return nil
	}
	return sets
}

// procs are the local worker processes.
type procs struct {
	opts   Options
	out    *syncWriter
	exited chan exit // first early exits; buffered

	mu    sync.Mutex
	cmds  []*exec.Cmd
	waits []chan struct{}
	// stopping is set by stop: no process starts after it (a replacement
	// racing the end of the run would outlive it).
	stopping bool

	// Pdeathsig fires when the *thread* that forked the child exits, so
	// every child is forked from one goroutine locked to its thread, which
	// stays alive (and locked) until stop.
	spawn chan func()
	quit  chan struct{}
}

type exit struct {
	n    int // the worker's number in the output ([worker n])
	slot int // the rank slot it was started for (its CPUs with BindCores)
	pid  int
	err  error
}

func newProcs(opts Options) *procs {
	p := &procs{opts: opts, out: &syncWriter{w: opts.WorkerOutput}, exited: make(chan exit, 64),
		spawn: make(chan func()), quit: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread exits with the goroutine, after the
		// children are gone.
		for {
			select {
			case f := <-p.spawn:
				f()
			case <-p.quit:
				return
			}
		}
	}()
	return p
}

// workerEnv is a local worker's environment: base, then extra, then
// GOMAXPROCS=threads unless either sets GOMAXPROCS. Workers on one host
// share its cores, threads each; a Go runtime free to run on every core
// puts a worker's communication, runtime and bookkeeping goroutines on
// the cores its neighbours compute on, as torchrun sets OMP_NUM_THREADS
// per process for the same reason. examples/default.yaml at dp 2 (2
// workers × 1 thread, 2-vCPU Sapphire-Rapids-class VM, 60 steps, 6
// alternating rounds, median step after 10): 104.7–106.6 ms with
// GOMAXPROCS=1 (one round 211, a noisy-host episode) against 109.4–135.7
// with the runtime's default of every core (one round 216).
func workerEnv(base, extra []string, threads int) []string {
	env := append(slices.Clip(base), extra...)
	for _, kv := range env {
		if strings.HasPrefix(kv, "GOMAXPROCS=") {
			return env
		}
	}
	return append(env, "GOMAXPROCS="+strconv.Itoa(max(1, threads)))
}

// start starts the worker of rank slot slot with the command line args.
func (p *procs) start(slot int, exe string, args []string) error {
	p.mu.Lock()
	i, stopping := len(p.cmds), p.stopping
	p.mu.Unlock()
	if stopping {
		return errors.New("the launch is stopping")
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = workerEnv(os.Environ(), p.opts.Env, p.opts.ThreadsPerWorker)
	cmd.Stdout = &prefixWriter{out: p.out, prefix: fmt.Sprintf("[worker %d] ", i)}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = workerProcAttr()
	errc := make(chan error, 1)
	done := make(chan struct{})
	p.spawn <- func() {
		// Started and recorded under the lock, so that stop either sees
		// the process or prevents it.
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.stopping {
			errc <- errors.New("the launch is stopping")
			return
		}
		if err := cmd.Start(); err != nil {
			errc <- err
			return
		}
		p.cmds = append(p.cmds, cmd)
		p.waits = append(p.waits, done)
		errc <- nil
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("start worker %d (%s): %w", i, exe, err)
	}
	go func() {
		err := cmd.Wait()
		close(done)
		select {
		case p.exited <- exit{n: i, slot: slot, pid: cmd.Process.Pid, err: exitErr(err)}:
		default:
		}
	}()
	return nil
}

func exitErr(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// stop sends SIGTERM to every worker's process group, waits up to timeout,
// then SIGKILLs what is left, and waits for all.
func (p *procs) stop(timeout time.Duration) {
	p.mu.Lock()
	p.stopping = true
	cmds, waits := p.cmds, p.waits
	p.mu.Unlock()
	for _, c := range cmds {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.After(timeout)
	for i, w := range waits {
		select {
		case <-w:
		case <-deadline:
			for j := i; j < len(cmds); j++ {
				_ = syscall.Kill(-cmds[j].Process.Pid, syscall.SIGKILL)
			}
			for _, w := range waits[i:] {
				<-w
			}
			close(p.quit)
			return
		}
	}
	close(p.quit)
}

// syncWriter serialises writes of whole lines from several processes.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// lockedWriter serialises its writes with the workers' output under mu.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// prefixWriter prefixes every line.
type prefixWriter struct {
	out    *syncWriter
	prefix string
	buf    []byte
}

func (w *prefixWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.out.mu.Lock()
		_, err := fmt.Fprintf(w.out.w, "%s%s\n", w.prefix, w.buf[:i])
		w.out.mu.Unlock()
		w.buf = w.buf[i+1:]
		if err != nil {
			return len(b), err
		}
	}
	return len(b), nil
}
