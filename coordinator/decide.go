package coordinator

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Observed is the control-plane state the leader read from etcd, decoded.
// Decide reads it and does not change it.
type Observed struct {
	// Version is the Loom version of the deciding coordinator; only workers
	// of the same version are assigned.
	Version string
	// Jobs in submission order.
	Jobs []JobObserved
	// Workers with a live lease.
	Workers []*loomv1.WorkerInfo
	// WorkerRev is each worker's registration mod revision: a worker
	// rewrites its registration when a generation it ran has ended.
	WorkerRev map[string]int64
	// NowUnixMs is the deciding coordinator's clock: how long jobs have
	// waited for workers (pending timeouts) is measured on it.
	NowUnixMs int64
	// Quarantine holds the workers of failed generations, by worker ID,
	// kept from rendezvous until their registration is newer than the
	// record's (see loomv1.Quarantine).
	Quarantine map[string]*loomv1.Quarantine
}

// JobObserved is one job's keys.
type JobObserved struct {
	Desired *loomv1.JobDesired
	// Parallel is the layout parsed from Desired.SpecYAML; SpecErr is set
	// when the stored spec no longer parses.
	Parallel api.ParallelSpec
	SpecErr  error
	// Status is nil before the leader first writes it.
	Status *loomv1.JobStatus
	// Assignment is nil when no generation runs.
	Assignment *loomv1.Assignment
	// Results of Assignment's generation, by rank.
	Results map[int]*loomv1.RankResult
	// Reports are the ranks' checkpoint reports, by step then rank;
	// Checkpoint is the latest complete checkpoint (nil: none yet).
	Reports    map[int64]map[int]*loomv1.CheckpointReport
	Checkpoint *loomv1.CheckpointRecord
	// CheckpointRev is the mod revision of the checkpoint record: workers
	// registered before it (WorkerRev) were idle at that boundary.
	CheckpointRev int64
	// Elastic is the job's range of data-parallel sizes (nil: parallel.dp
	// only, no rendezvous wait).
	Elastic *ElasticObserved
	// Progress is each rank's latest batch of steps, by rank (possibly of
	// an older generation: compare Generation).
	Progress map[int]*loomv1.RankProgress
	// Snapshots are the in-memory snapshots the workers hold of the job
	// (elastic.snapshot_every), by worker ID; a worker's key goes with its
	// lease.
	Snapshots map[string]*loomv1.SnapshotHolding
}

// ElasticObserved is what Decide needs of a job's elastic section
// (api.ElasticSpec).
type ElasticObserved struct {
	// Reachable are the data-parallel sizes in [MinDP, MaxDP] the spec is
	// valid at, ascending (api.JobSpec.ReachableDP).
	Reachable    []int
	MinDP, MaxDP int
	// RendezvousTimeout is how long a restart waits for survivors.
	RendezvousTimeout time.Duration
	// Steps is train.steps: a checkpoint of the last step is no boundary
	// to grow at.
	Steps int
}

// ActionKind says what an Action writes.
type ActionKind int

// The actions Decide can ask for.
const (
	PutStatus ActionKind = iota + 1
	PutAssignment
	DeleteAssignment
	// Checkpoints is a job's checkpoint work of one round, however many
	// steps it covers: Commits are the steps every rank reported (write
	// their manifests, file I/O before the etcd transaction, then record
	// the newest); every step in DeleteReports has its reports deleted —
	// the committed ones and Drops, those that can no longer complete (their
	// generation ended) or are not newer than the latest checkpoint.
	Checkpoints
	// PutQuarantine keeps Quarantine.WorkerId out of rendezvous until it
	// proves itself alive; DeleteQuarantine (Worker) ends that: the worker
	// is gone, or is assigned again.
	PutQuarantine
	DeleteQuarantine
)

func (k ActionKind) String() string {
	switch k {
	case PutStatus:
		return "put-status"
	case PutAssignment:
		return "put-assignment"
	case DeleteAssignment:
		return "delete-assignment"
	case Checkpoints:
		return "checkpoints"
	case PutQuarantine:
		return "put-quarantine"
	case DeleteQuarantine:
		return "delete-quarantine"
	}
	return fmt.Sprintf("ActionKind(%d)", int(k))
}

// Action is one change the leader must make. Decide returns at most one
// action of each kind per job, and the kinds write disjoint keys, so a
// round's writes hold each key once (see writeSet).
type Action struct {
	Kind       ActionKind
	Job        string
	Status     *loomv1.JobStatus  // PutStatus
	Assignment *loomv1.Assignment // PutAssignment
	// Checkpoints: the steps to commit (oldest first), the steps dropped,
	// and the report ranges to delete; Record is filled in by the leader
	// with the newest step whose manifest it wrote (nil: none).
	Commits       []StepReports
	Drops         []int64
	DeleteReports []StepRange
	Record        *loomv1.CheckpointRecord
	// Run is the job's run id (JobDesired.run_id), which the commits
	// record in the manifests and scope retention to.
	Run string
	// Quarantine (PutQuarantine) and Worker (DeleteQuarantine).
	Quarantine *loomv1.Quarantine
	Worker     string
}

