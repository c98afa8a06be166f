package model

import "fmt"

// BlockActs are the activations one decoder block saves for its backward
// pass, for a batch of B sequences of T tokens (rows r = b·T + t, n = B·T).
// The row-wise tensors (AttnIn, H, MLPIn and the rstds) hold the rank's
// rows: all n, or with sequence parallelism (SP) the rank's shard of n/TP
// rows. The others hold all n rows of the rank's heads or MLP features.
// The input x of the block is not saved here; the caller keeps it and
// passes it again to the backward pass.
type BlockActs struct {
	B, T     int
	SP       bool
	AttnIn   []float32 // (rows,d) input_layernorm(x)
	AttnRstd []float32 // (rows)
	Q        []float32 // (n,Heads·hd) after RoPE
	K        []float32 // (n,KVHeads·hd) after RoPE
	V        []float32 // (n,KVHeads·hd)
	Att      []float32 // (n,Heads·hd) attention output before o_proj
	LSE      []float32 // (B,Heads,T) log-sum-exp of scaled scores
	H        []float32 // (rows,d) x + o_proj(Att)
	MLPIn    []float32 // (rows,d) post_attention_layernorm(H)
	MLPRstd  []float32 // (rows)
	Gate, Up []float32 // (n,FFN) projections before the activation
	Act      []float32 // (n,FFN) silu(Gate)·Up
}

// BlockScratch holds the temporaries of the block passes. One scratch can
// be shared by every block of a stage because a pass uses it only while it
// runs.
type BlockScratch struct {
	DAtt, DQ   []float32 // (n,Heads·hd)
	DK, DV     []float32 // (n,KVHeads·hd)
	DGate, DUp []float32 // (n,FFN)
	// DNorm (n,d) holds the input gradient's partial sums in backward and
	// the row-parallel layers' partial outputs in forward.
	DNorm []float32
	// Full (n,d) receives all-gathered rows under sequence parallelism
	// (norm outputs, residual-stream gradients); nil otherwise.
	Full []float32
	// NormGrad (d) is a norm weight's partial gradient under sequence
	// parallelism, before it is summed over the group; nil otherwise.
	NormGrad []float32
	// KVGrad (2·KVHeads·hd·d) holds one micro-batch's k and v weight
	// gradients before they are summed over the kv replicas; nil unless
	// kv heads are replicated.
	KVGrad []float32
}

// HeadActs are the activations saved by the head (final norm, lm_head, loss).
type HeadActs struct {
	B, T int
	SP   bool
	Norm []float32 // (rows,d) model.norm(x)
	Rstd []float32 // (rows)
	// NormFull (n,d) is Norm gathered from every rank under sequence
	// parallelism; otherwise it is Norm itself.
	NormFull []float32
	Logits   []float32 // (n,Vocab) this rank's vocabulary range; after HeadLossGrad, d(loss)/d(logits)
	DNorm    []float32 // (n,d) backward temporary
	// Stats (3n) holds the vocabulary-parallel cross-entropy's per-row
	// max, sum of exponentials and target logit (TP > 1 only).
	Stats []float32
}

// Acts is everything a whole-model pass needs for batches of up to B·T
// tokens, allocated once so steady-state steps do not allocate.
type Acts struct {
	B, T int // current batch shape (see SetShape)
	// SP: the residual stream holds this rank's shard of the rows
	// (sequence parallelism). Rows() is then B·T/TP.
	SP      bool
	Resid   [][]float32 // NLayers+1 buffers (rows,d): Resid[i] is the input of block i, Resid[NLayers] of the head
	Blocks  []*BlockActs
	Head    *HeadActs
	Scratch *BlockScratch
	DResid  []float32 // (rows,d) residual-stream gradient
	cap     int       // capacity in rows (B·T at allocation)
	seqLen  int
	tp      int
}

// Rows is the number of residual-stream rows this rank holds at the
// current shape: B·T, or B·T/TP under sequence parallelism.
func (a *Acts) Rows() int {
	if a.SP {
		return a.B * a.T / a.tp
	}
	return a.B * a.T
}

// NewActs allocates training activations for batch shape (B,T), T <=
// SeqLen: sequence-sharded when the model runs sequence parallelism
// (then B·T must be divisible by the tensor-parallel degree).
func (m *Model) NewActs(B, T int) (*Acts, error) { return m.newActs(B, T, m.sp) }

// NewEvalActs allocates activations for batch shape (B,T) that are never
// sequence-sharded, so any shape works: for evaluation and sampling.
func (m *Model) NewEvalActs(B, T int) (*Acts, error) { return m.newActs(B, T, false) }

