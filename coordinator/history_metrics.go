package coordinator

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// jobCollector exports the jobs' histories as Prometheus metrics at
// scrape time (docs/metrics.md, "Jobs"). Only the leader exports them, so
// scraping every coordinator yields one series per job; a standby that
// takes over continues the counters from the persisted history. A
// finished job's series go away grace after it finished.
type jobCollector struct {
	h     *historian
	grace time.Duration

	step, target, eta, tps, mfu, peak, loss, lastStep, restarts    *prometheus.Desc
	rankSteps, rankStep, rankCompute, rankComm, rankWait, rankData *prometheus.Desc
	slowdown, straggler, memory                                    *prometheus.Desc
	ckptSaves, ckptBytes, ckptLastS, ckptLastBytes, ckptStall      *prometheus.Desc
}

func newJobCollector(h *historian, grace time.Duration) *jobCollector {
	if grace <= 0 {
		grace = DefaultSeriesGrace
	}
	jr := []string{"job", "run"}
	jrr := []string{"job", "run", "rank"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &jobCollector{h: h, grace: grace,
		step:     d("loom_job_step", "Last optimizer step every rank of the job has reported.", jr),
		target:   d("loom_job_target_steps", "Steps the job trains for (train.steps).", jr),
		eta:      d("loom_job_eta_seconds", "Estimated seconds to the last step at the recent pace (0 when finished).", jr),
		tps:      d("loom_job_tokens_per_second", "Job-wide training throughput: global-batch tokens ÷ the slowest rank's step time, mean of the latest 16 steps.", jr),
		mfu:      d("loom_job_mfu_ratio", "Model FLOPs utilization: model FLOP/s (6N + attention per token) ÷ loom_job_peak_flops, mean of the latest 16 steps.", jr),
		peak:     d("loom_job_peak_flops", "The peak MFU divides by: the sum of the ranks' measured float32 FMA peaks, FLOP/s.", jr),
		loss:     d("loom_job_loss", "Training loss of the last step.", jr),
		lastStep: d("loom_job_last_step_timestamp_seconds", "When the job's last step ended (unix seconds).", jr),
		restarts: d("loom_job_restarts_total", "Generations of the run that ended early, by reason (worker_lost, hang, rank_failed, loss_not_finite, grow).", []string{"job", "run", "reason"}),

		rankSteps:   d("loom_rank_steps_total", "Steps of the run the rank finished.", jrr),
		rankStep:    d("loom_rank_step_seconds_total", "Wall time of the rank's steps.", jrr),
		rankCompute: d("loom_rank_compute_seconds_total", "Part of the rank's step time spent computing.", jrr),
		rankComm:    d("loom_rank_exposed_comm_seconds_total", "Part of the rank's step time spent in communication not hidden behind compute, waiting for peers excluded.", jrr),
		rankWait:    d("loom_rank_wait_seconds_total", "Part of the rank's step time spent waiting in collectives for slower ranks.", jrr),
		rankData:    d("loom_rank_data_wait_seconds_total", "Part of the rank's step time spent waiting for the data loader.", jrr),
		slowdown:    d("loom_rank_slowdown_ratio", "The rank's busy time (compute + data wait, latest 16 steps) ÷ the median rank's.", jrr),
		straggler:   d("loom_rank_straggler", "1 when loom_rank_slowdown_ratio > 1.2 (the rank holds the job back), else 0.", jrr),
		memory:      d("loom_rank_memory_bytes", "Bytes the rank holds, by kind, as it reported them.", []string{"job", "run", "rank", "kind"}),

		ckptSaves:     d("loom_checkpoint_saves_total", "Checkpoints of the run committed (manifest written).", jr),
		ckptBytes:     d("loom_checkpoint_bytes_total", "Bytes of the run's committed checkpoints, all ranks.", jr),
		ckptLastS:     d("loom_checkpoint_last_save_seconds", "Seconds from the end of the last checkpoint's step to its manifest being committed.", jr),
		ckptLastBytes: d("loom_checkpoint_last_bytes", "Bytes of the last committed checkpoint, all ranks.", jr),
		ckptStall:     d("loom_checkpoint_stall_seconds_total", "Seconds the rank's step loop was blocked snapshotting checkpoints.", jrr),
	}
}

// Describe implements prometheus.Collector.
func (c *jobCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.step, c.target, c.eta, c.tps, c.mfu, c.peak, c.loss, c.lastStep, c.restarts,
		c.rankSteps, c.rankStep, c.rankCompute, c.rankComm, c.rankWait, c.rankData, c.slowdown, c.straggler, c.memory,
		c.ckptSaves, c.ckptBytes, c.ckptLastS, c.ckptLastBytes, c.ckptStall} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *jobCollector) Collect(ch chan<- prometheus.Metric) {
	if !c.h.leader() {
		return
	}
	now := c.h.now()
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	for name, j := range c.h.jobs {
		if j.finishedMs > 0 && now.Sub(time.UnixMilli(j.finishedMs)) > c.grace {
			continue
		}
		if j.status == nil {
			continue // not scheduled yet
		}
		s := j.summary(now)
		run := j.runLabel
		gauge(c.step, float64(j.lastStep), name, run)
		gauge(c.target, float64(j.total), name, run)
		gauge(c.eta, s.ETASeconds, name, run)
		gauge(c.tps, s.TokensPerSec, name, run)
		gauge(c.mfu, s.MFU, name, run)
		gauge(c.peak, s.PeakFLOPS, name, run)
		if j.lastMs > 0 {
			gauge(c.loss, s.Loss, name, run)
			gauge(c.lastStep, float64(j.lastMs)/1e3, name, run)
		}
		for _, reason := range RestartReasons() {
			counter(c.restarts, float64(j.restarts[reason]), name, run, reason)
		}
		counter(c.ckptSaves, float64(j.ckptSaves), name, run)
		counter(c.ckptBytes, float64(j.ckptTotal), name, run)
		if j.ckptSaves > 0 {
			gauge(c.ckptLastS, j.ckptLastS, name, run)
			gauge(c.ckptLastBytes, float64(j.ckptLastB), name, run)
		}
		for _, row := range j.rankRows() {
			r := strconv.Itoa(row.Rank)
			t := row.Totals
			counter(c.rankSteps, float64(t.Steps), name, run, r)
			counter(c.rankStep, t.StepS, name, run, r)
			counter(c.rankCompute, t.ComputeS, name, run, r)
			counter(c.rankComm, t.CommS, name, run, r)
			counter(c.rankWait, t.WaitS, name, run, r)
			counter(c.rankData, t.DataS, name, run, r)
			counter(c.ckptStall, t.CheckpointS, name, run, r)
			gauge(c.slowdown, row.Slowdown, name, run, r)
			st := 0.0
			if row.Straggler {
				st = 1
			}
			gauge(c.straggler, st, name, run, r)
			for kind, b := range row.Memory {
				gauge(c.memory, float64(b), name, run, r, kind)
			}
		}
	}
}
