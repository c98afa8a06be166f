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

	for _, j := range o.Jobs {
		d := j.Desired
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
			failed := decideRunning(j, a, live, next)
			if next.State != loomv1.JobState_JOB_STATE_RUNNING {
				deleteAssignment()
			}
			if failed {
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
			emit()
			continue
		}

		// No generation runs: rendezvous.
		need := int(d.WorldSize)
		if len(idle) >= need {
			a := &loomv1.Assignment{
				Job:                d.Name,
				Generation:         cur.Generation + 1,
				CoordinatorVersion: o.Version,
				SpecYaml:           d.SpecYaml,
				WorldSize:          d.WorldSize,
				Resume:             d.Resume,
			}
			if a.Generation > 1 {
				// A restart continues from the newest complete checkpoint.
				a.Resume = "auto"
			}
			for rank, w := range idle[:need] {
				if recorded[w.Id] {
					acts = append(acts, Action{Kind: DeleteQuarantine, Job: d.Name, Worker: w.Id})
				}
				dp, pp, tp := RankCoords(rank, j.Parallel)
				a.Ranks = append(a.Ranks, &loomv1.RankInfo{
					Rank: int32(rank), WorkerId: w.Id, Addr: w.Addr, Host: w.Host, Threads: w.Threads,
					Dp: int32(dp), Pp: int32(pp), Tp: int32(tp),
				})
			}
			idle = idle[need:]
			acts = append(acts, Action{Kind: PutAssignment, Job: d.Name, Assignment: a})
			next.State = loomv1.JobState_JOB_STATE_RUNNING
			next.Generation = a.Generation
			next.Ranks = a.Ranks
			next.WaitingFor = 0
			next.WaitingSinceUnixMs = 0
			next.Message = fmt.Sprintf("generation %d: %d ranks training", a.Generation, need)
			emit()
			continue
		}
		if next.State != loomv1.JobState_JOB_STATE_WAITING {
			next.State = loomv1.JobState_JOB_STATE_PENDING
		}
		if next.WaitingSinceUnixMs == 0 {
			next.WaitingSinceUnixMs = o.NowUnixMs
		}
		next.WaitingFor = int32(need - len(idle))
		msg := fmt.Sprintf("waiting for %d more worker%s (%d of %d idle workers registered)",
			next.WaitingFor, plural(int(next.WaitingFor)), len(idle), need)
		if t := time.Duration(d.PendingTimeoutMs) * time.Millisecond; t > 0 {
			if waited := time.Duration(o.NowUnixMs-next.WaitingSinceUnixMs) * time.Millisecond; waited >= t {
				next.State = loomv1.JobState_JOB_STATE_FAILED
				next.Message = fmt.Sprintf("gave up after waiting %v (the pending timeout) for %d more worker%s (%d of %d idle workers registered): start more workers, or lower parallel.dp, and resubmit",
					t, next.WaitingFor, plural(int(next.WaitingFor)), len(idle), need)
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
			msg = describeFailure(next.Failures[n-1]) + "; " + msg
		}
		next.Message = msg
		emit()
	}
	return acts
}

// decideRunning sets next for a job whose generation a is assigned: still
// running, succeeded, or ended early by a lost or failed rank; it reports
// whether the generation failed. A rank whose engine lost its connection
// to a peer that reported nothing of its own blames that peer: the failure
// names the lost rank first and says which ranks saw it.
func decideRunning(j JobObserved, a *loomv1.Assignment, live map[string]*loomv1.WorkerInfo, next *loomv1.JobStatus) (failed bool) {
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
		switch {
		case res != nil && res.Ok:
			done++
		case res != nil && res.LostPeer != nil:
			f.Reason = res.Error
			peerLosses = append(peerLosses, f)
			p := byRank[res.LostPeer.Rank]
			if p == nil || j.Results[int(p.Rank)] != nil {
				continue // the peer reported for itself
			}
			b := blamed[p.Rank]
			if b == nil {
				b = &loomv1.Failure{Generation: a.Generation, Rank: p.Rank, Addr: p.Addr, WorkerId: p.WorkerId, Lost: true}
				blamed[p.Rank] = b
			}
			b.SeenBy = append(b.SeenBy, r.Rank)
			if b.Reason == "" {
				b.Reason = fmt.Sprintf("rank %d (%s) lost its connection to it: %s", r.Rank, r.Addr, res.Error)
			}
		case res != nil:
			f.Reason = res.Error
			failedRanks = append(failedRanks, f)
		case live[r.WorkerId] == nil:
			f.Lost = true
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
	failures := append(lost, failedRanks...)
	if len(failures) == 0 {
		// Every failed rank lost a peer that reported for itself (or all
		// lost each other): list them as they said.
		failures = peerLosses
	}
	next.Generation = a.Generation
	next.Ranks = a.Ranks
	next.WaitingFor = 0
	switch {
	case len(failures) > 0:
		next.Failures = append(next.Failures, failures...)
		if n := len(next.Failures); n > maxFailures {
			next.Failures = next.Failures[n-maxFailures:]
		}
		what := describeFailure(failures[0])
		if len(failures) > 1 {
			what += fmt.Sprintf(" (and %d more rank%s)", len(failures)-1, plural(len(failures)-1))
		}
		if next.Restarts < j.Desired.MaxRestarts {
			next.Restarts++
			next.State = loomv1.JobState_JOB_STATE_WAITING
			next.WaitingSinceUnixMs = 0 // set when the rendezvous starts waiting
			next.WaitingFor = j.Desired.WorldSize
			next.Message = fmt.Sprintf("%s; restart %d of %d: waiting for workers", what, next.Restarts, j.Desired.MaxRestarts)
		} else {
			next.State = loomv1.JobState_JOB_STATE_FAILED
			next.Message = what
			if j.Desired.MaxRestarts > 0 {
				next.Message += fmt.Sprintf("; no restarts left (max %d)", j.Desired.MaxRestarts)
			}
		}
		return true
	case done == len(a.Ranks):
		next.State = loomv1.JobState_JOB_STATE_SUCCEEDED
		next.Message = fmt.Sprintf("generation %d: all %d ranks finished", a.Generation, done)
	default:
		next.State = loomv1.JobState_JOB_STATE_RUNNING
		next.Message = fmt.Sprintf("generation %d: %d ranks training", a.Generation, len(a.Ranks))
	}
	return false
}

func joinRanks(rs []int32) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprint(r)
	}
	return strings.Join(parts, ", ")
}

// describeFailure names the rank, its address and worker, and the reason.
func describeFailure(f *loomv1.Failure) string {
	verb := "failed"
	if f.Lost {
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
