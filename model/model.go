package model

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"sync/atomic"

	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/tensor"
)

// ErrInput is the class of errors about token or target ids and batch shapes.
var ErrInput = errors.New("invalid model input")

// Comms is the communication a rank-local model needs, injected by whoever
// builds it (the trainer over gRPC groups, tests over parallel/inproc).
// The zero value is a model on one rank.
type Comms struct {
	// TP is the tensor-parallel group; required when the layout is split
	// (Local.TP > 1), its Index the layout's rank.
	TP parallel.Comm
	// KV is the group of ranks holding copies of this rank's kv heads
	// (Local.KVReplicas > 1 only); their k and v gradients are summed
	// over it every micro-batch.
	KV parallel.Comm
	// SequenceParallel shards the residual stream, the norms and their
	// saved activations along the rows of the batch over TP (Korthikanti
	// et al. 2022): all-gathers before the column-parallel layers and
	// reduce-scatters after the row-parallel ones instead of all-reduces.
	// Ignored with one rank. Training activations (NewActs) then need
	// B·T divisible by TP.
	SequenceParallel bool
}

// Model holds one rank's part of a LLaMA model — its parameters and
// gradients, each in one flat buffer laid out by Layout — and runs the
// layers through a tensor.Kernels, with the tensor-parallel communication
// its layout needs (Megatron-LM's f and g operators) done through Comms.
// With one rank it is the whole model and the same code runs without
// communicating.
//
// The passes are exposed per unit — embedding, block (as attention and MLP
// halves), head — so a pipeline stage can run just its blocks;
// ForwardBackwardHooks composes them for a whole model. Backward passes
// ACCUMULATE into Grads; call ZeroGrads once per optimizer step. A Model is
// not safe for concurrent use.
type Model struct {
	Config Config // the global model
	Layout *Layout
	Params []float32 // flat parameters, len Layout.Size (nil until bound, see NewUnbound)
	Grads  []float32 // flat gradients, same layout

	k        tensor.Kernels
	loc      Local
	tp, kv   parallel.Comm
	sp       bool
	cos, sin []float32 // RoPE tables (SeqLen, HeadDim/2)
	blocks   []BlockWeights
	gblocks  []BlockWeights
	head     HeadWeights
	ghead    HeadWeights
	embed    []float32
	gembed   []float32
	units    []Unit
	tpHidden atomic.Int64 // ns of overlapped collectives, see TakeTPOverlap
}

// New allocates a whole model (one rank) for cfg with zero parameters;
// call Init or load weights into Params.
func New(cfg Config, k tensor.Kernels) (*Model, error) {
	l, err := NewLayout(cfg)
	if err != nil {
		return nil, fmt.Errorf("model.New: %w", err)
	}
	m, err := NewUnbound(l, k, Comms{})
	if err != nil {
		return nil, fmt.Errorf("model.New: %w", err)
	}
	m.Bind(make([]float32, l.Size), make([]float32, l.Size))
	return m, nil
}

