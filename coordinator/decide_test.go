package coordinator

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/loomtrain/loom/api"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

const (
	pending   = loomv1.JobState_JOB_STATE_PENDING
	running   = loomv1.JobState_JOB_STATE_RUNNING
	waiting   = loomv1.JobState_JOB_STATE_WAITING
	succeeded = loomv1.JobState_JOB_STATE_SUCCEEDED
	failed    = loomv1.JobState_JOB_STATE_FAILED
	stopped   = loomv1.JobState_JOB_STATE_STOPPED
)

func worker(id, host, version string) *loomv1.WorkerInfo {
	return &loomv1.WorkerInfo{Id: id, Addr: host + ":7" + id[len(id)-1:], Host: host, Version: version, Threads: 2}
}

func job(name string, dp, tp, pp int) JobObserved {
	return JobObserved{
		Desired:  &loomv1.JobDesired{Name: name, WorldSize: int32(dp * tp * pp)},
		Parallel: api.ParallelSpec{DP: dp, TP: tp, PP: pp},
	}
}

func assigned(j JobObserved, gen uint64, workers ...*loomv1.WorkerInfo) JobObserved {
	a := &loomv1.Assignment{Job: j.Desired.Name, Generation: gen, WorldSize: j.Desired.WorldSize, CoordinatorVersion: "v1"}
	for r, w := range workers {
		a.Ranks = append(a.Ranks, &loomv1.RankInfo{Rank: int32(r), WorkerId: w.Id, Addr: w.Addr, Host: w.Host, Threads: w.Threads})
	}
	j.Assignment = a
	j.Status = &loomv1.JobStatus{Name: j.Desired.Name, State: running, Generation: gen, Ranks: a.Ranks,
		WorldSize: j.Desired.WorldSize, Dp: int32(j.Parallel.DP), Message: fmt.Sprintf("generation %d: %d ranks training", gen, len(workers))}
	j.Results = map[int]*loomv1.RankResult{}
	return j
}

func result(j JobObserved, rank int, errText string) JobObserved {
	j.Results[rank] = &loomv1.RankResult{Job: j.Desired.Name, Generation: j.Assignment.Generation, Rank: int32(rank),
		Ok: errText == "", Error: errText}
	return j
}

// summary renders actions compactly for table comparison.
func summary(acts []Action) string {
	var parts []string
	for _, a := range acts {
		switch a.Kind {
		case PutStatus:
			parts = append(parts, fmt.Sprintf("status %s %s gen=%d", a.Job, stateName(a.Status.State), a.Status.Generation))
		case PutAssignment:
			var ws []string
			for _, r := range a.Assignment.Ranks {
				ws = append(ws, fmt.Sprintf("%d=%s(%d,%d,%d)", r.Rank, r.WorkerId, r.Dp, r.Pp, r.Tp))
			}
			parts = append(parts, fmt.Sprintf("assign %s gen=%d [%s]", a.Job, a.Assignment.Generation, strings.Join(ws, " ")))
		case DeleteAssignment:
			parts = append(parts, "unassign "+a.Job)
		case PutQuarantine:
			parts = append(parts, "hold "+a.Quarantine.WorkerId)
		case DeleteQuarantine:
			parts = append(parts, "release "+a.Worker)
		}
	}
	return strings.Join(parts, "; ")
}

