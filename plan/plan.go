// Package plan owns the parallel plan of a job: (job spec, world size) →
// the mesh of ranks (tensor-parallel fastest, then data-parallel, then
// pipeline), each rank's coordinates and process groups, its rank-local
// layout (which chunk of which global tensor it holds, with local shapes)
// and the ZeRO partition of that layout over its data-parallel group, plus
// the memory and communication each rank needs. It is pure — no I/O, no
// network — so a plan can be printed (`loom plan --show-ranks`), diffed and
// golden-tested, and it is computed once and handed down: the coordinator's
// rendezvous, the worker, the trainer, ZeRO, checkpoints and `loom plan`
// read it instead of recomputing layouts.
package plan

import (
	"errors"
	"fmt"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/schedule"
)

// ErrInvalid is the class of errors about a layout that cannot be planned.
var ErrInvalid = errors.New("invalid parallel plan")

// Coord is a rank's position in the mesh.
type Coord struct{ DP, TP, PP int }

func (c Coord) String() string { return fmt.Sprintf("(dp %d, tp %d, pp %d)", c.DP, c.TP, c.PP) }

// Mesh is the shape of the job's ranks. Tensor parallelism varies fastest,
// so the ranks of a tensor-parallel group are consecutive and a group sits
// on one host when hosts hold consecutive ranks; then data parallelism;
// pipeline stages vary slowest (TorchTitan's ("pp", "dp", "tp") order):
// rank = (pp·DP + dp)·TP + tp.
type Mesh struct{ DP, TP, PP int }

// MeshOf is the mesh of a job's parallel section.
func MeshOf(p api.ParallelSpec) Mesh { return Mesh{DP: p.DP, TP: p.TP, PP: p.PP} }

// World is the number of ranks, DP·TP·PP.
func (m Mesh) World() int { return m.DP * m.TP * m.PP }

// Rank is the global rank at c.
func (m Mesh) Rank(c Coord) int { return (c.PP*m.DP+c.DP)*m.TP + c.TP }

// Coord is the position of global rank r.
func (m Mesh) Coord(r int) Coord {
	return Coord{TP: r % m.TP, DP: (r / m.TP) % m.DP, PP: r / (m.TP * m.DP)}
}

func (m Mesh) String() string { return fmt.Sprintf("dp %d × tp %d × pp %d", m.DP, m.TP, m.PP) }

// Group kinds.
const (
	KindTP = "tp" // ranks that split each layer (same dp, pp)
	KindDP = "dp" // ranks that hold the same chunks and split the batch (same tp, pp)
	KindKV = "kv" // the ranks of a tp group holding copies of one kv head
	KindPP = "pp" // the pipeline stages of one (dp, tp) position
	// KindEmb is Megatron's embedding group: the first and the last
	// pipeline rank of one (dp, tp) position, which both hold a tied
	// embedding and sum its gradient.
	KindEmb = "emb"
)

// Group is a process group: its name, unique within the job, and its
// members' global ranks in ring order (the order of ReduceScatter and
// AllGather shards).
type Group struct {
	Name  string
	Kind  string
	Ranks []int
}

// Size is the number of members.
func (g Group) Size() int { return len(g.Ranks) }

// Index is rank's position in the group, or -1.
func (g Group) Index(rank int) int {
	for i, r := range g.Ranks {
		if r == rank {
			return i
		}
	}
	return -1
}

// Stage is a (virtual) pipeline stage's share of the model: blocks
// [First, End) and whether it holds the embedding (the first stage) and
// the final norm, LM head and loss (the last); Rank is the pipeline
// coordinate that runs it (Index mod pp). With pp = 1 and one virtual
// stage the one stage holds everything.
type Stage struct {
	Index       int
	Rank        int
	First, End  int
	Embed, Head bool
}

// Blocks is End − First.
func (s Stage) Blocks() int { return s.End - s.First }

// RankPlan is everything one rank needs to know about the plan.
type RankPlan struct {
	Rank  int
	Coord Coord
	// Groups this rank belongs to. KV is empty (no Ranks) unless kv heads
	// are replicated (n_kv_heads < tp), Emb unless the embedding is tied
	// and pp > 1 (then only on the first and last pipeline ranks); TP,
	// DP and PP always list at least this rank.
	TP, DP, KV, PP, Emb Group
	// Stages are the (virtual) stages the rank runs, in model order.
	Stages []Stage
	// Layout is the rank's local layout (shared by every rank with the
	// same tp and pp coordinates): its tp chunks of its stages' units;
	// Zero its ZeRO partition over the dp group.
	Layout *model.Layout
	Zero   *Partition
	// DPIndex is the rank's position in its dp group: which slice of each
	// step's batch it trains on and which ZeRO shard it holds.
	DPIndex int
}

