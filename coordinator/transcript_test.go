package coordinator

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// The randomized transcript test of the control plane. A seeded generator
// plays the outside world against the leader — workers register and lose
// their leases, users submit, stop and resubmit jobs, ranks report steps,
// checkpoint parts and results, the leader changes (mid-round, too), and
// the leader sometimes stays away while many of these pile up — and after
// every burst of events the leader reconciles until Decide asks for
// nothing more. After every round the test checks that what was written
// is one valid etcd transaction per batch; at every fixed point it checks
// the invariants below; at the end every job must finish once the world
// stops failing (progress). It runs on an in-memory store with etcd's
// transaction rule (TestDecideTranscript, fixed seeds in the suite) and on
// the embedded etcd (TestDecideTranscriptEtcd). A longer randomized soak:
//
//	go test ./coordinator -run Transcript -soak=10m
var (
	soak            = flag.Duration("soak", 0, "run the randomized control-plane transcript for this long (new seeds) instead of the fixed seeds")
	transcriptSeed  = flag.Int64("transcript.seed", 0, "replay the control-plane transcript of this seed")
	transcriptSteps = flag.Int("transcript.steps", 0, "with -transcript.seed: the number of bursts the transcript played (as its failure says)")
)

// transcriptStore is the control-plane state the world and the leader
// share: etcd, or an in-memory stand-in with etcd's transaction rule.
type transcriptStore interface {
	keys() Keys
	// setLog sends the leader's log lines to the transcript; setClock
	// gives the leader the world's clock.
	setLog(func(string))
	setClock(func() time.Time)
	put(key, value string)
	del(key string)
	delPrefix(prefix string)
	register(id, value string) // under a lease of its own
	reannounce(id string)      // the worker rewrites its registration
	expire(id string)          // the worker's lease ends
	snapshot() *snapshot
	// round is one observe–decide–act round of the leader; it reports
	// whether it wrote anything.
	round() (changed bool, err error)
	// leaderChange ends the leader: it may die after applying only some of
	// a round's transactions, and a deposed leader's write is refused.
	leaderChange(r *rand.Rand) error
	close()
}

// world drives one transcript.
type world struct {
	t     *testing.T
	seed  int64
	steps int       // bursts the transcript plays
	now   time.Time // the leader's clock
	r     *rand.Rand
	keys  Keys
	store transcriptStore
	dir   string // checkpoint directories live under it
	log   []string

	nextWorker, nextJob, submissions int
	// lastReport is each rank's last reported checkpoint step, by
	// job/generation/rank.
	lastReport map[string]int
	// record is the newest checkpoint step each submission has recorded.
	record map[string]int64
	// expired are the workers whose lease the world ended; frozen ones
	// (kill -STOP, or a crash before the lease runs out) keep their lease
	// but never act again.
	expired, frozen map[string]bool
	// ran is the generations each worker was assigned ("job/gen");
	// announced the ones after whose end it rewrote its registration.
	ran, announced map[string]map[string]bool
	// frozenGens counts the generations a frozen worker was given after
	// it froze.
	frozenGens map[string]map[string]bool
	// failedGens are the generations that failed ("job@desiredrev/gen").
	failedGens map[string]bool
	// seenAssign are the generations checked at first sight.
	seenAssign map[string]bool
	// jobSteps and every of each job, from its spec.
	jobs map[string]jobParams
}

type jobParams struct {
	dp, steps, every int
	// minDP and maxDP are the elastic range (equal to dp: fixed size); the
	// global batch of 12 windows makes dp 5 unreachable.
	minDP, maxDP int
	dir          string
}

// transcriptReachable are the dp sizes a global batch of 12 (micro-batch
// 1) splits over, up to the 8 workers the world registers at most.
var transcriptReachable = []int{1, 2, 3, 4, 6}

func newWorld(t *testing.T, seed int64, store transcriptStore) *world {
	w := &world{t: t, seed: seed, r: rand.New(rand.NewSource(seed)), keys: store.keys(), store: store, dir: t.TempDir(),
		lastReport: map[string]int{}, record: map[string]int64{}, jobs: map[string]jobParams{}, expired: map[string]bool{},
		frozen: map[string]bool{}, ran: map[string]map[string]bool{}, announced: map[string]map[string]bool{}, frozenGens: map[string]map[string]bool{}, failedGens: map[string]bool{},
		seenAssign: map[string]bool{}}
	store.setLog(func(line string) { w.log = append(w.log, "  leader: "+line) })
	w.now = time.Unix(1_800_000_000, 0)
	store.setClock(func() time.Time { return w.now })
	return w
}