// TestDecideLostPeer: a rank's engine lost its connection to a peer that
// reported nothing (kill -9: its lease has not expired yet). The headline
// names the lost rank and the survivor that saw it; every live worker of
// the generation is held out of the next rendezvous until it re-registers;
// the restart prefers a spare and never takes the held worker.
func TestDecideLostPeer(t *testing.T) {
	w1, w2, w3 := worker("w1", "hostA", "v1"), worker("w2", "hostA", "v1"), worker("w3", "hostZ", "v1")
	j := job("a", 2, 1, 1)
	j.Desired.MaxRestarts = 1
	j = assigned(j, 1, w1, w2)
	j.Results[1] = &loomv1.RankResult{Job: "a", Generation: 1, Rank: 1, Error: "rank 1: all-reduce: peer rank 0 (hostA:71): connection to peer lost",
		LostPeer: &loomv1.PeerLoss{Rank: 0, Addr: "hostA:71", Op: "all-reduce"}}
	revs := map[string]int64{"w1": 5, "w2": 6, "w3": 7}
	o := Observed{Version: "v1", Jobs: []JobObserved{j}, Workers: []*loomv1.WorkerInfo{w1, w2, w3}, WorkerRev: revs}
	acts := Decide(o)
	if got, want := summary(acts), "unassign a; hold w1; hold w2; status a WAITING gen=1"; got != want {
		t.Fatalf("actions:\n got  %s\n want %s", got, want)
	}
	st := acts[len(acts)-1].Status
	want := "generation 1: lost rank 0 (hostA:71, worker w1): rank 1 (hostA:72) lost its connection to it: rank 1: all-reduce: peer rank 0 (hostA:71): connection to peer lost; restart 1 of 1"
	if !strings.HasPrefix(st.Message, want) {
		t.Errorf("message\n %q\nwant prefix\n %q", st.Message, want)
	}
	if f := st.Failures; len(f) != 1 || f[0].Rank != 0 || !f[0].Lost || fmt.Sprint(f[0].SeenBy) != "[1]" {
		t.Errorf("failures %v, want rank 0 lost, seen by rank 1", f)
	}

	// Next round: w1 (dead, lease alive) and w2 (alive, not yet
	// re-registered) are held; the spare alone is not enough.
	j.Assignment, j.Results, j.Status = nil, nil, st
	q := map[string]*loomv1.Quarantine{}
	for _, a := range acts {
		if a.Kind == PutQuarantine {
			q[a.Quarantine.WorkerId] = a.Quarantine
		}
	}
	o = Observed{Version: "v1", Jobs: []JobObserved{j}, Workers: []*loomv1.WorkerInfo{w1, w2, w3}, WorkerRev: revs, Quarantine: q}
	acts = Decide(o)
	if got := summary(acts); got != "status a WAITING gen=1" {
		t.Fatalf("with w1 and w2 held: %s", got)
	}
	if m := acts[0].Status.Message; !strings.Contains(m, "waiting for 1 more worker (1 of 2") || !strings.Contains(m, "2 workers of a failed generation wait to prove themselves alive") {
		t.Errorf("message %q", m)
	}
	// w2 saw the generation end and re-registered: the spare w3 comes
	// first, w2 second; w1, which never did, is not used.
	o.WorkerRev = map[string]int64{"w1": 5, "w2": 11, "w3": 7}
	if got, want := summary(Decide(o)), "release w2; assign a gen=2 [0=w3(0,0,0) 1=w2(1,0,0)]; status a RUNNING gen=2"; got != want {
		t.Errorf("after w2 re-registered:\n got  %s\n want %s", got, want)
	}
	// w1's lease expires at last: its record goes with it.
	o.Workers = []*loomv1.WorkerInfo{w2, w3}
	if got := summary(Decide(o)); !strings.HasPrefix(got, "release w1; release w2; assign a gen=2") {
		t.Errorf("after w1 left: %s", got)
	}
}