func (a Action) String() string {
	switch a.Kind {
	case PutStatus:
		return fmt.Sprintf("%s %s %s gen=%d %q", a.Kind, a.Job, a.Status.State, a.Status.Generation, a.Status.Message)
	case PutAssignment:
		return fmt.Sprintf("%s %s gen=%d ranks=%d", a.Kind, a.Job, a.Assignment.Generation, len(a.Assignment.Ranks))
	case PutQuarantine:
		return fmt.Sprintf("%s %s (job %s gen=%d)", a.Kind, a.Quarantine.WorkerId, a.Job, a.Quarantine.Generation)
	case DeleteQuarantine:
		return fmt.Sprintf("%s %s", a.Kind, a.Worker)
	case Checkpoints:
		var commits []string
		for _, c := range a.Commits {
			commits = append(commits, fmt.Sprintf("%d(%d ranks)", c.Step, len(c.Reports)))
		}
		return fmt.Sprintf("%s %s commit=%v drop=%v", a.Kind, a.Job, commits, a.Drops)
	}
	return fmt.Sprintf("%s %s", a.Kind, a.Job)
}

// maxFailures bounds JobStatus.Failures.
const maxFailures = 16

// Terminal reports whether a job in state s will not run again.
func Terminal(s loomv1.JobState) bool {
	return s == loomv1.JobState_JOB_STATE_SUCCEEDED || s == loomv1.JobState_JOB_STATE_FAILED ||
		s == loomv1.JobState_JOB_STATE_STOPPED
}

