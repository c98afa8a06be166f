// Package api owns Loom's public contract: the job spec that describes a
// training run, its defaults and validation, and (later) the client of the
// coordinator's gRPC service.
package api

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/loomtrain/loom/schedule"
)

// JobSpec describes one training job. It is what `loom run` reads from YAML
// and what `loom submit` sends to the coordinator. The YAML keys are the
// snake_case names in the struct tags; docs/jobspec.md documents each.
type JobSpec struct {
	// Name identifies the job (checkpoint directories, metrics labels).
	Name       string         `yaml:"name"`
	Model      ModelSpec      `yaml:"model"`
	Data       DataSpec       `yaml:"data"`
	Parallel   ParallelSpec   `yaml:"parallel"`
	Train      TrainSpec      `yaml:"train"`
	Checkpoint CheckpointSpec `yaml:"checkpoint"`
	// Elastic is how a multi-worker job recovers and resizes (elastic.go).
	Elastic ElasticSpec `yaml:"elastic"`
}

// ModelSpec is the architecture of a LLaMA-style decoder.
type ModelSpec struct {
	Arch          string  `yaml:"arch"`
	VocabSize     int     `yaml:"vocab_size"`
	Dim           int     `yaml:"dim"`
	NLayers       int     `yaml:"n_layers"`
	NHeads        int     `yaml:"n_heads"`
	NKVHeads      int     `yaml:"n_kv_heads"`
	FFNHidden     int     `yaml:"ffn_hidden"`
	SeqLen        int     `yaml:"seq_len"`
	RopeTheta     float64 `yaml:"rope_theta"`
	NormEps       float64 `yaml:"norm_eps"`
	TieEmbeddings bool    `yaml:"tie_embeddings"`
}

// DataSpec names the token files a job trains on, how they are mixed and
// visited, and what it validates on.
type DataSpec struct {
	// Path is a token file written by `loom prep` (relative paths are
	// resolved against the working directory): the one source of a job
	// that names no Sources.
	Path string `yaml:"path"`
	// Sources are several token files mixed by weight (Megatron's blended
	// dataset): each global sample comes from source i with probability
	// weight_i / Σ weight, in a fixed interleave, so a step's windows are
	// still a pure function of (seed, step). Exclusive with Path.
	Sources    []DataSource   `yaml:"sources"`
	Validation ValidationSpec `yaml:"validation"`
	Shuffle    bool           `yaml:"shuffle"`
	Seed       uint64         `yaml:"seed"`
}

// DataSource is one token file of a blend.
type DataSource struct {
	Path   string  `yaml:"path"`
	Weight float64 `yaml:"weight"`
}

// ValidationSpec is the held-out data train.eval_every evaluates on: a
// separate token file, or about a fraction of every source's windows, in
// chunks spread over it, which training then never visits.
type ValidationSpec struct {
	Path     string  `yaml:"path"`
	Fraction float64 `yaml:"fraction"`
}

// Enabled reports whether a validation set is configured.
func (v ValidationSpec) Enabled() bool { return v.Path != "" || v.Fraction > 0 }

// Describe names the job's data for a log line: its sources (with weights
// when blended) and validation set.
func (d DataSpec) Describe() string {
	var parts []string
	for _, s := range d.SourceList() {
		if len(d.Sources) > 1 {
			parts = append(parts, fmt.Sprintf("%s (weight %g)", s.Path, s.Weight))
		} else {
			parts = append(parts, s.Path)
		}
	}
	desc := strings.Join(parts, ", ")
	switch v := d.Validation; {
	case v.Path != "":
		desc += "; validation " + v.Path
	case v.Fraction > 0:
		desc += fmt.Sprintf("; validation: about %g of each source", v.Fraction)
	}
	return desc
}

// SourceList returns the job's sources: Sources, or Path with weight 1.
func (d DataSpec) SourceList() []DataSource {
	if len(d.Sources) > 0 {
		return d.Sources
	}
	return []DataSource{{Path: d.Path, Weight: 1}}
}

