package api

import (
	"fmt"
	"strings"
	"time"
)

// ElasticSpec says how a multi-worker job heals itself and how far its
// data-parallel size may change (TorchElastic's --nnodes MIN:MAX and
// --max-restarts, Megatron's fault-tolerance timeouts). Tensor and
// pipeline parallelism stay fixed; dp is what grows and shrinks. The
// global batch stays fixed too: each generation accumulates
// train.global_batch ÷ (train.micro_batch × dp) micro-batches, so the loss
// means the same at every size. docs/jobspec.md describes each field.
type ElasticSpec struct {
	// MinDP is the smallest data-parallel size a restarted generation may
	// run with (0: parallel.dp). Below it the job waits for workers, and
	// fails after the submit's pending timeout.
	MinDP int `yaml:"min_dp"`
	// MaxDP is the largest data-parallel size the job grows to when
	// workers register (0: parallel.dp); it grows at the next checkpoint
	// boundary. The first generation waits for parallel.dp.
	MaxDP int `yaml:"max_dp"`
	// MaxRestarts is how many generations may end early (a worker lost,
	// a rank failed or hung) before the job fails; growing does not count.
	// `loom submit --max-restarts` overrides it.
	MaxRestarts int `yaml:"max_restarts"`
	// RendezvousTimeout is how long a restart waits for the surviving
	// workers of the ended generation to rejoin (they do once their
	// engines have stopped) before it goes on with the workers it has.
	RendezvousTimeout time.Duration `yaml:"rendezvous_timeout"`
	// SetupTimeout bounds a rank's start: joining its peers, opening the
	// data, restoring the checkpoint, up to its first step.
	SetupTimeout time.Duration `yaml:"setup_timeout"`
	// StepTimeout bounds one step of a rank, validation included, and how
	// long any collective or point-to-point call waits for a peer's next
	// frame: a peer silent for longer is named as hung.
	StepTimeout time.Duration `yaml:"step_timeout"`
	// CheckpointTimeout bounds a checkpoint's write from the step it
	// snapshots until the rank's files are durable and reported, and the
	// final model's gathering and save.
	CheckpointTimeout time.Duration `yaml:"checkpoint_timeout"`
}

// Defaults of the elastic section (DefaultSpec).
const (
	DefaultMaxRestarts       = 3
	DefaultRendezvousTimeout = 30 * time.Second
	DefaultSetupTimeout      = 10 * time.Minute
	DefaultStepTimeout       = time.Minute
	DefaultCheckpointTimeout = 10 * time.Minute
)

func defaultElastic() ElasticSpec {
	return ElasticSpec{MaxRestarts: DefaultMaxRestarts, RendezvousTimeout: DefaultRendezvousTimeout,
		SetupTimeout: DefaultSetupTimeout, StepTimeout: DefaultStepTimeout, CheckpointTimeout: DefaultCheckpointTimeout}
}

// DPRange returns the data-parallel sizes the job may run with:
// [elastic.min_dp, elastic.max_dp], each 0 meaning parallel.dp.
func (s *JobSpec) DPRange() (lo, hi int) {
	lo, hi = s.Elastic.MinDP, s.Elastic.MaxDP
	if lo == 0 {
		lo = s.Parallel.DP
	}
	if hi == 0 {
		hi = s.Parallel.DP
	}
	return lo, hi
}

// ForDP returns the spec one generation of size dp runs: parallel.dp set
// to dp, and parallel.micro_batches, when it was given as the accumulation
// steps, set to the new ones (train.global_batch and train.micro_batch
// stay). It does not validate; ReachableDP says which sizes are valid.
func (s JobSpec) ForDP(dp int) JobSpec {
	if dp == s.Parallel.DP {
		return s
	}
	accum := s.AccumulationSteps()
	s.Parallel.DP = dp
	if s.Parallel.MicroBatches != 0 && s.Parallel.MicroBatches == accum {
		s.Parallel.MicroBatches = s.AccumulationSteps()
	}
	return s
}

// ReachableDP lists, ascending, the data-parallel sizes in DPRange that
// the spec is valid at (ForDP(d).Validate() passes: the global batch
// splits into whole micro-batches per rank, the pipeline schedule fits the
// accumulation steps, …). The rendezvous picks among them.
func (s *JobSpec) ReachableDP() []int {
	lo, hi := s.DPRange()
	var out []int
	for d := max(lo, 1); d <= hi; d++ {
		if d == s.Parallel.DP || s.dpValid(d) {
			out = append(out, d)
		}
	}
	return out
}

