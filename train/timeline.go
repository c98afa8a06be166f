package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/plan"
)

// Event categories of a timeline.
const (
	catCompute    = "compute"    // F, B, W actions
	catWait       = "wait"       // a receive action waiting for its message
	catSend       = "send"       // a message handed to the transport
	catRecv       = "recv"       // a message arriving
	catCollective = "collective" // tp, dp, pp, emb and kv collectives
	catOptimizer  = "optimizer"  // the step's gradient exchange and update
)

// categories lists the categories in track order: a category's thread id
// in a trace is its index.
func categories() []string {
	return []string{catCompute, catWait, catSend, catRecv, catCollective, catOptimizer}
}

func track(cat string) int { return slices.Index(categories(), cat) }

// span is one timed event of a step.
type span struct {
	name, cat  string
	start, end time.Time
}

// recorder collects a step's spans; safe for concurrent use (collectives
// run on the ZeRO queue's goroutine).
type recorder struct {
	mu    sync.Mutex
	spans []span
}

func (r *recorder) add(s span) {
	r.mu.Lock()
	r.spans = append(r.spans, s)
	r.mu.Unlock()
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.spans = r.spans[:0]
	r.mu.Unlock()
}

func (r *recorder) take() []span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]span(nil), r.spans...)
}

// tracedComm records every collective of a group in the step's timeline.
// Send and Recv pass through (the pipeline records its own transfers).
type tracedComm struct {
	parallel.Comm
	rec *recorder
}

func traced(c parallel.Comm, rec *recorder) parallel.Comm {
	if c == nil {
		return nil
	}
	return &tracedComm{Comm: c, rec: rec}
}

func (t *tracedComm) span(op string, n int, start time.Time) {
	t.rec.add(span{name: fmt.Sprintf("%s %s (%d)", op, t.Spec().Name, n), cat: catCollective, start: start, end: time.Now()})
}

func (t *tracedComm) AllReduce(ctx context.Context, buf []float32, op parallel.ReduceOp) error {
	defer t.span("all-reduce", len(buf), time.Now())
	return t.Comm.AllReduce(ctx, buf, op)
}

func (t *tracedComm) ReduceScatter(ctx context.Context, buf []float32, op parallel.ReduceOp) ([]float32, error) {
	defer t.span("reduce-scatter", len(buf), time.Now())
	return t.Comm.ReduceScatter(ctx, buf, op)
}

func (t *tracedComm) AllGather(ctx context.Context, buf []float32) error {
	defer t.span("all-gather", len(buf), time.Now())
	return t.Comm.AllGather(ctx, buf)
}

func (t *tracedComm) Broadcast(ctx context.Context, buf []float32, root int) error {
	defer t.span("broadcast", len(buf), time.Now())
	return t.Comm.Broadcast(ctx, buf, root)
}

func (t *tracedComm) Barrier(ctx context.Context) error {
	defer t.span("barrier", 0, time.Now())
	return t.Comm.Barrier(ctx)
}

// Timeline is one rank's events of one step: every forward, backward and
// weight-gradient action, every wait for a pipeline message, every send
// and receive, every collective and the optimizer step, with start and
// end times (wall clock, so ranks on one host line up; across hosts their
// clocks' offsets show).
type Timeline struct {
	Rank   int
	Coord  plan.Coord
	Step   int
	Events []Event
}

// Event is one span of a timeline.
type Event struct {
	Name       string
	Cat        string
	Start, End time.Time
}

// traceEvent is one Chrome trace event ("X": a complete event; "M":
// metadata naming a process or thread).
type traceEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat,omitempty"`
	Ph   string         `json:"ph"`
	Ts   float64        `json:"ts"`            // µs
	Dur  float64        `json:"dur,omitempty"` // µs
	Pid  int            `json:"pid"`
	Tid  int            `json:"tid"`
	Args map[string]any `json:"args,omitempty"`
}

type traceFile struct {
	TraceEvents     []traceEvent `json:"traceEvents"`
	DisplayTimeUnit string       `json:"displayTimeUnit"`
}

func (tl *Timeline) traceEvents() []traceEvent {
	ev := []traceEvent{{Name: "process_name", Ph: "M", Pid: tl.Rank,
		Args: map[string]any{"name": fmt.Sprintf("rank %d %v step %d", tl.Rank, tl.Coord, tl.Step)}},
		{Name: "process_sort_index", Ph: "M", Pid: tl.Rank, Args: map[string]any{"sort_index": tl.Rank}}}
	for tid, cat := range categories() {
		ev = append(ev, traceEvent{Name: "thread_name", Ph: "M", Pid: tl.Rank, Tid: tid, Args: map[string]any{"name": cat}})
	}
	for _, e := range tl.Events {
		ev = append(ev, traceEvent{Name: e.Name, Cat: e.Cat, Ph: "X", Ts: float64(e.Start.UnixNano()) / 1e3,
			Dur: float64(e.End.Sub(e.Start).Nanoseconds()) / 1e3, Pid: tl.Rank, Tid: track(e.Cat)})
	}
	return ev
}