// ParallelSpec is the job's parallel layout. World size is DP·TP·PP;
// ranks are laid out tensor-parallel fastest, then data-parallel, then
// pipeline (plan.Mesh).
type ParallelSpec struct {
	DP int `yaml:"dp"`
	// TP splits every layer over TP ranks (Megatron-LM): it must divide
	// model.n_heads and model.ffn_hidden, and model.n_kv_heads must be a
	// multiple or a divisor of it.
	TP int `yaml:"tp"`
	// PP splits the model's blocks into PP pipeline stages (contiguous
	// block ranges; the embedding on the first, the final norm, LM head
	// and loss on the last) through which each step's micro-batches flow.
	PP   int `yaml:"pp"`
	Zero int `yaml:"zero"`
	// SequenceParallel shards the norms and the residual stream over the
	// TP ranks by rows (Korthikanti et al. 2022); train.micro_batch ×
	// model.seq_len must then be divisible by TP. No effect at tp 1.
	SequenceParallel bool `yaml:"sequence_parallel"`
	// Schedule orders each rank's forward and backward passes over the
	// micro-batches (package schedule): "1f1b" (the default), "gpipe",
	// "interleaved-1f1b" (with VirtualStages > 1) or "zb-h1" (the
	// backward split into input- and weight-gradient passes). With pp 1
	// the schedule still orders the accumulated micro-batches.
	Schedule string `yaml:"schedule"`
	// VirtualStages is how many stages each rank runs
	// (interleaved-1f1b: rank r holds stages r, r+pp, …); 1 otherwise.
	VirtualStages int `yaml:"virtual_stages"`
	// Stages, if given, cuts the model by hand: the number of blocks of
	// each of the pp × virtual_stages stages, summing to model.n_layers.
	// Empty: Loom balances the stages by estimated cost, counting the
	// embedding on the first and the norm, LM head and loss on the last.
	Stages []int `yaml:"stages"`
	// MicroBatches is optional: the micro-batches of a step are the
	// accumulation steps, train.global_batch ÷ (train.micro_batch ×
	// parallel.dp); if given it must equal that.
	MicroBatches int `yaml:"micro_batches"`
	// Transport is how tensor payloads travel between workers: "auto"
	// (shared memory between workers on one host, raw TCP across hosts),
	// "tcp", "shm" (one host only) or "grpc" (on the gRPC Peer stream).
	// `loom worker --transport` overrides it for one worker. Empty means
	// auto.
	Transport string `yaml:"transport"`
}

// TrainSpec holds the optimisation settings.
type TrainSpec struct {
	// GlobalBatch is the number of windows (sequences) per optimizer step
	// across all data-parallel ranks.
	GlobalBatch int `yaml:"global_batch"`
	// MicroBatch is the number of windows one rank processes per forward
	// and backward pass; GlobalBatch = MicroBatch × accumulation × DP.
	MicroBatch  int     `yaml:"micro_batch"`
	Steps       int     `yaml:"steps"`
	LR          float64 `yaml:"lr"`
	MinLR       float64 `yaml:"min_lr"`
	WarmupSteps int     `yaml:"warmup_steps"`
	// Schedule is "cosine" (linear warm-up then cosine decay to MinLR),
	// "linear" (warm-up then linear decay to MinLR) or "constant".
	Schedule    string  `yaml:"schedule"`
	WeightDecay float64 `yaml:"weight_decay"`
	Beta1       float64 `yaml:"beta1"`
	Beta2       float64 `yaml:"beta2"`
	Eps         float64 `yaml:"eps"`
	// GradClip is the global gradient-norm limit; 0 disables clipping.
	GradClip float64 `yaml:"grad_clip"`
	Seed     uint64  `yaml:"seed"`
	// EvalEvery is the step interval between validation passes (and one
	// after the last step); 0 never validates.
	EvalEvery int `yaml:"eval_every"`
	// EvalBatches is the number of global batches of validation windows
	// per pass: a pass covers the first eval_batches × global_batch
	// windows of the validation set, the same in every layout.
	EvalBatches int `yaml:"eval_batches"`
	// Precision of the model's matrix multiplies: "fp32", or "bf16" (inputs
	// rounded to bfloat16, float32 accumulation; master weights, optimizer
	// state, loss and norms stay float32). See docs/kernels.md.
	Precision string `yaml:"precision"`
	// Recompute keeps only each block's input per micro-batch in flight
	// and runs the block's forward again just before its backward: about
	// a third more compute for a fraction of the activation memory
	// (docs/memory.md).
	Recompute bool `yaml:"recompute"`
}