func TestDecide(t *testing.T) {
	w1, w2, w3 := worker("w1", "hostA", "v1"), worker("w2", "hostA", "v1"), worker("w3", "hostB", "v1")
	old := worker("w9", "hostC", "v0")
	stopping := job("a", 2, 1, 1)
	stopping.Desired.Stop, stopping.Desired.StopReason = true, "user asked"
	restartable := job("a", 2, 1, 1)
	restartable.Desired.MaxRestarts = 1
	badSpec := job("a", 1, 1, 1)
	badSpec.SpecErr = errors.New("train.steps: got 0")
	waitingJob := job("a", 2, 1, 1)
	waitingJob.Desired.MaxRestarts = 1
	waitingJob.Status = &loomv1.JobStatus{Name: "a", State: waiting, Generation: 1, Restarts: 1}

	tests := []struct {
		name    string
		jobs    []JobObserved
		workers []*loomv1.WorkerInfo
		want    string
		msg     string // substring of the first status message
	}{
		{"no workers: pending, waiting for 2", []JobObserved{job("a", 2, 1, 1)}, nil,
			"status a PENDING gen=0", "waiting for 2 more workers (0 of 2 idle workers registered)"},
		{"one of two workers", []JobObserved{job("a", 2, 1, 1)}, []*loomv1.WorkerInfo{w1},
			"status a PENDING gen=0", "waiting for 1 more worker (1 of 2"},
		{"enough workers: assign gen 1 grouped by host",
			[]JobObserved{job("a", 1, 2, 1)}, []*loomv1.WorkerInfo{w3, w2, w1},
			"assign a gen=1 [0=w1(0,0,0) 1=w2(0,0,1)]; status a RUNNING gen=1", "generation 1: 2 ranks training"},
		{"coords: dp2 pp2 tp1", []JobObserved{job("a", 2, 1, 2)}, []*loomv1.WorkerInfo{w1, w2, w3, worker("w4", "hostB", "v1")},
			"assign a gen=1 [0=w1(0,0,0) 1=w2(1,0,0) 2=w3(0,1,0) 3=w4(1,1,0)]; status a RUNNING gen=1", ""},
		{"other version ignored and named", []JobObserved{job("a", 2, 1, 1)}, []*loomv1.WorkerInfo{w1, old},
			"status a PENDING gen=0", "ignoring 1 worker of another Loom version (coordinator runs v1): w9 at hostC:79 runs Loom v0"},
		{"running: nothing to do", []JobObserved{assigned(job("a", 2, 1, 1), 1, w1, w2)}, []*loomv1.WorkerInfo{w1, w2}, "", ""},
		{"one rank done: still running", []JobObserved{result(assigned(job("a", 2, 1, 1), 1, w1, w2), 0, "")},
			[]*loomv1.WorkerInfo{w1, w2}, "", ""},
		{"all ranks done: succeeded", []JobObserved{result(result(assigned(job("a", 2, 1, 1), 1, w1, w2), 0, ""), 1, "")},
			[]*loomv1.WorkerInfo{w1, w2}, "unassign a; status a SUCCEEDED gen=1", "all 2 ranks finished"},
		{"done ranks may exit", []JobObserved{result(result(assigned(job("a", 2, 1, 1), 1, w1, w2), 0, ""), 1, "")},
			nil, "unassign a; status a SUCCEEDED gen=1", ""},
		{"lost worker: failed, names rank and address", []JobObserved{assigned(job("a", 2, 1, 1), 1, w1, w2)},
			[]*loomv1.WorkerInfo{w1}, "unassign a; hold w1; status a FAILED gen=1", "generation 1: lost rank 1 (hostA:72, worker w2): its lease expired"},
		{"engine error: failed with the error", []JobObserved{result(assigned(job("a", 2, 1, 1), 1, w1, w2), 0, "data: no such file")},
			[]*loomv1.WorkerInfo{w1, w2}, "unassign a; hold w1; hold w2; status a FAILED gen=1", "failed rank 0 (hostA:71, worker w1): data: no such file"},
		{"lost worker with restarts left: waiting", []JobObserved{assigned(restartable, 1, w1, w2)},
			[]*loomv1.WorkerInfo{w1}, "unassign a; hold w1; status a WAITING gen=1", "restart 1 of 1: waiting for workers"},
		{"waiting job gets generation 2", []JobObserved{waitingJob}, []*loomv1.WorkerInfo{w1, w3},
			"assign a gen=2 [0=w1(0,0,0) 1=w3(1,0,0)]; status a RUNNING gen=2", ""},
		{"waiting job short of workers stays waiting", []JobObserved{waitingJob}, []*loomv1.WorkerInfo{w1},
			"status a WAITING gen=1", "waiting for 1 more worker"},
		{"stop a running job", []JobObserved{assigned(stopping, 1, w1, w2)}, []*loomv1.WorkerInfo{w1, w2},
			"unassign a; status a STOPPED gen=1", "stopped: user asked"},
		{"stop a pending job", []JobObserved{stopping}, nil, "status a STOPPED gen=0", "stopped: user asked"},
		{"terminal job keeps no assignment", []JobObserved{func() JobObserved {
			j := assigned(job("a", 1, 1, 1), 1, w1)
			j.Status.State = succeeded
			return j
		}()}, []*loomv1.WorkerInfo{w1}, "unassign a", ""},
		{"unparsable stored spec fails", []JobObserved{badSpec}, []*loomv1.WorkerInfo{w1},
			"status a FAILED gen=0", "stored job spec does not parse: train.steps: got 0"},
		{"busy workers are not shared; FIFO then backfill",
			[]JobObserved{assigned(job("a", 1, 1, 1), 1, w1), job("b", 2, 1, 1), job("c", 1, 1, 1)},
			[]*loomv1.WorkerInfo{w1, w2},
			"status b PENDING gen=0; assign c gen=1 [0=w2(0,0,0)]; status c RUNNING gen=1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Observed{Version: "v1", Jobs: tt.jobs, Workers: tt.workers}
			acts := Decide(o)
			if got := summary(acts); got != tt.want {
				t.Errorf("actions:\n got  %s\n want %s", got, tt.want)
			}
			if tt.msg != "" {
				var msg string
				for _, a := range acts {
					if a.Kind == PutStatus {
						msg = a.Status.Message
						break
					}
				}
				if !strings.Contains(msg, tt.msg) {
					t.Errorf("status message %q does not contain %q", msg, tt.msg)
				}
			}
		})
	}
}

