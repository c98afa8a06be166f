package plan

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
// sequences of T tokens on rank r, exactly as the model issues it (n =
// B·T rows, d the hidden size, L layers):
//
//	without sequence parallelism, all-reduces of n·d: the embedding (1),
//	  per layer the attention and MLP outputs in forward (g) and their
//	  input gradients in backward (f) (4L), the head's input gradient (1);
//	with sequence parallelism the same n·d all-reduces become their
//	  halves: reduce-scatters of the embedding, each row-parallel output
//	  and each column-parallel input gradient (4L + 2), all-gathers of
//	  each column-parallel input in forward and of the residual gradient
//	  in backward (4L + 2), plus one all-gather per column-parallel input
//	  in backward to gather the norm output again instead of keeping it
//	  (2L); and all-reduces of d for the norm weights' partial gradients
//	  (2L + 1);
//	the vocabulary-parallel loss: all-reduces of n (max) and 2n (sum of
//	  exponentials, target logit);
//	with kv heads replicated, per layer an all-reduce of the k and v
//	  weight gradients (2·hd·d) over the kv group.
//
// Nothing with one rank.
func (p *Plan) TPComm(r, B, T int) []CommOp {
	lo := p.Ranks[r].Layout.Local()
	if lo.TP == 1 {
		return nil
	}
	n, d, L := int64(B*T), int64(p.Model.Dim), int64(p.Model.NLayers)
	nd := n * d
	var ops []CommOp
	add := func(g, op string, calls, each int64) {
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
		add(KindTP, ReduceScatter, 4*L+2, nd)
		add(KindTP, AllGather, 6*L+2, nd)
		add(KindTP, AllReduce, 2*L+1, d)
	} else {
		add(KindTP, AllReduce, 4*L+2, nd)
	}
	add(KindTP, AllReduce, 1, n)
	add(KindTP, AllReduce, 1, 2*n)
	if lo.KVReplicas > 1 {
		add(KindKV, AllReduce, L, 2*int64(lo.KVDim())*d)
	}
	return ops
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
// with ring algorithms.
type Volume struct {
	TP, KV, DP int64
}

// Total is the sum over the groups.
func (v Volume) Total() int64 { return v.TP + v.KV + v.DP }

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
