package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

const historySpec = "name: h\nmodel: {dim: 32, n_layers: 1, n_heads: 4, n_kv_heads: 2, ffn_hidden: 64, seq_len: 16}\n" +
	"data: {path: /nonexistent}\nparallel: {dp: 2}\ntrain: {steps: 100000, global_batch: 4, micro_batch: 2}\n"

func testDesired() *loomv1.JobDesired {
	return &loomv1.JobDesired{Name: "h", SpecYaml: []byte(historySpec), WorldSize: 2, SubmittedUnixMs: 1700000000000}
}

// stepOf is a synthetic step of rank r: rank 1 computes slow× as long.
func stepOf(step int64, r int, slow float64) *loomv1.StepStats {
	compute := 0.010
	if r == 1 {
		compute *= slow
	}
	wait := 0.010*slow - compute // the fast rank waits for the slow one
	return &loomv1.StepStats{Step: step, Loss: 5 - float64(step)*1e-5, Lr: 1e-3, StepSeconds: 0.010*slow + 0.002,
		ComputeSeconds: compute, CommSeconds: 0.002 + wait, Tokens: 64, EndUnixMs: 1700000000000 + step*12}
}

func feed(j *jobHistory, gen uint64, from, to int64, slow float64) {
	for s := from; s <= to; s++ {
		for r := 0; r < 2; r++ {
			j.addProgress(&loomv1.RankProgress{Job: "h", Generation: gen, Rank: int32(r), PeakFlops: 1e9,
				Steps: []*loomv1.StepStats{stepOf(s, r, slow)}}, time.Unix(0, 0))
		}
	}
}

func TestHistoryStepsAndStraggler(t *testing.T) {
	j := newJobHistory(testDesired())
	j.setStatus(&loomv1.JobStatus{Name: "h", State: loomv1.JobState_JOB_STATE_RUNNING, Generation: 1}, time.Unix(0, 0))
	feed(j, 1, 1, 40, 2)
	if j.lastStep != 40 {
		t.Fatalf("last step %d, want 40", j.lastStep)
	}
	rows := j.rankRows()
	if len(rows) != 2 {
		t.Fatalf("%d rank rows, want 2", len(rows))
	}
	if !rows[1].Straggler || rows[0].Straggler || rows[1].Order != 1 {
		t.Fatalf("rank 1 computes twice as long and must be the only straggler, slowest first: %+v", rows)
	}
	// Rank 0 waited for rank 1: its wait is the exposed communication
	// beyond rank 1's (the transfer).
	if w := rows[0].WaitS; math.Abs(w-0.010) > 1e-9 || rows[1].WaitS != 0 {
		t.Fatalf("wait rank 0 %v (want 0.010), rank 1 %v (want 0)", w, rows[1].WaitS)
	}
	if c := rows[0].CommS; math.Abs(c-0.002) > 1e-9 {
		t.Fatalf("exposed comm rank 0 %v, want the transfer 0.002", c)
	}
	s := j.summary(time.Unix(0, 0))
	if math.Abs(s.TokensPerSec-64/0.022) > 1e-6 || s.Step != 40 || len(s.Stragglers) != 1 || s.Stragglers[0] != 1 {
		t.Fatalf("summary %+v", s)
	}
	if want := 64 / 0.022 * j.flopsTok / 2e9; math.Abs(s.MFU-want) > 1e-12 || s.PeakFLOPS != 2e9 {
		t.Fatalf("MFU %v peak %v, want %v over 2e9", s.MFU, s.PeakFLOPS, want)
	}
	if s.ETASeconds <= 0 {
		t.Fatalf("ETA %v for a running job with steps left", s.ETASeconds)
	}
	// Balanced again: nobody is flagged once the window has moved on.
	feed(j, 1, 41, 41+StragglerWindow, 1)
	for _, r := range j.rankRows() {
		if r.Straggler {
			t.Fatalf("rank %d flagged after the ranks balanced: %+v", r.Rank, r)
		}
	}
}