// Decide is the coordinator's whole policy: from observed state it returns
// the writes that move every job toward its desired state. It is pure and
// deterministic; calling it again on the state its actions produce returns
// no actions.
func Decide(o Observed) []Action {
	live := map[string]*loomv1.WorkerInfo{}
	for _, w := range o.Workers {
		live[w.Id] = w
	}
	busy := map[string]bool{}
	for _, j := range o.Jobs {
		if j.Assignment != nil {
			for _, r := range j.Assignment.Ranks {
				busy[r.WorkerId] = true
			}
		}
	}
	var acts []Action
	// Quarantine: a worker of a failed generation is held until its
	// registration is newer than the failure (it rewrote it after the
	// generation ended, which a dead process cannot). A cleared worker's
	// record stays until it is assigned again, so spares come first.
	held, recorded := map[string]bool{}, map[string]bool{}
	for _, id := range sortedKeys(o.Quarantine) {
		switch {
		case live[id] == nil:
			acts = append(acts, Action{Kind: DeleteQuarantine, Worker: id})
		case o.WorkerRev[id] > o.Quarantine[id].RegistrationRevision:
			recorded[id] = true
		default:
			held[id], recorded[id] = true, true
		}
	}
	// Idle workers of our version, spares before workers of a failed
	// generation, grouped by host so that consecutive ranks (a
	// tensor-parallel group) share a host when they can.
	var idle, otherVersion []*loomv1.WorkerInfo
	heldIdle := 0
	for _, w := range o.Workers {
		switch {
		case busy[w.Id]:
		case w.Version != o.Version:
			otherVersion = append(otherVersion, w)
		case held[w.Id]:
			heldIdle++
		default:
			idle = append(idle, w)
		}
	}
	sort.SliceStable(idle, func(i, j int) bool {
		a, b := idle[i], idle[j]
		if recorded[a.Id] != recorded[b.Id] {
			return !recorded[a.Id]
		}
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		if a.Addr != b.Addr {
			return a.Addr < b.Addr
		}
		return a.Id < b.Id
	})
	// Running elastic jobs that may grow once the waiting jobs are served.
	var growable []int

	for ji, j := range o.Jobs {
		d := j.Desired
		el := elasticOf(j)
		cur := j.Status
		if cur == nil {
			cur = &loomv1.JobStatus{Name: d.Name, State: loomv1.JobState_JOB_STATE_PENDING, WorldSize: d.WorldSize}
		}
		next := proto.Clone(cur).(*loomv1.JobStatus)
		next.UpdatedUnixMs = 0
		deleteAssignment := func() {
			if j.Assignment != nil {
				acts = append(acts, Action{Kind: DeleteAssignment, Job: d.Name})
			}
		}
		emit := func() {
			old := proto.Clone(cur).(*loomv1.JobStatus)
			old.UpdatedUnixMs = 0
			if j.Status == nil || !proto.Equal(old, next) {
				acts = append(acts, Action{Kind: PutStatus, Job: d.Name, Status: next})
			}
		}
		// Checkpoints first: a job that just finished has every rank's
		// report of its last save, and its manifest is written before its
		// final status.
		if ck, ok := decideCheckpoints(j); ok {
			acts = append(acts, ck)
		}
		switch {
		case Terminal(cur.State):
			deleteAssignment()
			continue
		case d.Stop:
			deleteAssignment()
			next.State = loomv1.JobState_JOB_STATE_STOPPED
			next.WaitingFor = 0
			next.Message = "stopped"
			if d.StopReason != "" {
				next.Message += ": " + d.StopReason
			}
			emit()
			continue
		case j.SpecErr != nil:
			deleteAssignment()
			next.State = loomv1.JobState_JOB_STATE_FAILED
			next.Message = fmt.Sprintf("stored job spec does not parse: %v; resubmit it", j.SpecErr)
			emit()
			continue
		}

		if a := j.Assignment; a != nil {
			failures := decideRunning(j, a, live, next)
			if next.State != loomv1.JobState_JOB_STATE_RUNNING {
				deleteAssignment()
			}
			noteResumed(j, a, next)
			if len(failures) > 0 {
				addRecovery(next, &loomv1.Recovery{Generation: a.Generation, Reason: failures[0].Kind,
					Message: DescribeFailure(failures[0]), EndedUnixMs: o.NowUnixMs, LastStep: lastStep(j, a.Generation),
					DpBefore: int32(generationDP(a, j.Parallel))})
				// Its workers sit out the next rendezvous until each proves
				// itself alive: one that died may keep its lease a while
				// (also one whose rank had finished).
				for _, r := range a.Ranks {
					if live[r.WorkerId] == nil {
						continue
					}
					acts = append(acts, Action{Kind: PutQuarantine, Job: d.Name, Quarantine: &loomv1.Quarantine{
						WorkerId: r.WorkerId, Job: d.Name, Generation: a.Generation,
						RegistrationRevision: o.WorkerRev[r.WorkerId],
						Reason:               fmt.Sprintf("generation %d of job %s failed with this worker as rank %d", a.Generation, d.Name, r.Rank),
					}})
				}
			}
			if next.State == loomv1.JobState_JOB_STATE_RUNNING && el.maxDP > generationDP(a, j.Parallel) {
				growable = append(growable, ji)
				// Its status is written by the growth pass below (once).
				continue
			}
			emit()
			continue
		}

		// No generation runs: rendezvous. The first generation waits for
		// parallel.dp; a restart takes what it can down to elastic.min_dp,
		// after waiting a while for the ended generation's survivors.
		per := el.perDP
		lo := el.minDP
		if cur.Generation == 0 {
			lo = el.specDP
		}
		dp := el.pick(lo, el.maxDP, len(idle))
		if cur.Generation > 0 && dp < el.maxDP && el.rendezvousMs > 0 {
			survivors := survivorsOf(j, cur, o, held)
			if better := el.pick(lo, el.maxDP, len(idle)+survivors); survivors > 0 && better > dp {
				if next.WaitingSinceUnixMs == 0 {
					next.WaitingSinceUnixMs = o.NowUnixMs
				}
				if o.NowUnixMs-next.WaitingSinceUnixMs < el.rendezvousMs {
					next.State = loomv1.JobState_JOB_STATE_WAITING
					next.WaitingFor = int32(better*per - len(idle))
					next.Message = fmt.Sprintf("waiting up to %v for %d surviving worker%s of generation %d to rejoin (dp %d with them, %d without)",
						time.Duration(el.rendezvousMs)*time.Millisecond, survivors, plural(survivors), cur.Generation, better, dp)
					if n := len(next.Failures); n > 0 {
						next.Message = DescribeFailure(headline(next.Failures)) + "; " + next.Message
					}
					emit()
					continue
				}
			}
		}
		if dp > 0 {
			need := dp * per
			p := j.Parallel
			p.DP = dp
			a := &loomv1.Assignment{
				Job:                d.Name,
				Generation:         cur.Generation + 1,
				CoordinatorVersion: o.Version,
				SpecYaml:           d.SpecYaml,
				WorldSize:          int32(need),
				Resume:             d.Resume,
				Dp:                 int32(dp),
			}
			if a.Generation > 1 {
				// A restart continues from the newest complete checkpoint,
				// the same one on every rank.
				switch {
				case j.Checkpoint != nil:
					a.Resume, a.ResumeStep = j.Checkpoint.Dir, j.Checkpoint.Step
				case d.Resume == "":
					a.Resume = "auto"
				}
				// An in-memory snapshot newer than that checkpoint, of which
				// every old rank's part survived, saves the steps between
				// (the checkpoint stays the ranks' fallback).
				a.Memory = memorySnapshot(j, cur, live, a.ResumeStep)
			}
			for rank, w := range pickWorkers(idle, recorded, need, p.TP) {
				if recorded[w.Id] {
					acts = append(acts, Action{Kind: DeleteQuarantine, Job: d.Name, Worker: w.Id})
				}
				rdp, rpp, rtp := RankCoords(rank, p)
				a.Ranks = append(a.Ranks, &loomv1.RankInfo{
					Rank: int32(rank), WorkerId: w.Id, Addr: w.Addr, Host: w.Host, Threads: w.Threads, SnapshotAddr: w.SnapshotAddr,
					Dp: int32(rdp), Pp: int32(rpp), Tp: int32(rtp),
				})
			}
			idle = without(idle, a.Ranks)
			acts = append(acts, Action{Kind: PutAssignment, Job: d.Name, Assignment: a})
			next.State = loomv1.JobState_JOB_STATE_RUNNING
			next.Generation = a.Generation
			next.Ranks = a.Ranks
			next.WorldSize = int32(need)
			next.Dp = int32(dp)
			next.WaitingFor = 0
			next.WaitingSinceUnixMs = 0
			next.Message = fmt.Sprintf("generation %d: %d ranks training", a.Generation, need)
			if n := len(next.Recoveries); n > 0 && next.Recoveries[n-1].NextGeneration == 0 {
				r := next.Recoveries[n-1]
				r.NextGeneration, r.AssignedUnixMs, r.DpAfter, r.ResumeStep = a.Generation, o.NowUnixMs, int32(dp), a.ResumeStep
				switch {
				case a.Memory != nil:
					r.ResumeStep, r.ResumeSource = a.Memory.Step, "memory"
				case a.ResumeStep > 0:
					r.ResumeSource = "disk"
				}
				r.LostSteps = max(0, r.LastStep-r.ResumeStep)
				if r.DpAfter != r.DpBefore {
					next.Message += fmt.Sprintf(" (dp %d, was %d)", dp, r.DpBefore)
				}
			}
			emit()
			continue
		}
		if next.State != loomv1.JobState_JOB_STATE_WAITING {
			next.State = loomv1.JobState_JOB_STATE_PENDING
		}
		if next.WaitingSinceUnixMs == 0 {
			next.WaitingSinceUnixMs = o.NowUnixMs
		}
		smallest := el.smallest(lo)
		need := smallest * per
		next.WaitingFor = int32(need - len(idle))
		msg := fmt.Sprintf("waiting for %d more worker%s (%d of %d idle workers registered)",
			next.WaitingFor, plural(int(next.WaitingFor)), len(idle), need)
		if smallest != el.maxDP || lo != el.specDP {
			msg += fmt.Sprintf("; it runs with dp %d–%d (×%d workers each)", smallest, el.maxDP, per)
		}
		if t := time.Duration(d.PendingTimeoutMs) * time.Millisecond; t > 0 {
			if waited := time.Duration(o.NowUnixMs-next.WaitingSinceUnixMs) * time.Millisecond; waited >= t {
				next.State = loomv1.JobState_JOB_STATE_FAILED
				lower := "lower parallel.dp"
				if cur.Generation > 0 {
					lower = "lower elastic.min_dp"
				}
				next.Message = fmt.Sprintf("gave up after waiting %v (the pending timeout) for %d more worker%s (%d of %d idle workers registered): start more workers, or %s, and resubmit",
					t, next.WaitingFor, plural(int(next.WaitingFor)), len(idle), need, lower)
				if n := len(next.Failures); n > 0 && cur.Generation > 0 {
					next.Message = DescribeFailure(headline(next.Failures)) + "; " + next.Message
				}
				next.WaitingSinceUnixMs = 0
				emit()
				continue
			}
			msg += fmt.Sprintf(", giving up %v after it began waiting", t)
		}
		switch {
		case heldIdle == 1:
			msg += "; 1 worker of a failed generation waits to prove itself alive before it is used again"
		case heldIdle > 1:
			msg += fmt.Sprintf("; %d workers of a failed generation wait to prove themselves alive before they are used again", heldIdle)
		}
		if len(otherVersion) > 0 {
			var ws []string
			for _, w := range otherVersion {
				ws = append(ws, fmt.Sprintf("%s at %s runs Loom %s", w.Id, w.Addr, w.Version))
			}
			msg += fmt.Sprintf("; ignoring %d worker%s of another Loom version (coordinator runs %s): %s",
				len(otherVersion), plural(len(otherVersion)), o.Version, strings.Join(ws, ", "))
		}
		if n := len(next.Failures); n > 0 && next.State == loomv1.JobState_JOB_STATE_WAITING {
			msg = DescribeFailure(headline(next.Failures)) + "; " + msg
		}
		next.Message = msg
		emit()
	}

	// Growth: a running elastic job below elastic.max_dp resizes at a
	// checkpoint boundary — a checkpoint its generation committed after
	// the extra workers registered — with the workers the waiting jobs
	// left idle. Ending the generation is not a restart; the next round's
	// rendezvous takes the larger size and resumes from that checkpoint.
	for _, ji := range growable {
		j := o.Jobs[ji]
		a := j.Assignment
		el := elasticOf(j)
		cur := j.Status
		if cur == nil {
			cur = &loomv1.JobStatus{Name: j.Desired.Name, State: loomv1.JobState_JOB_STATE_RUNNING, WorldSize: j.Desired.WorldSize}
		}
		next := proto.Clone(cur).(*loomv1.JobStatus)
		next.UpdatedUnixMs = 0
		decideRunning(j, a, live, next)
		noteResumed(j, a, next)
		have := generationDP(a, j.Parallel)
		ck := j.Checkpoint
		fresh := 0 // idle workers that registered before the checkpoint
		for _, w := range idle {
			if o.WorkerRev[w.Id] < j.CheckpointRev {
				fresh++
			}
		}
		grow := 0
		if ck != nil && ck.Generation == a.Generation && ck.Step > a.ResumeStep && len(j.Results) == 0 && ck.Step < int64(el.steps) {
			grow = el.pick(have+1, el.maxDP, have*el.perDP+fresh)
		}
		if grow > have {
			next.State = loomv1.JobState_JOB_STATE_WAITING
			next.WaitingFor = 0
			next.WaitingSinceUnixMs = 0
			msg := fmt.Sprintf("generation %d: growing from dp %d to %d at checkpoint step %d (%d idle workers)",
				a.Generation, have, grow, ck.Step, fresh)
			next.Message = msg
			addRecovery(next, &loomv1.Recovery{Generation: a.Generation, Reason: "grow", Message: msg, EndedUnixMs: o.NowUnixMs,
				LastStep: lastStep(j, a.Generation), DpBefore: int32(have)})
			acts = append(acts, Action{Kind: DeleteAssignment, Job: j.Desired.Name})
			// Its workers rejoin once their engines have stopped, as after a
			// failure: a worker still tearing down the ended generation
			// would take a new peer's connection into it.
			for _, r := range a.Ranks {
				if live[r.WorkerId] != nil {
					acts = append(acts, Action{Kind: PutQuarantine, Job: j.Desired.Name, Quarantine: &loomv1.Quarantine{
						WorkerId: r.WorkerId, Job: j.Desired.Name, Generation: a.Generation,
						RegistrationRevision: o.WorkerRev[r.WorkerId],
						Reason:               fmt.Sprintf("generation %d of job %s ended to grow; rank %d's engine is stopping", a.Generation, j.Desired.Name, r.Rank),
					}})
				}
			}
			idle = idle[min(len(idle), (grow-have)*el.perDP):]
		}
		old := proto.Clone(cur).(*loomv1.JobStatus)
		old.UpdatedUnixMs = 0
		if j.Status == nil || !proto.Equal(old, next) {
			acts = append(acts, Action{Kind: PutStatus, Job: j.Desired.Name, Status: next})
		}
	}
	return acts
}

