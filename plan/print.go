package plan

import (
	"fmt"
	"strings"

	"github.com/loomtrain/loom/api"
)

// String prints the whole plan, as `loom plan --show-ranks` does: the
// mesh, every group, every rank's coordinates, groups and estimated
// memory, then each tensor-parallel rank's local layout (which chunk of
// which global tensor, local shapes) and its ZeRO partition.
func (p *Plan) String() string {
	var b strings.Builder
	sp := "off"
	if p.SequenceParallel {
		sp = "on"
	}
	fmt.Fprintf(&b, "plan: %s = %d ranks, zero %d, sequence parallelism %s\n", p.Mesh, p.World(), p.ZeroStage, sp)
	fmt.Fprintf(&b, "model: %d parameters; micro-batch %d × %d tokens, %d accumulation steps per dp rank, global batch %d\n",
		p.Model.NumParams(), p.MicroBatch, p.SeqLen, p.Accum, p.GlobalBatch)
	for _, s := range p.Stages {
		fmt.Fprintf(&b, "stage %d: blocks [%d,%d) embed=%v head=%v\n", s.Index, s.First, s.End, s.Embed, s.Head)
	}
	seen := map[string]bool{}
	b.WriteString("groups:\n")
	for _, r := range p.Ranks {
		for _, g := range []Group{r.TP, r.DP, r.KV, r.PP} {
			if g.Size() > 1 && !seen[g.Name] {
				seen[g.Name] = true
				fmt.Fprintf(&b, "  %-18s %v\n", g.Name, g.Ranks)
			}
		}
	}
	b.WriteString("ranks:\n")
	for _, r := range p.Ranks {
		var gs []string
		for _, g := range []Group{r.TP, r.DP, r.KV} {
			if g.Size() > 1 {
				gs = append(gs, g.Name)
			}
		}
		m := p.Memory(r.Rank)
		fmt.Fprintf(&b, "  rank %d %v: groups %s; local layout %d elements, zero shard %d; memory %s\n",
			r.Rank, r.Coord, strings.Join(gs, ", "), r.Layout.Size, r.Zero.Ranks[r.DPIndex].LocalLen, MiB(m.Total()))
	}
	for t, l := range p.Layouts {
		lo := l.Local()
		fmt.Fprintf(&b, "tp rank %d layout: %d/%d heads from %d, %d/%d kv heads from %d (%d copies), ffn %d from %d, vocab rows %d from %d (%d padding)\n",
			t, lo.Heads, p.Model.NHeads, lo.HeadStart, lo.KVHeads, p.Model.NKVHeads, lo.KVHeadStart, lo.KVReplicas, lo.FFN, lo.FFNStart,
			lo.Vocab, lo.VocabStart, lo.Vocab-lo.VocabValid(p.Model.VocabSize))
		for _, line := range strings.Split(strings.TrimSuffix(l.String(), "\n"), "\n") {
			fmt.Fprintf(&b, "  %s\n", line)
		}
		for _, line := range strings.Split(strings.TrimSuffix(p.Partitions[t].String(), "\n"), "\n") {
			fmt.Fprintf(&b, "  %s\n", line)
		}
	}
	return b.String()
}

// Candidate is one layout `loom plan` considers for a number of workers.
type Candidate struct {
	Spec   api.JobSpec // the job spec with this layout
	Plan   *Plan
	Memory Memory // the largest rank's
	Comm   Volume // rank 0's bytes sent per step
	Fits   bool
}

// Candidates lists every layout of spec's model and global batch on
// workers ranks (pp = 1): each tp that divides the workers and is valid
// for the model, dp = workers/tp, ZeRO stages 0–3 (only 0 when dp = 1:
// nothing to shard), sequence parallelism off and on when tp > 1, and each
// micro-batch that divides the per-rank batch. budget ≤ 0 fits everything.
// They are ordered as Recommend prefers them.
func Candidates(spec api.JobSpec, workers int, budget int64) ([]Candidate, error) {
	var out []Candidate
	for tp := 1; tp <= workers; tp++ {
		if workers%tp != 0 {
			continue
		}
		dp := workers / tp
		if spec.Train.GlobalBatch%dp != 0 {
			continue
		}
		per := spec.Train.GlobalBatch / dp
		for zs := 0; zs <= 3; zs++ {
			if dp == 1 && zs > 0 {
				continue
			}
			for _, sp := range []bool{false, true} {
				if sp && tp == 1 {
					continue
				}
				for mb := per; mb >= 1; mb-- {
					if per%mb != 0 {
						continue
					}
					s := spec
					s.Parallel.DP, s.Parallel.TP, s.Parallel.PP, s.Parallel.Zero, s.Parallel.SequenceParallel = dp, tp, 1, zs, sp
					s.Train.MicroBatch = mb
					p, err := New(s, workers)
					if err != nil {
						continue // this tp does not divide the model, or SP needs other shapes
					}
					m := p.MaxMemory()
					out = append(out, Candidate{Spec: s, Plan: p, Memory: m, Comm: p.CommVolume(0), Fits: budget <= 0 || m.Total() <= budget})
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("plan: no layout of %d workers suits the model and train.global_batch %d: %w", workers, spec.Train.GlobalBatch, ErrInvalid)
	}
	return out, nil
}

// Recommend picks among the candidates that fit the one Loom suggests:
// the smallest tensor-parallel degree (its communication is on the
// critical path, where data-parallel gradients overlap the backward
// pass), then the lowest ZeRO stage (each stage adds communication), then
// sequence parallelism off, then the largest micro-batch (fewer, larger
// GEMMs). It returns -1 when none fits.
func Recommend(cs []Candidate) int {
	best := -1
	better := func(a, b Candidate) bool {
		pa, pb := a.Spec.Parallel, b.Spec.Parallel
		if pa.TP != pb.TP {
			return pa.TP < pb.TP
		}
		if pa.Zero != pb.Zero {
			return pa.Zero < pb.Zero
		}
		if pa.SequenceParallel != pb.SequenceParallel {
			return !pa.SequenceParallel
		}
		return a.Spec.Train.MicroBatch > b.Spec.Train.MicroBatch
	}
	for i, c := range cs {
		if c.Fits && (best < 0 || better(c, cs[best])) {
			best = i
		}
	}
	return best
}
