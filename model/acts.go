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

// seqs returns the activations of sequences [b0, b1) of s (not sequence
// parallel): views into its buffers, which are all batch-major.
func (s *BlockActs) seqs(b0, b1 int, lo Local, d int) BlockActs {
	r0, r1 := b0*s.T, b1*s.T
	v := func(x []float32, width int) []float32 { return x[r0*width : r1*width] }
	q, kv, ffn := lo.QDim(), lo.KVDim(), lo.FFN
	return BlockActs{
		B: b1 - b0, T: s.T,
		AttnIn: v(s.AttnIn, d), AttnRstd: v(s.AttnRstd, 1),
		Q: v(s.Q, q), K: v(s.K, kv), V: v(s.V, kv), Att: v(s.Att, q), LSE: v(s.LSE, lo.Heads),
		H: v(s.H, d), MLPIn: v(s.MLPIn, d), MLPRstd: v(s.MLPRstd, 1),
		Gate: v(s.Gate, ffn), Up: v(s.Up, ffn), Act: v(s.Act, ffn),
	}
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
	// Recompute holds one block's activations, recomputed just before its
	// backward, when the stage recomputes (ActsOptions.Recompute).
	Recompute *BlockActs
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

// BlockGrad is what a split backward (StageBackward with split) keeps for
// a block's weight-gradient pass (StageWeights): the output gradients of
// the MLP and attention halves, for all n rows (gathered under sequence
// parallelism), and the two norm weights' gradients. The other inputs of
// the weight gradients go in the block's saved activations, whose forward
// values the input-gradient pass no longer needs: the gate and up
// projections' gradients in Gate and Up, the query, key and value
// gradients (before RoPE) in Q, K and V.
type BlockGrad struct {
	DY, DH            []float32 // (n,d) d(loss)/d(MLP output), d(loss)/d(attention output)
	AttnNorm, MLPNorm []float32 // (d) input_layernorm, post_attention_layernorm weight gradients
}

// Acts is everything the passes of one micro-batch need through one
// pipeline stage — or the whole model — for batches of up to B·T tokens,
// allocated once so steady-state steps do not allocate. A pipeline stage
// keeps one Acts per micro-batch in flight; they share one Scratch.
type Acts struct {
	B, T int // current batch shape (see SetShape)
	// SP: the residual stream holds this rank's shard of the rows
	// (sequence parallelism). Rows() is then B·T/TP.
	SP bool
	// First and End are the blocks [First, End) the activations cover;
	// HasEmbed and HasHead whether the stage starts with the embedding and
	// ends with the head (the loss).
	First, End        int
	HasEmbed, HasHead bool
	// Resid holds End−First+1 buffers (rows,d): Resid[i] is the input of
	// block First+i, Resid[End−First] the stage's output (the head's
	// input on the last stage). Without the embedding the stage's input
	// is copied into Resid[0].
	Resid [][]float32
	// Blocks are the blocks' saved activations (nil with recomputation:
	// each block's forward runs again into Scratch.Recompute before its
	// backward).
	Blocks  []*BlockActs
	Head    *HeadActs // nil unless HasHead
	Scratch *BlockScratch
	// DResid (rows,d) is the residual-stream gradient: the stage's output
	// gradient on entry to StageBackward (unless HasHead), its input gradient
	// on return.
	DResid []float32
	// Grads (split backwards only) keep what StageWeights needs per
	// block; HeadNorm the final norm weight's gradient.
	Grads    []*BlockGrad
	HeadNorm []float32
	cap      int // capacity in rows (B·T at allocation)
	seqLen   int
	tp       int
}

// ActsOptions shape the activations of NewStageActs.
type ActsOptions struct {
	// First, End, Embed and Head select the stage (see Acts); all zero
	// means the whole model.
	First, End  int
	Embed, Head bool
	// Split keeps what split backwards need (Grads, HeadNorm).
	Split bool
	// Recompute saves only the blocks' inputs: the backward runs each
	// block's forward again (into Scratch.Recompute) just before its
	// backward, trading a forward pass for the blocks' activations.
	Recompute bool
	// Scratch is shared with other Acts of the model (nil: allocate one).
	// Its buffers must have been allocated for at least B·T tokens.
	Scratch *BlockScratch
}

// Rows is the number of residual-stream rows this rank holds at the
// current shape: B·T, or B·T/TP under sequence parallelism.
func (a *Acts) Rows() int {
	if a.SP {
		return a.B * a.T / a.tp
	}
	return a.B * a.T
}

// NewActs allocates training activations of the whole model for batch
// shape (B,T), T <= SeqLen: sequence-sharded when the model runs sequence
// parallelism (then B·T must be divisible by the tensor-parallel degree).
func (m *Model) NewActs(B, T int) (*Acts, error) { return m.newActs(B, T, m.sp, ActsOptions{}) }

// NewEvalActs allocates activations for batch shape (B,T) that are never
// sequence-sharded, so any shape works: for evaluation and sampling.
func (m *Model) NewEvalActs(B, T int) (*Acts, error) { return m.newActs(B, T, false, ActsOptions{}) }

// NewStageActs allocates training activations of one micro-batch through
// the stage o selects, which the model's layout must hold.
func (m *Model) NewStageActs(B, T int, o ActsOptions) (*Acts, error) { return m.newActs(B, T, m.sp, o) }

func (m *Model) newActs(B, T int, sp bool, o ActsOptions) (*Acts, error) {
	c, lo := m.Config, m.loc
	if B < 1 || T < 1 || T > c.SeqLen {
		return nil, fmt.Errorf("model.NewActs: batch shape (%d,%d) with SeqLen %d: %w", B, T, c.SeqLen, ErrInput)
	}
	if o.First == 0 && o.End == 0 && !o.Embed && !o.Head {
		o.End, o.Embed, o.Head = c.NLayers, true, true
	}
	if o.First < 0 || o.End < o.First || o.End > c.NLayers || (o.First == o.End && !o.Embed && !o.Head) {
		return nil, fmt.Errorf("model.NewActs: stage blocks [%d,%d) of %d: %w", o.First, o.End, c.NLayers, ErrInvalidConfig)
	}
	for i := o.First; i < o.End; i++ {
		if m.Layout.BlockUnit(i) < 0 {
			return nil, fmt.Errorf("model.NewActs: the layout does not hold block %d of the stage [%d,%d): %w", i, o.First, o.End, ErrInvalidConfig)
		}
	}
	if (o.Embed && m.Layout.EmbedUnit() < 0) || (o.Head && m.Layout.HeadUnit() < 0) {
		return nil, fmt.Errorf("model.NewActs: the layout does not hold the stage's embedding or head: %w", ErrInvalidConfig)
	}
	if o.Split && o.Recompute {
		return nil, fmt.Errorf("model.NewActs: a split backward keeps the activations its weight pass reads, recomputation drops them: choose one: %w", ErrInvalidConfig)
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
	a := &Acts{B: B, T: T, SP: sp, First: o.First, End: o.End, HasEmbed: o.Embed, HasHead: o.Head,
		cap: n, seqLen: c.SeqLen, tp: lo.TP, DResid: f(rows * d), Scratch: o.Scratch}
	if a.Scratch == nil {
		a.Scratch = m.NewScratch(B, T, sp)
	}
	if o.Recompute && a.Scratch.Recompute == nil {
		a.Scratch.Recompute = newBlockActs(B, T, sp, rows, d, q, kv, ffn, lo.Heads)
	}
	if o.Head {
		a.Head = &HeadActs{B: B, T: T, SP: sp, Norm: f(rows * d), Rstd: f(rows), Logits: f(n * lo.Vocab), DNorm: f(n * d)}
		a.Head.NormFull = a.Head.Norm
		if sp {
			a.Head.NormFull = f(n * d)
		}
		if lo.TP > 1 {
			a.Head.Stats = f(3 * n)
		}
		if o.Split {
			a.HeadNorm = f(d)
		}
	}
	L := o.End - o.First
	resid := f((L + 1) * rows * d)
	for i := 0; i <= L; i++ {
		a.Resid = append(a.Resid, resid[i*rows*d:(i+1)*rows*d])
	}
	for range L {
		if !o.Recompute {
			a.Blocks = append(a.Blocks, newBlockActs(B, T, sp, rows, d, q, kv, ffn, lo.Heads))
		}
		if o.Split {
			a.Grads = append(a.Grads, &BlockGrad{DY: f(n * d), DH: f(n * d), AttnNorm: f(d), MLPNorm: f(d)})
		}
	}
	return a, nil
}

func newBlockActs(B, T int, sp bool, rows, d, q, kv, ffn, heads int) *BlockActs {
	f := func(k int) []float32 { return make([]float32, k) }
	n := B * T
	return &BlockActs{
		B: B, T: T, SP: sp,
		AttnIn: f(rows * d), AttnRstd: f(rows),
		Q: f(n * q), K: f(n * kv), V: f(n * kv), Att: f(n * q), LSE: f(n * heads),
		H: f(rows * d), MLPIn: f(rows * d), MLPRstd: f(rows),
		Gate: f(n * ffn), Up: f(n * ffn), Act: f(n * ffn),
	}
}

// NewScratch allocates the pass temporaries for batches of up to B·T
// tokens (sequence-sharded activations when sp): one scratch serves every
// Acts of a rank, since a pass uses it only while it runs.
func (m *Model) NewScratch(B, T int, sp bool) *BlockScratch {
	c, lo := m.Config, m.loc
	n := B * T
	d, q, kv, ffn := c.Dim, lo.QDim(), lo.KVDim(), lo.FFN
	f := func(k int) []float32 { return make([]float32, k) }
	s := &BlockScratch{
		DAtt: f(n * q), DQ: f(n * q), DK: f(n * kv), DV: f(n * kv),
		DGate: f(n * ffn), DUp: f(n * ffn), DNorm: f(n * d),
	}
	if sp {
		s.Full, s.NormGrad = f(n*d), f(d)
	}
	if lo.KVReplicas > 1 {
		s.KVGrad = f(2 * kv * d)
	}
	return s
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
	if a.Head != nil {
		a.Head.B, a.Head.T = B, T
	}
	for _, s := range a.Blocks {
		s.B, s.T = B, T
	}
	if r := a.Scratch.Recompute; r != nil {
		r.B, r.T = B, T
	}
	return nil
}

// Bytes is the memory the activations hold: every buffer NewActs
// allocated, counted from their lengths, the scratch included.
func (a *Acts) Bytes() int64 { return a.SlotBytes() + a.Scratch.Bytes() }

// SlotBytes is Bytes without the scratch: what each further micro-batch
// in flight through the stage costs.
func (a *Acts) SlotBytes() int64 {
	n := 0
	add := func(bs ...[]float32) {
		for _, b := range bs {
			n += len(b)
		}
	}
	for _, r := range a.Resid {
		add(r)
	}
	add(a.DResid, a.HeadNorm)
	if h := a.Head; h != nil {
		add(h.Norm, h.Rstd, h.Logits, h.DNorm, h.Stats)
		if h.SP {
			add(h.NormFull)
		}
	}
	for _, b := range a.Blocks {
		n += b.len()
	}
	for _, g := range a.Grads {
		add(g.DY, g.DH, g.AttnNorm, g.MLPNorm)
	}
	return 4 * int64(n)
}

func (b *BlockActs) len() int {
	n := 0
	for _, x := range [][]float32{b.AttnIn, b.AttnRstd, b.Q, b.K, b.V, b.Att, b.LSE, b.H, b.MLPIn, b.MLPRstd, b.Gate, b.Up, b.Act} {
		n += len(x)
	}
	return n
}

// Bytes is the memory the scratch holds (with its recomputation buffers).
func (s *BlockScratch) Bytes() int64 {
	n := 0
	for _, b := range [][]float32{s.DAtt, s.DQ, s.DK, s.DV, s.DGate, s.DUp, s.DNorm, s.Full, s.NormGrad, s.KVGrad} {
		n += len(b)
	}
	if s.Recompute != nil {
		n += s.Recompute.len()
	}
	return 4 * int64(n)
}
