package coordinator

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// StepMetrics holds the per-step training metrics that coordinators and
// workers export (docs/metrics.md documents each). Every series is
// labelled with the job and rank, and counts one generation of one
// submission of the job — its epoch, the etcd create revision of the
// generation's assignment, which grows with every generation and
// resubmission: the first update of a newer epoch removes the job's older
// series (Prometheus sees a counter reset), and updates of an older one
// are ignored. Forget removes a job's series (a finished job's, after a
// grace period). A nil *StepMetrics ignores updates; a non-nil one is safe
// for concurrent use.
type StepMetrics struct {
	stepSeconds  *prometheus.HistogramVec
	steps        *prometheus.CounterVec
	tokensPerSec *prometheus.GaugeVec
	loss         *prometheus.GaugeVec
	valLoss      *prometheus.GaugeVec
	lr           *prometheus.GaugeVec
	gradNorm     *prometheus.GaugeVec
	computeSecs  *prometheus.CounterVec
	commBytes    *prometheus.CounterVec
	commSeconds  *prometheus.CounterVec
	memory       *prometheus.GaugeVec
	links        *prometheus.GaugeVec

	mu     sync.Mutex
	epochs map[string]int64 // job → the epoch its series count
}

// NewStepMetrics registers the step metrics with reg (nil: a fresh,
// unexported registry, so that updates are still cheap no-ops for callers).
func NewStepMetrics(reg prometheus.Registerer) *StepMetrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	jr := []string{"job", "rank"}
	m := &StepMetrics{
		stepSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "loom_step_duration_seconds", Help: "Wall time of one optimizer step.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
		}, jr),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_steps_total", Help: "Optimizer steps finished in the job's current generation.",
		}, jr),
		tokensPerSec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_tokens_per_second", Help: "Training throughput of the job in tokens per second at the last step.",
		}, jr),
		loss: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_loss", Help: "Training loss at the last step.",
		}, jr),
		valLoss: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_val_loss", Help: "Validation loss at the last validation pass (train.eval_every).",
		}, jr),
		lr: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_learning_rate", Help: "Learning rate at the last step.",
		}, jr),
		gradNorm: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_grad_norm", Help: "Global gradient norm (before clipping) at the last step.",
		}, jr),
		computeSecs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_compute_seconds_total", Help: "Seconds spent computing (not communicating) in steps.",
		}, jr),
		commBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_comm_bytes_total", Help: "Bytes sent by communication operations, by operation.",
		}, []string{"job", "rank", "op"}),
		commSeconds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_comm_seconds_total", Help: "Seconds spent in communication operations, by operation.",
		}, []string{"job", "rank", "op"}),
		memory: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_worker_memory_bytes", Help: "Bytes a rank holds, by kind (params, grads, optimizer, working, comm, activations, runtime).",
		}, []string{"job", "rank", "kind"}),
		links: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_worker_link", Help: "1 for each peer a rank sends tensors to, labelled with the transport its link chose (shm, tcp or grpc).",
		}, []string{"job", "rank", "peer", "transport"}),
		epochs: map[string]int64{},
	}
	reg.MustRegister(m.stepSeconds, m.steps, m.tokensPerSec, m.loss, m.valLoss, m.lr, m.gradNorm,
		m.computeSecs, m.commBytes, m.commSeconds, m.memory, m.links)
	return m
}

// current reports whether an update of epoch for job counts, first
// removing the job's series of an older epoch. m.mu is held.
func (m *StepMetrics) current(job string, epoch int64) bool {
	cur, ok := m.epochs[job]
	switch {
	case ok && epoch < cur:
		return false // a late update of an ended generation
	case ok && epoch > cur:
		m.deleteLocked(job)
	}
	m.epochs[job] = epoch
	return true
}

func (m *StepMetrics) deleteLocked(job string) {
	l := prometheus.Labels{"job": job}
	m.stepSeconds.DeletePartialMatch(l)
	for _, v := range []*prometheus.CounterVec{m.steps, m.computeSecs, m.commBytes, m.commSeconds} {
		v.DeletePartialMatch(l)
	}
	for _, v := range []*prometheus.GaugeVec{m.tokensPerSec, m.loss, m.valLoss, m.lr, m.gradNorm, m.memory, m.links} {
		v.DeletePartialMatch(l)
	}
	delete(m.epochs, job)
}

// Forget removes every series of job.
func (m *StepMetrics) Forget(job string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deleteLocked(job)
}

// ForgetEpoch removes job's series if they still count epoch (and not a
// newer generation's).
func (m *StepMetrics) ForgetEpoch(job string, epoch int64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.epochs[job]; ok && cur == epoch {
		m.deleteLocked(job)
	}
}

