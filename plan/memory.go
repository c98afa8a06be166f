package plan

import (
	"fmt"
	"strings"
)

// Memory is one rank's bytes by kind. Params, Grads and Optimizer are the
// model states of the ZeRO paper over the rank's local layout (for float32
// training and Ψ local parameters: 16Ψ at stage 0, 8Ψ+8Ψ/N at 1, 4Ψ+12Ψ/N
// at 2, 16Ψ/N at 3); Working is stage 2–3's per-unit buffers (gathered
// parameters, unit gradients waiting to be reduce-scattered); Comm is
// staging for collectives; Activations is what the model saves for
// backward at the micro-batch, its backward temporaries and the trainer's
// token buffers; Runtime is a fixed allowance for the Go runtime, the
// binary, kernel scratch and the data loader (an estimate, not counted).
type Memory struct {
	Params, Grads, Optimizer int64
	Working                  int64
	Comm                     int64
	Activations              int64
	Runtime                  int64
}

// DefaultRuntimeBytes is Memory.Runtime in estimates: peak RSS of a worker
// process beyond its counted buffers (Go runtime, binary text, gRPC,
// kernel packing buffers, mapped data), measured on linux/amd64 with the
// tiny configurations of the package tests.
const DefaultRuntimeBytes = 24 << 20

// ModelStates is Params+Grads+Optimizer.
func (m Memory) ModelStates() int64 { return m.Params + m.Grads + m.Optimizer }

// Total is the sum of every kind.
func (m Memory) Total() int64 {
	return m.ModelStates() + m.Working + m.Comm + m.Activations + m.Runtime
}

// KindBytes is one kind's bytes, as exported in the Prometheus gauge
// loom_worker_memory_bytes{kind="..."}.
type KindBytes struct {
	Kind  string
	Bytes int64
}

// Kinds lists the kinds in a fixed order with their label values: params,
// grads, optimizer, working, comm, activations, runtime.
func (m Memory) Kinds() []KindBytes {
	return []KindBytes{
		{"params", m.Params}, {"grads", m.Grads}, {"optimizer", m.Optimizer},
		{"working", m.Working}, {"comm", m.Comm}, {"activations", m.Activations}, {"runtime", m.Runtime},
	}
}

// String prints every kind in MiB on one line.
func (m Memory) String() string {
	var b strings.Builder
	for _, k := range m.Kinds() {
		fmt.Fprintf(&b, "%s %s  ", k.Kind, MiB(k.Bytes))
	}
	fmt.Fprintf(&b, "total %s", MiB(m.Total()))
	return b.String()
}

// MiB formats bytes as mebibytes.
func MiB(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }

// WorkingBuffers is how many unit buffers stages 2 and 3 keep per pool: a
// unit being computed and one in flight (being reduce-scattered, or
// prefetched); with tied embeddings the embedding stays bound from its
// forward to its backward.
func WorkingBuffers(tied bool) int {
	if tied {
		return 3
	}
	return 2
}

// Memory is the bytes dp rank r's ZeRO engine allocates for model states,
// working buffers and collective staging over this partition's local
// layout (Activations and Runtime are zero; see Plan.Memory). The engine
// reports the same numbers counted from its allocations.
func (p *Partition) Memory(r int, tied bool) Memory {
	const f = 4
	psi, local := int64(p.Size), int64(p.Ranks[r].LocalLen)
	work := int64(p.MaxPadded())
	if p.DP == 1 || p.Stage == Zero0 {
		return Memory{Params: f * psi, Grads: f * psi, Optimizer: 2 * f * psi}
	}
	m := Memory{Params: f * psi, Grads: f * psi, Optimizer: 2 * f * local}
	switch p.Stage {
	case Zero1:
		m.Comm = f * work
	case Zero2:
		m.Grads = f * local
		m.Working = f * work * int64(WorkingBuffers(tied))
	case Zero3:
		m.Params, m.Grads = f*local, f*local
		m.Working = 2 * f * work * int64(WorkingBuffers(tied))
	}
	return m
}

// ActivationBytes is the activation memory of rank r at micro-batches of
// B sequences of T tokens: for each of its stages, the most micro-batches
// the schedule keeps in flight there (schedule.InFlight) times one
// micro-batch's activations through the stage (SlotBytes), plus the pass
// temporaries shared by all of them (ScratchBytes). It equals what the
// trainer allocates (model.Model.NewStageActs and the token buffers).
func (p *Plan) ActivationBytes(rank, B, T int) int64 {
	in := p.inFlight
	var n, spare int64
	for _, st := range p.Ranks[rank].Stages {
		n += int64(in[st.Index]) * p.SlotBytes(rank, st, B, T)
		if st.Embed != st.Head {
			spare = 4 * int64(B*T) // the targets a first stage loads, the tokens a last stage loads
		}
	}
	return n + p.ScratchBytes(rank, B, T) + spare
}