// CheckpointSpec says where and how often checkpoints are written.
type CheckpointSpec struct {
	Dir string `yaml:"dir"`
	// Every is the step interval between checkpoints; 0 saves only the
	// final model.
	Every int `yaml:"every"`
	Keep  int `yaml:"keep"`
}

// DefaultSpec returns a spec with every default filled in: the `tiny`
// model of shared/bench on the byte vocabulary.
func DefaultSpec() JobSpec {
	return JobSpec{
		Name: "loom",
		Model: ModelSpec{
			Arch: "llama", VocabSize: 258, Dim: 128, NLayers: 4, NHeads: 4, NKVHeads: 4,
			FFNHidden: 352, SeqLen: 128, RopeTheta: 10000, NormEps: 1e-5,
		},
		Data:     DataSpec{Shuffle: true, Seed: 1},
		Parallel: ParallelSpec{DP: 1, TP: 1, PP: 1, Zero: 0, Schedule: schedule.OneFOneB, VirtualStages: 1, Transport: "auto"},
		Train: TrainSpec{
			GlobalBatch: 16, MicroBatch: 16, Steps: 100, LR: 3e-3, MinLR: 3e-4,
			WarmupSteps: 10, Schedule: "cosine", WeightDecay: 0.1,
			Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, GradClip: 1.0, Seed: 1337,
			EvalBatches: 4, Precision: "fp32",
		},
		Checkpoint: CheckpointSpec{Dir: "checkpoints", Every: 0, Keep: 3},
		Elastic:    defaultElastic(),
	}
}

// WorldSize is the number of ranks the layout needs.
func (p ParallelSpec) WorldSize() int { return p.DP * p.TP * p.PP }

// AccumulationSteps is the number of micro-batches each data-parallel rank
// accumulates per optimizer step.
func (s *JobSpec) AccumulationSteps() int {
	d := s.Train.MicroBatch * s.Parallel.DP
	if d <= 0 {
		return 0
	}
	return s.Train.GlobalBatch / d
}

