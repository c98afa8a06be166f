package model

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"

	"github.com/loomtrain/loom/tensor"
)

// ErrInput is the class of errors about token or target ids and batch shapes.
var ErrInput = errors.New("invalid model input")

// Model holds one LLaMA model's parameters and gradients, each in one flat
// buffer laid out by Layout, and runs its layers through a tensor.Kernels.
//
// The passes are exposed per layer group — Embed, Block, Head — so a pipeline
// stage can run just its blocks; ForwardBackward composes them for a whole
// model. Backward passes ACCUMULATE into Grads; call ZeroGrads once per
// optimizer step. A Model is not safe for concurrent use.
type Model struct {
	Config Config
	Layout *Layout
	Params []float32 // flat parameters, len Layout.Size
	Grads  []float32 // flat gradients, same layout

	k        tensor.Kernels
	cos, sin []float32 // RoPE tables (SeqLen, HeadDim/2)
	blocks   []BlockWeights
	gblocks  []BlockWeights
	head     HeadWeights
	ghead    HeadWeights
	embed    []float32
	gembed   []float32
	units    []Unit
}

// New allocates a model for cfg with zero parameters; call Init or load
// weights into Params.
func New(cfg Config, k tensor.Kernels) (*Model, error) {
	m, err := NewUnbound(cfg, k)
	if err != nil {
		return nil, fmt.Errorf("model.New: %w", err)
	}
	m.Params, m.Grads = make([]float32, m.Layout.Size), make([]float32, m.Layout.Size)
	for u, un := range m.Layout.Units() {
		m.BindParams(u, m.Params[un.Offset:un.End()])
		m.BindGrads(u, m.Grads[un.Offset:un.End()])
	}
	return m, nil
}

// NewUnbound returns a model for cfg without parameter or gradient storage:
// Params and Grads are nil and every unit (Layout.Units) must be bound with
// BindParams and BindGrads before a pass reads it. ZeRO uses it to point a
// unit's views at a working buffer that holds just that unit, gathered or
// about to be reduced, instead of one full-size buffer.
func NewUnbound(cfg Config, k tensor.Kernels) (*Model, error) {
	l, err := NewLayout(cfg)
	if err != nil {
		return nil, fmt.Errorf("model.NewUnbound: %w", err)
	}
	m := &Model{Config: cfg, Layout: l, k: k, units: l.Units()}
	m.cos, m.sin = tensor.RoPETables(cfg.SeqLen, cfg.HeadDim(), cfg.RopeTheta)
	m.blocks = make([]BlockWeights, cfg.NLayers)
	m.gblocks = make([]BlockWeights, cfg.NLayers)
	return m, nil
}

// BindParams points the parameter views of unit u (an index into
// Layout.Units) at buf: buf[i] is flat element Units()[u].Offset+i, and
// len(buf) must be at least the unit's Len. With tied embeddings, binding
// the embedding also rebinds the head's output projection.
func (m *Model) BindParams(u int, buf []float32) { m.bind(u, buf, m.blocks, &m.head, &m.embed) }

// BindGrads points the gradient views of unit u at buf, as BindParams does
// for parameters. Backward passes accumulate into the bound buffer.
func (m *Model) BindGrads(u int, buf []float32) { m.bind(u, buf, m.gblocks, &m.ghead, &m.gembed) }

func (m *Model) bind(u int, buf []float32, blocks []BlockWeights, head *HeadWeights, embed *[]float32) {
	un, l := m.units[u], m.Layout
	if len(buf) < un.Len {
		panic(fmt.Sprintf("model: binding unit %s of %d elements to a buffer of %d", un.Name, un.Len, len(buf)))
	}
	switch {
	case u == 0:
		*embed = l.sliceAt(buf, un.Offset, "model.embed_tokens.weight")
		if m.Config.TieEmbeddings {
			head.Out = *embed
		}
	case u == len(m.units)-1:
		head.Norm = l.sliceAt(buf, un.Offset, "model.norm.weight")
		if !m.Config.TieEmbeddings {
			head.Out = l.sliceAt(buf, un.Offset, "lm_head.weight")
		}
	default:
		blocks[un.Block] = l.blockAt(buf, un.Offset, un.Block)
	}
}

// Kernels returns the kernels the model runs on.
func (m *Model) Kernels() tensor.Kernels { return m.k }

