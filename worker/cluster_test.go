package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/launch"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
	"github.com/loomtrain/loom/worker"
)

// testTTL is the lease TTL of every test: short, so lost workers show fast.
const testTTL = time.Second

// stepEngine is the deterministic test engine: Spec.Train.Steps steps of
// delay each, loss 10/step, honouring ctx.
func stepEngine(delay time.Duration) worker.Engine {
	return worker.EngineFunc(func(ctx context.Context, a worker.Assignment, report func(worker.StepStats)) error {
		if len(a.Peers) != a.WorldSize || a.Peers[a.Rank] == "" {
			return fmt.Errorf("rank %d: peers %v do not match world size %d", a.Rank, a.Peers, a.WorldSize)
		}
		for s := 1; s <= a.Spec.Train.Steps; s++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(delay):
			}
			report(worker.StepStats{Step: s, Loss: 10 / float64(s), LR: a.Spec.Train.LR, GradNorm: 1,
				TokensPerSec: 1000, StepTime: delay, ComputeTime: delay * 3 / 4, CommTime: delay / 4,
				Comm: []worker.CommStat{{Op: "all-reduce", Bytes: 4096, Time: delay / 4}}})
		}
		return nil
	})
}

func specYAML(name string, dp, steps int) []byte {
	return fmt.Appendf(nil, `name: %s
data: {path: tokens.bin}
parallel: {dp: %d}
train: {steps: %d, global_batch: %d, micro_batch: 1}
`, name, dp, steps, dp)
}

// cluster is an embedded etcd with coordinators and workers, all in this
// process, on loopback.
type cluster struct {
	t         *testing.T
	endpoints []string
	cli       *clientv3.Client
	wg        sync.WaitGroup
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e, err := coordinator.StartEtcd(ctx, coordinator.EtcdOptions{LogOutput: "discard"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return clusterOn(t, e.Endpoints)
}

// clusterOn is a cluster on a running etcd.
func clusterOn(t *testing.T, endpoints []string) *cluster {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	cl := &cluster{t: t, endpoints: endpoints, cli: cli}
	t.Cleanup(func() {
		cl.wg.Wait()
		cli.Close()
	})
	return cl
}

func testLogger(t *testing.T, who string) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("who", who)
}

type coordRun struct {
	c      *coordinator.Coordinator
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *coordRun) stop() { r.cancel(); <-r.done }

func (cl *cluster) startCoordinator(version string) *coordRun {
	t := cl.t
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := coordinator.New(coordinator.Config{Etcd: cl.cli, Addr: lis.Addr().String(), LeaseTTL: testTTL,
		Resync: 200 * time.Millisecond, Version: version, Logger: testLogger(t, "coord "+lis.Addr().String())})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &coordRun{c: c, addr: lis.Addr().String(), cancel: cancel, done: make(chan struct{})}
	cl.wg.Go(func() {
		defer close(r.done)
		if err := c.Serve(ctx, lis, nil); err != nil {
			t.Errorf("coordinator %s: %v", r.addr, err)
		}
	})
	t.Cleanup(r.stop)
	return r
}

type workerRun struct {
	w      *worker.Worker
	cancel context.CancelFunc
	done   chan error
}

func (cl *cluster) startWorker(cfg worker.Config) *workerRun {
	t := cl.t
	t.Helper()
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = testTTL
	}
	if cfg.ReportInterval == 0 {
		cfg.ReportInterval = 50 * time.Millisecond
	}
	cfg.DialTimeout = 5 * time.Second
	cfg.Threads = 1
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t, "worker")
	}
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &workerRun{w: w, cancel: cancel, done: make(chan error, 1)}
	cl.wg.Go(func() { r.done <- w.Run(ctx) })
	t.Cleanup(cancel)
	return r
}

