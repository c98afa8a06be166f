package coordinator

import (
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// The step history: every coordinator, leader or standby, follows the
// jobs' keys in etcd (progress batches, status, checkpoint reports and
// records) and folds them into a bounded per-job history that the
// dashboard, `loom top` and the job metrics read. The leader persists it
// under history/NAME/ (see the package doc's key table) so that a
// coordinator started later — a restarted one or a standby that takes
// over — shows the same history from the first step.

// StragglerRatio flags a rank as a straggler when its busy time (compute
// plus data-loader wait, averaged over the last StragglerWindow steps) is
// more than this multiple of the median rank's. Step time itself cannot
// tell: in synchronous data parallelism every rank's step lasts as long as
// the slowest one's, the others waiting in the collective.
const StragglerRatio = 1.2

// StragglerWindow is how many of a rank's latest steps its per-rank view
// averages.
const StragglerWindow = 16

// History bounds: points kept per job and per rank.
const (
	jobOverviewPoints  = 1024 // the whole run, downsampled
	jobRecentPoints    = 512  // the newest steps, full resolution
	rankOverviewPoints = 256
	rankRecentPoints   = 256
	maxEvents          = 256
	maxPendingSteps    = 64 // steps waiting for every rank's report
)

// JobPoint is one step of a job, or once downsampled the mean of the N
// consecutive steps ending at Step.
type JobPoint struct {
	Step         int64   `json:"step"`
	N            int     `json:"n"`
	TimeMs       int64   `json:"t"` // when the step ended (unix ms)
	Loss         float64 `json:"loss"`
	LR           float64 `json:"lr"`
	GradNorm     float64 `json:"grad_norm"`
	TokensPerSec float64 `json:"tokens_per_sec"` // global batch ÷ the slowest rank's step time
	MFU          float64 `json:"mfu"`            // model FLOP/s ÷ the ranks' summed peak (0: peak unknown)
	StepSeconds  float64 `json:"step_s"`         // the slowest rank's
	// ValLoss is the validation loss of the step (train.eval_every), or
	// once downsampled the mean of the ValN validation passes the point
	// covers; ValN is 0 when it covers none.
	ValLoss float64 `json:"val_loss,omitempty"`
	ValN    int     `json:"val_n,omitempty"`
}

func (p JobPoint) steps() int      { return p.N }
func (p JobPoint) lastStep() int64 { return p.Step }
func (p JobPoint) merged(q JobPoint) JobPoint {
	a, b := float64(p.N), float64(q.N)
	w := func(x, y float64) float64 { return (a*x + b*y) / (a + b) }
	m := JobPoint{Step: q.Step, N: p.N + q.N, TimeMs: q.TimeMs, Loss: w(p.Loss, q.Loss), LR: w(p.LR, q.LR),
		GradNorm: w(p.GradNorm, q.GradNorm), TokensPerSec: w(p.TokensPerSec, q.TokensPerSec),
		MFU: w(p.MFU, q.MFU), StepSeconds: w(p.StepSeconds, q.StepSeconds), ValN: p.ValN + q.ValN}
	if m.ValN > 0 {
		m.ValLoss = (float64(p.ValN)*p.ValLoss + float64(q.ValN)*q.ValLoss) / float64(m.ValN)
	}
	return m
}

// RankPoint is where one rank's step time went, or the mean of N steps.
// StepS = ComputeS + CommS + WaitS + DataS (+ anything unaccounted).
type RankPoint struct {
	Step     int64   `json:"step"`
	N        int     `json:"n"`
	StepS    float64 `json:"step_s"`
	ComputeS float64 `json:"compute_s"`
	CommS    float64 `json:"comm_s"` // exposed communication, waiting for peers excluded
	WaitS    float64 `json:"wait_s"` // waiting in collectives for slower ranks
	DataS    float64 `json:"data_s"` // data-loader wait
}

func (p RankPoint) steps() int      { return p.N }
func (p RankPoint) lastStep() int64 { return p.Step }
func (p RankPoint) merged(q RankPoint) RankPoint {
	a, b := float64(p.N), float64(q.N)
	w := func(x, y float64) float64 { return (a*x + b*y) / (a + b) }
	return RankPoint{Step: q.Step, N: p.N + q.N, StepS: w(p.StepS, q.StepS), ComputeS: w(p.ComputeS, q.ComputeS),
		CommS: w(p.CommS, q.CommS), WaitS: w(p.WaitS, q.WaitS), DataS: w(p.DataS, q.DataS)}
}

// Event is something to mark on a job's time axis.
type Event struct {
	// Kind is "checkpoint" (a checkpoint committed), "restart" (a
	// generation ended early) or "state" (the job reached a final state).
	Kind       string  `json:"kind"`
	Step       int64   `json:"step"`
	TimeMs     int64   `json:"t"`
	Generation uint64  `json:"generation,omitempty"`
	Text       string  `json:"text"`
	Seconds    float64 `json:"seconds,omitempty"` // checkpoint: step end → manifest committed
	Bytes      int64   `json:"bytes,omitempty"`   // checkpoint: bytes written by all ranks
	Reason     string  `json:"reason,omitempty"`  // restart: RestartReason
}

// RankTotals are a rank's cumulative seconds over a run.
type RankTotals struct {
	Steps       int64   `json:"steps"`
	StepS       float64 `json:"step_s"`
	ComputeS    float64 `json:"compute_s"`
	CommS       float64 `json:"comm_s"`
	WaitS       float64 `json:"wait_s"`
	DataS       float64 `json:"data_s"`
	CheckpointS float64 `json:"checkpoint_s"`
}

type rankHistory struct {
	rank     int
	gen      uint64
	addr     string
	workerID string
	memory   map[string]int64
	peak     float64
	lastStep int64
	window   []RankPoint // the latest StragglerWindow steps
	points   series[RankPoint]
	totals   RankTotals
	dirty    bool
}

// jobHistory is one run of a job. Its owner (the historian) locks.
type jobHistory struct {
	name     string
	run      string // the submission (its time): a resubmission starts a new history
	runLabel string // the run id metrics are labelled with (JobDesired.run_id)
	desired  *loomv1.JobDesired
	status   *loomv1.JobStatus
	total    int64   // train.steps
	flopsTok float64 // model FLOPs per trained token
	world    int

	gen      uint64
	lastStep int64   // the last step every rank reported (or given up on)
	lastMs   int64   // when it ended
	valLoss  float64 // the latest validation loss (0: none yet)
	valStep  int64   // its step
	points   series[JobPoint]
	ranks    map[int]*rankHistory
	pending  map[int64]map[int]*loomv1.StepStats

	events       []Event
	seenFailures map[uint64]bool // generations whose early end is an event
	ckptBytes    map[int64]int64 // reported bytes by checkpoint step, until committed
	ckptStep     int64
	ckptWaiting  map[int64]bool // committed checkpoints whose step is not reported yet
	ckptSaves    int64
	ckptTotal    int64 // bytes of every committed checkpoint
	ckptLastS    float64
	ckptLastB    int64
	restarts     map[string]int64 // generations ended early, by reason
	finishedMs   int64            // when the job reached a final state (0: not yet)
	dirty        bool
}

func newJobHistory(d *loomv1.JobDesired) *jobHistory {
	j := &jobHistory{
		name: d.Name, run: runID(d), runLabel: runLabel(d), desired: d, world: int(d.WorldSize),
		points:  newSeries[JobPoint](jobOverviewPoints, jobRecentPoints),
		ranks:   map[int]*rankHistory{},
		pending: map[int64]map[int]*loomv1.StepStats{}, seenFailures: map[uint64]bool{},
		ckptBytes: map[int64]int64{}, ckptWaiting: map[int64]bool{}, restarts: map[string]int64{}, dirty: true,
	}
	if spec, err := api.ParseSpec(d.SpecYaml, "job "+d.Name); err == nil {
		j.total = int64(spec.Train.Steps)
		j.flopsTok = checkpoint.ModelConfig(spec.Model).TrainFLOPsPerToken(spec.Model.SeqLen)
		j.world = spec.Parallel.WorldSize()
	}
	return j
}

// runID names one submission of a job: each has its own history, so a
// resubmitted job's counters start from zero.
func runID(d *loomv1.JobDesired) string { return strconv.FormatInt(d.SubmittedUnixMs, 10) }

// runLabel is the value of the metrics' run label: the run id of the
// job's checkpoints (a resumed run keeps its id; its counters restart from
// zero, which rate() and increase() read as a counter reset), or the
// submission time when the desired state has none.
func runLabel(d *loomv1.JobDesired) string {
	if d.RunId != "" {
		return d.RunId
	}
	return runID(d)
}

func (j *jobHistory) rank(r int) *rankHistory {
	rh := j.ranks[r]
	if rh == nil {
		rh = &rankHistory{rank: r, points: newSeries[RankPoint](rankOverviewPoints, rankRecentPoints)}
		j.ranks[r] = rh
	}
	return rh
}

// addProgress folds one batch of a rank's steps in; now is the
// coordinator's clock, used when a step carries no end time.
func (j *jobHistory) addProgress(p *loomv1.RankProgress, now time.Time) bool {
	if p.Generation < j.gen {
		return false // a late batch of an ended generation
	}
	if p.Generation > j.gen {
		j.flushPending()
		j.gen = p.Generation
	}
	rh := j.rank(int(p.Rank))
	newGen := p.Generation > rh.gen
	if newGen {
		rh.gen = p.Generation
		rh.window = nil
	}
	rh.addr, rh.workerID = p.Addr, p.WorkerId
	if len(p.MemoryBytes) > 0 {
		rh.memory = p.MemoryBytes
	}
	if p.PeakFlops > 0 {
		rh.peak = p.PeakFlops
	}
	changed := false
	for _, s := range p.Steps {
		if s.Step <= rh.lastStep {
			if !newGen {
				continue // already folded in (a re-sent batch)
			}
			j.replay(s.Step)
		}
		newGen = false
		rh.lastStep = s.Step
		if s.EndUnixMs == 0 {
			s.EndUnixMs = now.UnixMilli()
		}
		byRank := j.pending[s.Step]
		if byRank == nil {
			byRank = map[int]*loomv1.StepStats{}
			j.pending[s.Step] = byRank
		}
		byRank[int(p.Rank)] = s
		changed = true
	}
	j.finishComplete()
	return changed
}

// replay drops the history from step on: a restarted generation resumed
// from a checkpoint (or from the start) and trains those steps again.
func (j *jobHistory) replay(step int64) {
	j.points.truncate(step)
	for _, rh := range j.ranks {
		rh.points.truncate(step)
		if rh.lastStep >= step {
			rh.lastStep = step - 1
		}
		rh.window = nil
		rh.dirty = true
	}
	for s := range j.pending {
		if s >= step {
			delete(j.pending, s)
		}
	}
	if j.lastStep >= step {
		j.lastStep = step - 1
	}
	if j.valStep >= step {
		j.valLoss, j.valStep = 0, 0
		for _, p := range j.points.points() {
			if p.ValN > 0 {
				j.valLoss, j.valStep = p.ValLoss, p.Step
			}
		}
	}
	j.dirty = true
}

// finishComplete finalizes, in order, the pending steps every rank has
// reported, and gives up waiting on the oldest when too many pile up (a
// rank whose reports are lost).
func (j *jobHistory) finishComplete() {
	for len(j.pending) > 0 {
		oldest := int64(math.MaxInt64)
		for s := range j.pending {
			oldest = min(oldest, s)
		}
		if len(j.pending[oldest]) < j.world && len(j.pending) <= maxPendingSteps {
			return
		}
		j.finish(oldest, j.pending[oldest])
		delete(j.pending, oldest)
	}
}

// flushPending finalizes every pending step with the ranks it has (the
// generation or the job ended).
func (j *jobHistory) flushPending() {
	steps := make([]int64, 0, len(j.pending))
	for s := range j.pending {
		steps = append(steps, s)
	}
	sort.Slice(steps, func(a, b int) bool { return steps[a] < steps[b] })
	for _, s := range steps {
		j.finish(s, j.pending[s])
	}
	clear(j.pending)
}

// finish turns the ranks' stats of one step into the job's point and each
// rank's. A rank's waiting time is its exposed communication beyond the
// least any rank had: in a collective the last rank to arrive waits for
// nobody, so the least is the transfer itself and the rest is waiting for
// the slowest rank.
func (j *jobHistory) finish(step int64, byRank map[int]*loomv1.StepStats) {
	if step <= j.lastStep || len(byRank) == 0 {
		return
	}
	minComm := math.Inf(1)
	for _, s := range byRank {
		minComm = min(minComm, s.CommSeconds)
	}
	jp := JobPoint{Step: step, N: 1}
	var peak, valSum float64
	var tokens int64
	n, valN := 0.0, 0
	for r, s := range byRank {
		rh := j.rank(r)
		wait := max(0, s.CommSeconds-minComm)
		rp := RankPoint{Step: step, N: 1, StepS: s.StepSeconds, ComputeS: s.ComputeSeconds,
			CommS: s.CommSeconds - wait, WaitS: wait, DataS: s.DataSeconds}
		rh.points.add(rp)
		rh.window = append(rh.window, rp)
		if len(rh.window) > StragglerWindow {
			rh.window = rh.window[len(rh.window)-StragglerWindow:]
		}
		t := &rh.totals
		t.Steps++
		t.StepS += rp.StepS
		t.ComputeS += rp.ComputeS
		t.CommS += rp.CommS
		t.WaitS += rp.WaitS
		t.DataS += rp.DataS
		t.CheckpointS += s.CheckpointSeconds
		rh.dirty = true

		n++
		jp.Loss += s.Loss
		jp.GradNorm += s.GradNorm
		jp.LR = s.Lr
		jp.StepSeconds = max(jp.StepSeconds, s.StepSeconds)
		jp.TimeMs = max(jp.TimeMs, s.EndUnixMs)
		if s.ValLoss > 0 {
			valSum += s.ValLoss
			valN++
		}
		tokens = max(tokens, s.Tokens)
		if s.Tokens == 0 && s.TokensPerSec > 0 {
			tokens = max(tokens, int64(s.TokensPerSec*s.StepSeconds+0.5))
		}
	}
	jp.Loss /= n
	jp.GradNorm /= n
	if valN > 0 {
		jp.ValLoss, jp.ValN = valSum/float64(valN), 1
		j.valLoss, j.valStep = jp.ValLoss, step
	}
	if jp.StepSeconds > 0 {
		jp.TokensPerSec = float64(tokens) / jp.StepSeconds
	}
	for _, rh := range j.ranks {
		peak += rh.peak
	}
	if peak > 0 && j.flopsTok > 0 {
		jp.MFU = jp.TokensPerSec * j.flopsTok / peak
	}
	j.points.add(jp)
	j.lastStep, j.lastMs = step, jp.TimeMs
	j.dirty = true
	// A checkpoint's commit can reach etcd before its step's reports.
	if j.ckptWaiting[step] {
		delete(j.ckptWaiting, step)
		for i := len(j.events) - 1; i >= 0; i-- {
			if e := &j.events[i]; e.Kind == "checkpoint" && e.Step == step && e.TimeMs >= jp.TimeMs {
				e.Seconds = float64(e.TimeMs-jp.TimeMs) / 1e3
				j.ckptLastS = e.Seconds
				break
			}
		}
	}
}

// setStatus records the job's status: restarts become events, and a final
// state ends the run.
func (j *jobHistory) setStatus(st *loomv1.JobStatus, now time.Time) {
	j.status = st
	j.dirty = true
	if st.Generation > j.gen {
		j.flushPending()
	}
	// Each generation that ended early once: its recovery record (with the
	// reason Decide gave it, growth included), else its first failure.
	for _, r := range st.Recoveries {
		if j.seenFailures[r.Generation] {
			continue
		}
		j.seenFailures[r.Generation] = true
		j.restarts[r.Reason]++
		j.addEvent(Event{Kind: "restart", Step: j.lastStep, TimeMs: now.UnixMilli(), Generation: r.Generation,
			Reason: r.Reason, Text: r.Message})
	}
	for _, f := range st.Failures {
		if j.seenFailures[f.Generation] {
			continue
		}
		j.seenFailures[f.Generation] = true
		reason := RestartReason(f)
		j.restarts[reason]++
		what := "failed"
		if f.Lost {
			what = "lost"
		}
		j.addEvent(Event{Kind: "restart", Step: j.lastStep, TimeMs: now.UnixMilli(), Generation: f.Generation,
			Reason: reason, Text: "generation " + strconv.FormatUint(f.Generation, 10) + " ended: rank " +
				strconv.Itoa(int(f.Rank)) + " " + what + ": " + f.Reason})
	}
	if Terminal(st.State) && j.finishedMs == 0 {
		j.flushPending()
		j.finishedMs = now.UnixMilli()
		if st.UpdatedUnixMs > 0 {
			j.finishedMs = st.UpdatedUnixMs
		}
		j.addEvent(Event{Kind: "state", Step: j.lastStep, TimeMs: j.finishedMs, Text: stateName(st.State) + ": " + st.Message})
	}
}

// RestartReasons returns the values of loom_job_restarts_total's reason:
// Failure.kind, and "grow" for a resize at a checkpoint boundary.
func RestartReasons() []string {
	return []string{"worker_lost", "hang", "rank_failed", "loss_not_finite", "grow"}
}

// RestartReason classifies why a generation ended early: "worker_lost"
// (its lease expired), "loss_not_finite" (the loss became NaN or ±Inf) or
// "rank_failed" (any other engine error).
func RestartReason(f *loomv1.Failure) string {
	switch {
	case f.Kind != "":
		return f.Kind
	case f.Lost:
		return "worker_lost"
	case containsAny(f.Reason, "loss is NaN", "loss is +Inf", "loss is -Inf"):
		return "loss_not_finite"
	default:
		return "rank_failed"
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// addCheckpointReport counts the bytes one rank wrote for a checkpoint.
func (j *jobHistory) addCheckpointReport(rep *loomv1.CheckpointReport) {
	var part checkpoint.RankPart
	if json.Unmarshal(rep.PartJson, &part) != nil {
		return
	}
	var b int64
	for _, f := range part.Files {
		b += f.Size
	}
	if len(j.ckptBytes) > 64 {
		clear(j.ckptBytes)
	}
	j.ckptBytes[rep.Step] = max(j.ckptBytes[rep.Step], 0) + b
}

// setCheckpoint records a committed checkpoint.
func (j *jobHistory) setCheckpoint(rec *loomv1.CheckpointRecord) {
	if rec.Step <= j.ckptStep {
		return
	}
	j.ckptStep = rec.Step
	ev := Event{Kind: "checkpoint", Step: rec.Step, TimeMs: rec.CommittedUnixMs, Generation: rec.Generation,
		Bytes: j.ckptBytes[rec.Step], Text: "checkpoint " + rec.Dir}
	found := false
	for _, p := range j.points.since(rec.Step - 1) {
		if p.Step == rec.Step && p.N == 1 && rec.CommittedUnixMs >= p.TimeMs {
			ev.Seconds, found = float64(rec.CommittedUnixMs-p.TimeMs)/1e3, true
		}
	}
	delete(j.ckptBytes, rec.Step)
	j.ckptSaves++
	j.ckptTotal += ev.Bytes
	j.ckptLastS, j.ckptLastB = ev.Seconds, ev.Bytes
	j.addEvent(ev)
	if !found && rec.Step > j.lastStep {
		if len(j.ckptWaiting) > 16 {
			clear(j.ckptWaiting)
		}
		j.ckptWaiting[rec.Step] = true
	}
}

func (j *jobHistory) addEvent(e Event) {
	j.events = append(j.events, e)
	if len(j.events) > maxEvents {
		j.events = j.events[len(j.events)-maxEvents:]
	}
	j.dirty = true
}

// RankRow is one rank in the per-rank view: its latest StragglerWindow
// steps' mean split of step time, and how it compares with the others.
type RankRow struct {
	Rank     int    `json:"rank"`
	Addr     string `json:"addr"`
	WorkerID string `json:"worker_id"`
	Host     string `json:"host,omitempty"`
	DP       int    `json:"dp"`
	PP       int    `json:"pp"`
	TP       int    `json:"tp"`
	Step     int64  `json:"step"`
	// The mean over the window of each part of the step, in seconds.
	StepS    float64 `json:"step_s"`
	ComputeS float64 `json:"compute_s"`
	CommS    float64 `json:"comm_s"`
	WaitS    float64 `json:"wait_s"`
	DataS    float64 `json:"data_s"`
	// BusyS is ComputeS + DataS: the rank's own work, which is what
	// differs between ranks (their step times are equal in lockstep).
	BusyS float64 `json:"busy_s"`
	// Slowdown is BusyS ÷ the median rank's BusyS.
	Slowdown  float64 `json:"slowdown"`
	Straggler bool    `json:"straggler"`
	// Order is the rank's place when sorted slowest first (1: slowest).
	Order     int              `json:"order"`
	Memory    map[string]int64 `json:"memory_bytes,omitempty"`
	PeakFLOPS float64          `json:"peak_flops,omitempty"`
	Totals    RankTotals       `json:"totals"`
}

// rankRows returns the per-rank view, by rank.
func (j *jobHistory) rankRows() []RankRow {
	rows := []RankRow{} // [] in JSON, not null, before any rank reported
	info := map[int]*loomv1.RankInfo{}
	if j.status != nil {
		for _, r := range j.status.Ranks {
			info[int(r.Rank)] = r
		}
	}
	for r, rh := range j.ranks {
		row := RankRow{Rank: r, Addr: rh.addr, WorkerID: rh.workerID, Step: rh.lastStep, Memory: rh.memory,
			PeakFLOPS: rh.peak, Totals: rh.totals}
		if ri := info[r]; ri != nil {
			row.Host, row.DP, row.PP, row.TP = ri.Host, int(ri.Dp), int(ri.Pp), int(ri.Tp)
		}
		if n := float64(len(rh.window)); n > 0 {
			for _, p := range rh.window {
				row.StepS += p.StepS / n
				row.ComputeS += p.ComputeS / n
				row.CommS += p.CommS / n
				row.WaitS += p.WaitS / n
				row.DataS += p.DataS / n
			}
		}
		row.BusyS = row.ComputeS + row.DataS
		rows = append(rows, row)
	}
	sort.Slice(rows, func(a, b int) bool { return rows[a].Rank < rows[b].Rank })
	markStragglers(rows)
	return rows
}

// markStragglers sets Slowdown, Straggler and Order from BusyS.
func markStragglers(rows []RankRow) {
	if len(rows) == 0 {
		return
	}
	busy := make([]float64, len(rows))
	for i, r := range rows {
		busy[i] = r.BusyS
	}
	sort.Float64s(busy)
	med := busy[len(busy)/2]
	if len(busy)%2 == 0 {
		med = (busy[len(busy)/2-1] + busy[len(busy)/2]) / 2
	}
	order := make([]int, len(rows))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return rows[order[a]].BusyS > rows[order[b]].BusyS })
	for place, i := range order {
		r := &rows[i]
		r.Order = place + 1
		if med > 0 {
			r.Slowdown = r.BusyS / med
		}
		r.Straggler = len(rows) > 1 && r.Slowdown > StragglerRatio
	}
}

// JobSummary is one job in the job list.
type JobSummary struct {
	Name       string  `json:"name"`
	Run        string  `json:"run"`
	State      string  `json:"state"`
	Message    string  `json:"message"`
	Generation uint64  `json:"generation"`
	WorldSize  int     `json:"world_size"`
	Step       int64   `json:"step"`
	TotalSteps int64   `json:"total_steps"`
	Progress   float64 `json:"progress"` // Step ÷ TotalSteps
	// ETASeconds is the time left at the recent pace (0: finished or
	// unknown).
	ETASeconds   float64 `json:"eta_s"`
	TokensPerSec float64 `json:"tokens_per_sec"` // mean over the latest StragglerWindow steps
	MFU          float64 `json:"mfu"`
	PeakFLOPS    float64 `json:"peak_flops"` // the ranks' summed peak the MFU divides by
	Loss         float64 `json:"loss"`
	// ValLoss is the latest validation loss, of step ValStep (0: the job
	// has not validated yet, or has no validation set).
	ValLoss     float64 `json:"val_loss,omitempty"`
	ValStep     int64   `json:"val_step,omitempty"`
	Restarts    int     `json:"restarts"`
	SubmittedMs int64   `json:"submitted_ms"`
	LastStepMs  int64   `json:"last_step_ms"`
	FinishedMs  int64   `json:"finished_ms,omitempty"`
	Stragglers  []int   `json:"stragglers,omitempty"`
}

func (j *jobHistory) summary(now time.Time) JobSummary {
	s := JobSummary{Name: j.name, Run: j.runLabel, State: "PENDING", Generation: j.gen, WorldSize: j.world,
		Step: j.lastStep, TotalSteps: j.total, SubmittedMs: j.desired.SubmittedUnixMs, LastStepMs: j.lastMs,
		FinishedMs: j.finishedMs, ValLoss: j.valLoss, ValStep: j.valStep}
	if st := j.status; st != nil {
		s.State, s.Message, s.Restarts = stateName(st.State), st.Message, int(st.Restarts)
		s.Generation = max(s.Generation, st.Generation)
	}
	if j.total > 0 {
		s.Progress = float64(j.lastStep) / float64(j.total)
	}
	recent := j.points.since(j.lastStep - StragglerWindow)
	if n := len(recent); n > 0 {
		last := recent[n-1]
		s.Loss = last.Loss
		for _, p := range recent {
			s.TokensPerSec += p.TokensPerSec / float64(n)
			s.MFU += p.MFU / float64(n)
		}
		if j.finishedMs == 0 && j.total > j.lastStep {
			perStep := last.StepSeconds
			if n > 1 && last.TimeMs > recent[0].TimeMs {
				perStep = float64(last.TimeMs-recent[0].TimeMs) / 1e3 / float64(last.Step-recent[0].Step)
			}
			s.ETASeconds = perStep * float64(j.total-j.lastStep)
		}
	}
	for _, rh := range j.ranks {
		s.PeakFLOPS += rh.peak
	}
	for _, r := range j.rankRows() {
		if r.Straggler {
			s.Stragglers = append(s.Stragglers, r.Rank)
		}
	}
	return s
}