// InitStd is the standard deviation of the normal initialization of weight
// matrices; o_proj and down_proj are further scaled by 1/sqrt(2·NLayers)
// (GPT-2's residual scaling) so the residual stream's variance does not grow
// with depth.
const InitStd = 0.02

// Init sets deterministic initial parameters: matrices ~ N(0, InitStd²)
// (residual projections scaled, see InitStd), norm weights = 1. Each view
// draws from its own PCG stream keyed by (seed, name), so any worker can
// initialize any view identically without generating the others.
func (m *Model) Init(seed uint64) { InitParams(m.Layout, seed, m.Params, 0) }

// InitParams initializes, as Model.Init does, every view of l that lies
// inside buf, which holds the flat elements [base, base+len(buf)). A view
// that only partly overlaps buf panics; units (Layout.Units) are always safe.
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
		for i := range p {
			p[i] = float32(rng.NormFloat64() * std)
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

// BlockActs are the activations one decoder block saves for its backward
// pass, for a batch of B sequences of T tokens (rows r = b·T + t). The input x
// of the block is not saved here; the caller keeps it and passes it again to
// BlockBackward.
type BlockActs struct {
	B, T     int
	AttnIn   []float32 // (B,T,d) input_layernorm(x)
	AttnRstd []float32 // (B,T)
	Q        []float32 // (B,T,NHeads,hd) after RoPE
	K        []float32 // (B,T,NKVHeads,hd) after RoPE
	V        []float32 // (B,T,NKVHeads,hd)
	Att      []float32 // (B,T,NHeads·hd) attention output before o_proj
	LSE      []float32 // (B,NHeads,T) log-sum-exp of scaled scores
	H        []float32 // (B,T,d) x + o_proj(Att)
	MLPIn    []float32 // (B,T,d) post_attention_layernorm(H)
	MLPRstd  []float32 // (B,T)
	Gate, Up []float32 // (B,T,ffn) projections before the activation
	Act      []float32 // (B,T,ffn) silu(Gate)·Up
}

// NewBlockActs allocates saved activations for one block at batch shape (B,T).
func NewBlockActs(cfg Config, B, T int) *BlockActs {
	n := B * T
	d, q, kv, ffn := cfg.Dim, cfg.qDim(), cfg.kvDim(), cfg.FFNHidden
	return &BlockActs{
		B: B, T: T,
		AttnIn: make([]float32, n*d), AttnRstd: make([]float32, n),
		Q: make([]float32, n*q), K: make([]float32, n*kv), V: make([]float32, n*kv),
		Att: make([]float32, n*q), LSE: make([]float32, n*cfg.NHeads),
		H: make([]float32, n*d), MLPIn: make([]float32, n*d), MLPRstd: make([]float32, n),
		Gate: make([]float32, n*ffn), Up: make([]float32, n*ffn), Act: make([]float32, n*ffn),
	}
}

// BlockScratch holds the temporaries of BlockBackward. One scratch can be
// shared by every block of a stage because a backward pass uses it only while
// it runs.
type BlockScratch struct {
	DAtt, DQ   []float32 // (B,T,NHeads·hd)
	DK, DV     []float32 // (B,T,NKVHeads·hd)
	DGate, DUp []float32 // (B,T,ffn)
	DNorm      []float32 // (B,T,d)
}

// NewBlockScratch allocates backward temporaries for batch shape up to B·T rows.
func NewBlockScratch(cfg Config, B, T int) *BlockScratch {
	n := B * T
	return &BlockScratch{
		DAtt: make([]float32, n*cfg.qDim()), DQ: make([]float32, n*cfg.qDim()),
		DK: make([]float32, n*cfg.kvDim()), DV: make([]float32, n*cfg.kvDim()),
		DGate: make([]float32, n*cfg.FFNHidden), DUp: make([]float32, n*cfg.FFNHidden),
		DNorm: make([]float32, n*cfg.Dim),
	}
}

// HeadActs are the activations saved by the head (final norm, lm_head, loss).
type HeadActs struct {
	B, T   int
	Norm   []float32 // (B,T,d) model.norm(x)
	Rstd   []float32 // (B,T)
	Logits []float32 // (B,T,V) logits; after HeadLossGrad, d(loss)/d(logits)
	DNorm  []float32 // (B,T,d) backward temporary
}

// NewHeadActs allocates head activations for batch shape (B,T).
func NewHeadActs(cfg Config, B, T int) *HeadActs {
	n := B * T
	return &HeadActs{
		B: B, T: T,
		Norm: make([]float32, n*cfg.Dim), Rstd: make([]float32, n),
		Logits: make([]float32, n*cfg.VocabSize), DNorm: make([]float32, n*cfg.Dim),
	}
}

// EmbedForward: x (B·T,d) = embed_tokens[tokens]. Tokens must be in range
// (see CheckTokens).
func (m *Model) EmbedForward(x []float32, tokens []int32) {
	d := m.Config.Dim
	for r, tok := range tokens {
		copy(x[r*d:(r+1)*d], m.embed[int(tok)*d:(int(tok)+1)*d])
	}
}

// EmbedBackward: grad(embed_tokens)[tokens[r]] += dx[r] for dx (B·T,d).
func (m *Model) EmbedBackward(dx []float32, tokens []int32) {
	d := m.Config.Dim
	for r, tok := range tokens {
		g := m.gembed[int(tok)*d : (int(tok)+1)*d]
		for j, v := range dx[r*d : (r+1)*d] {
			g[j] += v
		}
	}
}

// BlockForward runs decoder block layer: y (B,T,d) = x + attn(norm(x)), then
// y += mlp(norm(y)), saving what BlockBackward needs in s (shape s.B, s.T).
// y must not alias x: x is needed again by BlockBackward.
func (m *Model) BlockForward(layer int, y, x []float32, s *BlockActs) {
	c, k, w := m.Config, m.k, m.blocks[layer]
	n, d, qd, kvd, ffn := s.B*s.T, c.Dim, c.qDim(), c.kvDim(), c.FFNHidden
	eps := float32(c.NormEps)

	k.RMSNormForward(s.AttnIn, s.AttnRstd, x, w.AttnNorm, n, d, eps)
	k.Sgemm(false, true, n, qd, d, 1, s.AttnIn, d, w.Q, d, 0, s.Q, qd)
	k.Sgemm(false, true, n, kvd, d, 1, s.AttnIn, d, w.K, d, 0, s.K, kvd)
	k.Sgemm(false, true, n, kvd, d, 1, s.AttnIn, d, w.V, d, 0, s.V, kvd)
	k.RoPEForward(s.Q, m.cos, m.sin, s.B, s.T, c.NHeads, c.HeadDim())
	k.RoPEForward(s.K, m.cos, m.sin, s.B, s.T, c.NKVHeads, c.HeadDim())
	k.AttentionForward(s.Att, s.LSE, s.Q, s.K, s.V, s.B, s.T, c.NHeads, c.NKVHeads, c.HeadDim())
	copy(s.H[:n*d], x[:n*d])
	k.Sgemm(false, true, n, d, qd, 1, s.Att, qd, w.O, qd, 1, s.H, d)

	k.RMSNormForward(s.MLPIn, s.MLPRstd, s.H, w.MLPNorm, n, d, eps)
	k.Sgemm(false, true, n, ffn, d, 1, s.MLPIn, d, w.Gate, d, 0, s.Gate, ffn)
	k.Sgemm(false, true, n, ffn, d, 1, s.MLPIn, d, w.Up, d, 0, s.Up, ffn)
	k.SwiGLUForward(s.Act[:n*ffn], s.Gate, s.Up)
	copy(y[:n*d], s.H[:n*d])
	k.Sgemm(false, true, n, d, ffn, 1, s.Act, ffn, w.Down, ffn, 1, y, d)
}

// BlockBackward is the backward of BlockForward. dresid (B,T,d) holds
// d(loss)/dy on entry and d(loss)/dx on return (updated in place, the residual
// stream's gradient). x is the block input given to BlockForward. Parameter
// gradients accumulate into Grads.
func (m *Model) BlockBackward(layer int, dresid, x []float32, s *BlockActs, scr *BlockScratch) {
	c, k, w, g := m.Config, m.k, m.blocks[layer], m.gblocks[layer]
	n, d, qd, kvd, ffn := s.B*s.T, c.Dim, c.qDim(), c.kvDim(), c.FFNHidden

	// MLP: y = H + Act·Downᵀ.
	k.Sgemm(false, false, n, ffn, d, 1, dresid, d, w.Down, ffn, 0, scr.DGate, ffn) // dAct, kept in DGate
	k.Sgemm(true, false, d, ffn, n, 1, dresid, d, s.Act, ffn, 1, g.Down, ffn)
	k.SwiGLUBackward(scr.DGate[:n*ffn], scr.DUp[:n*ffn], scr.DGate[:n*ffn], s.Gate, s.Up)
	k.Sgemm(false, false, n, d, ffn, 1, scr.DGate, ffn, w.Gate, d, 0, scr.DNorm, d)
	k.Sgemm(false, false, n, d, ffn, 1, scr.DUp, ffn, w.Up, d, 1, scr.DNorm, d)
	k.Sgemm(true, false, ffn, d, n, 1, scr.DGate, ffn, s.MLPIn, d, 1, g.Gate, d)
	k.Sgemm(true, false, ffn, d, n, 1, scr.DUp, ffn, s.MLPIn, d, 1, g.Up, d)
	k.RMSNormBackward(dresid, g.MLPNorm, scr.DNorm, s.H, w.MLPNorm, s.MLPRstd, n, d) // dresid = dH

	// Attention: H = x + Att·Oᵀ.
	k.Sgemm(false, false, n, qd, d, 1, dresid, d, w.O, qd, 0, scr.DAtt, qd)
	k.Sgemm(true, false, d, qd, n, 1, dresid, d, s.Att, qd, 1, g.O, qd)
	k.AttentionBackward(scr.DQ, scr.DK, scr.DV, scr.DAtt, s.Att, s.LSE, s.Q, s.K, s.V, s.B, s.T, c.NHeads, c.NKVHeads, c.HeadDim())
	k.RoPEBackward(scr.DQ, m.cos, m.sin, s.B, s.T, c.NHeads, c.HeadDim())
	k.RoPEBackward(scr.DK, m.cos, m.sin, s.B, s.T, c.NKVHeads, c.HeadDim())
	k.Sgemm(false, false, n, d, qd, 1, scr.DQ, qd, w.Q, d, 0, scr.DNorm, d)
	k.Sgemm(false, false, n, d, kvd, 1, scr.DK, kvd, w.K, d, 1, scr.DNorm, d)
	k.Sgemm(false, false, n, d, kvd, 1, scr.DV, kvd, w.V, d, 1, scr.DNorm, d)
	k.Sgemm(true, false, qd, d, n, 1, scr.DQ, qd, s.AttnIn, d, 1, g.Q, d)
	k.Sgemm(true, false, kvd, d, n, 1, scr.DK, kvd, s.AttnIn, d, 1, g.K, d)
	k.Sgemm(true, false, kvd, d, n, 1, scr.DV, kvd, s.AttnIn, d, 1, g.V, d)
	k.RMSNormBackward(dresid, g.AttnNorm, scr.DNorm, x, w.AttnNorm, s.AttnRstd, n, d) // dresid = dx
}

// HeadForward: h.Logits (B,T,V) = lm_head(model.norm(x)) for x (B,T,d).
func (m *Model) HeadForward(h *HeadActs, x []float32) {
	c := m.Config
	n, d := h.B*h.T, c.Dim
	m.k.RMSNormForward(h.Norm, h.Rstd, x, m.head.Norm, n, d, float32(c.NormEps))
	m.k.Sgemm(false, true, n, c.VocabSize, d, 1, h.Norm, d, m.head.Out, d, 0, h.Logits, c.VocabSize)
}

// HeadLoss returns the mean cross-entropy of h.Logits against targets (B·T;
// negative targets are ignored) without touching the logits.
func (m *Model) HeadLoss(h *HeadActs, targets []int32) float64 {
	return m.k.CrossEntropy(nil, h.Logits, targets, h.B*h.T, m.Config.VocabSize, 1)
}

// HeadLossGrad returns the mean cross-entropy like HeadLoss and replaces
// h.Logits by gradScale·d(loss)/d(logits), ready for HeadBackward. With
// gradient accumulation over k micro-batches, gradScale = 1/k.
func (m *Model) HeadLossGrad(h *HeadActs, targets []int32, gradScale float32) float64 {
	return m.k.CrossEntropy(h.Logits, h.Logits, targets, h.B*h.T, m.Config.VocabSize, gradScale)
}

// HeadBackward writes dx (B,T,d) = d(loss)/dx from the logit gradient left in
// h.Logits by HeadLossGrad, and accumulates the norm and lm_head (or tied
// embedding) gradients. x is the head input given to HeadForward.
func (m *Model) HeadBackward(h *HeadActs, dx, x []float32) {
	c, k := m.Config, m.k
	n, d, V := h.B*h.T, c.Dim, c.VocabSize
	k.Sgemm(false, false, n, d, V, 1, h.Logits, V, m.head.Out, d, 0, h.DNorm, d)
	k.Sgemm(true, false, V, d, n, 1, h.Logits, V, h.Norm, d, 1, m.ghead.Out, d)
	clear(dx[:n*d])
	k.RMSNormBackward(dx, m.ghead.Norm, h.DNorm, x, m.head.Norm, h.Rstd, n, d)
}

// Acts is everything a whole-model pass needs for batches of up to B·T
// tokens, allocated once so steady-state steps do not allocate.
type Acts struct {
	B, T    int         // current batch shape (see SetShape)
	Resid   [][]float32 // NLayers+1 buffers (B,T,d): Resid[i] is the input of block i, Resid[NLayers] of the head
	Blocks  []*BlockActs
	Head    *HeadActs
	Scratch *BlockScratch
	DResid  []float32 // (B,T,d) residual-stream gradient
	rows    int       // capacity in rows (B·T at allocation)
	seqLen  int
}

// NewActs allocates activations for batch shape (B,T), T <= SeqLen.
func (m *Model) NewActs(B, T int) (*Acts, error) {
	c := m.Config
	if B < 1 || T < 1 || T > c.SeqLen {
		return nil, fmt.Errorf("model.NewActs: batch shape (%d,%d) with SeqLen %d: %w", B, T, c.SeqLen, ErrInput)
	}
	a := &Acts{B: B, T: T, rows: B * T, seqLen: c.SeqLen, Head: NewHeadActs(c, B, T), Scratch: NewBlockScratch(c, B, T), DResid: make([]float32, B*T*c.Dim)}
	resid := make([]float32, (c.NLayers+1)*B*T*c.Dim)
	for i := 0; i <= c.NLayers; i++ {
		a.Resid = append(a.Resid, resid[i*B*T*c.Dim:(i+1)*B*T*c.Dim])
	}
	for i := 0; i < c.NLayers; i++ {
		a.Blocks = append(a.Blocks, NewBlockActs(c, B, T))
	}
	return a, nil
}

// SetShape changes the batch shape used by the next passes to (B,T); B·T must
// not exceed the rows allocated by NewActs and T must not exceed SeqLen.
// Buffers are reused, so this is how sampling grows its context without
// allocating.
func (a *Acts) SetShape(B, T int) error {
	if B < 1 || T < 1 || T > a.seqLen || B*T > a.rows {
		return fmt.Errorf("model: batch shape (%d,%d) exceeds capacity %d rows or SeqLen %d: %w", B, T, a.rows, a.seqLen, ErrInput)
	}
	a.B, a.T = B, T
	a.Head.B, a.Head.T = B, T
	for _, s := range a.Blocks {
		s.B, s.T = B, T
	}
	return nil
}

// CheckTokens reports the first token id outside [0, VocabSize) and, for
// targets (which may be nil), the first one >= VocabSize (negative targets are
// ignored by the loss), and whether their length is B·T.
func (m *Model) CheckTokens(B, T int, tokens, targets []int32) error {
	if len(tokens) != B*T || (targets != nil && len(targets) != B*T) {
		return fmt.Errorf("model: got %d tokens and %d targets for batch shape (%d,%d): %w", len(tokens), len(targets), B, T, ErrInput)
	}
	V := int32(m.Config.VocabSize)
	for i, t := range tokens {
		if t < 0 || t >= V {
			return fmt.Errorf("model: token %d at position %d not in [0,%d): %w", t, i, V, ErrInput)
		}
	}
	for i, t := range targets {
		if t >= V {
			return fmt.Errorf("model: target %d at position %d not below VocabSize %d: %w", t, i, V, ErrInput)
		}
	}
	return nil
}

// forward runs the embedding and every block, leaving the head input in
// a.Resid[NLayers], then the head forward.
func (m *Model) forward(a *Acts, tokens []int32) {
	m.EmbedForward(a.Resid[0], tokens)
	for i := range m.Config.NLayers {
		m.BlockForward(i, a.Resid[i+1], a.Resid[i], a.Blocks[i])
	}
	m.HeadForward(a.Head, a.Resid[m.Config.NLayers])
}

// ForwardBackward runs one training micro-batch: tokens and targets are
// (a.B, a.T) row-major. It returns the mean loss and accumulates
// gradScale·d(loss)/d(params) into Grads.
func (m *Model) ForwardBackward(a *Acts, tokens, targets []int32, gradScale float32) (float64, error) {
	return m.ForwardBackwardNotify(a, tokens, targets, gradScale, nil)
}

// ForwardBackwardNotify is ForwardBackward that calls ready(lo, hi) as soon
// as the backward pass is done with the flat gradient range [lo, hi): the
// final norm and LM head first, then each block from the last to the first,
// then the embedding. The ranges are disjoint, contiguous and descending,
// and together cover Grads, so a data-parallel caller can start reducing a
// range while the backward pass computes the ones below it. With tied
// embeddings the head's gradient also flows into the embedding, which is
// reported last. ready may be nil.
func (m *Model) ForwardBackwardNotify(a *Acts, tokens, targets []int32, gradScale float32, ready func(lo, hi int)) (float64, error) {
	var h Hooks
	if ready != nil {
		h.AfterBackward = func(u int) { ready(m.units[u].Offset, m.units[u].End()) }
	}
	return m.ForwardBackwardHooks(a, tokens, targets, gradScale, h)
}

// Hooks are called around each unit's passes by ForwardBackwardHooks, with
// the unit's index in Layout.Units. The order is: the embedding, each block
// and the head forward; the loss; then the head, each block from the last
// to the first and the embedding backward. AfterBackward(u) means unit u's
// gradient is final for this micro-batch. ZeRO stage 3 gathers a unit's
// parameters in BeforeForward and BeforeBackward and releases them after;
// stages 2 and 3 bind a gradient buffer in BeforeBackward and reduce it in
// AfterBackward. With tied embeddings the head's passes also read the
// embedding's parameters and accumulate into its gradient, so the embedding
// must stay bound from its forward to its backward. Nil hooks are skipped.
type Hooks struct {
	BeforeForward, AfterForward, BeforeBackward, AfterBackward func(unit int)
}

func call(f func(int), u int) {
	if f != nil {
		f(u)
	}
}

// ForwardBackwardHooks is ForwardBackward with hooks around every unit's
// forward and backward pass (see Hooks).
func (m *Model) ForwardBackwardHooks(a *Acts, tokens, targets []int32, gradScale float32, h Hooks) (float64, error) {
	if err := m.CheckTokens(a.B, a.T, tokens, targets); err != nil {
		return 0, fmt.Errorf("model.ForwardBackward: %w", err)
	}
	L := m.Config.NLayers
	head := L + 1
	call(h.BeforeForward, 0)
	m.EmbedForward(a.Resid[0], tokens)
	call(h.AfterForward, 0)
	for i := range L {
		call(h.BeforeForward, 1+i)
		m.BlockForward(i, a.Resid[i+1], a.Resid[i], a.Blocks[i])
		call(h.AfterForward, 1+i)
	}
	call(h.BeforeForward, head)
	m.HeadForward(a.Head, a.Resid[L])
	call(h.AfterForward, head)
	loss := m.HeadLossGrad(a.Head, targets, gradScale)
	call(h.BeforeBackward, head)
	m.HeadBackward(a.Head, a.DResid, a.Resid[L])
	call(h.AfterBackward, head)
	for i := L - 1; i >= 0; i-- {
		call(h.BeforeBackward, 1+i)
		m.BlockBackward(i, a.DResid, a.Resid[i], a.Blocks[i], a.Scratch)
		call(h.AfterBackward, 1+i)
	}
	call(h.BeforeBackward, 0)
	m.EmbedBackward(a.DResid[:a.B*a.T*m.Config.Dim], tokens)
	call(h.AfterBackward, 0)
	return loss, nil
}

// Loss is the forward-only mean cross-entropy, for evaluation.
func (m *Model) Loss(a *Acts, tokens, targets []int32) (float64, error) {
	if err := m.CheckTokens(a.B, a.T, tokens, targets); err != nil {
		return 0, fmt.Errorf("model.Loss: %w", err)
	}
	m.forward(a, tokens)
	return m.HeadLoss(a.Head, targets), nil
}

// Logits runs the forward pass and returns the logits (a.B, a.T, VocabSize),
// a view into a that the next pass overwrites.
func (m *Model) Logits(a *Acts, tokens []int32) ([]float32, error) {
	if err := m.CheckTokens(a.B, a.T, tokens, nil); err != nil {
		return nil, fmt.Errorf("model.Logits: %w", err)
	}
	m.forward(a, tokens)
	return a.Head.Logits[:a.B*a.T*m.Config.VocabSize], nil
}