// lineHandler is a slog.Handler that hands each record to a function as
// one line (the transcript's log).
type lineHandler struct {
	out   func(string)
	attrs []slog.Attr
}

func (h *lineHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	if h.out != nil {
		h.out(b.String())
	}
	return nil
}
func (h *lineHandler) WithAttrs(as []slog.Attr) slog.Handler { return h }
func (h *lineHandler) WithGroup(string) slog.Handler         { return h }

func (w *world) logf(format string, args ...any) {
	w.log = append(w.log, fmt.Sprintf(format, args...))
}

// fail reports the transcript so far: the seed reproduces it.
func (w *world) fail(format string, args ...any) {
	seed := w.seed
	w.t.Helper()
	tail := w.log
	if len(tail) > 80 {
		tail = tail[len(tail)-80:]
	}
	w.t.Fatalf("seed %d: %s\nlast %d transcript lines (replay: -run '%s' -transcript.seed %d -transcript.steps %d):\n%s",
		seed, fmt.Sprintf(format, args...), len(tail), strings.Split(w.t.Name(), "/")[0], seed, w.steps, strings.Join(tail, "\n"))
}

func (w *world) specYAML(name string, p jobParams) []byte {
	return fmt.Appendf(nil, "name: %s\ndata: {path: x.bin}\nparallel: {dp: %d}\ntrain: {steps: %d, global_batch: 12, micro_batch: 1}\ncheckpoint: {dir: %s, every: %d, keep: 2}\nelastic: {min_dp: %d, max_dp: %d, rendezvous_timeout: 30s}\n",
		name, p.dp, p.steps, p.dir, p.every, p.minDP, p.maxDP)
}

