package model

import (
	"fmt"
	"strings"
)

// TP axis values of View.TPAxis.
const (
	TPNone = -1 // replicated under tensor parallelism (norm weights)
	TPRows = 0  // split along dim 0, output features: column-parallel (q, k, v, gate, up, embed, lm_head)
	TPCols = 1  // split along dim 1, input features: row-parallel (o, down)
)

// View names one parameter tensor inside the flat buffer. Gradients and
// optimizer state use the same offsets in their own flat buffers.
type View struct {
	Name   string // Hugging Face LlamaForCausalLM state-dict name
	Offset int    // first element in the flat buffer
	Shape  []int  // row-major shape, HF convention ([out, in] for linear weights)
	TPAxis int    // TPRows, TPCols or TPNone
	Decay  bool   // weight decay applies (matrices yes, norm weights no)
	Block  int    // decoder block index, or -1 for embedding, final norm and lm_head
}

// Len is the number of elements of the view.
func (v View) Len() int {
	n := 1
	for _, s := range v.Shape {
		n *= s
	}
	return n
}

// End is Offset+Len.
func (v View) End() int { return v.Offset + v.Len() }

// Layout is the ordered list of parameter views of a Config. The order is the
// embedding, then each block in order (q, k, v, o, gate, up, down, then
// the two norms, as in HF state dicts), then the final norm and the untied
// lm_head, so the parameters of any contiguous block range — and of a pipeline
// stage holding the embedding or the head — form one contiguous range.
// A Layout is immutable and safe for concurrent use.
type Layout struct {
	Views []View
	Size  int // total elements
	cfg   Config
	index map[string]int
	// blockStart[i] is the offset of block i; blockStart[NLayers] is the offset of model.norm.weight.
	blockStart []int
}

// NewLayout computes the layout of cfg, which must be valid.
func NewLayout(cfg Config) (*Layout, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("model layout: %w", err)
	}
	l := &Layout{cfg: cfg, index: map[string]int{}}
	d, V, ffn := cfg.Dim, cfg.VocabSize, cfg.FFNHidden
	add := func(name string, tp int, decay bool, block int, shape ...int) {
		v := View{Name: name, Offset: l.Size, Shape: shape, TPAxis: tp, Decay: decay, Block: block}
		l.index[name] = len(l.Views)
		l.Views = append(l.Views, v)
		l.Size += v.Len()
	}
	add("model.embed_tokens.weight", TPRows, true, -1, V, d)
	for i := 0; i < cfg.NLayers; i++ {
		l.blockStart = append(l.blockStart, l.Size)
		p := fmt.Sprintf("model.layers.%d.", i)
		add(p+"self_attn.q_proj.weight", TPRows, true, i, cfg.qDim(), d)
		add(p+"self_attn.k_proj.weight", TPRows, true, i, cfg.kvDim(), d)
		add(p+"self_attn.v_proj.weight", TPRows, true, i, cfg.kvDim(), d)
		add(p+"self_attn.o_proj.weight", TPCols, true, i, d, cfg.qDim())
		add(p+"mlp.gate_proj.weight", TPRows, true, i, ffn, d)
		add(p+"mlp.up_proj.weight", TPRows, true, i, ffn, d)
		add(p+"mlp.down_proj.weight", TPCols, true, i, d, ffn)
		add(p+"input_layernorm.weight", TPNone, false, i, d)
		add(p+"post_attention_layernorm.weight", TPNone, false, i, d)
	}
	l.blockStart = append(l.blockStart, l.Size)
	add("model.norm.weight", TPNone, false, -1, d)
	if !cfg.TieEmbeddings {
		add("lm_head.weight", TPRows, true, -1, V, d)
	}
	if l.Size != cfg.NumParams() {
		panic(fmt.Sprintf("model layout: size %d != Config.NumParams %d", l.Size, cfg.NumParams()))
	}
	return l, nil
}

// Config returns the configuration the layout was built from.
func (l *Layout) Config() Config { return l.cfg }

// Lookup returns the view with the given HF name.
func (l *Layout) Lookup(name string) (View, bool) {
	i, ok := l.index[name]
	if !ok {
		return View{}, false
	}
	return l.Views[i], true
}

// BlockRange returns the flat range [start, end) holding the parameters of
// blocks first..last-1 (0 <= first <= last <= NLayers).
func (l *Layout) BlockRange(first, last int) (start, end int) {
	return l.blockStart[first], l.blockStart[last]
}