// maxRecoveries bounds JobStatus.Recoveries.
const maxRecoveries = 16

func addRecovery(st *loomv1.JobStatus, r *loomv1.Recovery) {
	st.Recoveries = append(st.Recoveries, r)
	if n := len(st.Recoveries); n > maxRecoveries {
		st.Recoveries = st.Recoveries[n-maxRecoveries:]
	}
}

// noteResumed completes the recovery that led to generation a once every
// rank has finished its first step: when, the slowest rank's setup and
// checkpoint load, and the step it resumed from.
func noteResumed(j JobObserved, a *loomv1.Assignment, next *loomv1.JobStatus) {
	n := len(next.Recoveries)
	if n == 0 {
		return
	}
	r := next.Recoveries[n-1]
	if r.NextGeneration != a.Generation || r.ResumedUnixMs != 0 {
		return
	}
	var first int64
	var setup, load float64
	resume := r.ResumeStep
	for _, ri := range a.Ranks {
		p := j.Progress[int(ri.Rank)]
		if p == nil || p.Generation != a.Generation || p.FirstStepUnixMs == 0 {
			return
		}
		first = max(first, p.FirstStepUnixMs)
		setup, load = max(setup, p.SetupSeconds), max(load, p.ResumeSeconds)
		resume = max(resume, p.ResumeStep)
	}
	r.ResumedUnixMs, r.SetupSeconds, r.LoadSeconds = first, setup, load
	r.ResumeStep = resume
	r.LostSteps = max(0, r.LastStep-r.ResumeStep)
}