// event plays one random event of the outside world on the state s.
func (w *world) event(s *snapshot) {
	o := s.Observed
	var running, active, terminal []JobObserved
	for _, j := range o.Jobs {
		switch {
		case j.Assignment != nil:
			running = append(running, j)
			active = append(active, j)
		case j.Status != nil && Terminal(j.Status.State):
			terminal = append(terminal, j)
		default:
			active = append(active, j)
		}
	}
	// Event kinds by weight; one that is not possible now is skipped.
	n := w.r.Intn(100)
	switch {
	case n < 10: // a worker registers
		if len(o.Workers) >= 8 {
			return
		}
		w.nextWorker++
		id := fmt.Sprintf("w%02d", w.nextWorker)
		host := fmt.Sprintf("h%d", w.r.Intn(3))
		w.store.register(id, Encode(&loomv1.WorkerInfo{Id: id, Addr: fmt.Sprintf("%s:%d", host, 7000+w.nextWorker), Host: host, Version: "v1", Threads: 1}))
		w.logf("event: register %s", id)
	case n < 15: // a worker's lease is lost
		if len(o.Workers) == 0 {
			return
		}
		id := o.Workers[w.r.Intn(len(o.Workers))].Id
		if w.expired[id] {
			return
		}
		w.expired[id] = true
		w.store.expire(id)
		w.logf("event: lease of %s lost", id)
	case n < 21: // a job is submitted: a new name or a finished job's
		if len(active) >= 4 {
			return
		}
		name := ""
		if len(terminal) > 0 && w.r.Intn(2) == 0 {
			name = terminal[w.r.Intn(len(terminal))].Desired.Name
		} else {
			w.nextJob++
			name = fmt.Sprintf("j%d", w.nextJob)
		}
		w.submissions++
		p := jobParams{dp: 1 + w.r.Intn(3), steps: 2 + w.r.Intn(10), every: w.r.Intn(3),
			dir: filepath.Join(w.dir, fmt.Sprintf("sub%d", w.submissions))}
		p.minDP, p.maxDP = p.dp, p.dp
		if w.r.Intn(2) == 0 { // elastic: any reachable range around dp
			var lower, upper []int
			for _, d := range transcriptReachable {
				if d <= p.dp {
					lower = append(lower, d)
				}
				if d >= p.dp && d <= p.dp+2 {
					upper = append(upper, d)
				}
			}
			p.minDP, p.maxDP = lower[w.r.Intn(len(lower))], upper[w.r.Intn(len(upper))]
		}
		w.jobs[name] = p
		d := &loomv1.JobDesired{Name: name, SpecYaml: w.specYAML(name, p), WorldSize: int32(p.dp), MaxRestarts: int32(w.r.Intn(3)),
			SubmittedUnixMs: w.now.UnixMilli()}
		if w.r.Intn(3) == 0 {
			d.PendingTimeoutMs = int64(30_000 + w.r.Intn(90_000))
		}
		// What Coordinator.Submit writes for a new or finished job.
		for _, k := range []string{w.keys.Status(name), w.keys.Assignment(name)} {
			w.store.del(k)
		}
		for _, pre := range []string{w.keys.Job(name) + "results/", w.keys.Job(name) + "progress/", w.keys.Checkpoint(name)} {
			w.store.delPrefix(pre)
		}
		w.store.put(w.keys.Desired(name), Encode(d))
		w.logf("event: submit %s dp=%d (%d–%d) steps=%d every=%d max_restarts=%d pending_timeout=%dms", name, p.dp, p.minDP, p.maxDP, p.steps, p.every, d.MaxRestarts, d.PendingTimeoutMs)
	case n < 24: // a user stops a job
		if len(active) == 0 {
			return
		}
		j := active[w.r.Intn(len(active))]
		d := proto.Clone(j.Desired).(*loomv1.JobDesired)
		d.Stop, d.StopReason = true, "transcript"
		w.store.put(w.keys.Desired(d.Name), Encode(d))
		w.logf("event: stop %s", d.Name)
	case n < 64: // a rank's checkpoint files are durable
		if len(running) == 0 {
			return
		}
		w.reportCheckpoint(running[w.r.Intn(len(running))])
	case n < 70: // a rank reports steps (progress)
		if len(running) == 0 {
			return
		}
		j := running[w.r.Intn(len(running))]
		rank := w.r.Intn(len(j.Assignment.Ranks))
		p := &loomv1.RankProgress{Job: j.Desired.Name, Generation: j.Assignment.Generation, Rank: int32(rank),
			Steps:           []*loomv1.StepStats{{Step: int64(1 + w.r.Intn(10)), Loss: 1}},
			FirstStepUnixMs: w.now.UnixMilli(), SetupSeconds: 1, ResumeSeconds: 0.5, ResumeStep: j.Assignment.ResumeStep}
		w.store.put(w.keys.Progress(j.Desired.Name, rank), Encode(p))
		w.logf("event: %s gen %d rank %d reports a step", j.Desired.Name, j.Assignment.Generation, rank)
	case n < 88: // a rank ends: done once it saved every checkpoint, or failed
		if len(running) == 0 {
			return
		}
		j := running[w.r.Intn(len(running))]
		rank := w.r.Intn(len(j.Assignment.Ranks))
		if j.Results[rank] != nil || w.frozen[j.Assignment.Ranks[rank].WorkerId] {
			return
		}
		// A rank with a frozen peer loses it; any rank may fail by itself
		// or lose a peer (which may then report its own failure).
		for _, r := range j.Assignment.Ranks {
			if w.frozen[r.WorkerId] && j.Results[int(r.Rank)] == nil && int(r.Rank) != rank {
				w.peerLost(j, rank, int(r.Rank))
				return
			}
		}
		if w.r.Intn(6) == 0 {
			if peer := w.r.Intn(len(j.Assignment.Ranks)); peer != rank && w.r.Intn(2) == 0 {
				w.peerLost(j, rank, peer)
			} else {
				w.result(j, rank, false)
			}
			return
		}
		p := w.jobs[j.Desired.Name]
		if p.every > 0 && w.lastReport[fmt.Sprintf("%s/%d/%d", j.Desired.Name, j.Assignment.Generation, rank)]+p.every <= p.steps {
			w.reportCheckpoint(j) // not done yet: it saves on
			return
		}
		w.result(j, rank, true)
	case n < 91: // a worker freezes: it keeps its lease until the world expires it
		if len(o.Workers) == 0 {
			return
		}
		id := o.Workers[w.r.Intn(len(o.Workers))].Id
		if w.frozen[id] || w.expired[id] {
			return
		}
		w.frozen[id] = true
		w.frozenGens[id] = map[string]bool{}
		w.logf("event: %s freezes (its lease lives on)", id)
	case n < 94: // workers see their generation end and rewrite their registration
		w.announce(s, 0.6)
	case n < 96: // time passes
		d := time.Duration(1+w.r.Intn(90)) * time.Second
		w.now = w.now.Add(d)
		w.logf("event: %v pass", d)
	default: // the leader changes
		if err := w.store.leaderChange(w.r); err != nil {
			w.fail("leader change: %v", err)
		}
		w.logf("event: leader change")
	}
}