// Plan is the whole job's plan. It is immutable once built and safe for
// concurrent use.
type Plan struct {
	Mesh  Mesh
	Model model.Config
	// ZeroStage is what the dp groups shard; SequenceParallel whether the
	// residual stream is sequence-sharded over tp.
	ZeroStage        ZeroStage
	SequenceParallel bool
	// MicroBatch sequences of SeqLen tokens per pass; Accum passes (the
	// micro-batches of the pipeline) per optimizer step per dp rank
	// (global_batch = MicroBatch·Accum·DP).
	MicroBatch, SeqLen, Accum int
	GlobalBatch               int
	// Stages are the pp × virtual_stages (virtual) stages in model order;
	// Balanced says whether Loom cut them (else parallel.stages did).
	Stages   []Stage
	Balanced bool
	// Schedule is every pipeline rank's action list for one step
	// (communication included), checked deadlock-free; every (dp, tp)
	// position runs the same one. Recompute: blocks recompute their
	// forward before their backward (train.recompute).
	Schedule  *schedule.Schedule
	Recompute bool
	// Layouts and Partitions by PartIndex(pp, tp).
	Layouts    []*model.Layout
	Partitions []*Partition
	Ranks      []RankPlan
	// inFlight and buffers are Schedule.InFlight and AllBuffers, computed
	// once.
	inFlight []int
	buffers  [][]int
}

// PartIndex is where the layout and partition of the ranks at pipeline
// coordinate pp and tensor-parallel coordinate tp are in Layouts and
// Partitions.
func (p *Plan) PartIndex(pp, tp int) int { return pp*p.Mesh.TP + tp }

// ModelConfig converts the job spec's model section to the model's config.
func ModelConfig(s api.ModelSpec) model.Config {
	return model.Config{
		VocabSize: s.VocabSize, Dim: s.Dim, NLayers: s.NLayers, NHeads: s.NHeads,
		NKVHeads: s.NKVHeads, FFNHidden: s.FFNHidden, SeqLen: s.SeqLen,
		RopeTheta: s.RopeTheta, NormEps: s.NormEps, TieEmbeddings: s.TieEmbeddings,
	}
}