// memorySnapshot picks the in-memory snapshot a restart of job j resumes
// from: the newest step after the checkpoint of step disk, taken by the
// generation that just ended (cur.Generation: an older generation's
// snapshots may lie on a timeline a disk resume abandoned, and a
// generation that failed restoring one falls back to disk this way), for
// which every rank of that generation has its part held by a live worker
// that the ended generation's failures do not name as lost. Each rank's
// source is the first such holder by worker ID. Nil: none qualifies,
// resume from disk.
func memorySnapshot(j JobObserved, cur *loomv1.JobStatus, live map[string]*loomv1.WorkerInfo, disk int64) *loomv1.MemoryResume {
	if len(j.Snapshots) == 0 {
		return nil
	}
	lost := map[string]bool{}
	for _, f := range cur.Failures {
		if f.Generation == cur.Generation && f.Lost {
			lost[f.WorkerId] = true
		}
	}
	// The ended generation's world size, as its holders recorded it (-1:
	// they disagree, nothing is usable).
	world := int32(0)
	var holders []string
	for _, id := range sortedKeys(j.Snapshots) {
		h := j.Snapshots[id]
		if h.Generation != cur.Generation || live[id] == nil || lost[id] || h.WorldSize <= 0 {
			continue
		}
		if world != 0 && world != h.WorldSize {
			return nil
		}
		world = h.WorldSize
		holders = append(holders, id)
	}
	// Each step's sources by rank, first holder by worker ID.
	byStep := map[int64][]*loomv1.SnapshotSource{}
	var steps []int64
	for _, id := range holders {
		h := j.Snapshots[id]
		for _, p := range h.Parts {
			if p.Generation != cur.Generation || p.Step <= disk || p.Rank < 0 || p.Rank >= world || len(p.PartJson) == 0 {
				continue
			}
			src := byStep[p.Step]
			if src == nil {
				src = make([]*loomv1.SnapshotSource, world)
				byStep[p.Step] = src
				steps = append(steps, p.Step)
			}
			if src[p.Rank] == nil {
				src[p.Rank] = &loomv1.SnapshotSource{Rank: p.Rank, WorkerId: id, Addr: h.Addr, PartJson: p.PartJson,
					Step: p.Step, Generation: p.Generation}
			}
		}
	}
	sort.Slice(steps, func(a, b int) bool { return steps[a] > steps[b] })
	for _, step := range steps {
		src := byStep[step]
		complete := true
		for _, s := range src {
			complete = complete && s != nil
		}
		if complete {
			return &loomv1.MemoryResume{Step: step, Generation: cur.Generation, WorldSize: world, Sources: src}
		}
	}
	return nil
}