func TestHistoryIsBoundedAndDownsampled(t *testing.T) {
	j := newJobHistory(testDesired())
	feed(j, 1, 1, 100000, 1)
	pts := j.points.points()
	if n := len(pts); n > jobOverviewPoints+jobRecentPoints || n < jobRecentPoints {
		t.Fatalf("%d job points after 100000 steps; want between %d and %d", n, jobRecentPoints, jobOverviewPoints+jobRecentPoints)
	}
	if j.points.len() > jobOverviewPoints+2*jobRecentPoints+1 {
		t.Fatalf("job series holds %d points", j.points.len())
	}
	covered := 0
	for i, p := range pts {
		covered += p.N
		if i > 0 && p.Step <= pts[i-1].Step {
			t.Fatalf("points out of order at %d: %d after %d", i, p.Step, pts[i-1].Step)
		}
	}
	if last := pts[len(pts)-1]; last.Step != 100000 || last.N != 1 {
		t.Fatalf("last point %+v, want step 100000 at full resolution", last)
	}
	if covered < 99000 {
		t.Fatalf("points cover %d of 100000 steps", covered)
	}
	for _, rh := range j.ranks {
		if rh.points.len() > rankOverviewPoints+2*rankRecentPoints+1 {
			t.Fatalf("rank %d series holds %d points", rh.rank, rh.points.len())
		}
	}
}

func TestHistoryRestartReplaysFromCheckpoint(t *testing.T) {
	j := newJobHistory(testDesired())
	feed(j, 1, 1, 50, 1)
	j.setStatus(&loomv1.JobStatus{Name: "h", State: loomv1.JobState_JOB_STATE_WAITING, Generation: 1, Restarts: 1,
		Failures: []*loomv1.Failure{{Generation: 1, Rank: 1, Lost: true, Reason: "lease expired"}}}, time.Unix(0, 0))
	feed(j, 2, 41, 60, 1) // generation 2 resumed from the checkpoint of step 40
	pts := j.points.points()
	for i := 1; i < len(pts); i++ {
		if pts[i].Step != pts[i-1].Step+1 {
			t.Fatalf("steps %d then %d after the replay", pts[i-1].Step, pts[i].Step)
		}
	}
	if pts[len(pts)-1].Step != 60 || len(pts) != 60 {
		t.Fatalf("%d points ending at %d, want 60 ending at 60", len(pts), pts[len(pts)-1].Step)
	}
	if j.restarts["worker_lost"] != 1 || len(j.events) != 1 || j.events[0].Kind != "restart" {
		t.Fatalf("restarts %v events %+v", j.restarts, j.events)
	}
	if got := j.rank(0).totals.Steps; got != 70 {
		t.Fatalf("rank 0 counted %d steps, want 70 (50 + 20 replayed)", got)
	}
}

