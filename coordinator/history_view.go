package coordinator

import (
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"time"
)

// The JSON the dashboard, `loom top` and scripts read (docs/metrics.md,
// "JSON API"). Series are columnar: one array per field, index-aligned,
// which is what uPlot draws and what compresses well.

// JobColumns is a job's points, one array per field.
type JobColumns struct {
	Step         []int64   `json:"step"`
	N            []int     `json:"n"`
	TimeMs       []int64   `json:"t"`
	Loss         []float64 `json:"loss"`
	LR           []float64 `json:"lr"`
	GradNorm     []float64 `json:"grad_norm"`
	TokensPerSec []float64 `json:"tokens_per_sec"`
	MFU          []float64 `json:"mfu"`
	StepSeconds  []float64 `json:"step_s"`
	// ValLoss is the validation loss where a point has one, null where
	// not (uPlot leaves a gap, or with spanGaps joins the points).
	ValLoss OptFloats `json:"val_loss"`
}

// OptFloats is a column of numbers some of whose entries are missing: NaN
// here, null in JSON.
type OptFloats []float64

// MarshalJSON implements json.Marshaler: NaN and ±Inf are null.
func (f OptFloats) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 2+8*len(f))
	b = append(b, '[')
	for i, v := range f {
		if i > 0 {
			b = append(b, ',')
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			b = append(b, "null"...)
		} else {
			b = strconv.AppendFloat(b, v, 'g', -1, 64)
		}
	}
	return append(b, ']'), nil
}

// UnmarshalJSON implements json.Unmarshaler: null is NaN.
func (f *OptFloats) UnmarshalJSON(b []byte) error {
	var vs []*float64
	if err := json.Unmarshal(b, &vs); err != nil {
		return err
	}
	*f = make(OptFloats, len(vs))
	for i, v := range vs {
		(*f)[i] = math.NaN()
		if v != nil {
			(*f)[i] = *v
		}
	}
	return nil
}

func jobColumns(ps []JobPoint) JobColumns {
	c := JobColumns{Step: []int64{}, N: []int{}, TimeMs: []int64{}, Loss: []float64{}, LR: []float64{}, GradNorm: []float64{},
		TokensPerSec: []float64{}, MFU: []float64{}, StepSeconds: []float64{}, ValLoss: OptFloats{}}
	for _, p := range ps {
		c.Step = append(c.Step, p.Step)
		c.N = append(c.N, p.N)
		c.TimeMs = append(c.TimeMs, p.TimeMs)
		c.Loss = append(c.Loss, p.Loss)
		c.LR = append(c.LR, p.LR)
		c.GradNorm = append(c.GradNorm, p.GradNorm)
		c.TokensPerSec = append(c.TokensPerSec, p.TokensPerSec)
		c.MFU = append(c.MFU, p.MFU)
		c.StepSeconds = append(c.StepSeconds, p.StepSeconds)
		val := math.NaN()
		if p.ValN > 0 {
			val = p.ValLoss
		}
		c.ValLoss = append(c.ValLoss, val)
	}
	return c
}

// RankColumns is one rank's points, one array per field.
type RankColumns struct {
	Rank     int       `json:"rank"`
	Step     []int64   `json:"step"`
	StepS    []float64 `json:"step_s"`
	ComputeS []float64 `json:"compute_s"`
	CommS    []float64 `json:"comm_s"`
	WaitS    []float64 `json:"wait_s"`
	DataS    []float64 `json:"data_s"`
}

func rankColumns(rank int, ps []RankPoint) RankColumns {
	c := RankColumns{Rank: rank, Step: []int64{}, StepS: []float64{}, ComputeS: []float64{}, CommS: []float64{},
		WaitS: []float64{}, DataS: []float64{}}
	for _, p := range ps {
		c.Step = append(c.Step, p.Step)
		c.StepS = append(c.StepS, p.StepS)
		c.ComputeS = append(c.ComputeS, p.ComputeS)
		c.CommS = append(c.CommS, p.CommS)
		c.WaitS = append(c.WaitS, p.WaitS)
		c.DataS = append(c.DataS, p.DataS)
	}
	return c
}

// JobDetail is one job: its summary, the per-rank view and its events.
type JobDetail struct {
	JobSummary
	StragglerRatio float64   `json:"straggler_ratio"`
	Ranks          []RankRow `json:"ranks"`
	Events         []Event   `json:"events"`
}