// lastStep is the newest step any rank of generation gen reported.
func lastStep(j JobObserved, gen uint64) int64 {
	var s int64
	for _, p := range j.Progress {
		if p.Generation != gen {
			continue
		}
		for _, st := range p.Steps {
			s = max(s, st.Step)
		}
	}
	return s
}

// generationDP is the data-parallel size generation a runs with.
func generationDP(a *loomv1.Assignment, p api.ParallelSpec) int {
	if a.Dp > 0 {
		return int(a.Dp)
	}
	return p.DP
}

// survivorsOf counts the live workers of the job's ended generation that
// are still held (their engines are stopping; they rejoin by
// re-registering), not counting those its failures name as lost.
func survivorsOf(j JobObserved, cur *loomv1.JobStatus, o Observed, held map[string]bool) int {
	lost := map[string]bool{}
	for _, f := range cur.Failures {
		if f.Generation == cur.Generation && f.Lost {
			lost[f.WorkerId] = true
		}
	}
	n := 0
	for _, id := range sortedKeys(o.Quarantine) {
		q := o.Quarantine[id]
		if held[id] && q.Job == j.Desired.Name && q.Generation == cur.Generation && !lost[id] {
			n++
		}
	}
	return n
}

// pickWorkers takes need of the sorted idle workers (spares first) for a
// generation whose tensor-parallel groups are tp consecutive ranks: whole
// groups from one host first — groups of spares before groups holding
// cleared workers of a failed generation — then, when hosts do not divide
// into groups, the rest in order.
func pickWorkers(idle []*loomv1.WorkerInfo, recorded map[string]bool, need, tp int) []*loomv1.WorkerInfo {
	if tp <= 1 || need%tp != 0 {
		return idle[:need]
	}
	type group struct {
		ws    []*loomv1.WorkerInfo
		held  int
		order int
	}
	byHost := map[string][]*loomv1.WorkerInfo{}
	var hosts []string
	for _, w := range idle {
		if byHost[w.Host] == nil {
			hosts = append(hosts, w.Host)
		}
		byHost[w.Host] = append(byHost[w.Host], w)
	}
	var groups []group
	var rest []*loomv1.WorkerInfo
	for hi, h := range hosts {
		ws := byHost[h]
		for len(ws) >= tp {
			g := group{ws: ws[:tp], order: hi}
			for _, w := range g.ws {
				if recorded[w.Id] {
					g.held++
				}
			}
			groups = append(groups, g)
			ws = ws[tp:]
		}
		rest = append(rest, ws...)
	}
	sort.SliceStable(groups, func(a, b int) bool {
		if groups[a].held != groups[b].held {
			return groups[a].held < groups[b].held
		}
		return groups[a].order < groups[b].order
	})
	var out []*loomv1.WorkerInfo
	for _, g := range groups {
		if len(out) == need {
			break
		}
		out = append(out, g.ws...)
	}
	if len(out) < need {
		// Fewer whole same-host groups than needed: the rest spans hosts.
		var spill []*loomv1.WorkerInfo
		taken := map[string]bool{}
		for _, w := range out {
			taken[w.Id] = true
		}
		for _, w := range idle {
			if !taken[w.Id] {
				spill = append(spill, w)
			}
		}
		out = append(out, spill[:need-len(out)]...)
	}
	return out
}

