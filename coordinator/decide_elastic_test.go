package coordinator

import (
	"fmt"
	"strings"
	"testing"
	"time"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// scene is a small world for Decide's elastic cases: one job, workers with
// registration revisions, and the state the leader's actions produce.
type scene struct {
	t   *testing.T
	o   Observed
	rev int64
}

// newScene has an elastic job of dp 4 (min_dp, max_dp as given; a global
// batch of 12, so dp 1, 2, 3, 4 and 6 are reachable) and workers w1..wN.
func newScene(t *testing.T, minDP, maxDP, workers int) *scene {
	j := job("e", 4, 1, 1)
	j.Desired.MaxRestarts = 3
	var reach []int
	for _, d := range []int{1, 2, 3, 4, 6} {
		if d >= minDP && d <= maxDP {
			reach = append(reach, d)
		}
	}
	j.Elastic = &ElasticObserved{Reachable: reach, MinDP: minDP, MaxDP: maxDP, RendezvousTimeout: 30 * time.Second, Steps: 100}
	s := &scene{t: t, o: Observed{Version: "v1", Jobs: []JobObserved{j}, WorkerRev: map[string]int64{},
		Quarantine: map[string]*loomv1.Quarantine{}, NowUnixMs: 1_000_000}}
	for i := 1; i <= workers; i++ {
		s.register(fmt.Sprintf("w%d", i), "h")
	}
	return s
}

func (s *scene) job() *JobObserved { return &s.o.Jobs[0] }

func (s *scene) register(id, host string) {
	s.rev++
	s.o.Workers = append(s.o.Workers, worker(id, host, "v1"))
	s.o.WorkerRev[id] = s.rev
}

// reannounce is a worker rewriting its registration (its generation ended).
func (s *scene) reannounce(ids ...string) {
	for _, id := range ids {
		s.rev++
		s.o.WorkerRev[id] = s.rev
	}
}

// expire is a worker's lease ending (kill -9, after the TTL).
func (s *scene) expire(ids ...string) {
	for _, id := range ids {
		for i, w := range s.o.Workers {
			if w.Id == id {
				s.o.Workers = append(s.o.Workers[:i], s.o.Workers[i+1:]...)
				break
			}
		}
	}
}

// progress records every rank of the current generation at step, with
// its first step done at firstMs.
func (s *scene) progress(step int64, firstMs int64) {
	j := s.job()
	j.Progress = map[int]*loomv1.RankProgress{}
	for _, r := range j.Assignment.Ranks {
		j.Progress[int(r.Rank)] = &loomv1.RankProgress{Job: "e", Generation: j.Assignment.Generation, Rank: r.Rank,
			Steps: []*loomv1.StepStats{{Step: step}}, FirstStepUnixMs: firstMs, SetupSeconds: 1.5, ResumeSeconds: 0.25,
			ResumeStep: j.Assignment.ResumeStep}
	}
}

// checkpointAt records a committed checkpoint of the current generation.
func (s *scene) checkpointAt(step int64) {
	s.rev++
	j := s.job()
	j.Checkpoint = &loomv1.CheckpointRecord{Job: "e", Step: step, Dir: fmt.Sprintf("/ck/e/step-%d", step), Generation: j.Assignment.Generation}
	j.CheckpointRev = s.rev
}

// decide runs one round, applies its actions and returns their summary.
func (s *scene) decide() string {
	s.t.Helper()
	acts := Decide(s.o)
	j := s.job()
	for _, a := range acts {
		switch a.Kind {
		case PutStatus:
			j.Status = a.Status
		case PutAssignment:
			j.Assignment, j.Results = a.Assignment, map[int]*loomv1.RankResult{}
		case DeleteAssignment:
			j.Assignment, j.Results = nil, nil
		case PutQuarantine:
			s.o.Quarantine[a.Quarantine.WorkerId] = a.Quarantine
		case DeleteQuarantine:
			delete(s.o.Quarantine, a.Worker)
		case Checkpoints:
		}
	}
	return summary(acts)
}

func (s *scene) want(got, want string) {
	s.t.Helper()
	if got != want {
		s.t.Fatalf("actions:\n got  %s\n want %s\nstatus: %s", got, want, s.job().Status.GetMessage())
	}
}

func (s *scene) message(subs ...string) {
	s.t.Helper()
	m := s.job().Status.Message
	for _, sub := range subs {
		if !strings.Contains(m, sub) {
			s.t.Errorf("status message %q lacks %q", m, sub)
		}
	}
}

func (s *scene) lastRecovery() *loomv1.Recovery {
	r := s.job().Status.Recoveries
	if len(r) == 0 {
		s.t.Fatal("no recovery recorded")
	}
	return r[len(r)-1]
}

// start runs the first generation on w1..w4 and trains it to step.
func (s *scene) start(step int64) {
	s.t.Helper()
	s.want(s.decide(), "assign e gen=1 [0=w1(0,0,0) 1=w2(1,0,0) 2=w3(2,0,0) 3=w4(3,0,0)]; status e RUNNING gen=1")
	s.progress(step, 900_000)
	s.checkpointAt(step - step%4)
	s.want(s.decide(), "")
}

// TestDecideElasticLossDuringStep: a worker killed mid-step (its lease
// expires); the survivors' engines stop and they rejoin, the restart runs
// at dp 3 from the latest checkpoint, and the recovery records what was
// lost and how long the job took to train again.
func TestDecideElasticLossDuringStep(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(10)
	s.expire("w4")
	s.want(s.decide(), "unassign e; hold w1; hold w2; hold w3; status e WAITING gen=1")
	s.message("generation 1: lost rank 3 (h:74, worker w4): its lease expired", "restart 1 of 3")
	if r := s.lastRecovery(); r.Reason != "worker_lost" || r.LastStep != 10 || r.DpBefore != 4 || r.EndedUnixMs != 1_000_000 || r.NextGeneration != 0 {
		t.Errorf("recovery %+v", r)
	}
	// The survivors have not rejoined yet: the restart waits for them
	// (up to the rendezvous timeout) rather than start at dp 1 without them.
	s.want(s.decide(), "status e WAITING gen=1")
	s.message("waiting up to 30s for 3 surviving workers of generation 1 to rejoin (dp 3 with them, 0 without)")
	s.reannounce("w1", "w2")
	s.want(s.decide(), "status e WAITING gen=1") // dp 2 now, dp 3 with w3: still waiting
	s.reannounce("w3")
	s.want(s.decide(), "release w1; release w2; release w3; assign e gen=2 [0=w1(0,0,0) 1=w2(1,0,0) 2=w3(2,0,0)]; status e RUNNING gen=2")
	s.message("generation 2: 3 ranks training (dp 3, was 4)")
	a := s.job().Assignment
	if a.Dp != 3 || a.WorldSize != 3 || a.Resume != "/ck/e/step-8" || a.ResumeStep != 8 {
		t.Errorf("assignment dp %d world %d resume %q step %d; want dp 3 from /ck/e/step-8", a.Dp, a.WorldSize, a.Resume, a.ResumeStep)
	}
	if r := s.lastRecovery(); r.NextGeneration != 2 || r.DpAfter != 3 || r.ResumeStep != 8 || r.LostSteps != 2 || r.AssignedUnixMs != 1_000_000 {
		t.Errorf("recovery after the rendezvous %+v", r)
	}
	// The ranks' first step of generation 2 completes the record.
	s.progress(9, 1_004_000)
	s.want(s.decide(), "status e RUNNING gen=2")
	if r := s.lastRecovery(); r.ResumedUnixMs != 1_004_000 || r.SetupSeconds != 1.5 || r.LoadSeconds != 0.25 {
		t.Errorf("recovery after the first step %+v", r)
	}
	if st := s.job().Status; st.Restarts != 1 || st.Dp != 3 {
		t.Errorf("restarts %d dp %d", st.Restarts, st.Dp)
	}
	s.want(s.decide(), "")
}

// TestDecideElasticLossDuringSave: rank 3 dies while writing the step-12
// checkpoint (the others reported theirs): the step can no longer
// complete, its reports are dropped, and the restart resumes from step 8.
func TestDecideElasticLossDuringSave(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(13)
	s.checkpointAt(8)
	j := s.job()
	j.Reports = map[int64]map[int]*loomv1.CheckpointReport{12: {}}
	for r := 0; r < 3; r++ {
		j.Reports[12][r] = &loomv1.CheckpointReport{Job: "e", Generation: 1, Step: 12, Rank: int32(r), WorldSize: 4}
	}
	if got := summary(Decide(s.o)); got != "" {
		t.Fatalf("three of four ranks reported: %s", got)
	}
	s.expire("w4")
	s.decide() // the generation ends; its step-12 reports can no longer complete
	acts := Decide(s.o)
	var drops []int64
	for _, a := range acts {
		if a.Kind == Checkpoints {
			drops = a.Drops
		}
	}
	if fmt.Sprint(drops) != "[12]" {
		t.Errorf("drops %v, want [12] (its generation ended)", drops)
	}
	j.Reports = nil
	s.reannounce("w1", "w2", "w3")
	s.want(s.decide(), "release w1; release w2; release w3; assign e gen=2 [0=w1(0,0,0) 1=w2(1,0,0) 2=w3(2,0,0)]; status e RUNNING gen=2")
	if a := s.job().Assignment; a.Resume != "/ck/e/step-8" || a.ResumeStep != 8 {
		t.Errorf("resume %q step %d", a.Resume, a.ResumeStep)
	}
	if r := s.lastRecovery(); r.LostSteps != 5 {
		t.Errorf("lost steps %d, want 13 − 8 = 5", r.LostSteps)
	}
}

// TestDecideElasticTwoLossesAtOnce: two workers go in one round: one
// restart, both named, the restart at dp 2.
func TestDecideElasticTwoLossesAtOnce(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(10)
	s.expire("w2", "w4")
	s.want(s.decide(), "unassign e; hold w1; hold w3; status e WAITING gen=1")
	s.message("lost rank 1 (h:72, worker w2)", "(and 1 more rank)", "restart 1 of 3")
	if f := s.job().Status.Failures; len(f) != 2 || f[1].Rank != 3 {
		t.Errorf("failures %v", f)
	}
	s.reannounce("w1", "w3")
	s.want(s.decide(), "release w1; release w3; assign e gen=2 [0=w1(0,0,0) 1=w3(1,0,0)]; status e RUNNING gen=2")
	if st := s.job().Status; st.Restarts != 1 || st.Dp != 2 {
		t.Errorf("restarts %d dp %d", st.Restarts, st.Dp)
	}
}

// TestDecideElasticReplacementDuringRecovery: a spare registers while the
// restart waits for survivors; it comes first and the job is back at dp 4.
func TestDecideElasticReplacementDuringRecovery(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(10)
	s.expire("w4")
	s.decide()
	s.register("w5", "h")
	s.reannounce("w1", "w2", "w3")
	s.want(s.decide(), "release w1; release w2; release w3; assign e gen=2 [0=w5(0,0,0) 1=w1(1,0,0) 2=w2(2,0,0) 3=w3(3,0,0)]; status e RUNNING gen=2")
	if r := s.lastRecovery(); r.DpBefore != 4 || r.DpAfter != 4 {
		t.Errorf("recovery %+v", r)
	}
}

// TestDecideElasticLossDuringRendezvous: a survivor dies while the restart
// waits for it, and a rank of the new generation is lost before its first
// step: each is a restart of its own, and the job goes on smaller.
func TestDecideElasticLossDuringRendezvous(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(10)
	s.expire("w4")
	s.decide()
	s.reannounce("w1", "w2")
	s.expire("w3") // a survivor that never rejoins: its lease runs out
	s.want(s.decide(), "release w3; release w1; release w2; assign e gen=2 [0=w1(0,0,0) 1=w2(1,0,0)]; status e RUNNING gen=2")
	s.expire("w2") // lost during generation 2's setup
	s.want(s.decide(), "unassign e; hold w1; status e WAITING gen=2")
	if st := s.job().Status; st.Restarts != 2 || len(st.Recoveries) != 2 || st.Recoveries[1].LastStep != 0 {
		t.Errorf("restarts %d recoveries %v", st.Restarts, st.Recoveries)
	}
}

// TestDecideElasticSurvivorTimeout: a survivor that is frozen (its lease
// lives on) is waited for only up to elastic.rendezvous_timeout.
func TestDecideElasticSurvivorTimeout(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(10)
	s.expire("w4")
	s.decide()
	s.reannounce("w1", "w2")
	s.want(s.decide(), "status e WAITING gen=1")
	s.o.NowUnixMs += 29_999
	s.want(s.decide(), "")
	s.o.NowUnixMs++
	s.want(s.decide(), "release w1; release w2; assign e gen=2 [0=w1(0,0,0) 1=w2(1,0,0)]; status e RUNNING gen=2")
}

// TestDecideElasticBelowMinDP: with fewer workers than elastic.min_dp the
// job waits, saying what it needs, then fails at its pending timeout.
func TestDecideElasticBelowMinDP(t *testing.T) {
	s := newScene(t, 3, 4, 4)
	s.job().Desired.PendingTimeoutMs = 60_000
	s.start(10)
	s.expire("w3", "w4")
	s.decide()
	s.reannounce("w1", "w2")
	s.want(s.decide(), "status e WAITING gen=1")
	s.message("waiting for 1 more worker (2 of 3 idle workers registered); it runs with dp 3–4", "giving up 1m0s after")
	s.o.NowUnixMs += 60_000
	s.want(s.decide(), "status e FAILED gen=1")
	s.message("generation 1: lost rank 2", "gave up after waiting 1m0s (the pending timeout) for 1 more worker (2 of 3 idle workers registered): start more workers, or lower elastic.min_dp")
}

// TestDecideElasticMaxRestarts: the loss after the last restart fails the
// job, saying so.
func TestDecideElasticMaxRestarts(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.job().Desired.MaxRestarts = 1
	s.start(10)
	s.expire("w4")
	s.decide()
	s.reannounce("w1", "w2", "w3")
	s.decide()
	s.expire("w3")
	s.want(s.decide(), "unassign e; hold w1; hold w2; status e FAILED gen=2")
	s.message("generation 2: lost rank 2 (h:73, worker w3)", "no restarts left (max 1)")
}

// TestDecideElasticGrow: a worker registers while the job runs at dp 3 of
// max 4; at the next checkpoint its generation commits, the job resizes:
// not a restart, resumed from that checkpoint, at dp 4. A checkpoint
// committed before the worker registered is no boundary for it.
func TestDecideElasticGrow(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(10)
	s.expire("w4")
	s.decide()
	s.reannounce("w1", "w2", "w3")
	s.decide() // generation 2 at dp 3 from step 8
	s.progress(14, 1_001_000)
	s.checkpointAt(12)
	s.want(s.decide(), "status e RUNNING gen=2")
	s.register("w5", "h") // after the step-12 checkpoint: not yet
	s.want(s.decide(), "")
	s.progress(17, 1_001_000)
	s.checkpointAt(16)
	s.want(s.decide(), "unassign e; hold w1; hold w2; hold w3; status e WAITING gen=2")
	s.message("generation 2: growing from dp 3 to 4 at checkpoint step 16 (1 idle workers)")
	if r := s.lastRecovery(); r.Reason != "grow" || r.LastStep != 17 || r.DpBefore != 3 {
		t.Errorf("recovery %+v", r)
	}
	// Its workers rejoin once their engines have stopped (a worker still
	// tearing down its generation would take a new peer's connection).
	s.want(s.decide(), "status e WAITING gen=2")
	s.message("waiting up to 30s for 3 surviving workers of generation 2 to rejoin")
	s.reannounce("w1", "w2", "w3")
	s.want(s.decide(), "release w1; release w2; release w3; assign e gen=3 [0=w5(0,0,0) 1=w1(1,0,0) 2=w2(2,0,0) 3=w3(3,0,0)]; status e RUNNING gen=3")
	a := s.job().Assignment
	if a.Dp != 4 || a.Resume != "/ck/e/step-16" {
		t.Errorf("dp %d resume %q", a.Dp, a.Resume)
	}
	if st := s.job().Status; st.Restarts != 1 || s.lastRecovery().LostSteps != 1 {
		t.Errorf("restarts %d (growth is not one), lost %d", st.Restarts, s.lastRecovery().LostSteps)
	}
}

// TestDecideHangNamed: a rank whose peer stopped answering inside an
// all-reduce names it as hung, with the group and the step.
func TestDecideHangNamed(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(6)
	j := s.job()
	j.Results[3] = &loomv1.RankResult{Job: "e", Generation: 1, Rank: 3, Phase: "step", Step: 7,
		Error:    "rank 3: all-reduce: peer rank 2 (h:73): peer did not answer within the group timeout",
		LostPeer: &loomv1.PeerLoss{Rank: 2, Addr: "h:73", Op: "all-reduce", Group: "dp", Timeout: true}}
	s.want(s.decide(), "unassign e; hold w1; hold w2; hold w3; hold w4; status e WAITING gen=1")
	s.message("generation 1: hung rank 2 (h:73, worker w3): it stopped answering in all-reduce on group dp at step 7: rank 3 (h:74) waited for it")
	if r := s.lastRecovery(); r.Reason != "hang" {
		t.Errorf("reason %q", r.Reason)
	}
	// Its own watchdog's report, when it comes first, names it too.
	s = newScene(t, 2, 4, 4)
	s.start(6)
	s.job().Results[2] = &loomv1.RankResult{Job: "e", Generation: 1, Rank: 2, Phase: "step", Step: 7, Hung: true, Op: "all-reduce", Group: "dp",
		Error: "rank 2 (h:73) made no progress for 5s in step 7 (elastic.step_timeout): in all-reduce on group dp for 5s"}
	s.job().Results[1] = &loomv1.RankResult{Job: "e", Generation: 1, Rank: 1, Error: "data: a disk error"}
	s.decide()
	s.message("generation 1: hung rank 2 (h:73, worker w3): rank 2 (h:73) made no progress for 5s in step 7")
}

// TestPickWorkersKeepsTensorGroupsOnAHost: spares come first, but not at
// the price of a tensor-parallel group split over hosts.
func TestPickWorkersKeepsTensorGroupsOnAHost(t *testing.T) {
	ws := []*loomv1.WorkerInfo{worker("w1", "hA", "v1"), worker("w3", "hB", "v1"), worker("w2", "hA", "v1"), worker("w4", "hB", "v1"), worker("w5", "hC", "v1")}
	recorded := map[string]bool{"w2": true}
	ids := func(ws []*loomv1.WorkerInfo) string {
		var s []string
		for _, w := range ws {
			s = append(s, w.Id)
		}
		return strings.Join(s, " ")
	}
	// Sorted spares first: w1 w3 w4 w5 w2. tp 2: hB's pair is all spares,
	// hA's holds a cleared worker, hC has no pair.
	sorted := []*loomv1.WorkerInfo{ws[0], ws[1], ws[3], ws[4], ws[2]}
	if got := ids(pickWorkers(sorted, recorded, 2, 2)); got != "w3 w4" {
		t.Errorf("tp 2, one group: %s, want w3 w4", got)
	}
	if got := ids(pickWorkers(sorted, recorded, 4, 2)); got != "w3 w4 w1 w2" {
		t.Errorf("tp 2, two groups: %s, want w3 w4 w1 w2", got)
	}
	if got := ids(pickWorkers(sorted, recorded, 3, 1)); got != "w1 w3 w4" {
		t.Errorf("tp 1: %s, want the first three", got)
	}
	// More groups than hosts hold whole: the rest spans hosts.
	if got := ids(pickWorkers(sorted, recorded, 4, 4)); got != "w1 w3 w4 w5" {
		t.Errorf("tp 4 over 3 hosts: %s, want the first four", got)
	}
}