// NewUnbound returns a model over layout l (one rank's part, from the
// parallel plan) without parameter or gradient storage: Params and Grads
// are nil and every unit (Layout.Units) must be bound with BindParams and
// BindGrads (or all at once with Bind) before a pass reads it. ZeRO uses it
// to point a unit's views at a working buffer that holds just that unit,
// gathered or about to be reduced, instead of one full-size buffer.
func NewUnbound(l *Layout, k tensor.Kernels, c Comms) (*Model, error) {
	if l == nil || k == nil {
		return nil, errors.New("model.NewUnbound: nil layout or kernels")
	}
	lo := l.Local()
	if lo.TP > 1 {
		if c.TP == nil || c.TP.Size() != lo.TP || c.TP.Index() != lo.Rank {
			return nil, fmt.Errorf("model.NewUnbound: layout of tensor-parallel rank %d of %d needs a TP communicator of that size and index (got %s): %w", lo.Rank, lo.TP, commString(c.TP), ErrInvalidConfig)
		}
		if lo.KVReplicas > 1 && (c.KV == nil || c.KV.Size() != lo.KVReplicas || c.KV.Index() != lo.Rank%lo.KVReplicas) {
			return nil, fmt.Errorf("model.NewUnbound: kv heads are replicated on %d ranks: needs a KV communicator of that size and index %d (got %s): %w", lo.KVReplicas, lo.Rank%lo.KVReplicas, commString(c.KV), ErrInvalidConfig)
		}
	}
	cfg := l.Config()
	m := &Model{Config: cfg, Layout: l, k: k, loc: lo, units: l.Units()}
	if lo.TP > 1 {
		m.tp, m.sp = c.TP, c.SequenceParallel
		if lo.KVReplicas > 1 {
			m.kv = c.KV
		}
	}
	m.cos, m.sin = tensor.RoPETables(cfg.SeqLen, lo.HeadDim, cfg.RopeTheta)
	m.blocks = make([]BlockWeights, cfg.NLayers)
	m.gblocks = make([]BlockWeights, cfg.NLayers)
	return m, nil
}

func commString(c parallel.Comm) string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("size %d, index %d", c.Size(), c.Index())
}

// Bind makes params and grads (each len Layout.Size) the model's flat
// buffers and binds every unit to them.
func (m *Model) Bind(params, grads []float32) {
	m.Params, m.Grads = params, grads
	for u, un := range m.units {
		if params != nil {
			m.BindParams(u, params[un.Offset:un.End()])
		}
		if grads != nil {
			m.BindGrads(u, grads[un.Offset:un.End()])
		}
	}
}

// BindParams points the parameter views of unit u (an index into
// Layout.Units) at buf: buf[i] is flat element Units()[u].Offset+i, and
// len(buf) must be at least the unit's Len. With tied embeddings, binding
// the embedding (or the last stage's copy of it) also rebinds the head's
// output projection.
func (m *Model) BindParams(u int, buf []float32) { m.bind(u, buf, m.blocks, &m.head, &m.embed) }

// BindGrads points the gradient views of unit u at buf, as BindParams does
// for parameters. Backward passes accumulate into the bound buffer.
func (m *Model) BindGrads(u int, buf []float32) { m.bind(u, buf, m.gblocks, &m.ghead, &m.gembed) }

func (m *Model) bind(u int, buf []float32, blocks []BlockWeights, head *HeadWeights, embed *[]float32) {
	un, l := m.units[u], m.Layout
	if len(buf) < un.Len {
		panic(fmt.Sprintf("model: binding unit %s of %d elements to a buffer of %d", un.Name, un.Len, len(buf)))
	}
	switch un.Kind {
	case UnitEmbed:
		*embed = l.sliceAt(buf, un.Offset, "model.embed_tokens.weight")
		if m.Config.TieEmbeddings {
			head.Out = *embed
		}
	case UnitHead:
		head.Norm = l.sliceAt(buf, un.Offset, "model.norm.weight")
		if !m.Config.TieEmbeddings {
			head.Out = l.sliceAt(buf, un.Offset, "lm_head.weight")
		}
	case UnitTied:
		head.Out = l.sliceAt(buf, un.Offset, "model.embed_tokens.weight")
	default:
		blocks[un.Block] = l.blockAt(buf, un.Offset, un.Block)
	}
}

// Kernels returns the kernels the model runs on.
func (m *Model) Kernels() tensor.Kernels { return m.k }

// Local returns the rank-local shape the model runs over.
func (m *Model) Local() Local { return m.loc }

// SequenceParallel reports whether training activations are sequence-sharded.
func (m *Model) SequenceParallel() bool { return m.sp }

// InitStd is the standard deviation of the normal initialization of weight
// matrices; o_proj and down_proj are further scaled by 1/sqrt(2·NLayers)
// (GPT-2's residual scaling) so the residual stream's variance does not grow
// with depth.
const InitStd = 0.02