// without returns idle less the workers of ranks, in order.
func without(idle []*loomv1.WorkerInfo, ranks []*loomv1.RankInfo) []*loomv1.WorkerInfo {
	used := map[string]bool{}
	for _, r := range ranks {
		used[r.WorkerId] = true
	}
	var out []*loomv1.WorkerInfo
	for _, w := range idle {
		if !used[w.Id] {
			out = append(out, w)
		}
	}
	return out
}

// elastic is a job's range of data-parallel sizes, from its spec.
type elastic struct {
	reachable            []int // ascending
	specDP, minDP, maxDP int
	perDP                int // workers per data-parallel rank: tp × pp
	rendezvousMs         int64
	steps                int
}

// elasticOf reads the job's elastic range; a job whose spec says nothing
// of it (or an observation without it) runs its parallel.dp only.
func elasticOf(j JobObserved) elastic {
	p := j.Parallel
	e := elastic{specDP: max(p.DP, 1), perDP: max(p.TP, 1) * max(p.PP, 1)}
	if j.Elastic == nil {
		e.reachable, e.minDP, e.maxDP = []int{e.specDP}, e.specDP, e.specDP
		e.steps = int(^uint(0) >> 1)
		return e
	}
	e.reachable, e.minDP, e.maxDP = j.Elastic.Reachable, j.Elastic.MinDP, j.Elastic.MaxDP
	e.rendezvousMs, e.steps = j.Elastic.RendezvousTimeout.Milliseconds(), j.Elastic.Steps
	return e
}

// pick is the largest reachable size in [lo, hi] whose world fits in
// workers, or 0.
func (e elastic) pick(lo, hi, workers int) int {
	best := 0
	for _, d := range e.reachable {
		if d >= lo && d <= hi && d*e.perDP <= workers {
			best = d
		}
	}
	return best
}

// smallest is the smallest reachable size ≥ lo (lo when none is).
func (e elastic) smallest(lo int) int {
	for _, d := range e.reachable {
		if d >= lo {
			return d
		}
	}
	return lo
}