// SlotBytes is one micro-batch's activations through stage st of rank r,
// derived for Loom's float32 layers the way Korthikanti et al. (2022)
// derive 34·s·b·h + 5·a·s²·b for fp16 (see docs/memory.md). With n = B·T,
// t the tensor-parallel degree, r = n/t rows under sequence parallelism
// (else n), the rank's local widths q = heads·hd, k = kv_heads·hd,
// a = heads, f = ffn, V = vocabulary rows, and the stage's L_s blocks:
//
//	per block (saved for backward)  r·(3d + 2) + n·(2q + 2k + a + 3f)   (none when recomputing)
//	block inputs (L_s+1) and gradient (L_s+2)·r·d
//	head (last stage)               r·(d + 1) + n·(V + d) [+ 3n with t > 1] [+ n·d with SP]
//	split backward (zb-h1)          per block 2n·d + 2d, the head d
//
// all float32, plus the trainer's int32 tokens (first stage) and targets
// (last stage). Attention is flash-style: it saves the log-sum-exp (a·n
// values) instead of the a·s²·b score and softmax matrices, so the s²
// term is gone, and there is no dropout mask.
func (p *Plan) SlotBytes(rank int, st Stage, B, T int) int64 {
	lo := p.Ranks[rank].Layout.Local()
	n := int64(B * T)
	t := int64(lo.TP)
	rows := n
	if p.SequenceParallel {
		rows = n / t
	}
	d, L := int64(p.Model.Dim), int64(st.Blocks())
	q, k, a, f, V := int64(lo.QDim()), int64(lo.KVDim()), int64(lo.Heads), int64(lo.FFN), int64(lo.Vocab)
	floats := (L + 2) * rows * d
	if !p.Recompute {
		floats += L * (rows*(3*d+2) + n*(2*q+2*k+a+3*f))
	}
	split := p.Schedule.Split(st.Index, 0)
	if split {
		floats += L * (2*n*d + 2*d)
	}
	var tokens int64
	if st.Embed {
		tokens += n
	}
	if st.Head {
		floats += rows*(d+1) + n*(V+d)
		if t > 1 {
			floats += 3 * n
		}
		if p.SequenceParallel {
			floats += n * d
		}
		if split {
			floats += d
		}
		tokens += n
	}
	return 4*floats + 4*tokens
}

// ScratchBytes is rank r's pass temporaries, shared by every micro-batch
// in flight: n·(2q + 2k + 2f + d) [+ n·d + d with SP] [+ 2k·d with kv
// replicas] [+ one block's saved activations when recomputing].
func (p *Plan) ScratchBytes(rank, B, T int) int64 {
	lo := p.Ranks[rank].Layout.Local()
	n := int64(B * T)
	rows := n
	if p.SequenceParallel {
		rows = n / int64(lo.TP)
	}
	d := int64(p.Model.Dim)
	q, k, a, f := int64(lo.QDim()), int64(lo.KVDim()), int64(lo.Heads), int64(lo.FFN)
	floats := n * (2*q + 2*k + 2*f + d)
	if p.SequenceParallel {
		floats += n*d + d
	}
	if lo.KVReplicas > 1 {
		floats += 2 * k * d
	}
	if p.Recompute {
		floats += rows*(3*d+2) + n*(2*q+2*k+a+3*f)
	}
	return 4 * floats
}

// SendBuffers is how many message buffers the executor keeps per peer for
// sends in flight: one being sent while the next is filled.
const SendBuffers = 2

// MessageFloats is the length of one pipeline message of rank r at
// micro-batches of B×T: a stage's output or input gradient, (rows,d), and
// its tag (stage, kind, micro-batch).
func (p *Plan) MessageFloats(rank, B, T int) int {
	rows := B * T
	if p.SequenceParallel {
		rows /= p.Mesh.TP
	}
	return rows*p.Model.Dim + 3
}

// P2PBytes is rank r's pipeline message buffers: per neighbour, the
// schedule's bound on messages received ahead (schedule.Buffers) plus
// SendBuffers for the sends to it.
func (p *Plan) P2PBytes(rank, B, T int) int64 {
	if p.Mesh.PP == 1 {
		return 0
	}
	me := p.Ranks[rank].Coord.PP
	bufs := 0
	for src := range p.Mesh.PP {
		bufs += p.buffers[me][src]
		if src != me && p.buffers[src][me] > 0 {
			bufs += SendBuffers
		}
	}
	return 4 * int64(bufs) * int64(p.MessageFloats(rank, B, T))
}

// Memory is rank r's estimate at the plan's micro-batch: its partition's
// model states, working and staging buffers (the pipeline's message
// buffers counted as comm), ActivationBytes and DefaultRuntimeBytes.
func (p *Plan) Memory(r int) Memory {
	rp := p.Ranks[r]
	m := rp.Zero.Memory(rp.DPIndex, p.Model.TieEmbeddings)
	m.Activations = p.ActivationBytes(r, p.MicroBatch, p.SeqLen)
	m.Comm += p.P2PBytes(r, p.MicroBatch, p.SeqLen)
	m.Runtime = DefaultRuntimeBytes
	return m
}

// MaxMemory is the largest rank's estimate.
func (p *Plan) MaxMemory() Memory {
	var best Memory
	for r := range p.Ranks {
		if m := p.Memory(r); m.Total() > best.Total() {
			best = m
		}
	}
	return best
}
