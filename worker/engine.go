package worker

import (
	"context"
	"net"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
)

// Engine trains one rank of one generation of a job. Run returns nil when
// the rank has finished every step, an error when training failed, and
// promptly (with ctx's error) when ctx is cancelled — which happens when the
// generation is invalidated: a peer was lost, the job was stopped, or this
// worker lost its own registration. report may be called from any
// goroutine, once per finished optimizer step.
type Engine interface {
	Run(ctx context.Context, a Assignment, report func(StepStats)) error
}

// EngineFunc adapts a function to Engine.
type EngineFunc func(ctx context.Context, a Assignment, report func(StepStats)) error

// Run calls f.
func (f EngineFunc) Run(ctx context.Context, a Assignment, report func(StepStats)) error {
	return f(ctx, a, report)
}

// Assignment is one rank of one generation, as the coordinator assigned it.
type Assignment struct {
	Job        string
	Generation uint64
	// Spec is the job spec this generation runs, parsed and validated: the
	// submitted one at the generation's data-parallel size
	// (api.JobSpec.ForDP), so accumulation adapts and the global batch
	// stays.
	Spec api.JobSpec
	Rank int
	// WorldSize is Spec.Parallel.WorldSize(), the number of ranks.
	WorldSize int
	// DP, PP and TP are this rank's coordinates: rank = (PP·dp_size + DP)·tp_size + TP
	// (coordinator.RankCoords).
	DP, PP, TP int
	// Peers holds every rank's data-plane address, indexed by rank;
	// Peers[Rank] is this worker's own.
	Peers []string
	// Threads is how many compute threads this worker may use.
	Threads int
	// Listener accepts the connections peers make to Peers[Rank] during
	// this generation. The engine may close it; the worker keeps the port.
	Listener net.Listener
	// Metrics records communication as it happens (see Metrics.AddComm).
	Metrics Metrics
	// Resume says what to restore before training: "" (nothing),
	// "latest", "auto" (the latest complete checkpoint if any) or a
	// checkpoint step directory.
	Resume string
	// Ops records the rank's communication calls in flight: the engine
	// wraps each of its process groups with Ops.Wrap, so a watchdog that
	// fires can say what the rank was waiting on. Nil wraps nothing.
	Ops *OpTracker
	// ReportCheckpoint tells the coordinator that this rank's files of the
	// checkpoint of step are durable; part is the rank's part of the
	// manifest (checkpoint.RankPart as JSON). It fails once the generation
	// has ended. Nil when the worker has no coordinator (tests).
	ReportCheckpoint func(ctx context.Context, step int, part []byte) error
}

// StepStats is one finished optimizer step of one rank.
type StepStats struct {
	Step     int     // 1-based optimizer step
	Loss     float64 // training loss of the step
	LR       float64 // learning rate used
	GradNorm float64 // global gradient norm before clipping
	// TokensPerSec is the job's throughput at this step: tokens of the
	// global batch divided by the step time.
	TokensPerSec float64
	StepTime     time.Duration // wall time of the step
	ComputeTime  time.Duration // part of StepTime spent computing
	CommTime     time.Duration // part of StepTime spent waiting for communication (exposed)
	DataTime     time.Duration // part of StepTime spent filling batches from the data loader
	// CheckpointTime is how long the loop was blocked after the step to
	// snapshot a checkpoint (0: none was due).
	CheckpointTime time.Duration
	Tokens         int64 // tokens in the step's global batch
	// ValLoss is the validation loss after the step when one was due, else 0.
	ValLoss float64
	// Comm lists the step's communication by operation; leave it empty if
	// the engine records communication with Metrics.AddComm instead.
	Comm []CommStat
}

// CommStat is the volume and time of one kind of communication operation
// (e.g. "all-reduce", "send") within a step.
type CommStat struct {
	Op    string
	Bytes int64
	Time  time.Duration
}

// Metrics lets an engine record communication volume and time as
// operations finish. The zero value discards; it is safe for concurrent use.
type Metrics struct {
	steps *coordinator.StepMetrics
	rep   *reporter
	job   string
	gen   uint64
	epoch int64 // the assignment's revision: see coordinator.StepMetrics
	rank  int
	watch *rankWatch
}

// Step is the last step the rank finished in this generation (its last
// report; 0 before the first).
func (m Metrics) Step() int {
	if m.watch == nil {
		return 0
	}
	m.watch.mu.Lock()
	defer m.watch.mu.Unlock()
	return m.watch.lastStep
}

// SetResume records that the rank restored the checkpoint of step in d
// (before its first step): the coordinator's recovery record reports the
// slowest rank's, and the rank's first step is step+1.
func (m Metrics) SetResume(step int, d time.Duration) {
	if m.watch != nil {
		m.watch.resumed(step)
	}
	if m.rep != nil {
		m.rep.setResume(m.job, m.gen, int64(step), d.Seconds())
	}
}

// SetLink records the transport (shm, tcp or grpc) this rank's link to
// the peer at addr chose: the metric loom_worker_link.
func (m Metrics) SetLink(peer, transport string) {
	m.steps.SetLink(m.job, m.rank, peer, transport)
}

// SetMemory records the bytes of one kind (params, grads, optimizer, …)
// this rank holds; the coordinator's dashboard gets them with the next
// step report.
func (m Metrics) SetMemory(kind string, bytes int64) {
	m.steps.SetMemory(m.job, m.epoch, m.rank, kind, bytes)
	if m.rep != nil {
		m.rep.setRankInfo(m.job, m.gen, kind, bytes, 0)
	}
}

// SetPeakFLOPS records the rank's measured float32 peak (FLOP/s on its
// threads), which the coordinator's MFU divides by.
func (m Metrics) SetPeakFLOPS(flops float64) {
	if m.rep != nil {
		m.rep.setRankInfo(m.job, m.gen, "", 0, flops)
	}
}

// AddComm records one communication operation of this rank.
func (m Metrics) AddComm(op string, bytes int64, d time.Duration) {
	m.steps.AddComm(m.job, m.epoch, m.rank, op, bytes, d.Seconds())
}