// decideRunning sets next for a job whose generation a is assigned: still
// running, succeeded, or ended early by a lost, failed or hung rank; it
// returns the failures when the generation ended early, the headline
// first. A rank whose engine lost its connection to a peer that reported
// nothing of its own blames that peer: the failure names the lost rank
// first and says which ranks saw it — a peer that disconnected is lost, one
// that stopped answering within the step timeout hung.
func decideRunning(j JobObserved, a *loomv1.Assignment, live map[string]*loomv1.WorkerInfo, next *loomv1.JobStatus) []*loomv1.Failure {
	var lost, failedRanks, peerLosses []*loomv1.Failure
	byRank := map[int32]*loomv1.RankInfo{}
	for _, r := range a.Ranks {
		byRank[r.Rank] = r
	}
	blamed := map[int32]*loomv1.Failure{}
	done := 0
	for _, r := range a.Ranks {
		res := j.Results[int(r.Rank)]
		f := &loomv1.Failure{Generation: a.Generation, Rank: r.Rank, Addr: r.Addr, WorkerId: r.WorkerId}
		if res != nil {
			f.Phase, f.Step, f.Op, f.Group = res.Phase, res.Step, res.Op, res.Group
		}
		switch {
		case res != nil && res.Ok:
			done++
		case res != nil && res.LostPeer != nil:
			lp := res.LostPeer
			f.Reason, f.Kind, f.Op, f.Group = res.Error, peerKind(lp), lp.Op, lp.Group
			peerLosses = append(peerLosses, f)
			p := byRank[lp.Rank]
			if p == nil || j.Results[int(p.Rank)] != nil {
				continue // the peer reported for itself
			}
			b := blamed[p.Rank]
			if b == nil {
				b = &loomv1.Failure{Generation: a.Generation, Rank: p.Rank, Addr: p.Addr, WorkerId: p.WorkerId, Lost: true,
					Kind: peerKind(lp), Phase: res.Phase, Step: res.Step, Op: lp.Op, Group: lp.Group}
				blamed[p.Rank] = b
			}
			b.SeenBy = append(b.SeenBy, r.Rank)
			if b.Reason == "" {
				if lp.Timeout {
					b.Reason = fmt.Sprintf("it stopped answering%s: rank %d (%s) waited for it: %s", where(lp.Op, lp.Group, res.Phase, res.Step), r.Rank, r.Addr, res.Error)
				} else {
					b.Reason = fmt.Sprintf("rank %d (%s) lost its connection to it: %s", r.Rank, r.Addr, res.Error)
				}
			}
		case res != nil:
			f.Reason = res.Error
			f.Kind = resultKind(res)
			failedRanks = append(failedRanks, f)
		case live[r.WorkerId] == nil:
			f.Lost = true
			f.Kind = "worker_lost"
			f.Reason = "its lease expired: the worker process exited or lost contact with etcd"
			lost = append(lost, f)
		}
	}
	for _, f := range lost {
		if b := blamed[f.Rank]; b != nil {
			f.SeenBy = b.SeenBy
			delete(blamed, f.Rank)
		}
	}
	for _, r := range a.Ranks {
		if b := blamed[r.Rank]; b != nil {
			if n := len(b.SeenBy); n > 1 {
				b.Reason += fmt.Sprintf(" (ranks %s saw it too)", joinRanks(b.SeenBy[1:]))
			}
			lost = append(lost, b)
		}
	}
	// A rank that hung (its watchdog fired) comes before the ranks that
	// lost it; a lost one before those that failed by themselves.
	sort.SliceStable(failedRanks, func(x, y int) bool {
		return failedRanks[x].Kind == "hang" && failedRanks[y].Kind != "hang"
	})
	failures := append(lost, failedRanks...)
	if len(failures) == 0 {
		// Every failed rank lost a peer that reported for itself (or all
		// lost each other): list them as they said.
		failures = peerLosses
	}
	next.Generation = a.Generation
	next.Ranks = a.Ranks
	next.WorldSize = a.WorldSize
	next.Dp = int32(generationDP(a, j.Parallel))
	next.WaitingFor = 0
	switch {
	case len(failures) > 0:
		next.Failures = append(next.Failures, failures...)
		if n := len(next.Failures); n > maxFailures {
			next.Failures = next.Failures[n-maxFailures:]
		}
		what := DescribeFailure(failures[0])
		if len(failures) > 1 {
			what += fmt.Sprintf(" (and %d more rank%s)", len(failures)-1, plural(len(failures)-1))
		}
		if next.Restarts < j.Desired.MaxRestarts {
			next.Restarts++
			next.State = loomv1.JobState_JOB_STATE_WAITING
			next.WaitingSinceUnixMs = 0 // set when the rendezvous starts waiting
			next.WaitingFor = a.WorldSize
			next.Message = fmt.Sprintf("%s; restart %d of %d: waiting for workers", what, next.Restarts, j.Desired.MaxRestarts)
		} else {
			next.State = loomv1.JobState_JOB_STATE_FAILED
			next.Message = what
			if j.Desired.MaxRestarts > 0 {
				next.Message += fmt.Sprintf("; no restarts left (max %d)", j.Desired.MaxRestarts)
			}
		}
		return failures
	case done == len(a.Ranks):
		next.State = loomv1.JobState_JOB_STATE_SUCCEEDED
		next.Message = fmt.Sprintf("generation %d: all %d ranks finished", a.Generation, done)
	default:
		next.State = loomv1.JobState_JOB_STATE_RUNNING
		next.Message = fmt.Sprintf("generation %d: %d ranks training", a.Generation, len(a.Ranks))
	}
	return nil
}

// peerKind classifies a lost peer: it stopped answering (hang) or went
// away (worker_lost).
func peerKind(lp *loomv1.PeerLoss) string {
	if lp.Timeout {
		return "hang"
	}
	return "worker_lost"
}

// resultKind classifies a rank's own failure.
func resultKind(res *loomv1.RankResult) string {
	switch {
	case res.Hung:
		return "hang"
	case containsAny(res.Error, "loss is NaN", "loss is +Inf", "loss is -Inf"):
		return "loss_not_finite"
	}
	return "rank_failed"
}

// where renders " in OP on group G at step S" (or "during setup") from
// what is known.
func where(op, group, phase string, step int64) string {
	var b strings.Builder
	if op != "" {
		b.WriteString(" in " + op)
	}
	if group != "" {
		b.WriteString(" on group " + group)
	}
	switch {
	case phase == "setup":
		b.WriteString(" during setup")
	case phase == "checkpoint":
		fmt.Fprintf(&b, " writing the checkpoint of step %d", step)
	case phase == "final":
		b.WriteString(" saving the final model")
	case step > 0:
		fmt.Fprintf(&b, " at step %d", step)
	}
	return b.String()
}

func joinRanks(rs []int32) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprint(r)
	}
	return strings.Join(parts, ", ")
}

// headline is the first failure of the latest generation that failed.
func headline(fs []*loomv1.Failure) *loomv1.Failure {
	last := fs[len(fs)-1]
	for _, f := range fs {
		if f.Generation == last.Generation {
			return f
		}
	}
	return last
}

// DescribeFailure is a failure's line in statuses and `loom status`: the
// generation, what happened (failed, hung, lost), the rank, its address and
// worker, and the reason.
func DescribeFailure(f *loomv1.Failure) string {
	verb := "failed"
	switch {
	case f.Kind == "hang":
		verb = "hung"
	case f.Lost:
		verb = "lost"
	}
	return fmt.Sprintf("generation %d: %s rank %d (%s, worker %s): %s", f.Generation, verb, f.Rank, f.Addr, f.WorkerId, f.Reason)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