// HistoryView is a job's history: the whole of it, or with Since ≥ 0 the
// points after step Since (live updates).
type HistoryView struct {
	Job    string        `json:"job"`
	Run    string        `json:"run"`
	Since  int64         `json:"since"`
	Points JobColumns    `json:"points"`
	Ranks  []RankColumns `json:"ranks"`
	Events []Event       `json:"events"`
}

// Update is one server-sent event of the dashboard's live stream: the job
// list and, when the stream follows a job, its detail and new points.
type Update struct {
	Jobs    []JobSummary `json:"jobs"`
	Job     *JobDetail   `json:"job,omitempty"`
	History *HistoryView `json:"history,omitempty"`
}

// Timeline is the last step's timeline of a job (GET
// /api/jobs/NAME/timeline): what every rank did when, read from the
// timelines the ranks save when the run ends (coordinator/timeline.go);
// Available is false, with the Reason, until they have.
type Timeline struct {
	Job       string          `json:"job"`
	Available bool            `json:"available"`
	Reason    string          `json:"reason,omitempty"`
	Step      int64           `json:"step"`
	Ranks     []TimelineTrack `json:"ranks"`
	// Bubble is the measured idle share of the step's compute span over
	// all ranks (timeline.Analyze).
	Bubble float64 `json:"bubble"`
	// The job's pipeline (from its spec, also while Available is false):
	// parallel.schedule, pp, virtual stages per rank and micro-batches
	// per step.
	Schedule      string `json:"schedule"`
	PP            int    `json:"pp"`
	VirtualStages int    `json:"virtual_stages"`
	MicroBatches  int    `json:"micro_batches"`
	// SimulatedBubble is the bubble the schedule simulator predicts for
	// the measured mean F, B and W durations of each stage (what `loom
	// schedule --timeline` prints); 0 when it cannot tell.
	SimulatedBubble float64 `json:"simulated_bubble,omitempty"`
}

// TimelineTrack is one rank's actions within a step.
type TimelineTrack struct {
	Rank    int              `json:"rank"`
	Actions []TimelineAction `json:"actions"`
}

// TimelineAction is one forward, backward, send, receive or collective.
type TimelineAction struct {
	Kind string `json:"kind"` // e.g. "F", "B", "W", "wait", "send", "recv", "all-reduce", "optimizer"
	// Cat is the event's category: timeline.Compute, Wait, Send, Recv,
	// Collective or Optimizer.
	Cat    string  `json:"cat"`
	Micro  int     `json:"micro"`
	StartS float64 `json:"start_s"` // from the step's start
	EndS   float64 `json:"end_s"`
	// Stage is the pipeline stage of an action or message (−1 for
	// collectives and the optimizer); Name the event as the trace names
	// it ("1F3", "send 0SEND_F2", "all-reduce dp.pp0.tp0 (4096)").
	Stage int    `json:"stage"`
	Name  string `json:"name"`
}

func (h *historian) jobList(now time.Time) []JobSummary {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := []JobSummary{}
	for _, j := range h.jobs {
		out = append(out, j.summary(now))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

func (h *historian) jobDetail(name string, now time.Time) (*JobDetail, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	j := h.jobs[name]
	if j == nil {
		return nil, false
	}
	d := &JobDetail{JobSummary: j.summary(now), StragglerRatio: StragglerRatio, Ranks: j.rankRows(),
		Events: append([]Event{}, j.events...)}
	return d, true
}

// history returns a job's history (since < 0: all of it).
func (h *historian) history(name string, since int64) (*HistoryView, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	j := h.jobs[name]
	if j == nil {
		return nil, false
	}
	v := &HistoryView{Job: name, Run: j.runLabel, Since: since, Events: append([]Event{}, j.events...), Ranks: []RankColumns{}}
	if since < 0 {
		v.Points = jobColumns(j.points.points())
	} else {
		v.Points = jobColumns(j.points.since(since))
	}
	ranks := make([]int, 0, len(j.ranks))
	for r := range j.ranks {
		ranks = append(ranks, r)
	}
	sort.Ints(ranks)
	for _, r := range ranks {
		rh := j.ranks[r]
		if since < 0 {
			v.Ranks = append(v.Ranks, rankColumns(r, rh.points.points()))
		} else {
			v.Ranks = append(v.Ranks, rankColumns(r, rh.points.since(since)))
		}
	}
	return v, true
}

// lastStep is a job's last finished step (-1: no such job).
func (h *historian) lastStep(name string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if j := h.jobs[name]; j != nil {
		return j.lastStep
	}
	return -1
}