// dpValid reports whether the spec validates at data-parallel size d,
// ignoring the elastic section itself.
func (s *JobSpec) dpValid(d int) bool {
	t := s.ForDP(d)
	t.Elastic = ElasticSpec{MaxRestarts: t.Elastic.MaxRestarts, RendezvousTimeout: time.Second, SetupTimeout: time.Second,
		StepTimeout: time.Second, CheckpointTimeout: time.Second}
	return t.Validate() == nil
}

// WorldSizes is the world size of each reachable data-parallel size,
// ascending.
func (s *JobSpec) WorldSizes() []int {
	var out []int
	for _, d := range s.ReachableDP() {
		out = append(out, d*s.Parallel.TP*s.Parallel.PP)
	}
	return out
}

// validateElastic checks the elastic section; bad records a field error.
// The other sections are checked first, at parallel.dp: an elastic range
// is only checked when the spec itself is valid there.
func (s *JobSpec) validateElastic(bad func(string, any, string), specValid bool) {
	e := s.Elastic
	if e.MinDP < 0 {
		bad("elastic.min_dp", e.MinDP, "must be ≥ 1 (0: parallel.dp)")
	}
	if e.MaxDP < 0 {
		bad("elastic.max_dp", e.MaxDP, "must be ≥ 1 (0: parallel.dp)")
	}
	if e.MaxRestarts < 0 {
		bad("elastic.max_restarts", e.MaxRestarts, "must be ≥ 0")
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"elastic.rendezvous_timeout", e.RendezvousTimeout}, {"elastic.setup_timeout", e.SetupTimeout},
		{"elastic.step_timeout", e.StepTimeout}, {"elastic.checkpoint_timeout", e.CheckpointTimeout}} {
		if d.v <= 0 {
			bad(d.field, d.v, `must be a positive duration, e.g. "30s" or "5m"`)
		}
	}
	if e.MinDP < 0 || e.MaxDP < 0 || s.Parallel.DP <= 0 {
		return
	}
	lo, hi := s.DPRange()
	if lo > s.Parallel.DP {
		bad("elastic.min_dp", lo, fmt.Sprintf("must not exceed parallel.dp (%d): the first generation runs parallel.dp", s.Parallel.DP))
		return
	}
	if hi < s.Parallel.DP {
		bad("elastic.max_dp", hi, fmt.Sprintf("must be at least parallel.dp (%d)", s.Parallel.DP))
		return
	}
	if !specValid || lo == hi {
		return
	}
	reach := s.ReachableDP()
	list := joinInts(reach)
	why := fmt.Sprintf("train.global_batch (%d) must split into train.micro_batch (%d) × dp × whole accumulation steps (and the pipeline schedule must fit them)",
		s.Train.GlobalBatch, s.Train.MicroBatch)
	if !containsInt(reach, lo) {
		bad("elastic.min_dp", lo, fmt.Sprintf("is not a reachable dp size: %s; reachable in [%d, %d]: %s", why, lo, hi, list))
	}
	if !containsInt(reach, hi) {
		bad("elastic.max_dp", hi, fmt.Sprintf("is not a reachable dp size: %s; reachable in [%d, %d]: %s", why, lo, hi, list))
	}
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func joinInts(xs []int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprint(x)
	}
	return strings.Join(parts, ", ")
}

// DescribeElastic says in one line what the elastic section allows, for
// `loom plan` and the coordinator's log: the dp sizes, restarts and
// timeouts.
func (s *JobSpec) DescribeElastic() string {
	lo, hi := s.DPRange()
	size := fmt.Sprintf("dp %d (fixed)", s.Parallel.DP)
	if lo != hi {
		size = fmt.Sprintf("dp %d, elastic %d–%d (reachable: %s)", s.Parallel.DP, lo, hi, joinInts(s.ReachableDP()))
	}
	e := s.Elastic
	return fmt.Sprintf("%s, max %d restarts; timeouts: setup %v, step %v, checkpoint %v", size, e.MaxRestarts,
		e.SetupTimeout, e.StepTimeout, e.CheckpointTimeout)
}