// validatePipeline checks the pipeline fields of the parallel section
// against the model and the batch.
func (s *JobSpec) validatePipeline(bad func(string, any, string)) {
	p, m := s.Parallel, s.Model
	if !slices.Contains(schedule.Names(), p.Schedule) {
		bad("parallel.schedule", fmt.Sprintf("%q", p.Schedule), "allowed: "+strings.Join(schedule.Names(), ", "))
	}
	v := p.VirtualStages
	switch {
	case v < 1:
		bad("parallel.virtual_stages", v, "must be a positive integer")
	case v > 1 && p.Schedule != schedule.Interleaved:
		bad("parallel.virtual_stages", v, fmt.Sprintf("only parallel.schedule %s runs several stages per rank: set virtual_stages: 1 or schedule: %s", schedule.Interleaved, schedule.Interleaved))
	}
	if p.PP < 1 || v < 1 {
		return
	}
	if m.NLayers > 0 && p.PP*v > m.NLayers {
		bad("parallel.pp", p.PP, fmt.Sprintf("pp × virtual_stages (%d × %d) must not exceed model.n_layers (%d): every stage holds at least one block", p.PP, v, m.NLayers))
	}
	if len(p.Stages) > 0 {
		sum, ok := 0, true
		for _, n := range p.Stages {
			sum += n
			ok = ok && n >= 1
		}
		if len(p.Stages) != p.PP*v || !ok || sum != m.NLayers {
			bad("parallel.stages", p.Stages, fmt.Sprintf("must list the blocks of each of the pp × virtual_stages = %d stages, each ≥ 1, summing to model.n_layers (%d) (or be left out to balance them)", p.PP*v, m.NLayers))
		}
	}
	accum := s.AccumulationSteps()
	if t := s.Train; t.GlobalBatch <= 0 || t.MicroBatch <= 0 || s.Parallel.DP <= 0 || t.GlobalBatch%(t.MicroBatch*s.Parallel.DP) != 0 {
		return
	}
	if p.MicroBatches != 0 && p.MicroBatches != accum {
		bad("parallel.micro_batches", p.MicroBatches, fmt.Sprintf("the micro-batches of a step are train.global_batch ÷ (train.micro_batch × parallel.dp) = %d ÷ (%d × %d) = %d: set it to %d or leave it out",
			s.Train.GlobalBatch, s.Train.MicroBatch, s.Parallel.DP, accum, accum))
	}
	if err := schedule.CheckArgs(p.Schedule, p.PP, v, accum); err != nil && slices.Contains(schedule.Names(), p.Schedule) && (v == 1 || p.Schedule == schedule.Interleaved) {
		bad("parallel.schedule", p.Schedule, fmt.Sprintf("with %d micro-batches per step (train.global_batch ÷ (micro_batch × dp)): %v", accum, err))
	}
}

// FieldError is one invalid field of a spec.
type FieldError struct {
	Field   string // dotted YAML path, e.g. "model.n_kv_heads"
	Value   any
	Allowed string // what would be accepted
	Line    int    // source line when known, else 0
}

func (e *FieldError) Error() string {
	loc := ""
	if e.Line > 0 {
		loc = fmt.Sprintf(" (line %d)", e.Line)
	}
	return fmt.Sprintf("%s%s: got %v; %s", e.Field, loc, e.Value, e.Allowed)
}

// SpecError gathers every problem found in a spec, so a user fixes them
// all at once.
type SpecError struct {
	Source string // file name, or "" for a spec not read from a file
	Errs   []error
}

func (e *SpecError) Error() string {
	var b strings.Builder
	src := e.Source
	if src == "" {
		src = "job spec"
	}
	if len(e.Errs) == 1 {
		fmt.Fprintf(&b, "%s: %v", src, e.Errs[0])
		return b.String()
	}
	fmt.Fprintf(&b, "%s: %d problems:", src, len(e.Errs))
	for _, err := range e.Errs {
		fmt.Fprintf(&b, "\n  - %v", err)
	}
	return b.String()
}

// Unwrap returns the individual field errors.
func (e *SpecError) Unwrap() []error { return e.Errs }