// New plans spec on world ranks. It validates the spec (api.JobSpec.Validate
// checks every field, the parallel section against the model included) and
// that world is the spec's dp·tp·pp; every problem names its field.
func New(spec api.JobSpec, world int) (*Plan, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	p := spec.Parallel
	mesh := MeshOf(p)
	if world != mesh.World() {
		return nil, &api.SpecError{Errs: []error{&api.FieldError{Field: "parallel", Value: fmt.Sprintf("dp %d × tp %d × pp %d = %d ranks", p.DP, p.TP, p.PP, mesh.World()),
			Allowed: fmt.Sprintf("must multiply to the world size %d", world)}}}
	}
	cfg := ModelConfig(spec.Model)
	accum := spec.AccumulationSteps()
	v := max(1, p.VirtualStages)
	sched, err := schedule.For(p.Schedule, p.PP, v, accum)
	if err != nil {
		return nil, &api.SpecError{Errs: []error{&api.FieldError{Field: "parallel.schedule", Value: p.Schedule, Allowed: err.Error()}}}
	}
	if err := schedule.Check(sched); err != nil {
		return nil, fmt.Errorf("plan: the %s schedule for pp %d, %d micro-batches: %w", p.Schedule, p.PP, accum, err)
	}
	pl := &Plan{Mesh: mesh, Model: cfg, ZeroStage: ZeroStage(p.Zero), SequenceParallel: p.SequenceParallel && p.TP > 1,
		MicroBatch: spec.Train.MicroBatch, SeqLen: spec.Model.SeqLen, Accum: accum, GlobalBatch: spec.Train.GlobalBatch,
		Schedule: sched, Recompute: spec.Train.Recompute, inFlight: sched.InFlight(), buffers: sched.AllBuffers()}
	cut := p.Stages
	if len(cut) == 0 {
		cut, pl.Balanced = BalanceStages(cfg, spec.Model.SeqLen, p.PP*v), true
	}
	first := 0
	for i, n := range cut {
		pl.Stages = append(pl.Stages, Stage{Index: i, Rank: i % p.PP, First: first, End: first + n, Embed: i == 0, Head: i == len(cut)-1})
		first += n
	}
	for pp := range p.PP {
		var part *model.Part
		if p.PP > 1 {
			part = &model.Part{}
			for _, st := range pl.stagesOf(pp) {
				part.Blocks = append(part.Blocks, model.BlockRange{First: st.First, End: st.End})
				part.Embed = part.Embed || st.Embed
				part.Head = part.Head || st.Head
			}
		}
		for t := range p.TP {
			l, err := model.NewLocalLayout(cfg, model.Split{TP: p.TP, Rank: t, Part: part})
			if err != nil {
				return nil, fmt.Errorf("plan: %w: %w", err, ErrInvalid)
			}
			zp, err := NewPartition(l, p.DP, pl.ZeroStage, 0)
			if err != nil {
				return nil, err
			}
			pl.Layouts = append(pl.Layouts, l)
			pl.Partitions = append(pl.Partitions, zp)
		}
	}
	for r := range mesh.World() {
		c := mesh.Coord(r)
		i := pl.PartIndex(c.PP, c.TP)
		rp := RankPlan{Rank: r, Coord: c, Stages: pl.stagesOf(c.PP), Layout: pl.Layouts[i], Zero: pl.Partitions[i], DPIndex: c.DP}
		rp.TP = Group{Name: fmt.Sprintf("tp.pp%d.dp%d", c.PP, c.DP), Kind: KindTP}
		for t := range mesh.TP {
			rp.TP.Ranks = append(rp.TP.Ranks, mesh.Rank(Coord{DP: c.DP, TP: t, PP: c.PP}))
		}
		rp.DP = Group{Name: fmt.Sprintf("dp.pp%d.tp%d", c.PP, c.TP), Kind: KindDP}
		for d := range mesh.DP {
			rp.DP.Ranks = append(rp.DP.Ranks, mesh.Rank(Coord{DP: d, TP: c.TP, PP: c.PP}))
		}
		rp.PP = Group{Name: fmt.Sprintf("pp.dp%d.tp%d", c.DP, c.TP), Kind: KindPP}
		for s := range mesh.PP {
			rp.PP.Ranks = append(rp.PP.Ranks, mesh.Rank(Coord{DP: c.DP, TP: c.TP, PP: s}))
		}
		if cfg.TieEmbeddings && mesh.PP > 1 && (c.PP == 0 || c.PP == mesh.PP-1) {
			rp.Emb = Group{Name: fmt.Sprintf("emb.dp%d.tp%d", c.DP, c.TP), Kind: KindEmb,
				Ranks: []int{mesh.Rank(Coord{DP: c.DP, TP: c.TP, PP: 0}), mesh.Rank(Coord{DP: c.DP, TP: c.TP, PP: mesh.PP - 1})}}
		}
		if rep := rp.Layout.Local().KVReplicas; rep > 1 {
			head := c.TP / rep
			rp.KV = Group{Name: fmt.Sprintf("kv.pp%d.dp%d.h%d", c.PP, c.DP, head), Kind: KindKV}
			for t := head * rep; t < (head+1)*rep; t++ {
				rp.KV.Ranks = append(rp.KV.Ranks, mesh.Rank(Coord{DP: c.DP, TP: t, PP: c.PP}))
			}
		}
		pl.Ranks = append(pl.Ranks, rp)
	}
	return pl, nil
}

// stagesOf lists the stages pipeline coordinate pp runs, in model order.
func (p *Plan) stagesOf(pp int) []Stage {
	var out []Stage
	for _, st := range p.Stages {
		if st.Rank == pp {
			out = append(out, st)
		}
	}
	return out
}

// Rank returns rank r's plan.
func (p *Plan) Rank(r int) RankPlan { return p.Ranks[r] }

// World is the number of ranks.
func (p *Plan) World() int { return p.Mesh.World() }

// CheckCoord reports whether a coordinator assigned rank the coordinates
// the plan gives it.
func (p *Plan) CheckCoord(rank int, c Coord) error {
	if rank < 0 || rank >= p.World() {
		return fmt.Errorf("plan: rank %d outside the world of %d ranks (%s): %w", rank, p.World(), p.Mesh, ErrInvalid)
	}
	if want := p.Mesh.Coord(rank); want != c {
		return fmt.Errorf("plan: rank %d was assigned coordinates %v, the plan's mesh %s puts it at %v: %w", rank, c, p.Mesh, want, ErrInvalid)
	}
	return nil
}
