package coordinator

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// TestRecoveryMetrics: the leader counts each recovery once, when its next
// generation has taken its first step — steps lost by reason, and the
// recovery's parts as histograms — and exports the current dp; every
// series exists at zero from the job's first round.
func TestRecoveryMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newControlMetrics(reg)
	now := time.Unix(2_000, 0)
	st := &loomv1.JobStatus{Name: "j", State: running, Generation: 1, Dp: 4}
	o := Observed{Jobs: []JobObserved{{Desired: &loomv1.JobDesired{Name: "j"}, Status: st}}}
	m.observe(o, nil, now, time.Minute)
	if got := gathered(t, reg, "loom_job_lost_steps_total"); len(got) != len(RestartReasons()) || got["j,worker_lost"] != 0 {
		t.Fatalf("before any recovery: %v", got)
	}
	if got := gathered(t, reg, "loom_job_dp"); got["j"] != 4 {
		t.Errorf("dp %v", got)
	}
	// A recovery assigned but not resumed yet is not counted; once its
	// first step is in, it is, once.
	r := &loomv1.Recovery{Generation: 1, NextGeneration: 2, Reason: "worker_lost", EndedUnixMs: 10_000, AssignedUnixMs: 10_100,
		LostSteps: 3, SetupSeconds: 0.4, LoadSeconds: 0.1, DpBefore: 4, DpAfter: 3}
	st2 := &loomv1.JobStatus{Name: "j", State: running, Generation: 2, Dp: 3, Recoveries: []*loomv1.Recovery{r}}
	o.Jobs[0].Status = st2
	m.observe(o, nil, now, time.Minute)
	if got := gathered(t, reg, "loom_job_lost_steps_total"); got["j,worker_lost"] != 0 {
		t.Errorf("counted before the first step: %v", got)
	}
	r.ResumedUnixMs = 10_600
	m.observe(o, nil, now, time.Minute)
	m.observe(o, nil, now, time.Minute)
	if got := gathered(t, reg, "loom_job_lost_steps_total"); got["j,worker_lost"] != 3 {
		t.Errorf("lost steps %v, want 3 once", got)
	}
	if got := gathered(t, reg, "loom_job_dp"); got["j"] != 3 {
		t.Errorf("dp %v", got)
	}
	mfs, _ := reg.Gather()
	sums := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "loom_job_recovery_seconds" {
			continue
		}
		for _, mm := range mf.GetMetric() {
			if mm.GetHistogram().GetSampleCount() != 1 {
				t.Errorf("%v: %d samples, want 1", mm.GetLabel(), mm.GetHistogram().GetSampleCount())
			}
			sums[mm.GetLabel()[1].GetValue()] = mm.GetHistogram().GetSampleSum()
		}
	}
	if sums["rendezvous"] != 0.1 || sums["setup"] != 0.4 || sums["load"] != 0.1 || sums["total"] != 0.6 {
		t.Errorf("recovery parts %v", sums)
	}
	m.forget("j")
	if n := len(gathered(t, reg, "loom_job_lost_steps_total")); n != 0 {
		t.Errorf("%d series after forget", n)
	}
}