// announce has each live, unfrozen worker whose generation has ended
// rewrite its registration (each with probability p; 0: all), as workers
// do when their assignment is deleted.
func (w *world) announce(s *snapshot, p float64) {
	current := map[string]bool{}
	for _, j := range s.Observed.Jobs {
		if j.Assignment != nil {
			current[fmt.Sprintf("%s/%d", j.Desired.Name, j.Assignment.Generation)] = true
		}
	}
	for _, wk := range s.Observed.Workers {
		id := wk.Id
		if w.frozen[id] || w.expired[id] {
			continue
		}
		for gen := range w.ran[id] {
			if current[gen] || w.announced[id][gen] || p > 0 && w.r.Float64() > p {
				continue
			}
			if w.announced[id] == nil {
				w.announced[id] = map[string]bool{}
			}
			w.announced[id][gen] = true
			w.store.reannounce(id)
			w.logf("event: %s saw generation %s end and re-registers", id, gen)
		}
	}
}

// peerLost is rank's engine failing because it lost peer.
func (w *world) peerLost(j JobObserved, rank, peer int) {
	a := j.Assignment
	p := a.Ranks[peer]
	res := &loomv1.RankResult{Job: j.Desired.Name, Generation: a.Generation, Rank: int32(rank), WorkerId: a.Ranks[rank].WorkerId,
		Error:    fmt.Sprintf("all-reduce: peer rank %d (%s): connection to peer lost", peer, p.Addr),
		LostPeer: &loomv1.PeerLoss{Rank: int32(peer), Addr: p.Addr, Op: "all-reduce"}}
	w.store.put(w.keys.Result(j.Desired.Name, a.Generation, rank), Encode(res))
	w.logf("event: %s gen %d rank %d lost peer rank %d", j.Desired.Name, a.Generation, rank, peer)
}

func (w *world) result(j JobObserved, rank int, ok bool) {
	res := &loomv1.RankResult{Job: j.Desired.Name, Generation: j.Assignment.Generation, Rank: int32(rank),
		WorkerId: j.Assignment.Ranks[rank].WorkerId, Ok: ok}
	if !ok {
		res.Error = "transcript: injected engine failure"
	}
	w.store.put(w.keys.Result(j.Desired.Name, j.Assignment.Generation, rank), Encode(res))
	w.logf("event: %s gen %d rank %d result ok=%v", j.Desired.Name, j.Assignment.Generation, rank, ok)
}

// reportCheckpoint writes one rank's files of its next checkpoint step
// and reports them, as a worker does.
func (w *world) reportCheckpoint(j JobObserved) {
	p := w.jobs[j.Desired.Name]
	if p.every == 0 {
		return
	}
	a := j.Assignment
	rank := w.r.Intn(len(a.Ranks))
	key := fmt.Sprintf("%s/%d/%d", j.Desired.Name, a.Generation, rank)
	step := w.lastReport[key] + p.every
	if step > p.steps {
		return
	}
	w.lastReport[key] = step
	w.writeReport(j, rank, step)
}