func (m *Model) newActs(B, T int, sp bool) (*Acts, error) {
	c, lo := m.Config, m.loc
	if B < 1 || T < 1 || T > c.SeqLen {
		return nil, fmt.Errorf("model.NewActs: batch shape (%d,%d) with SeqLen %d: %w", B, T, c.SeqLen, ErrInput)
	}
	n := B * T
	if sp && n%lo.TP != 0 {
		return nil, fmt.Errorf("model.NewActs: sequence parallelism over %d ranks needs B·T divisible by %d, got (%d,%d): %w", lo.TP, lo.TP, B, T, ErrInput)
	}
	rows := n
	if sp {
		rows = n / lo.TP
	}
	d, q, kv, ffn := c.Dim, lo.QDim(), lo.KVDim(), lo.FFN
	f := func(k int) []float32 { return make([]float32, k) }
	a := &Acts{B: B, T: T, SP: sp, cap: n, seqLen: c.SeqLen, tp: lo.TP, DResid: f(rows * d)}
	a.Scratch = &BlockScratch{
		DAtt: f(n * q), DQ: f(n * q), DK: f(n * kv), DV: f(n * kv),
		DGate: f(n * ffn), DUp: f(n * ffn), DNorm: f(n * d),
	}
	if sp {
		a.Scratch.Full, a.Scratch.NormGrad = f(n*d), f(d)
	}
	if lo.KVReplicas > 1 {
		a.Scratch.KVGrad = f(2 * kv * d)
	}
	a.Head = &HeadActs{B: B, T: T, SP: sp, Norm: f(rows * d), Rstd: f(rows), Logits: f(n * lo.Vocab), DNorm: f(n * d)}
	a.Head.NormFull = a.Head.Norm
	if sp {
		a.Head.NormFull = f(n * d)
	}
	if lo.TP > 1 {
		a.Head.Stats = f(3 * n)
	}
	resid := f((c.NLayers + 1) * rows * d)
	for i := 0; i <= c.NLayers; i++ {
		a.Resid = append(a.Resid, resid[i*rows*d:(i+1)*rows*d])
	}
	for i := 0; i < c.NLayers; i++ {
		a.Blocks = append(a.Blocks, &BlockActs{
			B: B, T: T, SP: sp,
			AttnIn: f(rows * d), AttnRstd: f(rows),
			Q: f(n * q), K: f(n * kv), V: f(n * kv), Att: f(n * q), LSE: f(n * lo.Heads),
			H: f(rows * d), MLPIn: f(rows * d), MLPRstd: f(rows),
			Gate: f(n * ffn), Up: f(n * ffn), Act: f(n * ffn),
		})
	}
	return a, nil
}

// SetShape changes the batch shape used by the next passes to (B,T); B·T must
// not exceed the rows allocated by NewActs and T must not exceed SeqLen
// (and, sequence-parallel, B·T must stay divisible by the tensor-parallel
// degree). Buffers are reused, so this is how sampling grows its context
// without allocating.
func (a *Acts) SetShape(B, T int) error {
	if B < 1 || T < 1 || T > a.seqLen || B*T > a.cap || (a.SP && (B*T)%a.tp != 0) {
		return fmt.Errorf("model: batch shape (%d,%d) exceeds capacity %d rows or SeqLen %d (or is not divisible by the %d sequence-parallel ranks): %w", B, T, a.cap, a.seqLen, a.tp, ErrInput)
	}
	a.B, a.T = B, T
	a.Head.B, a.Head.T = B, T
	for _, s := range a.Blocks {
		s.B, s.T = B, T
	}
	return nil
}

// Bytes is the memory the activations hold: every buffer NewActs
// allocated, counted from their lengths.
func (a *Acts) Bytes() int64 {
	n := 0
	add := func(bs ...[]float32) {
		for _, b := range bs {
			n += len(b)
		}
	}
	for _, r := range a.Resid {
		add(r)
	}
	add(a.DResid)
	s := a.Scratch
	add(s.DAtt, s.DQ, s.DK, s.DV, s.DGate, s.DUp, s.DNorm, s.Full, s.NormGrad, s.KVGrad)
	h := a.Head
	add(h.Norm, h.Rstd, h.Logits, h.DNorm, h.Stats)
	if h.SP {
		add(h.NormFull)
	}
	for _, b := range a.Blocks {
		add(b.AttnIn, b.AttnRstd, b.Q, b.K, b.V, b.Att, b.LSE, b.H, b.MLPIn, b.MLPRstd, b.Gate, b.Up, b.Act)
	}
	return 4 * int64(n)
}
