package plan

import "github.com/loomtrain/loom/schedule"

// Collective names, as parallel.Op spells them.
const (
	AllReduce     = "all-reduce"
	ReduceScatter = "reduce-scatter"
	AllGather     = "all-gather"
)

// CommOp is one kind of collective a rank runs: on which group, how many
// calls and how many float32 elements over all of them.
type CommOp struct {
	Group    string // KindTP, KindKV or KindDP
	Op       string // AllReduce, ReduceScatter or AllGather
	Calls    int64
	Elements int64
}

// TPComm is the tensor-parallel communication of one micro-batch of B
// sequences of T tokens on rank r, exactly as the model issues it over the
// rank's stages (n = B·T rows, d the hidden size, L the rank's layers, e
// and h one when it holds the embedding and the head, else zero):
//
//	without sequence parallelism, all-reduces of n·d: the embedding (e),
//	  per layer the attention and MLP outputs in forward (g) and their
//	  input gradients in backward (f) (4L), the head's input gradient (h);
//	  with B ≥ 2 each forward one as two, of the two halves' rows;
//	with sequence parallelism the same n·d all-reduces become their
//	  halves: reduce-scatters of the embedding, each row-parallel output
//	  and each column-parallel input gradient (4L + e + h), all-gathers of
//	  each column-parallel input in forward and of the residual gradient
//	  in backward (4L + h for the head's input + e for the embedding's
//	  gradient), plus one all-gather per column-parallel input in backward
//	  to gather the norm output again instead of keeping it (2L); and
//	  all-reduces of d for the norm weights' partial gradients (2L + h);
//	recomputing, each layer's forward collectives once more (2L);
//	the vocabulary-parallel loss (h): all-reduces of n (max) and 2n (sum
//	  of exponentials, target logit);
//	with kv heads replicated, per layer an all-reduce of the k and v
//	  weight gradients (2·hd·d) over the kv group.
//
// Nothing with one rank.
func (p *Plan) TPComm(r, B, T int) []CommOp {
	rp := p.Ranks[r]
	lo := rp.Layout.Local()
	if lo.TP == 1 {
		return nil
	}
	n, d := int64(B*T), int64(p.Model.Dim)
	var L, e, h int64
	for _, st := range rp.Stages {
		L += int64(st.Blocks())
		if st.Embed {
			e = 1
		}
		if st.Head {
			h = 1
		}
	}
	var rec int64
	if p.Recompute {
		rec = 2 * L
	}
	nd := n * d
	var ops []CommOp
	add := func(g, op string, calls, each int64) {
		if calls == 0 {
			return
		}
		for i := range ops {
			if ops[i].Group == g && ops[i].Op == op {
				ops[i].Calls += calls
				ops[i].Elements += calls * each
				return
			}
		}
		ops = append(ops, CommOp{Group: g, Op: op, Calls: calls, Elements: calls * each})
	}
	if p.SequenceParallel {
		add(KindTP, ReduceScatter, 4*L+e+h+rec, nd)
		add(KindTP, AllGather, 6*L+e+h+rec, nd)
		add(KindTP, AllReduce, 2*L+h, d)
	} else if B >= 2 {
		// Each block's forward runs as two halves of the sequences
		// (model.blockForwardHalves): its two all-reduces of n·d become
		// four of the halves' rows, the same elements in all.
		add(KindTP, AllReduce, 2*L+e+h, nd)
		half := (int64(B) / 2) * int64(T) * d
		add(KindTP, AllReduce, 2*L+rec, half)
		add(KindTP, AllReduce, 2*L+rec, nd-half)
	} else {
		add(KindTP, AllReduce, 4*L+e+h+rec, nd)
	}
	add(KindTP, AllReduce, h, n)
	add(KindTP, AllReduce, h, 2*n)
	if lo.KVReplicas > 1 {
		add(KindKV, AllReduce, L, 2*int64(lo.KVDim())*d)
	}
	return ops
}

func unitIndex(p *Partition, name string) int {
	for i, u := range p.Units {
		if u.Name == name {
			return i
		}
	}
	return -1
}

// ringBytes is what one member of g ranks sends in a ring reduce-scatter
// or all-gather of n elements; an all-reduce sends twice that.
func ringBytes(n int64, g int) int64 {
	if g <= 1 {
		return 0
	}
	return 4 * n * int64(g-1) / int64(g)
}

// Volume is the bytes rank r sends per optimizer step, by group, counted
// with ring algorithms; PP is what it sends to its pipeline neighbours
// (activations and input gradients, tags included), Emb its share of the
// tied embedding's gradient all-reduce.
type Volume struct {
	TP, KV, DP, PP, Emb int64
}

// Total is the sum over the groups.
func (v Volume) Total() int64 { return v.TP + v.KV + v.DP + v.PP + v.Emb }

// CommVolume is rank r's predicted traffic per optimizer step: Accum
// micro-batches of TPComm, and the ZeRO stage's data-parallel exchange
// over the local layout (P the sum of the units' padded lengths, Ψ the
// local parameters, N = dp, k = Accum): stage 0 all-reduces Ψ (2Ψ(N−1)/N
// sent); stage 1 reduce-scatters and all-gathers each unit once (2P(N−1)/N);
// stage 2 reduce-scatters every micro-batch ((k+1)P(N−1)/N); stage 3 also
// gathers each unit before its forward and backward (the head once):
// k(3P − P_head)(N−1)/N.
func (p *Plan) CommVolume(r int) Volume {
	rp := p.Ranks[r]
	var v Volume
	for _, op := range p.TPComm(r, p.MicroBatch, p.SeqLen) {
		size := rp.TP.Size()
		if op.Group == KindKV {
			size = rp.KV.Size()
		}
		b := ringBytes(op.Elements, size)
		if op.Op == AllReduce {
			b *= 2
		}
		if op.Group == KindKV {
			v.KV += b * int64(p.Accum)
		} else {
			v.TP += b * int64(p.Accum)
		}
	}
	part, N, k := rp.Zero, p.Mesh.DP, int64(p.Accum)
	msg := 4 * int64(p.MessageFloats(r, p.MicroBatch, p.SeqLen))
	for _, a := range p.Schedule.Ranks[rp.Coord.PP] {
		if a.Kind == schedule.SendF || a.Kind == schedule.SendB {
			v.PP += msg
		}
	}
	if rp.Emb.Size() > 1 {
		unit := part.Units[rp.Layout.EmbedUnit()]
		if t := rp.Layout.TiedUnit(); t >= 0 {
			unit = part.Units[t]
		}
		v.Emb = 2 * ringBytes(int64(unit.Len), 2)
		if N > 1 && part.Stage > Zero0 {
			v.Emb = 2 * ringBytes(int64(rp.Zero.Ranks[rp.DPIndex].Slices[unitIndex(part, unit.Name)].Len), 2)
		}
	}
	if N == 1 {
		return v
	}
	var padded, head int64
	for _, u := range part.Units {
		padded += int64(u.Padded(N))
	}
	head = int64(part.Units[len(part.Units)-1].Padded(N))
	switch part.Stage {
	case Zero0:
		v.DP = 2 * ringBytes(int64(part.Size), N)
	case Zero1:
		v.DP = 2 * ringBytes(padded, N)
	case Zero2:
		v.DP = (k + 1) * ringBytes(padded, N)
	case Zero3:
		v.DP = k * ringBytes(3*padded-head, N)
	}
	return v
}