func (w *world) writeReport(j JobObserved, rank, step int) {
	p := w.jobs[j.Desired.Name]
	a := j.Assignment
	world := len(a.Ranks)
	jobDir := filepath.Join(p.dir, j.Desired.Name)
	s := &checkpoint.Snapshot{
		Part: checkpoint.RankPart{Job: j.Desired.Name, Step: step, Rank: rank,
			Layout: checkpoint.Layout{DP: world, TP: 1, PP: 1, WorldSize: world}, Spec: string(w.specYAML(j.Desired.Name, p))},
		State:  checkpoint.RankState{DataStep: step},
		Slices: []checkpoint.Slice{{Key: checkpoint.SliceKey("param", "w", int64(rank)), Kind: "param", Name: "w", Shape: []int{world}, Start: int64(rank), Len: 1}},
		Data:   []float32{float32(step)},
	}
	part, err := checkpoint.WriteRank(context.Background(), jobDir, s, checkpoint.WriteOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	b, _ := json.Marshal(part)
	rep := &loomv1.CheckpointReport{Job: j.Desired.Name, Generation: a.Generation, Step: int64(step), Rank: int32(rank),
		WorldSize: int32(world), PartJson: b}
	w.store.put(w.keys.CheckpointReport(j.Desired.Name, int64(step), rank), Encode(rep))
	w.logf("event: %s gen %d rank %d reports checkpoint step %d", j.Desired.Name, a.Generation, rank, step)
}

// settle lets the leader reconcile until it writes nothing more.
func (w *world) settle() {
	w.t.Helper()
	for round := 0; ; round++ {
		changed, err := w.store.round()
		if err != nil {
			w.fail("round %d: %v", round, err)
		}
		if !changed {
			return
		}
		if round >= 8 {
			w.fail("no fixed point after %d rounds: Decide keeps asking for writes", round)
		}
	}
}

// check verifies the invariants of a fixed point.
func (w *world) check() {
	w.t.Helper()
	s := w.store.snapshot()
	o := s.Observed
	live := map[string]bool{}
	for _, wk := range o.Workers {
		live[wk.Id] = true
	}
	for _, j := range o.Jobs {
		if j.Status != nil {
			for _, f := range j.Status.Failures {
				w.failedGens[fmt.Sprintf("%s@%d/%d", j.Desired.Name, s.DesiredRev[j.Desired.Name], f.Generation)] = true
			}
		}
	}
	owner := map[string]string{}
	idle := 0
	for _, wk := range o.Workers {
		if q := o.Quarantine[wk.Id]; q == nil || o.WorkerRev[wk.Id] > q.RegistrationRevision {
			idle++
		}
	}
	for _, j := range o.Jobs {
		name := j.Desired.Name
		st := j.Status
		if st == nil {
			w.fail("job %s has no status at a fixed point", name)
		}
		if a := j.Assignment; a != nil {
			if st.State != running || st.Generation != a.Generation {
				w.fail("job %s is %s gen %d with generation %d assigned", name, stateName(st.State), st.Generation, a.Generation)
			}
			w.checkAssignment(j, s)
			for _, r := range a.Ranks {
				// A rank that finished may have exited; the others must be live.
				if res := j.Results[int(r.Rank)]; (res == nil || !res.Ok) && !live[r.WorkerId] {
					w.fail("job %s gen %d rank %d stays on worker %s, whose lease is gone", name, a.Generation, r.Rank, r.WorkerId)
				}
				if other, ok := owner[r.WorkerId]; ok {
					w.fail("worker %s is assigned to %s and %s", r.WorkerId, other, name)
				}
				owner[r.WorkerId] = name
				if q := o.Quarantine[r.WorkerId]; live[r.WorkerId] && (q == nil || o.WorkerRev[r.WorkerId] > q.RegistrationRevision) {
					idle--
				}
				gen := fmt.Sprintf("%s/%d", name, a.Generation)
				if w.ran[r.WorkerId] == nil {
					w.ran[r.WorkerId] = map[string]bool{}
				}
				w.ran[r.WorkerId][gen] = true
				if w.frozen[r.WorkerId] {
					sub := fmt.Sprintf("%s@%d/%d", name, s.DesiredRev[name], a.Generation)
					for prev := range w.frozenGens[r.WorkerId] {
						if prev != sub && w.failedGens[prev] {
							w.fail("frozen worker %s is given %s after generation %s failed with it: a worker of a failed generation must prove itself alive first",
								r.WorkerId, sub, prev)
						}
					}
					w.frozenGens[r.WorkerId][sub] = true
				}
			}
		} else if st.State == running {
			w.fail("job %s is RUNNING without an assignment", name)
		}
		if j.Desired.Stop && !Terminal(st.State) {
			w.fail("job %s was stopped but is %s", name, stateName(st.State))
		}
		if !Terminal(st.State) && j.Assignment == nil {
			if st.WaitingSinceUnixMs == 0 {
				w.fail("job %s is %s without waiting_since", name, stateName(st.State))
			}
			if t := j.Desired.PendingTimeoutMs; t > 0 && w.now.UnixMilli()-st.WaitingSinceUnixMs >= t {
				w.fail("job %s has waited %v, past its pending timeout %v, and is still %s", name,
					time.Duration(w.now.UnixMilli()-st.WaitingSinceUnixMs)*time.Millisecond, time.Duration(t)*time.Millisecond, stateName(st.State))
			}
		}
		if st.Restarts > j.Desired.MaxRestarts {
			w.fail("job %s restarted %d times, max %d", name, st.Restarts, j.Desired.MaxRestarts)
		}
		w.checkRecoveries(j)
		latest := int64(-1)
		if j.Checkpoint != nil {
			latest = j.Checkpoint.Step
		}
		sub := fmt.Sprintf("%s@%d", name, s.DesiredRev[name])
		if prev, ok := w.record[sub]; ok && latest < prev {
			w.fail("job %s: recorded checkpoint went back from step %d to %d", name, prev, latest)
		}
		w.record[sub] = latest
		for step, byRank := range j.Reports {
			if step <= latest {
				w.fail("job %s: reports of step %d stay although step %d is recorded", name, step, latest)
			}
			gen := uint64(0)
			for _, r := range byRank {
				gen = r.Generation
			}
			if j.Assignment == nil || j.Assignment.Generation != gen {
				w.fail("job %s: reports of step %d (generation %d) stay after their generation ended", name, step, gen)
			}
			world := 0
			for _, r := range byRank {
				world = int(r.WorldSize)
			}
			if len(byRank) == world {
				w.fail("job %s: step %d reported by every rank but not committed", name, step)
			}
		}
	}
	// Progress: a job left unassigned needs more workers than are idle
	// (jobs are served in submission order; later ones may backfill), or
	// waits, for at most its rendezvous timeout, for the survivors of its
	// ended generation to rejoin.
	for _, j := range o.Jobs {
		if j.Assignment != nil || Terminal(j.Status.State) {
			continue
		}
		p := w.jobs[j.Desired.Name]
		need := p.minDP
		if j.Status.Generation == 0 {
			need = p.dp
		}
		rejoin := strings.Contains(j.Status.Message, "to rejoin")
		waited := time.Duration(w.now.UnixMilli()-j.Status.WaitingSinceUnixMs) * time.Millisecond
		if rejoin && waited >= 30*time.Second {
			w.fail("job %s has waited %v for survivors to rejoin, past its 30s rendezvous timeout", j.Desired.Name, waited)
		}
		if need <= idle && !rejoin {
			w.fail("job %s (dp %d–%d) waits while %d workers are idle: %s", j.Desired.Name, need, p.maxDP, idle, j.Status.Message)
		}
	}
}

// checkAssignment checks a generation's size and, when it is first seen,
// what it resumes from.
func (w *world) checkAssignment(j JobObserved, s *snapshot) {
	w.t.Helper()
	name, a := j.Desired.Name, j.Assignment
	p := w.jobs[name]
	dp := int(a.Dp)
	lo := p.minDP
	if a.Generation == 1 {
		lo = p.dp // the first generation waits for parallel.dp
	}
	if dp < lo || dp > p.maxDP || !slices.Contains(transcriptReachable, dp) || int(a.WorldSize) != dp || len(a.Ranks) != dp {
		w.fail("job %s gen %d: dp %d, world %d, %d ranks; want a reachable dp in [%d, %d] (%v) and world = ranks = dp",
			name, a.Generation, dp, a.WorldSize, len(a.Ranks), lo, p.maxDP, transcriptReachable)
	}
	key := fmt.Sprintf("%s@%d/%d", name, s.DesiredRev[name], a.Generation)
	if w.seenAssign[key] {
		return
	}
	w.seenAssign[key] = true
	if ck := j.Checkpoint; a.Generation > 1 && ck != nil && ck.Generation < a.Generation && (a.Resume != ck.Dir || a.ResumeStep != ck.Step) {
		w.fail("job %s gen %d resumes %q (step %d), not the latest complete checkpoint %s (step %d)", name, a.Generation, a.Resume, a.ResumeStep, ck.Dir, ck.Step)
	}
}

// checkRecoveries checks a job's recovery records: consecutive
// generations, lost steps, restarts counted for every early end but
// growth, growth only at a checkpoint of the generation it ends.
func (w *world) checkRecoveries(j JobObserved) {
	w.t.Helper()
	st := j.Status
	nonGrow := 0
	for i, r := range st.Recoveries {
		if r.Reason != "grow" {
			nonGrow++
		} else if i == len(st.Recoveries)-1 && r.NextGeneration == 0 && (j.Checkpoint == nil || j.Checkpoint.Generation != r.Generation) {
			w.fail("job %s grew out of generation %d without a checkpoint of it (latest %v)", j.Desired.Name, r.Generation, j.Checkpoint)
		}
		if r.NextGeneration != 0 && (r.NextGeneration != r.Generation+1 || r.LostSteps != max(0, r.LastStep-r.ResumeStep) || r.DpAfter == 0) {
			w.fail("job %s: recovery %+v: want next generation %d, lost steps last−resume, dp after set", j.Desired.Name, r, r.Generation+1)
		}
		switch r.Reason {
		case "grow", "worker_lost", "hang", "rank_failed", "loss_not_finite":
		default:
			w.fail("job %s: recovery reason %q", j.Desired.Name, r.Reason)
		}
	}
	if len(st.Recoveries) < maxRecoveries {
		last := len(st.Recoveries) - 1
		endedFailing := st.State == failed && last >= 0 && st.Recoveries[last].Reason != "grow" && st.Recoveries[last].NextGeneration == 0
		if nonGrow != int(st.Restarts) && !(endedFailing && nonGrow == int(st.Restarts)+1) {
			w.fail("job %s: %d restarts but %d recoveries that were not growth (%s)", j.Desired.Name, st.Restarts, nonGrow, stateName(st.State))
		}
	}
}

// drain stops the failures and checks that every job finishes: workers
// enough for the largest job join, and every rank reports its remaining
// checkpoints and succeeds.
func (w *world) drain() {
	w.t.Helper()
	for i := 0; i < 60; i++ {
		s := w.store.snapshot()
		o := s.Observed
		done := true
		for _, j := range o.Jobs {
			if j.Status == nil || !Terminal(j.Status.State) {
				done = false
			}
		}
		if done {
			w.logf("drain: every job finished after %d rounds", i)
			return
		}
		for _, wk := range o.Workers {
			if w.frozen[wk.Id] && !w.expired[wk.Id] {
				w.expired[wk.Id] = true
				w.store.expire(wk.Id)
				w.logf("drain: the lease of frozen %s runs out", wk.Id)
			}
		}
		w.announce(s, 0)
		if len(o.Workers) < 4 {
			w.nextWorker++
			id := fmt.Sprintf("w%02d", w.nextWorker)
			w.store.register(id, Encode(&loomv1.WorkerInfo{Id: id, Addr: fmt.Sprintf("h9:%d", 7000+w.nextWorker), Host: "h9", Version: "v1", Threads: 1}))
			w.logf("drain: register %s", id)
		}
		for _, j := range o.Jobs {
			if j.Assignment == nil {
				continue
			}
			p := w.jobs[j.Desired.Name]
			for rank, r := range j.Assignment.Ranks {
				if w.frozen[r.WorkerId] {
					continue
				}
				key := fmt.Sprintf("%s/%d/%d", j.Desired.Name, j.Assignment.Generation, rank)
				for p.every > 0 && w.lastReport[key]+p.every <= p.steps {
					w.lastReport[key] += p.every
					w.writeReport(j, rank, w.lastReport[key])
				}
				if j.Results[rank] == nil {
					w.result(j, rank, true)
				}
			}
		}
		w.settle()
		w.check()
	}
	var states []string
	for _, j := range w.store.snapshot().Observed.Jobs {
		states = append(states, fmt.Sprintf("%s %s %q", j.Desired.Name, stateName(j.Status.State), j.Status.Message))
	}
	w.fail("no progress: jobs not finished after 60 drain rounds:\n  %s", strings.Join(states, "\n  "))
}

// runTranscript plays steps bursts of events on store.
func runTranscript(t *testing.T, seed int64, steps int, store transcriptStore) {
	if *transcriptSteps > 0 {
		steps = *transcriptSteps
	}
	w := newWorld(t, seed, store)
	w.steps = steps
	defer store.close()
	w.logf("seed %d", seed)
	for i := 0; i < steps; i++ {
		burst := 1 + w.r.Intn(3)
		if w.r.Intn(12) == 0 {
			burst = 8 + w.r.Intn(25) // the leader was away: reports and results pile up
			w.logf("the leader is away for %d events", burst)
		}
		// The world acts on what it saw at the burst's start (a rank may
		// report twice, a stop may come late), as real clients do.
		seen := w.store.snapshot()
		for range burst {
			w.event(seen)
		}
		w.settle()
		w.check()
	}
	w.drain()
	count := func(sub string) int {
		n := 0
		for _, l := range w.log {
			if strings.Contains(l, sub) {
				n++
			}
		}
		return n
	}
	t.Logf("seed %d: %d bursts; %d assignments, %d restarts, %d resizes to grow, %d waits for survivors to rejoin, %d checkpoints committed",
		seed, steps, count("put-assignment"), count(": waiting for workers"), count("growing from dp"), count("to rejoin"), count("checkpoint complete"))
}

// etcdStore runs the transcript on the embedded etcd, with the real
// coordinator's reconcile and leader election.
type etcdStore struct {
	t      *testing.T
	ctx    context.Context
	cli    *clientv3.Client
	k      Keys
	c      *Coordinator
	h      *lineHandler
	sess   *concurrency.Session
	elect  *concurrency.Election
	leases map[string]clientv3.LeaseID
}

func newEtcdStore(t *testing.T, ctx context.Context, endpoints []string, prefix string) *etcdStore {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	h := &lineHandler{}
	c, err := New(Config{Etcd: cli, Prefix: prefix, Addr: "transcript:1", Version: "v1", LeaseTTL: 5 * time.Second, Logger: slog.New(h)})
	if err != nil {
		t.Fatal(err)
	}
	s := &etcdStore{t: t, ctx: ctx, cli: cli, k: c.Keys(), c: c, h: h, leases: map[string]clientv3.LeaseID{}}
	s.campaign()
	return s
}

func (s *etcdStore) keys() Keys                  { return s.k }
func (s *etcdStore) setLog(f func(string))       { s.h.out = f }
func (s *etcdStore) setClock(f func() time.Time) { s.c.cfg.Now = f }

func (s *etcdStore) campaign() {
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(5))
	if err != nil {
		s.t.Fatal(err)
	}
	e := concurrency.NewElection(sess, s.k.Election())
	if err := e.Campaign(s.ctx, "transcript:1"); err != nil {
		s.t.Fatal(err)
	}
	s.sess, s.elect = sess, e
}

