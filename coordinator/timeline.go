package coordinator

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/schedule"
	"github.com/loomtrain/loom/timeline"
)

// A job's ranks save their last step's timeline when they finish
// (timeline.Dir under checkpoint.dir/NAME: the filesystem the coordinator
// shares with the workers, as it does for checkpoint manifests). The
// coordinator reads it for the dashboard: GET /api/jobs/NAME/timeline in
// the page's shape (Timeline), GET /api/jobs/NAME/timeline.json as the
// merged Chrome trace for Perfetto.

// jobSpec is the spec a job was submitted with and its world size.
func (h *historian) jobSpec(name string) (api.JobSpec, bool) {
	h.mu.Lock()
	j := h.jobs[name]
	var src []byte
	if j != nil && j.desired != nil {
		src = j.desired.SpecYaml
	}
	h.mu.Unlock()
	if j == nil {
		return api.JobSpec{}, false
	}
	spec, err := api.ParseSpec(src, "job "+name)
	return spec, err == nil
}

// timelineTrace is the merged Chrome trace of the job's ranks.
func timelineTrace(spec api.JobSpec) ([]byte, error) {
	return timeline.Merge(checkpoint.JobDir(spec), spec.Parallel.WorldSize())
}

// timelineView turns a job's saved timeline into the page's Timeline:
// every rank's events with times in seconds from the step's first event,
// and the measured pipeline bubble. A job that saved none is not an
// error: Reason says why there is nothing.
func timelineView(name string, spec api.JobSpec) Timeline {
	v := Timeline{Job: name, Ranks: []TimelineTrack{}, Schedule: spec.Parallel.Schedule, PP: spec.Parallel.PP,
		VirtualStages: spec.Parallel.VirtualStages, MicroBatches: spec.AccumulationSteps()}
	b, err := timelineTrace(spec)
	if errors.Is(err, timeline.ErrNone) {
		v.Reason = fmt.Sprintf("no timeline yet: every rank saves its last step's when the run ends (%v)", err)
		return v
	}
	var tls []*timeline.Timeline
	if err == nil {
		tls, err = timeline.Read(b)
	}
	if err != nil {
		v.Reason = err.Error()
		return v
	}
	t0 := time.Time{}
	for _, tl := range tls {
		for _, e := range tl.Events {
			if t0.IsZero() || e.Start.Before(t0) {
				t0 = e.Start
			}
		}
	}
	for _, tl := range tls {
		tr := TimelineTrack{Rank: tl.Rank, Actions: []TimelineAction{}}
		v.Step = max(v.Step, int64(tl.Step))
		for _, e := range tl.Events {
			kind := e.Kind
			if e.Cat == timeline.Wait {
				kind = "wait"
			}
			tr.Actions = append(tr.Actions, TimelineAction{Kind: kind, Cat: e.Cat, Micro: e.Micro, Stage: e.Stage, Name: e.Name,
				StartS: e.Start.Sub(t0).Seconds(), EndS: e.End.Sub(t0).Seconds()})
		}
		v.Ranks = append(v.Ranks, tr)
	}
	if st, err := timeline.Analyze(b); err == nil && !math.IsNaN(st.Bubble) {
		v.Bubble = st.Bubble
		v.SimulatedBubble = simulatedBubble(spec, st)
	}
	v.Available = true
	return v
}

// simulatedBubble is the schedule simulator's bubble for the pass
// durations measured in a step (0 when the trace lacks a stage's forward
// or the schedule cannot be built).
func simulatedBubble(spec api.JobSpec, st *timeline.Stats) float64 {
	p := spec.Parallel
	s, err := schedule.For(p.Schedule, max(1, p.PP), max(1, p.VirtualStages), spec.AccumulationSteps())
	if err != nil || s.PP < 2 {
		return 0
	}
	c := schedule.Uniform(s.Stages(), 0, 0, 0, 0)
	for i := range s.Stages() {
		f, ok := st.Mean["F"][i]
		if !ok {
			return 0
		}
		c.F[i], c.B[i], c.W[i] = f.Seconds(), st.Mean["B"][i].Seconds(), st.Mean["W"][i].Seconds()
	}
	res, err := schedule.Simulate(s, c)
	if err != nil || math.IsNaN(res.Bubble) {
		return 0
	}
	return res.Bubble
}

func (c *Coordinator) serveTimeline(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	spec, ok := c.history.jobSpec(name)
	if !ok {
		c.noJob(w, name)
		return
	}
	writeJSON(w, timelineView(name, spec))
}

func (c *Coordinator) serveTimelineTrace(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	spec, ok := c.history.jobSpec(name)
	if !ok {
		c.noJob(w, name)
		return
	}
	b, err := timelineTrace(spec)
	if errors.Is(err, timeline.ErrNone) {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name+"-timeline.json"))
	w.Write(b)
}