// ChromeTrace encodes timelines as one Chrome trace (Perfetto and
// chrome://tracing open it): a process per rank, a thread per category.
func ChromeTrace(tls ...*Timeline) ([]byte, error) {
	f := traceFile{DisplayTimeUnit: "ms"}
	for _, tl := range tls {
		f.TraceEvents = append(f.TraceEvents, tl.traceEvents()...)
	}
	return json.MarshalIndent(f, "", " ")
}

// TimelineDir is where a job's ranks save their last step's timeline:
// checkpoint.dir/NAME/timeline, one rank-R.json each; timeline.json beside
// it is all of them merged.
func TimelineDir(jobDir string) string { return filepath.Join(jobDir, "timeline") }

// SaveTimeline writes tl as TimelineDir(jobDir)/rank-R.json, atomically.
func SaveTimeline(jobDir string, tl *Timeline) error {
	b, err := ChromeTrace(tl)
	if err != nil {
		return err
	}
	dir := TimelineDir(jobDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	return writeAtomic(filepath.Join(dir, fmt.Sprintf("rank-%d.json", tl.Rank)), b)
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	return nil
}

// MergeTimelines reads the saved timelines of a job's ranks 0..world−1
// and returns them as one Chrome trace; ErrNoTimeline when a rank saved
// none (the error names it).
func MergeTimelines(jobDir string, world int) ([]byte, error) {
	all := traceFile{DisplayTimeUnit: "ms"}
	for r := range world {
		f := filepath.Join(TimelineDir(jobDir), fmt.Sprintf("rank-%d.json", r))
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: rank %d of %d: %w", f, r, world, ErrNoTimeline)
		}
		if err != nil {
			return nil, fmt.Errorf("timeline: %w", err)
		}
		var tf traceFile
		if err := json.Unmarshal(b, &tf); err != nil {
			return nil, fmt.Errorf("timeline: %s: %w", f, err)
		}
		all.TraceEvents = append(all.TraceEvents, tf.TraceEvents...)
	}
	return json.MarshalIndent(all, "", " ")
}

// SaveMergedTimeline writes MergeTimelines(jobDir, world) to
// jobDir/timeline.json and returns its path.
func SaveMergedTimeline(jobDir string, world int) (string, error) {
	b, err := MergeTimelines(jobDir, world)
	if err != nil {
		return "", err
	}
	path := filepath.Join(jobDir, "timeline.json")
	return path, writeAtomic(path, b)
}

// ErrNoTimeline is returned when a job has saved no timeline.
var ErrNoTimeline = errors.New("no timeline saved")

// TraceStats is what a Chrome trace of one step says about its pipeline.
type TraceStats struct {
	// Ranks is how many ranks have compute events; Span the time from
	// the first compute event to the last; Busy each rank's time in
	// compute (by pid); Bubble 1 − ΣBusy/(Ranks·Span).
	Ranks  int
	Span   time.Duration
	Busy   map[int]time.Duration
	Bubble float64
	// Mean F, B and W durations by the action's stage (the number before
	// the kind: "1F3" is stage 1), for the simulator's cost model.
	Mean map[string]map[int]time.Duration
}

// AnalyzeTrace measures the pipeline bubble of a Chrome trace written by
// ChromeTrace or MergeTimelines.
func AnalyzeTrace(b []byte) (*TraceStats, error) {
	var tf traceFile
	if err := json.Unmarshal(b, &tf); err != nil {
		return nil, fmt.Errorf("timeline: %w", err)
	}
	st := &TraceStats{Busy: map[int]time.Duration{}, Mean: map[string]map[int]time.Duration{}}
	lo, hi := math.Inf(1), math.Inf(-1)
	count := map[string]map[int]int{}
	for _, e := range tf.TraceEvents {
		if e.Ph != "X" || e.Cat != catCompute {
			continue
		}
		lo, hi = math.Min(lo, e.Ts), math.Max(hi, e.Ts+e.Dur)
		d := time.Duration(e.Dur * 1e3)
		st.Busy[e.Pid] += d
		i := strings.IndexAny(e.Name, "FBW")
		if i <= 0 {
			continue
		}
		var stage int
		if _, err := fmt.Sscanf(e.Name[:i], "%d", &stage); err != nil {
			continue
		}
		k := e.Name[i : i+1]
		if st.Mean[k] == nil {
			st.Mean[k], count[k] = map[int]time.Duration{}, map[int]int{}
		}
		st.Mean[k][stage] += d
		count[k][stage]++
	}
	st.Ranks = len(st.Busy)
	if st.Ranks == 0 {
		return nil, errors.New("timeline: no compute events")
	}
	st.Span = time.Duration((hi - lo) * 1e3)
	var busy time.Duration
	for _, b := range st.Busy {
		busy += b
	}
	st.Bubble = 1 - float64(busy)/(float64(st.Ranks)*float64(st.Span))
	for k, m := range st.Mean {
		for s, d := range m {
			m[s] = d / time.Duration(count[k][s])
		}
	}
	return st, nil
}