func (s *etcdStore) must(err error) {
	if err != nil {
		s.t.Fatal(err)
	}
}

func (s *etcdStore) put(key, value string) {
	_, err := s.cli.Put(s.ctx, key, value)
	s.must(err)
}
func (s *etcdStore) del(key string) { _, err := s.cli.Delete(s.ctx, key); s.must(err) }
func (s *etcdStore) delPrefix(prefix string) {
	_, err := s.cli.Delete(s.ctx, prefix, clientv3.WithPrefix())
	s.must(err)
}

func (s *etcdStore) register(id, value string) {
	l, err := s.cli.Grant(s.ctx, 60)
	s.must(err)
	s.leases[id] = l.ID
	_, err = s.cli.Put(s.ctx, s.k.Worker(id), value, clientv3.WithLease(l.ID))
	s.must(err)
}

func (s *etcdStore) reannounce(id string) {
	resp, err := s.cli.Get(s.ctx, s.k.Worker(id))
	s.must(err)
	if len(resp.Kvs) == 1 {
		_, err = s.cli.Put(s.ctx, s.k.Worker(id), string(resp.Kvs[0].Value), clientv3.WithLease(s.leases[id]))
		s.must(err)
	}
}

func (s *etcdStore) expire(id string) {
	_, err := s.cli.Revoke(s.ctx, s.leases[id])
	s.must(err)
	delete(s.leases, id)
}

