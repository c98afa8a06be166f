package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// elasticWorld is an embedded etcd in this process, coordinators (in this
// process, or `loom coordinator` processes that a test can kill -9) and
// `loom worker` processes (this test binary, see TestMain) that a test
// kills and replaces. It records every status and step the job streams.
type elasticWorld struct {
	t    *testing.T
	ttl  time.Duration
	etcd *coordinator.EmbeddedEtcd
	cli  *clientv3.Client
	env  []string

	closeOnce sync.Once

	mu      sync.Mutex
	coords  []*loomProc
	workers []*loomProc
	// inproc are the in-process coordinators' stops.
	inproc []func()
	// steps[gen][step] is the loss rank 0 reported; statuses in order.
	steps    map[uint64]map[int64]float64
	statuses []*loomv1.JobStatus
}

// loomProc is one `loom` process.
type loomProc struct {
	name string
	addr string // a coordinator's gRPC address
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	err  error
}

func (p *loomProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func newElasticWorld(t *testing.T, ttl time.Duration, env ...string) *elasticWorld {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e, err := coordinator.StartEtcd(ctx, coordinator.EtcdOptions{LogOutput: "discard"})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	w := &elasticWorld{t: t, ttl: ttl, etcd: e, cli: cli, env: env, steps: map[uint64]map[int64]float64{}}
	t.Cleanup(w.close)
	return w
}

// close stops every process (SIGTERM, then SIGKILL), the coordinators and
// the etcd, and checks that no process it started is left. It may be
// called again.
func (w *elasticWorld) close() { w.closeOnce.Do(w.closeAll) }

func (w *elasticWorld) closeAll() {
	w.mu.Lock()
	procs := append(append([]*loomProc(nil), w.workers...), w.coords...)
	stops := w.inproc
	w.mu.Unlock()
	for _, p := range procs {
		if !p.exited() {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			w.t.Errorf("%s (pid %d) did not stop on SIGTERM within 15s", p.name, p.cmd.Process.Pid)
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if err := syscall.Kill(p.cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
			w.t.Errorf("%s (pid %d) is still there after it exited: %v", p.name, p.cmd.Process.Pid, err)
		}
	}
	for _, stop := range stops {
		stop()
	}
	w.cli.Close()
	w.etcd.Close()
	if w.t.Failed() {
		w.dump()
	}
}

func (w *elasticWorld) dump() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range append(append([]*loomProc(nil), w.coords...), w.workers...) {
		out := p.out.String()
		if len(out) > 6000 {
			out = "…" + out[len(out)-6000:]
		}
		w.t.Logf("--- %s (pid %d, exit %v):\n%s", p.name, p.cmd.Process.Pid, p.err, out)
	}
}

func (w *elasticWorld) start(name string, args ...string) *loomProc {
	w.t.Helper()
	p := &loomProc{name: name, out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Env = append(os.Environ(), w.env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// The test's processes die with it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

// coordinatorInProcess starts a coordinator in this test process; it
// returns its address.
func (w *elasticWorld) coordinatorInProcess() string {
	w.t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	c, err := coordinator.New(coordinator.Config{Etcd: w.cli, Addr: lis.Addr().String(), LeaseTTL: w.ttl, Resync: 200 * time.Millisecond})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Serve(ctx, lis, nil)
	}()
	w.mu.Lock()
	w.inproc = append(w.inproc, func() { cancel(); <-done })
	w.mu.Unlock()
	return lis.Addr().String()
}

// coordinatorProcess starts `loom coordinator` on the world's etcd.
func (w *elasticWorld) coordinatorProcess() *loomProc {
	w.t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	p := w.start("coordinator "+addr, "coordinator", "--etcd", strings.Join(w.etcd.Endpoints, ","), "--listen", addr, "--ttl", w.ttl.String())
	p.addr = addr
	w.mu.Lock()
	w.coords = append(w.coords, p)
	w.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return p
		}
		if p.exited() || time.Now().After(deadline) {
			w.t.Fatalf("coordinator on %s did not start:\n%s", addr, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// worker starts `loom worker` reporting to coord (one or several
// addresses, comma-separated).
func (w *elasticWorld) worker(coord string) *loomProc {
	w.t.Helper()
	w.mu.Lock()
	n := len(w.workers)
	w.mu.Unlock()
	p := w.start(fmt.Sprintf("worker %d", n), "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--threads", "1",
		"--ttl", w.ttl.String(), "--stop-timeout", "5s")
	w.mu.Lock()
	w.workers = append(w.workers, p)
	w.mu.Unlock()
	return p
}

// registered is how many workers hold a registration.
func (w *elasticWorld) registered() int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := w.cli.Get(ctx, coordinator.NewKeys("").Workers(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0
	}
	return int(resp.Count)
}

func (w *elasticWorld) waitRegistered(n int) {
	w.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for w.registered() < n {
		if time.Now().After(deadline) {
			w.t.Fatalf("%d workers registered after 60s, want %d", w.registered(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// workerAt is the process of the worker whose data-plane address is addr
// (its log names it when it registers).
func (w *elasticWorld) workerAt(addr string) *loomProc {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.workers {
		if registeredAddr(p.out.String()) == addr {
			return p
		}
	}
	return nil
}

// registeredAddr is the data-plane address a worker's log says it
// registered with.
func registeredAddr(log string) string {
	if m := regexp.MustCompile(`msg="worker: registered" id=\S+ addr=(\S+) `).FindStringSubmatch(log); m != nil {
		return m[1]
	}
	return ""
}

// follow submits spec and streams the job into the world's record until
// it ends; it returns the final status. Events arrive through an
// api.Client that fails over between coords.
func (w *elasticWorld) follow(ctx context.Context, coords string, spec []byte, maxRestarts int, onEvent func(*loomv1.JobEvent)) (*loomv1.JobStatus, error) {
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	c, err := api.Dial(dctx, coords)
	cancel()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	_, err = c.SubmitJob(sctx, &loomv1.SubmitRequest{SpecYaml: spec, Source: "elastic.yaml", MaxRestarts: int32(maxRestarts), RunId: "elastic-test"})
	cancel()
	if err != nil {
		return nil, err
	}
	name, _ := api.ParseSpec(spec, "elastic.yaml")
	return c.Watch(ctx, name.Name, func(ev *loomv1.JobEvent) error {
		w.mu.Lock()
		if p := ev.GetProgress(); p != nil && p.Rank == 0 {
			if w.steps[p.Generation] == nil {
				w.steps[p.Generation] = map[int64]float64{}
			}
			for _, s := range p.Steps {
				w.steps[p.Generation][s.Step] = s.Loss
			}
		}
		if s := ev.GetStatus(); s != nil {
			w.statuses = append(w.statuses, s)
		}
		w.mu.Unlock()
		if onEvent != nil {
			onEvent(ev)
		}
		return nil
	})
}

// lastStep is the newest step rank 0 of generation gen reported.
func (w *elasticWorld) lastStep(gen uint64) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var s int64
	for step := range w.steps[gen] {
		s = max(s, step)
	}
	return s
}

// compareLosses compares every step every generation reported with the
// reference losses (want[step]); it returns the largest relative
// difference of the generations that ran at the reference's own dp size
// (sameDP) and of the others.
func (w *elasticWorld) compareLosses(want map[int]float64, dpOf map[uint64]int32, refDP int32) (sameDP, otherDP float64, n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for gen, steps := range w.steps {
		for step, loss := range steps {
			ref, ok := want[int(step)]
			if !ok {
				w.t.Errorf("generation %d reported step %d, which the reference has not", gen, step)
				continue
			}
			rel := math.Abs(loss-ref) / ref
			if dpOf[gen] == refDP {
				sameDP = max(sameDP, rel)
			} else {
				otherDP = max(otherDP, rel)
			}
			n++
		}
	}
	return sameDP, otherDP, n
}

// abortTimes parses the workers' "rank aborted" lines: how long each
// rank's engine took to return once its generation ended.
func (w *elasticWorld) abortTimes() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	re := regexp.MustCompile(`worker: rank aborted.* took=(\S+)`)
	var out []time.Duration
	for _, p := range w.workers {
		for _, m := range re.FindAllStringSubmatch(p.out.String(), -1) {
			if d, err := time.ParseDuration(m[1]); err == nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// elasticSpec writes the test job: the fixture's model and data at
// parallel.dp dp, a global batch of 12 windows (dp 1, 2, 3, 4 and 6
// reachable), checkpoints every `every` steps, and the elastic section.
func elasticSpec(t *testing.T, name string, dp, steps, every int, elastic string) (path string, src []byte) {
	t.Helper()
	spec, _ := fixture(t, "")
	b, err := os.ReadFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(filepath.Dir(spec), "ck")
	s := strings.Replace(string(b), "train: {steps: 6, global_batch: 4, micro_batch: 2,",
		fmt.Sprintf("train: {steps: %d, global_batch: 12, micro_batch: 1, grad_clip: 0.5,", steps), 1)
	s = strings.Replace(s, "checkpoint: {dir: "+dir+"}", fmt.Sprintf("checkpoint: {dir: %s, every: %d, keep: 100}", dir, every), 1)
	s = strings.Replace(s, "name: t\n", fmt.Sprintf("name: %s\nparallel: {dp: %d}\n", name, dp), 1)
	s += "elastic: " + elastic + "\n"
	if err := os.WriteFile(spec, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return spec, []byte(s)
}

// reference writes the spec at path at parallel.dp dp (tp and pp 1),
// fixed size, with
// its checkpoints in a directory of its own, and runs it with `loom run`:
// the uninterrupted run. It returns the losses by step and the spec's path.
func reference(t *testing.T, path string, dp int) (map[int]float64, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := regexp.MustCompile(`(?m)^parallel: \{[^}]*\}\n`).ReplaceAllString(string(b), "")
	s = regexp.MustCompile(`(?m)^elastic: .*\n`).ReplaceAllString(s, "")
	s = regexp.MustCompile(`checkpoint: \{dir: ([^,}]+)`).ReplaceAllString(s, "checkpoint: {dir: ${1}-ref")
	s += fmt.Sprintf("parallel: {dp: %d}\n", dp)
	p := strings.TrimSuffix(path, ".yaml") + fmt.Sprintf("-ref-dp%d.yaml", dp)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := loom(t, "run", p, "--log-format", "json", "--threads", "1", "--sample-tokens", "0")
	if err != nil {
		t.Fatalf("reference run: %v\n%s", err, stderr)
	}
	return stepLossMap(t, out), p
}

// recoveryLine renders a recovery for the test log.
func recoveryLine(r *loomv1.Recovery) string {
	ms := func(a, b int64) string {
		if a == 0 || b == 0 {
			return "-"
		}
		return (time.Duration(b-a) * time.Millisecond).String()
	}
	return fmt.Sprintf("gen %d → %d (%s): dp %d → %d, last step %d, resumed from %d, lost %d; rendezvous %s, setup %.2fs (load %.3fs), ended → first step %s",
		r.Generation, r.NextGeneration, r.Reason, r.DpBefore, r.DpAfter, r.LastStep, r.ResumeStep, r.LostSteps,
		ms(r.EndedUnixMs, r.AssignedUnixMs), r.SetupSeconds, r.LoadSeconds, ms(r.EndedUnixMs, r.ResumedUnixMs))
}

// sortedGens lists the generations the world saw steps of.
func (w *elasticWorld) sortedGens() []uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var gens []uint64
	for g := range w.steps {
		gens = append(gens, g)
	}
	sort.Slice(gens, func(a, b int) bool { return gens[a] < gens[b] })
	return gens
}