// Slice returns the elements of view name in flat (params, grads or any
// buffer with the same layout). It panics on an unknown name: names are
// compile-time constants of this package.
func (l *Layout) Slice(flat []float32, name string) []float32 {
	v, ok := l.Lookup(name)
	if !ok {
		panic("model: no parameter " + name)
	}
	return flat[v.Offset:v.End()]
}

// BlockWeights groups the views of one decoder block in a flat buffer.
type BlockWeights struct {
	Q, K, V, O        []float32 // [qDim,d], [kvDim,d], [kvDim,d], [d,qDim]
	Gate, Up, Down    []float32 // [ffn,d], [ffn,d], [d,ffn]
	AttnNorm, MLPNorm []float32 // input_layernorm, post_attention_layernorm [d]
}

// Block returns block i's views into flat.
func (l *Layout) Block(flat []float32, i int) BlockWeights { return l.blockAt(flat, 0, i) }

// blockAt returns block i's views into buf, which holds the flat elements
// starting at base.
func (l *Layout) blockAt(buf []float32, base, i int) BlockWeights {
	p := fmt.Sprintf("model.layers.%d.", i)
	at := func(name string) []float32 { return l.sliceAt(buf, base, name) }
	return BlockWeights{
		Q:        at(p + "self_attn.q_proj.weight"),
		K:        at(p + "self_attn.k_proj.weight"),
		V:        at(p + "self_attn.v_proj.weight"),
		O:        at(p + "self_attn.o_proj.weight"),
		Gate:     at(p + "mlp.gate_proj.weight"),
		Up:       at(p + "mlp.up_proj.weight"),
		Down:     at(p + "mlp.down_proj.weight"),
		AttnNorm: at(p + "input_layernorm.weight"),
		MLPNorm:  at(p + "post_attention_layernorm.weight"),
	}
}

// sliceAt is Slice for a buffer holding the flat elements from base on.
func (l *Layout) sliceAt(buf []float32, base int, name string) []float32 {
	v, ok := l.Lookup(name)
	if !ok {
		panic("model: no parameter " + name)
	}
	return buf[v.Offset-base : v.End()-base]
}

// HeadWeights groups the final norm and the output projection.
type HeadWeights struct {
	Norm []float32 // model.norm.weight [d]
	Out  []float32 // lm_head.weight [V,d], or model.embed_tokens.weight when tied
}

// Head returns the head's views into flat.
func (l *Layout) Head(flat []float32) HeadWeights {
	out := "lm_head.weight"
	if l.cfg.TieEmbeddings {
		out = "model.embed_tokens.weight"
	}
	return HeadWeights{Norm: l.Slice(flat, "model.norm.weight"), Out: l.Slice(flat, out)}
}

// Embedding returns the model.embed_tokens.weight view [V,d] into flat.
func (l *Layout) Embedding(flat []float32) []float32 {
	return l.Slice(flat, "model.embed_tokens.weight")
}

// Unit is a contiguous range of the layout that one pass reads and whose
// gradient one backward pass finishes: the embedding, one decoder block, or
// the head (the final norm and, untied, lm_head). Units tile the layout in
// order; ZeRO gathers parameters and reduces gradients unit by unit.
type Unit struct {
	Name   string // "embed", "block.N" or "head"
	Offset int    // first flat element
	Len    int    // elements
	Block  int    // block index, or -1
}

// End is Offset+Len.
func (u Unit) End() int { return u.Offset + u.Len }

// Units returns the units in layout order: index 0 is the embedding, 1+i
// block i, NLayers+1 the head.
func (l *Layout) Units() []Unit {
	L := l.cfg.NLayers
	us := []Unit{{Name: "embed", Offset: 0, Len: l.blockStart[0], Block: -1}}
	for i := range L {
		us = append(us, Unit{Name: fmt.Sprintf("block.%d", i), Offset: l.blockStart[i], Len: l.blockStart[i+1] - l.blockStart[i], Block: i})
	}
	return append(us, Unit{Name: "head", Offset: l.blockStart[L], Len: l.Size - l.blockStart[L], Block: -1})
}

// String lists the views, one per line, for debugging and golden diffs.
func (l *Layout) String() string {
	var b strings.Builder
	for _, v := range l.Views {
		fmt.Fprintf(&b, "%-48s off=%-9d shape=%v tp=%d decay=%v block=%d\n", v.Name, v.Offset, v.Shape, v.TPAxis, v.Decay, v.Block)
	}
	return b.String()
}
