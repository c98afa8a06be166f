package zero

import (
	"fmt"
	"strings"

	"github.com/loomtrain/loom/model"
)

// Memory is one rank's counted bytes by kind. Params, Grads and Optimizer
// are the model states of the ZeRO paper (for float32 training and Ψ
// parameters: 16Ψ at stage 0, 8Ψ+8Ψ/N at 1, 4Ψ+12Ψ/N at 2, 16Ψ/N at 3);
// Working is stage 2–3's per-unit buffers (gathered parameters, unit
// gradients waiting to be reduce-scattered); Comm is staging for
// collectives; Activations is what the model saves for backward at the
// micro-batch; Runtime is a fixed allowance for the Go runtime, the binary,
// kernel scratch and the data loader (an estimate, not counted).
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

// Buffer counts for stages 2 and 3 (see Engine): a unit being computed
// and one in flight (being reduce-scattered, or prefetched); with tied
// embeddings the embedding stays bound from its forward to its backward.
func workingBuffers(tied bool) int {
	if tied {
		return 3
	}
	return 2
}

// Memory is the bytes rank r's Engine allocates for model states, working
// buffers and collective staging (Activations and Runtime are zero; see
// Estimate). It is exact: the Engine reports the same numbers.
func (p Plan) Memory(r int, tied bool) Memory {
	const f = 4
	psi, local := int64(p.Size), int64(p.Ranks[r].LocalLen)
	work := int64(p.MaxPadded())
	if p.DP == 1 || p.Stage == Stage0 {
		return Memory{Params: f * psi, Grads: f * psi, Optimizer: 2 * f * psi}
	}
	m := Memory{Params: f * psi, Grads: f * psi, Optimizer: 2 * f * local}
	switch p.Stage {
	case Stage1:
		m.Comm = f * work
	case Stage2:
		m.Grads = f * local
		m.Working = f * work * int64(workingBuffers(tied))
	case Stage3:
		m.Params, m.Grads = f*local, f*local
		m.Working = 2 * f * work * int64(workingBuffers(tied))
	}
	return m
}

// ActivationBytes is what model.NewActs allocates for a micro-batch of B
// sequences of T tokens, plus the trainer's token and target buffers.
func ActivationBytes(c model.Config, B, T int) int64 {
	n := int64(B * T)
	d, V, ffn, L := int64(c.Dim), int64(c.VocabSize), int64(c.FFNHidden), int64(c.NLayers)
	q := int64(c.NHeads * c.HeadDim())
	kv := int64(c.NKVHeads * c.HeadDim())
	block := n * (d + 1 + q + 2*kv + q + int64(c.NHeads) + 2*d + 1 + 3*ffn)
	head := n * (2*d + 1 + V)
	scratch := n * (2*q + 2*kv + 2*ffn + d)
	resid := (L + 1) * n * d
	dresid := n * d
	return 4*(L*block+head+scratch+resid+dresid) + 2*4*n
}

// Estimate is rank 0's memory for model config c on dp ranks at stage s
// with micro-batches of B sequences of T tokens: Plan.Memory plus
// ActivationBytes plus DefaultRuntimeBytes. With one rank every stage
// runs as stage 0 (there is nothing to shard).
func Estimate(c model.Config, dp int, s Stage, B, T int) (Memory, error) {
	l, err := model.NewLayout(c)
	if err != nil {
		return Memory{}, err
	}
	p, err := NewPlan(l, dp, s, 0)
	if err != nil {
		return Memory{}, err
	}
	m := p.Memory(0, c.TieEmbeddings)
	m.Activations = ActivationBytes(c, B, T)
	m.Runtime = DefaultRuntimeBytes
	return m, nil
}