// Jobs lists the jobs that have series.
func (m *StepMetrics) Jobs() []string {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return sortedKeys(m.epochs)
}

// ObserveStep records one step of a rank of a job's generation epoch.
func (m *StepMetrics) ObserveStep(job string, epoch int64, rank int, s *loomv1.StepStats) {
	if m == nil || s == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.current(job, epoch) {
		return
	}
	r := strconv.Itoa(rank)
	m.stepSeconds.WithLabelValues(job, r).Observe(s.StepSeconds)
	m.steps.WithLabelValues(job, r).Inc()
	m.tokensPerSec.WithLabelValues(job, r).Set(s.TokensPerSec)
	m.loss.WithLabelValues(job, r).Set(s.Loss)
	if s.ValLoss > 0 {
		m.valLoss.WithLabelValues(job, r).Set(s.ValLoss)
	}
	m.lr.WithLabelValues(job, r).Set(s.Lr)
	m.gradNorm.WithLabelValues(job, r).Set(s.GradNorm)
	m.computeSecs.WithLabelValues(job, r).Add(nonNeg(s.ComputeSeconds))
	for _, c := range s.Comm {
		m.commBytes.WithLabelValues(job, r, c.Op).Add(nonNeg(float64(c.Bytes)))
		m.commSeconds.WithLabelValues(job, r, c.Op).Add(nonNeg(c.Seconds))
	}
}

// AddComm adds one communication operation's volume and time; engines may
// call it as operations finish instead of listing them in StepStats.
func (m *StepMetrics) AddComm(job string, epoch int64, rank int, op string, bytes int64, seconds float64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.current(job, epoch) {
		return
	}
	r := strconv.Itoa(rank)
	m.commBytes.WithLabelValues(job, r, op).Add(nonNeg(float64(bytes)))
	m.commSeconds.WithLabelValues(job, r, op).Add(nonNeg(seconds))
}

// SetMemory records how many bytes of one kind a rank holds.
func (m *StepMetrics) SetMemory(job string, epoch int64, rank int, kind string, bytes int64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.current(job, epoch) {
		return
	}
	m.memory.WithLabelValues(job, strconv.Itoa(rank), kind).Set(float64(bytes))
}

// SetLink records the transport a rank's link to peer chose.
func (m *StepMetrics) SetLink(job string, rank int, peer, transport string) {
	if m == nil {
		return
	}
	m.links.WithLabelValues(job, strconv.Itoa(rank), peer, transport).Set(1)
}

func nonNeg(v float64) float64 {
	if v < 0 {
		return 0
	}
	return v
}

// controlMetrics are the coordinator's own series: the leader's view of
// jobs and their recoveries.
type controlMetrics struct {
	leader     prometheus.Gauge
	workers    prometheus.Gauge
	generation *prometheus.GaugeVec
	state      *prometheus.GaugeVec
	dp         *prometheus.GaugeVec
	// lostSteps and recovery count each recovery (JobStatus.recoveries)
	// once, when its next generation has taken its first step.
	lostSteps *prometheus.CounterVec
	recovery  *prometheus.HistogramVec

	mu   sync.Mutex
	have map[string]bool // jobs with gauges
	// counted are the recoveries counted, by job then generation; run is
	// the job's run id they belong to.
	counted map[string]map[uint64]bool
}

// jobs lists the jobs that have gauges.
func (m *controlMetrics) jobs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return sortedKeys(m.have)
}

func newControlMetrics(reg prometheus.Registerer) *controlMetrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &controlMetrics{
		have: map[string]bool{}, counted: map[string]map[uint64]bool{},
		dp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_job_dp", Help: "Data-parallel size of the job's current (or last) generation.",
		}, []string{"job"}),
		lostSteps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_job_lost_steps_total", Help: "Steps trained again after recoveries (newest step reached minus the checkpoint resumed), by reason.",
		}, []string{"job", "reason"}),
		recovery: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "loom_job_recovery_seconds", Help: "Recoveries by part (phase): rendezvous (the leader ending a generation to assigning the next), setup (the slowest rank's assignment to first step), load (its checkpoint restore, part of setup), total (generation ended to the next one's first step).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}, []string{"job", "phase"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "loom_coordinator_leader", Help: "1 while this coordinator is the elected leader, else 0.",
		}),
		workers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "loom_workers_registered", Help: "Workers with a live registration lease (as last seen by the leader).",
		}),
		generation: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_job_generation", Help: "Latest generation assigned to the job.",
		}, []string{"job"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_job_state", Help: "1 for the job's current state (label state), 0 for the others.",
		}, []string{"job", "state"}),
	}
	reg.MustRegister(m.leader, m.workers, m.generation, m.state, m.dp, m.lostSteps, m.recovery)
	return m
}

