package plan

import (
	"fmt"
	"strings"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/schedule"
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
	cut := "balanced by estimated cost"
	if !p.Balanced {
		cut = "parallel.stages"
	}
	rec := ""
	if p.Recompute {
		rec = ", blocks recompute their forward"
	}
	fmt.Fprintf(&b, "pipeline: %s schedule, %d stage(s) on %d pipeline rank(s) (%s), %d micro-batches per step%s\n",
		p.Schedule.Name, len(p.Stages), p.Mesh.PP, cut, p.Accum, rec)
	if res, err := p.Bubble(); err == nil {
		fmt.Fprintf(&b, "  predicted bubble %.1f%% (stage costs estimated in FLOPs), peak micro-batches in flight per pipeline rank %v\n", 100*res.Bubble, res.PeakInFlight)
	}
	in := p.inFlight
	for _, s := range p.Stages {
		c := StageCost(p.Model, p.SeqLen, s)
		n := float64(p.MicroBatch*p.SeqLen) / float64(p.Mesh.TP) / 1e9
		fmt.Fprintf(&b, "stage %d on pipeline rank %d: blocks [%d,%d) embed=%v head=%v; per micro-batch and tp rank ~%.3g/%.3g/%.3g GFLOP F/B/W; %d in flight\n",
			s.Index, s.Rank, s.First, s.End, s.Embed, s.Head, c.F*n, c.B*n, c.W*n, in[s.Index])
	}
	seen := map[string]bool{}
	b.WriteString("groups:\n")
	for _, r := range p.Ranks {
		for _, g := range []Group{r.TP, r.DP, r.KV, r.PP, r.Emb} {
			if g.Size() > 1 && !seen[g.Name] {
				seen[g.Name] = true
				fmt.Fprintf(&b, "  %-18s %v\n", g.Name, g.Ranks)
			}
		}
	}
	b.WriteString("ranks:\n")
	for _, r := range p.Ranks {
		var gs []string
		for _, g := range []Group{r.TP, r.DP, r.KV, r.PP, r.Emb} {
			if g.Size() > 1 {
				gs = append(gs, g.Name)
			}
		}
		var sts []string
		for _, st := range r.Stages {
			sts = append(sts, fmt.Sprint(st.Index))
		}
		m := p.Memory(r.Rank)
		fmt.Fprintf(&b, "  rank %d %v: stages %s; groups %s; local layout %d elements, zero shard %d; memory %s (activations %s)\n",
			r.Rank, r.Coord, strings.Join(sts, ","), strings.Join(gs, ", "), r.Layout.Size, r.Zero.Ranks[r.DPIndex].LocalLen, MiB(m.Total()), MiB(m.Activations))
	}
	for i, l := range p.Layouts {
		lo := l.Local()
		fmt.Fprintf(&b, "pp rank %d tp rank %d layout: %d/%d heads from %d, %d/%d kv heads from %d (%d copies), ffn %d from %d, vocab rows %d from %d (%d padding)\n",
			i/p.Mesh.TP, lo.Rank, lo.Heads, p.Model.NHeads, lo.HeadStart, lo.KVHeads, p.Model.NKVHeads, lo.KVHeadStart, lo.KVReplicas, lo.FFN, lo.FFNStart,
			lo.Vocab, lo.VocabStart, lo.Vocab-lo.VocabValid(p.Model.VocabSize))
		for _, line := range strings.Split(strings.TrimSuffix(l.String(), "\n"), "\n") {
			fmt.Fprintf(&b, "  %s\n", line)
		}
		for _, line := range strings.Split(strings.TrimSuffix(p.Partitions[i].String(), "\n"), "\n") {
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
	// Bubble is the predicted pipeline bubble (0 with pp 1).
	Bubble float64
	Fits   bool
}

// Candidates lists every layout of spec's model and global batch on
// workers ranks: each pp that divides the workers (at most one block per
// stage, the spec's schedule and virtual stages where they apply, its
// stage cut only at its own pp) and each tp that divides the rest and is
// valid for the model, dp = workers/(tp·pp), ZeRO stages 0–3 (only 0 when
// dp = 1: nothing to shard), sequence parallelism off and
// on when tp > 1, and each micro-batch that divides the per-rank batch.
// budget ≤ 0 fits everything. They are ordered as Recommend prefers them.
func Candidates(spec api.JobSpec, workers int, budget int64) ([]Candidate, error) {
	var out []Candidate
	for pp := 1; pp <= workers; pp++ {
		if workers%pp != 0 || pp > spec.Model.NLayers {
			continue
		}
		for tp := 1; tp <= workers/pp; tp++ {
			if (workers/pp)%tp != 0 {
				continue
			}
			dp := workers / pp / tp
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
						s.Parallel.DP, s.Parallel.TP, s.Parallel.PP, s.Parallel.Zero, s.Parallel.SequenceParallel = dp, tp, pp, zs, sp
						s.Parallel.MicroBatches = 0
						if pp != spec.Parallel.PP {
							s.Parallel.Stages = nil
							if s.Parallel.VirtualStages > 1 && pp*s.Parallel.VirtualStages > spec.Model.NLayers {
								s.Parallel.VirtualStages = 1
							}
						}
						if s.Parallel.VirtualStages > 1 && s.Parallel.Schedule != schedule.Interleaved {
							s.Parallel.VirtualStages = 1
						}
						s.Train.MicroBatch = mb
						p, err := New(s, workers)
						if err != nil {
							continue // this tp does not divide the model, SP needs other shapes, the schedule needs other micro-batches
						}
						c := Candidate{Spec: s, Plan: p, Memory: p.MaxMemory(), Comm: p.CommVolume(0)}
						if pp > 1 {
							if res, err := p.Bubble(); err == nil {
								c.Bubble = res.Bubble
							}
						}
						c.Fits = budget <= 0 || c.Memory.Total() <= budget
						out = append(out, c)
					}
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
// pass), then the smallest pipeline degree (its bubble idles every rank),
// then the lowest ZeRO stage (each stage adds communication), then
// sequence parallelism off, then — pipelined — the smallest predicted
// bubble, then the largest micro-batch (fewer, larger GEMMs). It returns
// -1 when none fits.
func Recommend(cs []Candidate) int {
	best := -1
	better := func(a, b Candidate) bool {
		pa, pb := a.Spec.Parallel, b.Spec.Parallel
		if pa.TP != pb.TP {
			return pa.TP < pb.TP
		}
		if pa.PP != pb.PP {
			return pa.PP < pb.PP
		}
		if pa.Zero != pb.Zero {
			return pa.Zero < pb.Zero
		}
		if pa.SequenceParallel != pb.SequenceParallel {
			return !pa.SequenceParallel
		}
		if d := a.Bubble - b.Bubble; d < -0.01 || d > 0.01 {
			return d < 0
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