// Init sets deterministic initial parameters: matrices ~ N(0, InitStd²)
// (residual projections scaled, see InitStd), norm weights = 1. Each view
// draws from its own PCG stream keyed by (seed, name), so any worker can
// initialize any view — or any chunk of one — identically without
// generating the others.
func (m *Model) Init(seed uint64) { InitParams(m.Layout, seed, m.Params, 0) }

// InitParams initializes, as Model.Init does, every view of l that lies
// inside buf, which holds the flat elements [base, base+len(buf)). A view
// that only partly overlaps buf panics; units (Layout.Units) are always safe.
// A view that is a chunk of a larger global tensor gets exactly the values
// the whole tensor's initialization puts there; padded vocabulary rows are
// zero.
func InitParams(l *Layout, seed uint64, buf []float32, base int) {
	resid := 1 / math.Sqrt(2*float64(l.cfg.NLayers))
	for _, v := range l.Views {
		if v.End() <= base || v.Offset >= base+len(buf) {
			continue
		}
		p := buf[v.Offset-base : v.End()-base]
		if len(v.Shape) == 1 {
			for i := range p {
				p[i] = 1
			}
			continue
		}
		std := InitStd
		if isResidualProjection(v.Name) {
			std *= resid
		}
		h := fnv.New64a()
		h.Write([]byte(v.Name))
		rng := rand.New(rand.NewPCG(seed, h.Sum64()))
		clear(p)
		// Draw the global tensor's stream in order and keep the chunk's
		// elements: rows [r0, r1) and columns [c0, c1) of the global matrix.
		r0, r1 := v.Start[0], v.Start[0]+v.Size[0]
		c0, c1 := v.Start[1], v.Start[1]+v.Size[1]
		width, cols := v.Global[1], v.Shape[1]
		for i := 0; i < r1; i++ {
			for j := 0; j < width; j++ {
				x := float32(rng.NormFloat64() * std)
				if i >= r0 && j >= c0 && j < c1 {
					p[(i-r0)*cols+j-c0] = x
				}
			}
		}
	}
}

func isResidualProjection(name string) bool {
	const o, down = "self_attn.o_proj.weight", "mlp.down_proj.weight"
	return len(name) >= len(o) && name[len(name)-len(o):] == o ||
		len(name) >= len(down) && name[len(name)-len(down):] == down
}

// ZeroGrads clears the gradient buffer.
func (m *Model) ZeroGrads() { clear(m.Grads) }

// allReduce sums buf over the tensor-parallel group (Megatron's g operator
// in forward, f in backward); a no-op on one rank.
func (m *Model) allReduce(ctx context.Context, buf []float32, what site) error {
	if m.tp == nil {
		return nil
	}
	if err := m.tp.AllReduce(ctx, buf, parallel.Sum); err != nil {
		return fmt.Errorf("tensor-parallel all-reduce of %s: %w", what, err)
	}
	return nil
}

// reduceScatterRows sums partial (rows, d) over the tensor-parallel group
// and writes this rank's row shard (rows/TP, d) of the result to dst.
// partial is clobbered.
func (m *Model) reduceScatterRows(ctx context.Context, dst, partial []float32, what site) error {
	shard, err := m.tp.ReduceScatter(ctx, partial, parallel.Sum)
	if err != nil {
		return fmt.Errorf("tensor-parallel reduce-scatter of %s: %w", what, err)
	}
	copy(dst, shard)
	return nil
}

// allGatherRows fills full (rows, d) with every rank's row shard; shard
// (rows/TP, d) is this rank's.
func (m *Model) allGatherRows(ctx context.Context, full, shard []float32, what site) error {
	off, _ := parallel.ShardRange(len(full), m.loc.TP, m.loc.Rank)
	copy(full[off:off+len(shard)], shard)
	if err := m.tp.AllGather(ctx, full); err != nil {
		return fmt.Errorf("tensor-parallel all-gather of %s: %w", what, err)
	}
	return nil
}