// forget removes job's gauges.
func (m *controlMetrics) forget(job string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := prometheus.Labels{"job": job}
	m.generation.DeletePartialMatch(l)
	m.state.DeletePartialMatch(l)
	m.dp.DeletePartialMatch(l)
	m.lostSteps.DeletePartialMatch(l)
	m.recovery.DeletePartialMatch(l)
	delete(m.have, job)
	delete(m.counted, job)
}

// sweepSeries removes, every so often, the step and job series of jobs
// that finished more than Config.SeriesGrace ago or are gone from etcd,
// on the leader and the standbys alike (a worker may report to either).
func (c *Coordinator) sweepSeries(ctx context.Context) {
	grace := c.cfg.SeriesGrace
	if grace <= 0 {
		grace = DefaultSeriesGrace
	}
	every := min(max(grace/4, 250*time.Millisecond), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		known := append(c.steps.Jobs(), c.control.jobs()...)
		if len(known) == 0 {
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		resp, err := c.cfg.Etcd.Get(gctx, c.keys.Jobs(), clientv3.WithPrefix())
		cancel()
		if err != nil {
			continue // etcd away: try again later
		}
		now := c.cfg.Now()
		finished := map[string]bool{}
		present := map[string]bool{}
		for _, j := range c.jobsFrom(resp) {
			st := j.Status
			present[st.Name] = true
			if Terminal(st.State) && now.Sub(time.UnixMilli(st.UpdatedUnixMs)) >= grace {
				finished[st.Name] = true
			}
		}
		for _, job := range known {
			if finished[job] || !present[job] {
				c.steps.Forget(job)
				c.control.forget(job)
			}
		}
	}
}

// observe sets the gauges from a round; a job finished more than grace
// before now has none (sweepSeries removed them).
func (m *controlMetrics) observe(o Observed, acts []Action, now time.Time, grace time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.workers.Set(float64(len(o.Workers)))
	status := map[string]*loomv1.JobStatus{}
	for _, j := range o.Jobs {
		if j.Status != nil {
			status[j.Desired.Name] = j.Status
		}
	}
	for _, a := range acts {
		if a.Kind == PutStatus {
			status[a.Job] = a.Status
		}
	}
	for job, s := range status {
		if Terminal(s.State) && s.UpdatedUnixMs > 0 && now.Sub(time.UnixMilli(s.UpdatedUnixMs)) >= grace {
			continue
		}
		m.have[job] = true
		m.generation.WithLabelValues(job).Set(float64(s.Generation))
		if s.Dp > 0 {
			m.dp.WithLabelValues(job).Set(float64(s.Dp))
		}
		m.countRecoveries(job, s)
		for v, name := range loomv1.JobState_name {
			if v == 0 {
				continue
			}
			x := 0.0
			if int32(s.State) == v {
				x = 1
			}
			m.state.WithLabelValues(job, name).Set(x)
		}
	}
}

// countRecoveries adds the job's recoveries that have completed (their
// next generation took its first step) and were not counted yet. A
// resubmitted job (generation back to 1) starts afresh. m.mu is held.
func (m *controlMetrics) countRecoveries(job string, s *loomv1.JobStatus) {
	seen := m.counted[job]
	if seen == nil || s.Generation < maxGen(seen) {
		seen = map[uint64]bool{}
		m.counted[job] = seen
		// Every series exists from the start (at zero), so that a query
		// of a job that never recovered has data.
		for _, r := range RestartReasons() {
			m.lostSteps.WithLabelValues(job, r)
		}
		for _, p := range []string{"rendezvous", "setup", "load", "total"} {
			m.recovery.WithLabelValues(job, p)
		}
	}
	for _, r := range s.Recoveries {
		if r.ResumedUnixMs == 0 || seen[r.Generation] {
			continue
		}
		seen[r.Generation] = true
		m.lostSteps.WithLabelValues(job, r.Reason).Add(float64(r.LostSteps))
		m.recovery.WithLabelValues(job, "rendezvous").Observe(float64(r.AssignedUnixMs-r.EndedUnixMs) / 1e3)
		m.recovery.WithLabelValues(job, "setup").Observe(r.SetupSeconds)
		m.recovery.WithLabelValues(job, "load").Observe(r.LoadSeconds)
		m.recovery.WithLabelValues(job, "total").Observe(float64(r.ResumedUnixMs-r.EndedUnixMs) / 1e3)
	}
}

func maxGen(seen map[uint64]bool) uint64 {
	var g uint64
	for k := range seen {
		g = max(g, k)
	}
	return g
}
