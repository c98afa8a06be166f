// Package timeline owns the record of one training step as each rank saw
// it — every forward, backward and weight-gradient pass, every wait for a
// pipeline message, every send and receive, every collective and the
// optimizer step, with start and end times — saved per rank as a Chrome
// trace (Perfetto and chrome://tracing open it), merged over ranks, and
// measured: the pipeline bubble and the mean duration of each stage's
// passes, which the schedule simulator takes as its cost model.
package timeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/loomtrain/loom/plan"
)

// Event categories.
const (
	Compute    = "compute"    // F, B, W actions
	Wait       = "wait"       // a receive action waiting for its message
	Send       = "send"       // a message handed to the transport
	Recv       = "recv"       // a message arriving
	Collective = "collective" // tp, dp, pp, emb and kv collectives
	Optimizer  = "optimizer"  // the step's gradient exchange and update
)

// categories lists the categories in track order: a category's thread id
// in a trace is its index.
func categories() []string { return []string{Compute, Wait, Send, Recv, Collective, Optimizer} }

func track(cat string) int { return slices.Index(categories(), cat) }

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

// Event is one span of a timeline: Cat is its category, Kind what it did
// ("F", "B", "W", "RECV_F", "send", "all-reduce", "optimizer", …), Stage
// and Micro the pipeline stage and micro-batch of an action or message
// (−1 for collectives and the optimizer).
type Event struct {
	Name         string
	Cat          string
	Kind         string
	Stage, Micro int
	Start, End   time.Time
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
			Dur: float64(e.End.Sub(e.Start).Nanoseconds()) / 1e3, Pid: tl.Rank, Tid: track(e.Cat),
			Args: map[string]any{"kind": e.Kind, "stage": e.Stage, "micro": e.Micro}})
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

// Dir is where a job's ranks save their last step's timeline:
// checkpoint.dir/NAME/timeline, one rank-R.json each; timeline.json beside
// it is all of them merged.
func Dir(jobDir string) string { return filepath.Join(jobDir, "timeline") }

// Save writes tl as Dir(jobDir)/rank-R.json, atomically.
func Save(jobDir string, tl *Timeline) error {
	b, err := ChromeTrace(tl)
	if err != nil {
		return err
	}
	dir := Dir(jobDir)
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

// Merge reads the saved timelines of a job's ranks 0..world−1
// and returns them as one Chrome trace; ErrNone when a rank saved
// none (the error names it).
func Merge(jobDir string, world int) ([]byte, error) {
	all := traceFile{DisplayTimeUnit: "ms"}
	for r := range world {
		f := filepath.Join(Dir(jobDir), fmt.Sprintf("rank-%d.json", r))
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: rank %d of %d: %w", f, r, world, ErrNone)
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

// SaveMerged writes Merge(jobDir, world) to
// jobDir/timeline.json and returns its path.
func SaveMerged(jobDir string, world int) (string, error) {
	b, err := Merge(jobDir, world)
	if err != nil {
		return "", err
	}
	path := filepath.Join(jobDir, "timeline.json")
	return path, writeAtomic(path, b)
}

// ErrNone is returned when a rank of a job has saved no timeline.
var ErrNone = errors.New("no timeline saved")

// Stats is what a Chrome trace of one step says about its pipeline.
type Stats struct {
	// Ranks is how many ranks have compute events; Span the time from
	// the first compute event to the last; Busy each rank's time in
	// compute (by pid); Bubble 1 − ΣBusy/(Ranks·Span).
	Ranks  int
	Span   time.Duration
	Busy   map[int]time.Duration
	Bubble float64
	// Mean F, B and W durations by the action's stage, for the
	// simulator's cost model.
	Mean map[string]map[int]time.Duration
}

// Analyze measures the pipeline bubble of a Chrome trace written by
// ChromeTrace or Merge.
func Analyze(b []byte) (*Stats, error) {
	var tf traceFile
	if err := json.Unmarshal(b, &tf); err != nil {
		return nil, fmt.Errorf("timeline: %w", err)
	}
	st := &Stats{Busy: map[int]time.Duration{}, Mean: map[string]map[int]time.Duration{}}
	lo, hi := math.Inf(1), math.Inf(-1)
	count := map[string]map[int]int{}
	for _, e := range tf.TraceEvents {
		if e.Ph != "X" || e.Cat != Compute {
			continue
		}
		lo, hi = math.Min(lo, e.Ts), math.Max(hi, e.Ts+e.Dur)
		d := time.Duration(e.Dur * 1e3)
		st.Busy[e.Pid] += d
		k, _ := e.Args["kind"].(string)
		sv, ok := e.Args["stage"].(float64)
		if k == "" || !ok {
			continue
		}
		stage := int(sv)
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

// Read parses a Chrome trace written by ChromeTrace or Merge back into
// timelines, one per rank (pid), in rank order; events keep their order.
func Read(b []byte) ([]*Timeline, error) {
	var tf traceFile
	if err := json.Unmarshal(b, &tf); err != nil {
		return nil, fmt.Errorf("timeline: %w", err)
	}
	byRank := map[int]*Timeline{}
	var order []int
	for _, e := range tf.TraceEvents {
		tl := byRank[e.Pid]
		if tl == nil {
			tl = &Timeline{Rank: e.Pid}
			byRank[e.Pid] = tl
			order = append(order, e.Pid)
		}
		switch e.Ph {
		case "M":
			if e.Name == "process_name" {
				if n, ok := e.Args["name"].(string); ok {
					fmt.Sscanf(n[strings.LastIndex(n, "step ")+len("step "):], "%d", &tl.Step)
				}
			}
		case "X":
			ev := Event{Name: e.Name, Cat: e.Cat, Stage: -1, Micro: -1,
				Start: time.Unix(0, int64(e.Ts*1e3)), End: time.Unix(0, int64((e.Ts+e.Dur)*1e3))}
			ev.Kind, _ = e.Args["kind"].(string)
			if v, ok := e.Args["stage"].(float64); ok {
				ev.Stage = int(v)
			}
			if v, ok := e.Args["micro"].(float64); ok {
				ev.Micro = int(v)
			}
			tl.Events = append(tl.Events, ev)
		}
	}
	slices.Sort(order)
	out := make([]*Timeline, len(order))
	for i, r := range order {
		out[i] = byRank[r]
	}
	return out, nil
}