func TestJobMetricsExported(t *testing.T) {
	h := newHistorian(nil, NewKeys(""), slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now, func() bool { return true }, 0)
	j := newJobHistory(testDesired())
	h.jobs["h"] = j
	j.setStatus(&loomv1.JobStatus{Name: "h", State: loomv1.JobState_JOB_STATE_RUNNING, Generation: 1}, time.Now())
	feed(j, 1, 1, 20, 2)
	reg := prometheus.NewRegistry()
	reg.MustRegister(newJobCollector(h, time.Minute))
	want := `
# HELP loom_job_step Last optimizer step every rank of the job has reported.
# TYPE loom_job_step gauge
loom_job_step{job="h",run="1700000000000"} 20
# HELP loom_rank_straggler 1 when loom_rank_slowdown_ratio > 1.2 (the rank holds the job back), else 0.
# TYPE loom_rank_straggler gauge
loom_rank_straggler{job="h",rank="0",run="1700000000000"} 0
loom_rank_straggler{job="h",rank="1",run="1700000000000"} 1
# HELP loom_rank_steps_total Steps of the run the rank finished.
# TYPE loom_rank_steps_total counter
loom_rank_steps_total{job="h",rank="0",run="1700000000000"} 20
loom_rank_steps_total{job="h",rank="1",run="1700000000000"} 20
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "loom_job_step", "loom_rank_straggler", "loom_rank_steps_total"); err != nil {
		t.Fatal(err)
	}
	// A finished job's series go away after the grace period.
	j.setStatus(&loomv1.JobStatus{Name: "h", State: loomv1.JobState_JOB_STATE_SUCCEEDED, Generation: 1,
		UpdatedUnixMs: time.Now().Add(-2 * time.Minute).UnixMilli()}, time.Now())
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Fatalf("%d series (%v) two minutes after the job finished with a one-minute grace", n, err)
	}
}

// The leader persists histories; a coordinator started afterwards (a
// standby taking over) loads the same history.
func TestHistoryPersistsForStandby(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := StartEtcd(ctx, EtcdOptions{LogOutput: "discard"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys := NewKeys("")
	d := testDesired()
	if _, err := cli.Put(ctx, keys.Desired("h"), Encode(d)); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	leader := newHistorian(cli, keys, log, time.Now, func() bool { return true }, 50*time.Millisecond)
	lctx, lcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { leader.run(lctx); close(done) }()
	put := func(k, v string) {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	put(keys.Status("h"), Encode(&loomv1.JobStatus{Name: "h", State: loomv1.JobState_JOB_STATE_RUNNING, Generation: 1}))
	for s := int64(1); s <= 30; s += 10 {
		for r := 0; r < 2; r++ {
			p := &loomv1.RankProgress{Job: "h", Generation: 1, Rank: int32(r), MemoryBytes: map[string]int64{"params": 1000}}
			for k := s; k < s+10; k++ {
				p.Steps = append(p.Steps, stepOf(k, r, 2))
			}
			put(keys.Progress("h", r), Encode(p))
		}
	}
	put(keys.Checkpoint("h"), Encode(&loomv1.CheckpointRecord{Job: "h", Step: 30, Dir: "/ck/h/step-30", Generation: 1,
		CommittedUnixMs: 1700000000000 + 30*12 + 250}))
	waitFor(t, ctx, "the leader's history to reach step 30 and the checkpoint", func() bool {
		v, _ := leader.history("h", -1)
		return leader.lastStep("h") == 30 && len(v.Events) == 1
	})
	lcancel()
	<-done // the last save happens on the way out

	standby := newHistorian(cli, keys, log, time.Now, func() bool { return false }, time.Hour)
	if _, _, err := standby.load(ctx); err != nil {
		t.Fatal(err)
	}
	a, _ := leader.history("h", -1)
	b, _ := standby.history("h", -1)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("standby's history differs from the leader's:\nleader  %+v\nstandby %+v", a, b)
	}
	if len(b.Points.Step) != 30 || len(b.Ranks) != 2 || len(b.Events) != 1 || b.Events[0].Seconds != 0.25 {
		t.Fatalf("standby history: %d points, %d ranks, events %+v", len(b.Points.Step), len(b.Ranks), b.Events)
	}
	det, _ := standby.jobDetail("h", time.Now())
	if !det.Ranks[1].Straggler || det.Ranks[0].Memory["params"] != 1000 {
		t.Fatalf("standby's rank view %+v", det.Ranks)
	}

	// A standby that missed steps (here 31–40: only the latest batch of each
	// rank is in etcd) fills the gap when the leader next persists.
	sctx, scancel := context.WithCancel(ctx)
	sdone := make(chan struct{})
	go func() { standby.run(sctx); close(sdone) }()
	defer func() { scancel(); <-sdone }()
	full := newJobHistory(d)
	full.setStatus(&loomv1.JobStatus{Name: "h", State: loomv1.JobState_JOB_STATE_RUNNING, Generation: 1}, time.Now())
	feed(full, 1, 1, 50, 2)
	for r := 0; r < 2; r++ {
		p := &loomv1.RankProgress{Job: "h", Generation: 1, Rank: int32(r)}
		for k := int64(41); k <= 50; k++ {
			p.Steps = append(p.Steps, stepOf(k, r, 2))
		}
		put(keys.Progress("h", r), Encode(p))
	}
	waitFor(t, ctx, "the standby to follow steps 41–50", func() bool { return standby.lastStep("h") == 50 })
	if v, _ := standby.history("h", -1); len(v.Points.Step) != 40 {
		t.Fatalf("standby has %d points before the leader persists, want 40 (a gap of 10)", len(v.Points.Step))
	}
	writer := newHistorian(cli, keys, log, time.Now, func() bool { return true }, time.Hour)
	writer.jobs["h"] = full
	writer.save(ctx)
	waitFor(t, ctx, "the standby to fill the gap", func() bool {
		v, _ := standby.history("h", -1)
		return len(v.Points.Step) == 50 && len(v.Ranks) == 2 && len(v.Ranks[1].Step) == 50
	})
}

func waitFor(t *testing.T, ctx context.Context, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkHistory100kSteps feeds 100,000 synthetic dp-2 steps into one
// job's history and reports the heap it holds (bytes/job) and the cost
// of a step (ns/op per step of both ranks).
func BenchmarkHistory100kSteps(b *testing.B) {
	const steps = 100000
	var held float64
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		j := newJobHistory(testDesired())
		feed(j, 1, 1, steps, 1)
		runtime.GC()
		runtime.ReadMemStats(&after)
		held = float64(after.HeapAlloc) - float64(before.HeapAlloc)
		runtime.KeepAlive(j)
	}
	b.ReportMetric(held, "bytes/job")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*steps), "ns/step")
	// What the leader persists for the job in etcd (every key's value).
	h := newHistorian(nil, NewKeys(""), slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now, func() bool { return true }, 0)
	j := newJobHistory(testDesired())
	feed(j, 1, 1, steps, 1)
	h.jobs["h"] = j
	b.ReportMetric(float64(h.persistedBytes()), "etcd-bytes/job")
}

// A checkpoint's commit may reach the history before its step's reports;
// its save time is filled in once the step arrives.
func TestCheckpointSaveTimeWhenCommitComesFirst(t *testing.T) {
	j := newJobHistory(testDesired())
	feed(j, 1, 1, 9, 1)
	end := stepOf(10, 0, 1).EndUnixMs
	j.addCheckpointReport(&loomv1.CheckpointReport{Job: "h", Step: 10, Rank: 0, PartJson: []byte(`{"files":[{"size":100}]}`)})
	j.addCheckpointReport(&loomv1.CheckpointReport{Job: "h", Step: 10, Rank: 1, PartJson: []byte(`{"files":[{"size":50}]}`)})
	j.setCheckpoint(&loomv1.CheckpointRecord{Job: "h", Step: 10, Generation: 1, CommittedUnixMs: end + 400})
	feed(j, 1, 10, 10, 1)
	if len(j.events) != 1 || j.events[0].Seconds != 0.4 || j.events[0].Bytes != 150 || j.ckptLastS != 0.4 {
		t.Fatalf("events %+v, last save %v s", j.events, j.ckptLastS)
	}
}

// Validation losses (train.eval_every) are kept with their steps: at full
// resolution, through downsampling (the mean of the passes a bucket
// covers), in the persisted state and across a replay; the columns carry
// null where a step has none, and the summary the latest.
func TestHistoryKeepsValidationLoss(t *testing.T) {
	j := newJobHistory(testDesired())
	val := func(step int64) float64 { return 6 - float64(step)*1e-4 }
	for s := int64(1); s <= 5000; s++ {
		for r := 0; r < 2; r++ {
			st := stepOf(s, r, 1)
			if s%100 == 0 {
				st.ValLoss = val(s)
			}
			j.addProgress(&loomv1.RankProgress{Job: "h", Generation: 1, Rank: int32(r), Steps: []*loomv1.StepStats{st}}, time.Unix(0, 0))
		}
	}
	if s := j.summary(time.Unix(0, 0)); s.ValStep != 5000 || s.ValLoss != val(5000) {
		t.Fatalf("summary val loss %v at %d, want %v at 5000", s.ValLoss, s.ValStep, val(5000))
	}
	c := jobColumns(j.points.points())
	passes, vals := 0, 0
	for i, p := range j.points.points() {
		passes += p.ValN
		if !math.IsNaN(c.ValLoss[i]) {
			vals++
		}
		if p.N == 1 && (p.Step%100 == 0) != (p.ValN == 1) {
			t.Fatalf("step %d: val_n %d", p.Step, p.ValN)
		}
		if p.ValN > 0 && (p.ValLoss > val(p.Step-int64(p.N)+1) || p.ValLoss < val(p.Step)) {
			t.Fatalf("point %+v: val loss outside the steps it covers", p)
		}
	}
	if passes < 49 || vals < 40 {
		t.Fatalf("the history keeps %d of 50 validation passes in %d points", passes, vals)
	}
	b, err := json.Marshal(c)
	if err != nil || !strings.Contains(string(b), `"val_loss":[null,`) {
		t.Fatalf("columns JSON %.200s: %v", b, err)
	}
	var back JobColumns
	if err := json.Unmarshal(b, &back); err != nil || len(back.ValLoss) != len(c.ValLoss) || !math.IsNaN(back.ValLoss[0]) {
		t.Fatalf("columns JSON back: %v, %d values", err, len(back.ValLoss))
	}
	// What the leader persists, a standby restores.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := newHistorian(nil, NewKeys(""), log, time.Now, func() bool { return true }, 0)
	h.jobs["h"] = j
	var kvs []*mvccpb.KeyValue
	for _, p := range h.changes(true) {
		kvs = append(kvs, &mvccpb.KeyValue{Key: []byte(p.key), Value: p.value})
	}
	standby := newHistorian(nil, NewKeys(""), log, time.Now, func() bool { return false }, 0)
	standby.jobs["h"] = newJobHistory(testDesired())
	standby.restore(kvs, map[string]bool{"h": true}, false)
	a, _ := h.history("h", -1)
	b2, _ := standby.history("h", -1)
	if got, want := fmt.Sprint(b2.Points.ValLoss), fmt.Sprint(a.Points.ValLoss); got != want {
		t.Fatalf("restored validation losses differ:\n%s\n%s", got, want)
	}
	if s := standby.jobs["h"].summary(time.Unix(0, 0)); s.ValStep != 5000 {
		t.Fatalf("restored summary: val loss %v at %d", s.ValLoss, s.ValStep)
	}
	// A restart resumed from step 4950 replays the steps after it: the
	// latest validation is then step 4900's.
	feed(j, 2, 4951, 4960, 1)
	if s := j.summary(time.Unix(0, 0)); s.ValStep != 4900 || s.ValLoss != val(4900) {
		t.Fatalf("after the replay: val loss %v at %d, want step 4900's", s.ValLoss, s.ValStep)
	}
}

// TestJobDetailEmptyListsAreArrays: a job no rank has reported for yet
// (pending, or a new generation) is sent with "ranks": [] and "events": [],
// never null: the page iterates both (a null once threw in the browser).
func TestJobDetailEmptyListsAreArrays(t *testing.T) {
	j := newJobHistory(testDesired())
	d := &JobDetail{JobSummary: j.summary(time.Unix(0, 0)), Ranks: j.rankRows(), Events: append([]Event{}, j.events...)}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"ranks":[]`, `"events":[]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("job detail %s: want %s", b, want)
		}
	}
}
