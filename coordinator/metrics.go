package coordinator

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// StepMetrics holds the per-step training metrics that coordinators and
// workers export (docs/metrics.md documents each). Every series is
// labelled with the job and rank. A nil *StepMetrics ignores updates; a
// non-nil one is safe for concurrent use.
type StepMetrics struct {
	stepSeconds  *prometheus.HistogramVec
	steps        *prometheus.CounterVec
	tokensPerSec *prometheus.GaugeVec
	loss         *prometheus.GaugeVec
	lr           *prometheus.GaugeVec
	gradNorm     *prometheus.GaugeVec
	computeSecs  *prometheus.CounterVec
	commBytes    *prometheus.CounterVec
	commSeconds  *prometheus.CounterVec
	memory       *prometheus.GaugeVec
	links        *prometheus.GaugeVec
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
			Name: "loom_steps_total", Help: "Optimizer steps finished.",
		}, jr),
		tokensPerSec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_tokens_per_second", Help: "Training throughput of the job in tokens per second at the last step.",
		}, jr),
		loss: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_loss", Help: "Training loss at the last step.",
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
	}
	reg.MustRegister(m.stepSeconds, m.steps, m.tokensPerSec, m.loss, m.lr, m.gradNorm,
		m.computeSecs, m.commBytes, m.commSeconds, m.memory, m.links)
	return m
}

// ObserveStep records one step of a rank of a job.
func (m *StepMetrics) ObserveStep(job string, rank int, s *loomv1.StepStats) {
	if m == nil || s == nil {
		return
	}
	r := strconv.Itoa(rank)
	m.stepSeconds.WithLabelValues(job, r).Observe(s.StepSeconds)
	m.steps.WithLabelValues(job, r).Inc()
	m.tokensPerSec.WithLabelValues(job, r).Set(s.TokensPerSec)
	m.loss.WithLabelValues(job, r).Set(s.Loss)
	m.lr.WithLabelValues(job, r).Set(s.Lr)
	m.gradNorm.WithLabelValues(job, r).Set(s.GradNorm)
	m.computeSecs.WithLabelValues(job, r).Add(nonNeg(s.ComputeSeconds))
	for _, c := range s.Comm {
		m.AddComm(job, rank, c.Op, c.Bytes, c.Seconds)
	}
}

// AddComm adds one communication operation's volume and time; engines may
// call it as operations finish instead of listing them in StepStats.
func (m *StepMetrics) AddComm(job string, rank int, op string, bytes int64, seconds float64) {
	if m == nil {
		return
	}
	r := strconv.Itoa(rank)
	m.commBytes.WithLabelValues(job, r, op).Add(nonNeg(float64(bytes)))
	m.commSeconds.WithLabelValues(job, r, op).Add(nonNeg(seconds))
}

// SetMemory records how many bytes of one kind a rank holds.
func (m *StepMetrics) SetMemory(job string, rank int, kind string, bytes int64) {
	if m == nil {
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

// controlMetrics are the coordinator's own gauges.
type controlMetrics struct {
	leader     prometheus.Gauge
	workers    prometheus.Gauge
	generation *prometheus.GaugeVec
	state      *prometheus.GaugeVec
}

func newControlMetrics(reg prometheus.Registerer) *controlMetrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &controlMetrics{
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
	reg.MustRegister(m.leader, m.workers, m.generation, m.state)
	return m
}

func (m *controlMetrics) observe(o Observed, acts []Action) {
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
		m.generation.WithLabelValues(job).Set(float64(s.Generation))
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