// Validate checks every field and returns a *SpecError listing all problems,
// or nil.
func (s *JobSpec) Validate() error {
	var errs []error
	bad := func(field string, v any, allowed string) {
		errs = append(errs, &FieldError{Field: field, Value: v, Allowed: allowed})
	}
	positive := func(field string, v int) {
		if v <= 0 {
			bad(field, v, "must be a positive integer")
		}
	}
	if s.Name == "" || strings.ContainsAny(s.Name, "/\\ \t\n") {
		bad("name", fmt.Sprintf("%q", s.Name), "must be non-empty without slashes or spaces")
	}
	m := s.Model
	if m.Arch != "llama" {
		bad("model.arch", fmt.Sprintf("%q", m.Arch), `allowed: "llama"`)
	}
	positive("model.vocab_size", m.VocabSize)
	positive("model.dim", m.Dim)
	positive("model.n_layers", m.NLayers)
	positive("model.n_heads", m.NHeads)
	positive("model.n_kv_heads", m.NKVHeads)
	positive("model.ffn_hidden", m.FFNHidden)
	positive("model.seq_len", m.SeqLen)
	if m.NHeads > 0 && m.Dim > 0 {
		if m.Dim%m.NHeads != 0 {
			bad("model.dim", m.Dim, fmt.Sprintf("must be divisible by model.n_heads (%d)", m.NHeads))
		} else if (m.Dim/m.NHeads)%2 != 0 {
			bad("model.dim", m.Dim, fmt.Sprintf("dim/n_heads (head size %d) must be even for RoPE", m.Dim/m.NHeads))
		}
	}
	if m.NKVHeads > 0 && m.NHeads > 0 && m.NHeads%m.NKVHeads != 0 {
		bad("model.n_kv_heads", m.NKVHeads, fmt.Sprintf("must divide model.n_heads (%d)", m.NHeads))
	}
	if !(m.RopeTheta > 0) || math.IsInf(m.RopeTheta, 0) {
		bad("model.rope_theta", m.RopeTheta, "must be a positive number")
	}
	if !(m.NormEps > 0) || m.NormEps >= 1 {
		bad("model.norm_eps", m.NormEps, "must be in (0, 1)")
	}
	d := s.Data
	switch {
	case d.Path == "" && len(d.Sources) == 0:
		bad("data.path", `""`, "must name a token file written by `loom prep` (or list data.sources)")
	case d.Path != "" && len(d.Sources) > 0:
		bad("data.path", fmt.Sprintf("%q", d.Path), "give either data.path or data.sources, not both")
	}
	for i, src := range d.Sources {
		if src.Path == "" {
			bad(fmt.Sprintf("data.sources[%d].path", i), `""`, "must name a token file written by `loom prep`")
		}
		if !(src.Weight > 0) || math.IsInf(src.Weight, 0) {
			bad(fmt.Sprintf("data.sources[%d].weight", i), src.Weight, "must be a positive number (weights are relative)")
		}
	}
	if v := d.Validation; v.Path != "" && v.Fraction != 0 {
		bad("data.validation.fraction", v.Fraction, "give either data.validation.path or data.validation.fraction, not both")
	} else if v.Fraction < 0 || v.Fraction > 0.5 || math.IsNaN(v.Fraction) {
		bad("data.validation.fraction", v.Fraction, "must be in (0, 0.5]: the share of each source's windows held out")
	}
	p := s.Parallel
	positive("parallel.dp", p.DP)
	positive("parallel.tp", p.TP)
	positive("parallel.pp", p.PP)
	if p.Zero < 0 || p.Zero > 3 {
		bad("parallel.zero", p.Zero, "allowed: 0, 1, 2, 3")
	}
	switch p.Transport {
	case "", "auto", "tcp", "shm", "grpc": // "": auto (a spec built in code)
	default:
		bad("parallel.transport", p.Transport, "allowed: auto, tcp, shm, grpc")
	}
	if p.TP > 1 {
		if m.NHeads > 0 && m.NHeads%p.TP != 0 {
			bad("parallel.tp", p.TP, fmt.Sprintf("must divide model.n_heads (%d): each rank holds n_heads/tp query heads", m.NHeads))
		}
		if m.NKVHeads > 0 && m.NKVHeads%p.TP != 0 && p.TP%m.NKVHeads != 0 {
			bad("parallel.tp", p.TP, fmt.Sprintf("must divide model.n_kv_heads (%d) or be a multiple of it (kv heads are then replicated)", m.NKVHeads))
		}
		if m.FFNHidden > 0 && m.FFNHidden%p.TP != 0 {
			bad("parallel.tp", p.TP, fmt.Sprintf("must divide model.ffn_hidden (%d): each rank holds ffn_hidden/tp MLP features", m.FFNHidden))
		}
		if p.SequenceParallel && s.Train.MicroBatch > 0 && m.SeqLen > 0 && (s.Train.MicroBatch*m.SeqLen)%p.TP != 0 {
			bad("parallel.sequence_parallel", true, fmt.Sprintf("needs train.micro_batch × model.seq_len (%d × %d) divisible by parallel.tp (%d): the rows are split evenly over the ranks",
				s.Train.MicroBatch, m.SeqLen, p.TP))
		}
	}
	s.validatePipeline(bad)
	t := s.Train
	positive("train.global_batch", t.GlobalBatch)
	positive("train.micro_batch", t.MicroBatch)
	positive("train.steps", t.Steps)
	if t.GlobalBatch > 0 && t.MicroBatch > 0 && p.DP > 0 && t.GlobalBatch%(t.MicroBatch*p.DP) != 0 {
		bad("train.global_batch", t.GlobalBatch, fmt.Sprintf(
			"must be a multiple of train.micro_batch × parallel.dp (%d × %d = %d)", t.MicroBatch, p.DP, t.MicroBatch*p.DP))
	}
	if !(t.LR > 0) || math.IsInf(t.LR, 0) {
		bad("train.lr", t.LR, "must be a positive number")
	}
	if t.MinLR < 0 || t.MinLR > t.LR {
		bad("train.min_lr", t.MinLR, fmt.Sprintf("must be in [0, train.lr = %g]", t.LR))
	}
	if t.WarmupSteps < 0 {
		bad("train.warmup_steps", t.WarmupSteps, "must be ≥ 0")
	}
	switch t.Schedule {
	case "cosine", "linear", "constant":
	default:
		bad("train.schedule", fmt.Sprintf("%q", t.Schedule), `allowed: "cosine", "linear", "constant"`)
	}
	if t.WeightDecay < 0 {
		bad("train.weight_decay", t.WeightDecay, "must be ≥ 0")
	}
	if t.Beta1 < 0 || t.Beta1 >= 1 {
		bad("train.beta1", t.Beta1, "must be in [0, 1)")
	}
	if t.Beta2 < 0 || t.Beta2 >= 1 {
		bad("train.beta2", t.Beta2, "must be in [0, 1)")
	}
	if !(t.Eps > 0) {
		bad("train.eps", t.Eps, "must be > 0")
	}
	if t.Precision != "fp32" && t.Precision != "bf16" {
		bad("train.precision", t.Precision, "must be fp32 or bf16")
	}
	if t.GradClip < 0 {
		bad("train.grad_clip", t.GradClip, "must be ≥ 0 (0 disables clipping)")
	}
	if t.Recompute && p.Schedule == schedule.ZBH1 {
		bad("train.recompute", true, "cannot be combined with parallel.schedule zb-h1: its weight-gradient pass reads the activations recomputation drops")
	}
	if t.EvalEvery < 0 {
		bad("train.eval_every", t.EvalEvery, "must be ≥ 0 (0 never validates)")
	} else if t.EvalEvery > 0 && !d.Validation.Enabled() {
		bad("train.eval_every", t.EvalEvery, "needs a validation set: set data.validation.path or data.validation.fraction")
	}
	if t.EvalBatches < 1 {
		bad("train.eval_batches", t.EvalBatches, "must be ≥ 1")
	}
	c := s.Checkpoint
	if c.Dir == "" {
		bad("checkpoint.dir", `""`, "must name a directory")
	}
	if c.Every < 0 {
		bad("checkpoint.every", c.Every, "must be ≥ 0 (0 saves only the final model)")
	}
	if c.Keep < 1 {
		bad("checkpoint.keep", c.Keep, "must be ≥ 1")
	}
	s.validateElastic(bad, len(errs) == 0)
	if len(errs) == 0 {
		return nil
	}
	return &SpecError{Errs: errs}
}