// TestDecideConverges replays Decide on the state its actions produce and
// checks that it reaches a fixed point (a transcript of one job's life).
func TestDecideConverges(t *testing.T) {
	w1, w2 := worker("w1", "h", "v1"), worker("w2", "h", "v1")
	j := job("a", 2, 1, 1)
	o := Observed{Version: "v1", Jobs: []JobObserved{j}, Workers: []*loomv1.WorkerInfo{w1}}
	var transcript []string
	step := func(what string) {
		for i := 0; i < 5; i++ {
			acts := Decide(o)
			if len(acts) == 0 {
				return
			}
			transcript = append(transcript, what+": "+summary(acts))
			for _, a := range acts {
				switch a.Kind {
				case PutStatus:
					o.Jobs[0].Status = a.Status
				case PutAssignment:
					o.Jobs[0].Assignment = a.Assignment
					o.Jobs[0].Results = map[int]*loomv1.RankResult{}
				case DeleteAssignment:
					o.Jobs[0].Assignment = nil
				}
			}
		}
		t.Fatalf("%s: no fixed point after 5 rounds:\n%s", what, strings.Join(transcript, "\n"))
	}
	step("submit")
	o.Workers = append(o.Workers, w2)
	step("second worker")
	o.Jobs[0].Results[0] = &loomv1.RankResult{Rank: 0, Generation: 1, Ok: true}
	o.Jobs[0].Results[1] = &loomv1.RankResult{Rank: 1, Generation: 1, Ok: true}
	step("results")
	want := []string{
		"submit: status a PENDING gen=0",
		"second worker: assign a gen=1 [0=w1(0,0,0) 1=w2(1,0,0)]; status a RUNNING gen=1",
		"results: unassign a; status a SUCCEEDED gen=1",
	}
	if got := strings.Join(transcript, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("transcript:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

func TestRankCoords(t *testing.T) {
	p := api.ParallelSpec{DP: 2, TP: 2, PP: 3}
	seen := map[[3]int]bool{}
	for r := 0; r < p.WorldSize(); r++ {
		dp, pp, tp := RankCoords(r, p)
		if got := (pp*p.DP+dp)*p.TP + tp; got != r {
			t.Errorf("rank %d → (dp %d, pp %d, tp %d) → rank %d", r, dp, pp, tp, got)
		}
		seen[[3]int{dp, pp, tp}] = true
	}
	if len(seen) != p.WorldSize() {
		t.Errorf("coordinates not distinct: %d of %d", len(seen), p.WorldSize())
	}
}

// TestDecidePendingTimeout: a job waiting for workers records since when;
// past its pending timeout it fails, saying how many workers it lacked.
func TestDecidePendingTimeout(t *testing.T) {
	j := job("a", 3, 1, 1)
	j.Desired.PendingTimeoutMs = 60_000
	o := Observed{Version: "v1", Jobs: []JobObserved{j}, Workers: []*loomv1.WorkerInfo{worker("w1", "h", "v1")}, NowUnixMs: 1_000}
	acts := Decide(o)
	st := acts[0].Status
	if st.State != pending || st.WaitingSinceUnixMs != 1_000 || !strings.Contains(st.Message, "waiting for 2 more workers (1 of 3 idle workers registered), giving up 1m0s after it began waiting") {
		t.Fatalf("first round: %v", st)
	}
	j.Status = st
	o.Jobs[0], o.NowUnixMs = j, 60_999
	if acts := Decide(o); len(acts) != 0 {
		t.Fatalf("before the timeout: %s", summary(acts))
	}
	o.NowUnixMs = 61_000
	acts = Decide(o)
	if got := summary(acts); got != "status a FAILED gen=0" {
		t.Fatalf("at the timeout: %s", got)
	}
	if m := acts[0].Status.Message; !strings.HasPrefix(m, "gave up after waiting 1m0s (the pending timeout) for 2 more workers (1 of 3 idle workers registered)") {
		t.Errorf("message %q", m)
	}
}