func dial(t *testing.T, addr string) *api.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := api.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls get until cond holds, failing with the last status.
func waitFor(t *testing.T, c *api.Client, job string, timeout time.Duration, what string, cond func(*loomv1.JobStatus) bool) *loomv1.Job {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last *loomv1.Job
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		j, err := c.Get(ctx, job)
		cancel()
		if err == nil {
			last = j
			if cond(j.Status) {
				return j
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("job %s: not %s within %v; last status: %v", job, what, timeout, last.GetStatus())
	return nil
}

func inState(states ...loomv1.JobState) func(*loomv1.JobStatus) bool {
	return func(s *loomv1.JobStatus) bool {
		for _, st := range states {
			if s.State == st {
				return true
			}
		}
		return false
	}
}

func submit(t *testing.T, c *api.Client, spec []byte, maxRestarts int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Submit(ctx, spec, "test.yaml", maxRestarts); err != nil {
		t.Fatal(err)
	}
}

// TestJobRunsToCompletion: submit → workers register → assignment → the
// test engine runs on every rank → the job succeeds, and Watch streams
// every rank's steps before the final status.
func TestJobRunsToCompletion(t *testing.T) {
	cl := newCluster(t)
	co := cl.startCoordinator("")
	for range 2 {
		cl.startWorker(worker.Config{Coordinator: co.addr, Engine: stepEngine(5 * time.Millisecond)})
	}
	c := dial(t, co.addr)
	submit(t, c, specYAML("j1", 2, 20), 0)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	steps := map[int32]int64{}
	var states []string
	final, err := c.Watch(ctx, "j1", func(ev *loomv1.JobEvent) error {
		if p := ev.GetProgress(); p != nil {
			for _, s := range p.Steps {
				if s.Step != steps[p.Rank]+1 {
					return fmt.Errorf("rank %d: step %d after %d", p.Rank, s.Step, steps[p.Rank])
				}
				steps[p.Rank] = s.Step
			}
		}
		if s := ev.GetStatus(); s != nil {
			states = append(states, s.State.String())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if final.State != loomv1.JobState_JOB_STATE_SUCCEEDED || final.Generation != 1 {
		t.Fatalf("final status %v; states seen %v", final, states)
	}
	if steps[0] != 20 || steps[1] != 20 {
		t.Errorf("last steps streamed per rank: %v, want 20 each", steps)
	}
	j, err := c.Get(ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Status.Ranks) != 2 || j.Status.Ranks[0].Addr == "" || len(j.Latest) != 2 || j.Latest[1].Steps[0].Step != 20 {
		t.Errorf("Get: ranks %v latest %v", j.Status.Ranks, j.Latest)
	}
	// Resubmitting a finished job's name starts it afresh.
	submit(t, c, specYAML("j1", 2, 3), 0)
	waitFor(t, c, "j1", 10*time.Second, "succeeded again", inState(loomv1.JobState_JOB_STATE_SUCCEEDED))
}

// TestFastStepsAllReported: a rank that takes more steps in a report
// interval than the reporter buffers (a tiny model: a step well under a
// millisecond) still has every step streamed, in order: the reporter sends
// a batch once enough steps wait instead of dropping the oldest.
func TestFastStepsAllReported(t *testing.T) {
	cl := newCluster(t)
	co := cl.startCoordinator("")
	cl.startWorker(worker.Config{Coordinator: co.addr, Engine: stepEngine(100 * time.Microsecond), ReportInterval: time.Minute})
	c := dial(t, co.addr)
	const steps = 2000 // > the reporter's buffer of 1024
	submit(t, c, specYAML("fast", 1, steps), 0)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	last := int64(0)
	final, err := c.Watch(ctx, "fast", func(ev *loomv1.JobEvent) error {
		if p := ev.GetProgress(); p != nil {
			for _, s := range p.Steps {
				if s.Step != last+1 {
					return fmt.Errorf("step %d streamed after step %d: steps lost", s.Step, last)
				}
				last = s.Step
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if final.State != loomv1.JobState_JOB_STATE_SUCCEEDED || last != steps {
		t.Fatalf("final status %v, last step streamed %d; want SUCCEEDED and %d", final.State, last, steps)
	}
}

// TestInvalidSpecRefused: the field errors come back to the client.
func TestInvalidSpecRefused(t *testing.T) {
	cl := newCluster(t)
	co := cl.startCoordinator("")
	c := dial(t, co.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Submit(ctx, []byte("name: bad\nparallel: {dp: 0}\ntrain: {steps: -1}\n"), "bad.yaml", 0)
	if !errors.Is(err, api.ErrInvalidSpec) {
		t.Fatalf("err = %v, want ErrInvalidSpec", err)
	}
	for _, want := range []string{"bad.yaml", "parallel.dp", "train.steps", "data.path"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %q:\n%v", want, err)
		}
	}
	_, err = c.Get(ctx, "bad")
	if !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Get of a refused job: %v, want ErrNotFound", err)
	}
}

// TestUnsupportedLayoutRefused: the coordinator refuses a layout this
// build cannot run (api.Supported, the check `loom run` makes) instead of
// recording a job that waits for workers it could never use.
func TestUnsupportedLayoutRefused(t *testing.T) {
	cl := newCluster(t)
	co := cl.startCoordinator("")
	c := dial(t, co.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Submit(ctx, []byte("name: tp\ndata: {path: t.bin}\nmodel: {n_kv_heads: 2, n_heads: 4}\nparallel: {tp: 2, pp: 8}\n"), "tp.yaml", 0)
	if !errors.Is(err, api.ErrInvalidSpec) {
		t.Fatalf("submit tp: 2, pp: 8 over 4 layers: %v, want ErrInvalidSpec", err)
	}
	for _, want := range []string{"tp.yaml", "parallel.pp", "must not exceed model.n_layers (4)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	if _, err := c.Get(ctx, "tp"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Get of the refused job: %v, want ErrNotFound", err)
	}
}

// TestWaitingForWorkers: a world size the registered workers cannot fill
// is a clear status, not a hang; a second job of the same name is refused.
func TestWaitingForWorkers(t *testing.T) {
	cl := newCluster(t)
	co := cl.startCoordinator("")
	cl.startWorker(worker.Config{Coordinator: co.addr, Engine: stepEngine(time.Millisecond)})
	c := dial(t, co.addr)
	submit(t, c, specYAML("big", 4, 5), 0)
	j := waitFor(t, c, "big", 10*time.Second, "waiting for 3 workers", func(s *loomv1.JobStatus) bool {
		return s.State == loomv1.JobState_JOB_STATE_PENDING && s.WaitingFor == 3
	})
	if want := "waiting for 3 more workers (1 of 4 idle workers registered)"; !strings.Contains(j.Status.Message, want) {
		t.Errorf("message %q lacks %q", j.Status.Message, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Submit(ctx, specYAML("big", 1, 5), "again.yaml", 0); err == nil || !strings.Contains(err.Error(), "already PENDING") {
		t.Errorf("second submit: %v, want already PENDING", err)
	}
	if _, err := c.Stop(ctx, "big", "test over"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, c, "big", 5*time.Second, "stopped", inState(loomv1.JobState_JOB_STATE_STOPPED))
}

// TestCoordinatorRestartAndStandby: a coordinator restart mid-job and a
// standby taking over leave the generation running to completion.
func TestCoordinatorRestartAndStandby(t *testing.T) {
	cl := newCluster(t)
	first := cl.startCoordinator("")
	for range 2 {
		cl.startWorker(worker.Config{Coordinator: first.addr, Engine: stepEngine(30 * time.Millisecond)})
	}
	c := dial(t, first.addr)
	submit(t, c, specYAML("long", 2, 80), 0) // ~2.4 s
	waitFor(t, c, "long", 10*time.Second, "running", inState(loomv1.JobState_JOB_STATE_RUNNING))

	// Restart: the only coordinator goes away and comes back elsewhere.
	first.stop()
	second := cl.startCoordinator("")
	c2 := dial(t, second.addr)
	time.Sleep(300 * time.Millisecond)
	// Standby: a third coordinator waits while the second leads; the
	// second goes away mid-job and the standby takes over.
	standby := cl.startCoordinator("")
	time.Sleep(300 * time.Millisecond)
	if !second.c.IsLeader() || standby.c.IsLeader() {
		t.Fatalf("leader: second %v, standby %v", second.c.IsLeader(), standby.c.IsLeader())
	}
	j := waitFor(t, c2, "long", 5*time.Second, "running with progress", func(s *loomv1.JobStatus) bool {
		return s.State == loomv1.JobState_JOB_STATE_RUNNING
	})
	if j.Status.Generation != 1 {
		t.Fatalf("generation %d after restart, want 1", j.Status.Generation)
	}
	second.stop()
	c3 := dial(t, standby.addr)
	j = waitFor(t, c3, "long", 15*time.Second, "succeeded", inState(loomv1.JobState_JOB_STATE_SUCCEEDED,
		loomv1.JobState_JOB_STATE_FAILED, loomv1.JobState_JOB_STATE_WAITING))
	if j.Status.State != loomv1.JobState_JOB_STATE_SUCCEEDED || j.Status.Generation != 1 {
		t.Fatalf("after takeover: %v", j.Status)
	}
	if !standby.c.IsLeader() {
		t.Errorf("standby did not take over")
	}
	if len(j.Latest) != 2 || j.Latest[0].Steps[0].Step != 80 {
		t.Errorf("latest steps after takeover: %v (reports should reach the new leader)", j.Latest)
	}
}

// TestFollowSurvivesTakeover: `loom submit`'s follow stream and its other
// calls go on through a standby taking over. The client was given only the
// first coordinator; it learns the standby from it (coordinators know each
// other through etcd), and a client given both finds the live one.
func TestFollowSurvivesTakeover(t *testing.T) {
	cl := newCluster(t)
	first := cl.startCoordinator("")
	time.Sleep(100 * time.Millisecond) // first leads
	standby := cl.startCoordinator("")
	for range 2 {
		cl.startWorker(worker.Config{Coordinator: first.addr, Engine: stepEngine(25 * time.Millisecond)})
	}
	c := dial(t, first.addr)
	submit(t, c, specYAML("follow", 2, 100), 0) // ~2.5 s
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out syncBuf
	followed := make(chan error, 1)
	var final *loomv1.JobStatus
	go func() {
		st, err := launch.Follow(ctx, c, "follow", 100, &out, false)
		final = st
		followed <- err
	}()
	for !strings.Contains(out.String(), "step 1/100") {
		if ctx.Err() != nil {
			t.Fatalf("no progress before the takeover:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	first.stop()
	if err := <-followed; err != nil {
		t.Fatalf("follow broke at the takeover: %v\noutput:\n%s", err, out.String())
	}
	if final.State != loomv1.JobState_JOB_STATE_SUCCEEDED || !strings.Contains(out.String(), "step 100/100") {
		t.Fatalf("final %v; output:\n%s", final, out.String())
	}
	if !standby.c.IsLeader() {
		t.Errorf("the standby did not take over")
	}
	// Later calls of the same client go to the standby too ...
	if j, err := c.Get(ctx, "follow"); err != nil || j.Status.State != loomv1.JobState_JOB_STATE_SUCCEEDED {
		t.Errorf("get after the takeover: %v, %v", j.GetStatus(), err)
	}
	// ... and `loom status --coordinator FIRST,STANDBY` finds the live one.
	c2, err := api.Dial(ctx, first.addr+","+standby.addr)
	if err != nil {
		t.Fatalf("dial both with the first down: %v", err)
	}
	defer c2.Close()
	if jobs, err := c2.List(ctx); err != nil || len(jobs) != 1 {
		t.Errorf("list: %v, %v", jobs, err)
	}
}

// syncBuf is a strings.Builder safe for a writer and a reader.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestWrongCoordinatorAddress: a clear error within the dial timeout.
func TestWrongCoordinatorAddress(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	w, err := worker.New(worker.Config{Coordinator: addr, DialTimeout: time.Second, Engine: stepEngine(0)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err = w.Run(ctx)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %v, want about the 1 s dial timeout", took)
	}
	if err == nil || !strings.Contains(err.Error(), "cannot reach the coordinator at "+addr) ||
		!strings.Contains(err.Error(), "--coordinator") {
		t.Fatalf("err = %v", err)
	}
}

// TestVersionMismatch: a worker of another version is refused at connect
// time, ignored (and named) by the rendezvous, and refuses an assignment
// written by a coordinator of another version.
func TestVersionMismatch(t *testing.T) {
	cl := newCluster(t)
	co := cl.startCoordinator("1.0.0")

	// Through --coordinator: refused before registering.
	w, err := worker.New(worker.Config{Coordinator: co.addr, Version: "2.0.0", Engine: stepEngine(0)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = w.Run(ctx)
	var ve *worker.VersionError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "Loom 2.0.0") || !strings.Contains(err.Error(), "Loom 1.0.0") {
		t.Fatalf("err = %v, want a VersionError naming 2.0.0 and 1.0.0", err)
	}

	// Through --etcd: registered, but the job says why it is not used.
	other := cl.startWorker(worker.Config{Etcd: cl.endpoints, Version: "2.0.0", Engine: stepEngine(0)})
	c := dial(t, co.addr)
	submit(t, c, specYAML("v", 1, 1), 0)
	j := waitFor(t, c, "v", 10*time.Second, "naming the other version", func(s *loomv1.JobStatus) bool {
		return strings.Contains(s.Message, "another Loom version")
	})
	if !strings.Contains(j.Status.Message, "runs Loom 2.0.0") || !strings.Contains(j.Status.Message, "coordinator runs 1.0.0") {
		t.Errorf("message %q does not name both versions", j.Status.Message)
	}
	if _, err := c.Stop(ctx, "v", ""); err != nil {
		t.Fatal(err)
	}
	co.stop()

	// An assignment from a coordinator of another version is refused.
	a := &loomv1.Assignment{Job: "forged", Generation: 1, CoordinatorVersion: "1.0.0", SpecYaml: specYAML("forged", 1, 1),
		WorldSize: 1, Ranks: []*loomv1.RankInfo{{Rank: 0, WorkerId: other.w.ID(), Addr: other.w.Addr()}}}
	keys := coordinator.NewKeys("")
	if _, err := cl.cli.Put(ctx, keys.Assignment("forged"), coordinator.Encode(a)); err != nil {
		t.Fatal(err)
	}
	var res *loomv1.RankResult
	for res == nil && ctx.Err() == nil {
		resp, err := cl.cli.Get(ctx, keys.Result("forged", 1, 0))
		if err == nil && len(resp.Kvs) == 1 {
			res = &loomv1.RankResult{}
			if err := coordinator.Decode("result", resp.Kvs[0].Value, res); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if res == nil || res.Ok || !strings.Contains(res.Error, "Loom 2.0.0") || !strings.Contains(res.Error, "Loom 1.0.0") {
		t.Fatalf("result %v, want a refusal naming both versions", res)
	}
}

// TestWorkerKilledMidRun: a worker process is killed (no goodbye: its
// lease expires); within the TTL the job fails naming the lost rank and
// address, and the surviving rank's engine is cancelled, not left hanging.
func TestWorkerKilledMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker process")
	}
	cl := newCluster(t)
	co := cl.startCoordinator("")
	cancelled := make(chan struct{})
	var once sync.Once
	survivor := worker.EngineFunc(func(ctx context.Context, a worker.Assignment, report func(worker.StepStats)) error {
		err := stepEngine(10*time.Millisecond).Run(ctx, a, report)
		if ctx.Err() != nil {
			once.Do(func() { close(cancelled) })
		}
		return err
	})
	local := cl.startWorker(worker.Config{Coordinator: co.addr, Engine: survivor})
	proc := startWorkerProcess(t, co.addr)
	c := dial(t, co.addr)
	submit(t, c, specYAML("doomed", 2, 100000), 0)
	j := waitFor(t, c, "doomed", 15*time.Second, "running", inState(loomv1.JobState_JOB_STATE_RUNNING))
	var lost *loomv1.RankInfo
	for _, r := range j.Status.Ranks {
		if r.WorkerId != local.w.ID() {
			lost = r
		}
	}
	time.Sleep(200 * time.Millisecond)
	killedAt := time.Now()
	if err := proc.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = proc.Wait()
	j = waitFor(t, c, "doomed", 3*testTTL+5*time.Second, "failed", inState(loomv1.JobState_JOB_STATE_FAILED))
	t.Logf("failed %v after the kill: %s", time.Since(killedAt).Round(time.Millisecond), j.Status.Message)
	want := fmt.Sprintf("lost rank %d (%s, worker %s)", lost.Rank, lost.Addr, lost.WorkerId)
	if !strings.Contains(j.Status.Message, want) {
		t.Errorf("message %q lacks %q", j.Status.Message, want)
	}
	if f := j.Status.Failures; len(f) != 1 || !f[0].Lost || f[0].Addr != lost.Addr {
		t.Errorf("failures %v", f)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the surviving rank's engine was not cancelled")
	}
}

// startWorkerProcess runs a worker in a child process (this test binary,
// see TestMain) so that it can be killed without saying goodbye; env adds
// LOOM_TEST_WORKER_* settings.
func startWorkerProcess(t *testing.T, coord string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "LOOM_TEST_WORKER="+coord), env...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func TestMain(m *testing.M) {
	if coord := os.Getenv("LOOM_TEST_WORKER"); coord != "" {
		engine := stepEngine(10 * time.Millisecond)
		if os.Getenv("LOOM_TEST_WORKER_ENGINE") == "peer" {
			engine = peerEngine(10 * time.Millisecond)
		}
		w, err := worker.New(worker.Config{Coordinator: coord, LeaseTTL: testTTL, ReportInterval: 50 * time.Millisecond,
			Threads: 1, Engine: engine, Host: os.Getenv("LOOM_TEST_WORKER_HOST")})
		if err == nil {
			err = w.Run(context.Background())
		}
		fmt.Fprintln(os.Stderr, "test worker:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