func (s *etcdStore) snapshot() *snapshot {
	snap, err := readSnapshot(s.ctx, s.cli, s.k, "v1")
	s.must(err)
	return snap
}

func (s *etcdStore) rev() int64 {
	resp, err := s.cli.Get(s.ctx, s.k.Election())
	s.must(err)
	return resp.Header.Revision
}

func (s *etcdStore) round() (bool, error) {
	before := s.rev()
	if err := s.c.reconcile(s.ctx, s.elect.Key(), s.elect.Rev()); err != nil {
		return false, err
	}
	return s.rev() != before, nil
}

// leaderChange: the leader's lease is lost; a deposed leader's round is
// refused whole; a new leader is elected.
func (s *etcdStore) leaderChange(r *rand.Rand) error {
	oldKey, oldRev := s.elect.Key(), s.elect.Rev()
	if _, err := s.cli.Revoke(s.ctx, s.sess.Lease()); err != nil {
		return err
	}
	s.sess.Orphan()
	s.campaign()
	snap := s.snapshot()
	before := s.rev()
	acts := Decide(snap.Observed)
	if len(acts) > 0 {
		if err := apply(s.ctx, s.cli, s.k, oldKey, oldRev, acts, 1); err != ErrNotLeader {
			return fmt.Errorf("a deposed leader's write: %v, want ErrNotLeader", err)
		}
		if s.rev() != before {
			return fmt.Errorf("a deposed leader's write changed etcd")
		}
	}
	return nil
}

func (s *etcdStore) close() {
	s.sess.Close()
	s.cli.Close()
}

// TestDecideTranscriptEtcd plays seeded transcripts on the embedded etcd
// through the coordinator's own reconcile (etcd checks each transaction).
func TestDecideTranscriptEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded etcd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, err := StartEtcd(ctx, EtcdOptions{LogOutput: "discard"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	seeds := []int64{1, 2}
	if *transcriptSeed != 0 {
		seeds = []int64{*transcriptSeed}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			runTranscript(t, seed, 30, newEtcdStore(t, ctx, e.Endpoints, fmt.Sprintf("/transcript/%d/", seed)))
		})
	}
}
