package coordinator

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

func metricsEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e, err := StartEtcd(ctx, EtcdOptions{LogOutput: "discard"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// gathered returns the value of each series of metric name in reg, by
// its label values joined with ",".
func gathered(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetValue())
			}
			out[strings.Join(ls, ",")] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

// putAssignment writes generation gen of job (one rank) as the job's
// assignment, as the leader does when it starts a generation.
func putAssignment(t *testing.T, c *Coordinator, job string, gen uint64) {
	t.Helper()
	a := &loomv1.Assignment{Job: job, Generation: gen, WorldSize: 1}
	if _, err := c.cfg.Etcd.Put(context.Background(), c.Keys().Assignment(job), Encode(a)); err != nil {
		t.Fatal(err)
	}
}

// report sends n steps of rank 0 of generation gen of job through the
// coordinator, as a worker does.
func reportSteps(t *testing.T, c *Coordinator, job string, gen uint64, n int) error {
	t.Helper()
	p := &loomv1.RankProgress{Job: job, Generation: gen, Rank: 0}
	for s := 1; s <= n; s++ {
		p.Steps = append(p.Steps, &loomv1.StepStats{Step: int64(s), Loss: 1, StepSeconds: 0.01})
	}
	_, err := c.ReportSteps(context.Background(), &loomv1.ReportStepsRequest{Progress: p})
	return err
}

// A job resubmitted under the same name, and a restarted generation,
// count their steps from zero: loom_steps_total of a 2-step job is 2,
// whatever ran under that name before; a late report of an ended
// generation adds nothing.
func TestStepCountersPerGeneration(t *testing.T) {
	cli := metricsEtcd(t)
	reg := prometheus.NewRegistry()
	c, err := New(Config{Etcd: cli, Addr: "c:1", Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	assign := func(gen uint64) {
		t.Helper()
		if _, err := cli.Delete(context.Background(), c.Keys().Assignment("m")); err != nil {
			t.Fatal(err)
		}
		putAssignment(t, c, "m", gen)
	}
	steps := func() float64 { return gathered(t, reg, "loom_steps_total")["m,0"] }
	assign(1)
	if err := reportSteps(t, c, "m", 1, 3); err != nil {
		t.Fatal(err)
	}
	if got := steps(); got != 3 {
		t.Fatalf("first submission: loom_steps_total %v, want 3", got)
	}
	assign(1) // the job finished and was submitted again: generation 1 anew
	if err := reportSteps(t, c, "m", 1, 2); err != nil {
		t.Fatal(err)
	}
	if got := steps(); got != 2 {
		t.Errorf("resubmitted 2-step job: loom_steps_total %v, want 2 (not added to the old job's 3)", got)
	}
	assign(2) // a restart
	if err := reportSteps(t, c, "m", 2, 1); err != nil {
		t.Fatal(err)
	}
	if got := steps(); got != 1 {
		t.Errorf("generation 2: loom_steps_total %v, want 1", got)
	}
}

// The step series of a job that finished go away a grace period later,
// on every coordinator.
func TestFinishedJobSeriesGoAway(t *testing.T) {
	cli := metricsEtcd(t)
	reg := prometheus.NewRegistry()
	c, err := New(Config{Etcd: cli, Addr: "c:1", Registry: reg, SeriesGrace: 300 * time.Millisecond, Resync: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	keys := c.Keys()
	if _, err := cli.Put(ctx, keys.Desired("f"), Encode(&loomv1.JobDesired{Name: "f", WorldSize: 1, SpecYaml: []byte("name: f\ndata: {path: x.bin}\n")})); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, keys.Assignment("f"), Encode(&loomv1.Assignment{Job: "f", Generation: 1, WorldSize: 1})); err != nil {
		t.Fatal(err)
	}
	if err := reportSteps(t, c, "f", 1, 2); err != nil {
		t.Fatal(err)
	}
	count := func() int { return len(gathered(t, reg, "loom_steps_total")) + len(gathered(t, reg, "loom_loss")) }
	if n := count(); n != 2 {
		t.Fatalf("%d series before the job ends, want 2", n)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Serve(sctx, lis, nil) }()
	defer func() { stop(); <-done }()
	// The job finishes (its only rank succeeds); its series stay a while,
	// then go.
	if _, err := cli.Put(ctx, keys.Result("f", 1, 0), Encode(&loomv1.RankResult{Job: "f", Generation: 1, Ok: true})); err != nil {
		t.Fatal(err)
	}
	for count() != 0 {
		if ctx.Err() != nil {
			t.Fatalf("%d series of the finished job still there", count())
		}
		time.Sleep(50 * time.Millisecond)
	}
	job, _, _, err := c.readJob(ctx, "f")
	if err != nil || job.Status.State != loomv1.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v (%v)", job.GetStatus(), err)
	}
	if left := gathered(t, reg, "loom_job_state"); len(left) != 0 {
		t.Errorf("loom_job_state of the finished job: series left: %v", left)
	}
}

// A step report is kept only while its generation is the one assigned,
// also when the coordinator remembers an older assignment of the job: a
// changed assignment (a new generation, or the job's assignment gone)
// refuses the report and leaves the progress in etcd as it was.
func TestReportStepsFollowsAssignment(t *testing.T) {
	cli := metricsEtcd(t)
	c, err := New(Config{Etcd: cli, Addr: "c:1", Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	keys := c.Keys()
	assign := func(gen uint64) { t.Helper(); putAssignment(t, c, "r", gen) }
	progress := func() (gen uint64, steps int) {
		t.Helper()
		resp, err := cli.Get(ctx, keys.Progress("r", 0))
		if err != nil || len(resp.Kvs) == 0 {
			t.Fatalf("progress of r rank 0: %v (%d keys)", err, len(resp.Kvs))
		}
		p := &loomv1.RankProgress{}
		if err := Decode("progress", resp.Kvs[0].Value, p); err != nil {
			t.Fatal(err)
		}
		return p.Generation, len(p.Steps)
	}
	refused := func(gen uint64, n int, want string) {
		t.Helper()
		err := reportSteps(t, c, "r", gen, n)
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), want) {
			t.Fatalf("report of generation %d: %v; want FailedPrecondition saying %q", gen, err, want)
		}
	}
	if err := reportSteps(t, c, "r", 1, 1); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("report before any assignment: %v; want FailedPrecondition", err)
	}
	assign(1)
	for n := 1; n <= 3; n++ { // the first reads the assignment, the others rely on it
		if err := reportSteps(t, c, "r", 1, n); err != nil {
			t.Fatalf("report %d of generation 1: %v", n, err)
		}
	}
	if g, n := progress(); g != 1 || n != 3 {
		t.Fatalf("progress: generation %d with %d steps; want 1 with 3", g, n)
	}
	refused(2, 1, "current 1")
	assign(2) // a restart: same key, new mod revision
	refused(1, 5, "current 2")
	if g, n := progress(); g != 1 || n != 3 {
		t.Fatalf("after a stale report: generation %d with %d steps; want 1 with 3 (untouched)", g, n)
	}
	if err := reportSteps(t, c, "r", 2, 2); err != nil {
		t.Fatalf("report of generation 2: %v", err)
	}
	if _, err := cli.Delete(ctx, keys.Assignment("r")); err != nil {
		t.Fatal(err)
	}
	refused(2, 4, "no longer assigned")
	if g, n := progress(); g != 2 || n != 2 {
		t.Fatalf("after the assignment went: generation %d with %d steps; want 2 with 2 (untouched)", g, n)
	}
}
