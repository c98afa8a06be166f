package plan

import (
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/schedule"
)

// UnitCost is the estimated work of one unit per token of a micro-batch,
// in floating-point operations, for its forward (F), its input-gradient
// pass (B) and its weight-gradient pass (W).
type UnitCost struct{ F, B, W float64 }

// Total is F+B+W.
func (c UnitCost) Total() float64 { return c.F + c.B + c.W }

func (c UnitCost) add(o UnitCost) UnitCost { return UnitCost{c.F + o.F, c.B + o.B, c.W + o.W} }

// Costs estimates the units of cfg at sequence length seqLen: a block
// does 2 FLOPs per matrix-multiply weight per token in each of F, B and W
// (N_b = 2·q·d + 2·kv·d + 3·ffn·d weights), plus causal attention's
// 2·T·q per token in forward and twice that in the input-gradient pass
// (scores and the weighted sum over T/2 keys on average, each way); the
// head's LM projection 2·V·d per token in each pass, its softmax and loss
// 5·V in forward; the embedding a row copy (d) forward and a row add (d)
// in its weight pass. Norms, RoPE and SwiGLU are left out: O(d) per token
// beside O(d²).
func Costs(cfg model.Config, seqLen int) (embed, block, head UnitCost) {
	d, T := float64(cfg.Dim), float64(seqLen)
	q := float64(cfg.NHeads * cfg.HeadDim())
	kv := float64(cfg.NKVHeads * cfg.HeadDim())
	nb := 2*q*d + 2*kv*d + 3*float64(cfg.FFNHidden)*d
	V := float64(cfg.VocabSize)
	return UnitCost{F: d, W: d}, UnitCost{F: 2*nb + 2*T*q, B: 2*nb + 4*T*q, W: 2 * nb}, UnitCost{F: 2*V*d + 5*V, B: 2 * V * d, W: 2 * V * d}
}

// StageCost is the estimated work of stage st per token.
func StageCost(cfg model.Config, seqLen int, st Stage) UnitCost {
	e, b, h := Costs(cfg, seqLen)
	var c UnitCost
	if st.Embed {
		c = c.add(e)
	}
	for range st.Blocks() {
		c = c.add(b)
	}
	if st.Head {
		c = c.add(h)
	}
	return c
}

// BalanceStages cuts cfg's blocks into n contiguous stages (each at least
// one block) that minimize the most expensive stage's estimated work
// (Costs, F+B+W), counting the embedding on the first stage and the head
// on the last: the number of blocks per stage.
func BalanceStages(cfg model.Config, seqLen, n int) []int {
	L := cfg.NLayers
	e, b, h := Costs(cfg, seqLen)
	cost := func(lo, hi, stage int) float64 { // blocks [lo, hi) as stage
		c := float64(hi-lo) * b.Total()
		if stage == 0 {
			c += e.Total()
		}
		if stage == n-1 {
			c += h.Total()
		}
		return c
	}
	// best[s][i]: the least maximum over stages 0..s holding blocks [0, i).
	inf := 1e300
	best := make([][]float64, n)
	from := make([][]int, n)
	for s := range n {
		best[s], from[s] = make([]float64, L+1), make([]int, L+1)
		for i := range best[s] {
			best[s][i] = inf
		}
	}
	for i := 1; i <= L; i++ {
		best[0][i] = cost(0, i, 0)
	}
	for s := 1; s < n; s++ {
		for i := s + 1; i <= L; i++ {
			for j := s; j < i; j++ {
				if c := max(best[s-1][j], cost(j, i, s)); c < best[s][i] {
					best[s][i], from[s][i] = c, j
				}
			}
		}
	}
	out := make([]int, n)
	for s, i := n-1, L; s >= 0; s-- {
		j := 0
		if s > 0 {
			j = from[s][i]
		}
		out[s] = i - j
		i = j
	}
	return out
}

// SimCosts is the simulator's cost model for the plan: each stage's
// estimated F, B and W (StageCost over a micro-batch's tokens, divided by
// the tensor-parallel degree) in FLOPs; no communication latency.
func (p *Plan) SimCosts() schedule.Costs {
	c := schedule.Uniform(len(p.Stages), 0, 0, 0, 0)
	tokens := float64(p.MicroBatch*p.SeqLen) / float64(p.Mesh.TP)
	for i, st := range p.Stages {
		u := StageCost(p.Model, p.SeqLen, st)
		c.F[i], c.B[i], c.W[i] = u.F*tokens, u.B*tokens, u.W*tokens
	}
	return c
}

// Bubble is the simulated schedule under SimCosts: the predicted bubble
// and each rank's peak in-flight micro-batches.
func (p *Plan) Bubble() (*schedule.Result, error) { return schedule.Simulate(p.Schedule, p.SimCosts()) }
