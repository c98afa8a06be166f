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

// Replication of a view's chunk across the ranks of a tensor-parallel group.
const (
	Sharded      = ""   // every rank holds a different chunk
	ReplicatedTP = "tp" // every rank of the tensor-parallel group holds the same chunk (norm weights)
	ReplicatedKV = "kv" // the ranks sharing a kv head hold the same chunk (k and v when NKVHeads < TP)
	// ReplicatedPP marks the last pipeline stage's copy of a tied
	// embedding: the first stage holds (and owns) the same chunk.
	ReplicatedPP = "pp"
)

// View names one parameter tensor inside the flat buffer. Gradients and
// optimizer state use the same offsets in their own flat buffers.
//
// Under tensor parallelism a view is this rank's chunk of a global tensor:
// Shape is the local (row-major) shape, Start and Size say where in the
// global tensor of shape Global the chunk lies. Size is Shape except in the
// padded vocabulary rows of the embedding and LM head, which lie past the
// global tensor's end (their elements are zero and are never read from or
// written to a checkpoint). With one rank, Global = Size = Shape and Start
// is all zeros.
type View struct {
	Name   string // Hugging Face LlamaForCausalLM state-dict name
	Offset int    // first element in the flat buffer
	Shape  []int  // local row-major shape, HF convention ([out, in] for linear weights)
	TPAxis int    // TPRows, TPCols or TPNone
	Decay  bool   // weight decay applies (matrices yes, norm weights no)
	Block  int    // decoder block index, or -1 for embedding, final norm and lm_head

	Global []int // shape of the global tensor
	Start  []int // the chunk's first index in the global tensor, per dim
	Size   []int // the chunk's extent inside the global tensor, per dim (≤ Shape)
	// Replica is Sharded, ReplicatedTP or ReplicatedKV. Owner is false
	// on every copy of a replicated chunk but the first: that copy alone
	// is written to checkpoints and counted in the global gradient norm.
	Replica string
	Owner   bool
}

// Len is the number of elements of the view.
func (v View) Len() int { return prod(v.Shape) }

// End is Offset+Len.
func (v View) End() int { return v.Offset + v.Len() }

// GlobalLen is the number of elements of the global tensor.
func (v View) GlobalLen() int { return prod(v.Global) }

func prod(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// Split says which part of the model a layout is for: a tensor-parallel
// rank's chunks of the units a pipeline rank holds.
type Split struct {
	TP   int // ranks of the tensor-parallel group (1: the whole model)
	Rank int // this rank's index in it, in [0, TP)
	// Part is what a pipeline rank holds; nil: every unit (pp = 1).
	Part *Part
}

// Part is the share of a model's units one pipeline rank holds: the
// blocks of its stages (one range per virtual stage, ascending and
// disjoint), the embedding when it runs the first stage and the head when
// it runs the last. With tied embeddings a head without the embedding
// holds its own copy of the tied weight (unit "tied", ReplicatedPP, not the
// owner), whose gradient the trainer sums with the first stage's.
type Part struct {
	Blocks      []BlockRange
	Embed, Head bool
}

// BlockRange is the decoder blocks [First, End).
type BlockRange struct{ First, End int }

// Whole is the part that holds every unit of a model of nLayers blocks.
func Whole(nLayers int) Part {
	return Part{Blocks: []BlockRange{{0, nLayers}}, Embed: true, Head: true}
}

// Check reports why p is not a part of a model of nLayers blocks.
func (p Part) Check(nLayers int) error {
	prev := 0
	for i, r := range p.Blocks {
		if r.First < prev || r.End <= r.First || r.End > nLayers {
			return fmt.Errorf("model: part: block range %d [%d,%d) of %d blocks must be non-empty, ascending and disjoint: %w", i, r.First, r.End, nLayers, ErrInvalidConfig)
		}
		prev = r.End
	}
	if len(p.Blocks) == 0 && !p.Embed && !p.Head {
		return fmt.Errorf("model: part: holds no unit: %w", ErrInvalidConfig)
	}
	return nil
}

// Holds reports whether the part holds block i.
func (p Part) Holds(i int) bool {
	for _, r := range p.Blocks {
		if i >= r.First && i < r.End {
			return true
		}
	}
	return false
}

// Local is a layout's rank-local shape: what the passes run over.
type Local struct {
	TP, Rank    int
	HeadDim     int // explicit head size (Dim/NHeads)
	Heads       int // query heads held: NHeads/TP
	KVHeads     int // kv heads held: NKVHeads/TP, or 1 when NKVHeads < TP
	FFN         int // MLP hidden features held: FFNHidden/TP
	Vocab       int // vocabulary rows held: ⌈VocabSize/TP⌉ (the last rank's tail is padding)
	HeadStart   int // first global query head held
	KVHeadStart int // first global kv head held
	FFNStart    int // first global MLP hidden feature held
	VocabStart  int // first global vocabulary row held: Rank·Vocab
	// KVReplicas is how many ranks hold each kv head: TP/NKVHeads when
	// NKVHeads < TP, else 1.
	KVReplicas int
}

// QDim is the local width of the query projection, Heads·HeadDim.
func (l Local) QDim() int { return l.Heads * l.HeadDim }

// KVDim is the local width of the key and value projections, KVHeads·HeadDim.
func (l Local) KVDim() int { return l.KVHeads * l.HeadDim }

// VocabValid is how many of the rank's Vocab rows are real tokens (the
// rest are padding, masked out of the loss and of sampling).
func (l Local) VocabValid(globalVocab int) int {
	return max(0, min(l.Vocab, globalVocab-l.VocabStart))
}

// CheckSplit reports why cfg cannot be split over tp ranks: tp must divide
// NHeads and FFNHidden, and NKVHeads must be a multiple or a divisor of tp.
// Each problem names the Config field.
func CheckSplit(cfg Config, tp int) error {
	var errs []string
	if tp < 1 {
		return &FieldError{Field: "TP", Value: tp, Allowed: ">= 1"}
	}
	if cfg.NHeads%tp != 0 {
		errs = append(errs, (&FieldError{Field: "NHeads", Value: cfg.NHeads, Allowed: fmt.Sprintf("divisible by the tensor-parallel degree %d", tp)}).Error())
	}
	if cfg.NKVHeads%tp != 0 && tp%cfg.NKVHeads != 0 {
		errs = append(errs, (&FieldError{Field: "NKVHeads", Value: cfg.NKVHeads, Allowed: fmt.Sprintf("a multiple or a divisor of the tensor-parallel degree %d", tp)}).Error())
	}
	if cfg.FFNHidden%tp != 0 {
		errs = append(errs, (&FieldError{Field: "FFNHidden", Value: cfg.FFNHidden, Allowed: fmt.Sprintf("divisible by the tensor-parallel degree %d", tp)}).Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s: %w", strings.Join(errs, "; "), ErrInvalidConfig)
	}
	return nil
}

// Layout is the ordered list of parameter views of one rank. The order is
// the embedding, then each block in order (q, k, v, o, gate, up, down, then
// the two norms, as in HF state dicts), then the final norm and the untied
// lm_head, so the parameters of any contiguous block range — and of a pipeline
// stage holding the embedding or the head — form one contiguous range.
// A Layout is immutable and safe for concurrent use.
type Layout struct {
	Views []View
	Size  int // total elements
	cfg   Config
	local Local
	part  Part
	index map[string]int
	units []Unit
	// blockUnit[i] is the index in units of block i, or -1 when the
	// layout does not hold it.
	blockUnit []int
}

// NewLayout computes the layout of the whole model cfg (one rank), which
// must be valid.
func NewLayout(cfg Config) (*Layout, error) { return NewLocalLayout(cfg, Split{TP: 1}) }

// NewLocalLayout computes tensor-parallel rank s.Rank's layout of cfg
// (Megatron-LM's split): q, k and v column-parallel by heads, o_proj
// row-parallel; gate and up column-parallel, down row-parallel; the
// embedding and LM head each a contiguous vocabulary range, padded to
// ⌈V/TP⌉ rows per rank; norm weights replicated. When NKVHeads < TP each kv
// head is replicated on the TP/NKVHeads ranks whose query heads read it.
func NewLocalLayout(cfg Config, s Split) (*Layout, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("model layout: %w", err)
	}
	if err := CheckSplit(cfg, s.TP); err != nil {
		return nil, fmt.Errorf("model layout: %w", err)
	}
	if s.Rank < 0 || s.Rank >= s.TP {
		return nil, fmt.Errorf("model layout: tensor-parallel rank %d of %d: %w", s.Rank, s.TP, ErrInvalidConfig)
	}
	part := Whole(cfg.NLayers)
	if s.Part != nil {
		part = *s.Part
		part.Blocks = append([]BlockRange(nil), part.Blocks...)
		if err := part.Check(cfg.NLayers); err != nil {
			return nil, fmt.Errorf("model layout: %w", err)
		}
	}
	hd := cfg.HeadDim()
	lo := Local{TP: s.TP, Rank: s.Rank, HeadDim: hd, Heads: cfg.NHeads / s.TP, FFN: cfg.FFNHidden / s.TP,
		Vocab: (cfg.VocabSize + s.TP - 1) / s.TP, KVReplicas: 1}
	lo.HeadStart, lo.FFNStart, lo.VocabStart = s.Rank*lo.Heads, s.Rank*lo.FFN, s.Rank*lo.Vocab
	if cfg.NKVHeads >= s.TP {
		lo.KVHeads = cfg.NKVHeads / s.TP
		lo.KVHeadStart = s.Rank * lo.KVHeads
	} else {
		lo.KVHeads, lo.KVReplicas = 1, s.TP/cfg.NKVHeads
		lo.KVHeadStart = s.Rank / lo.KVReplicas
	}
	l := &Layout{cfg: cfg, local: lo, part: part, index: map[string]int{}, blockUnit: make([]int, cfg.NLayers)}
	for i := range l.blockUnit {
		l.blockUnit[i] = -1
	}
	d, V, ffn := cfg.Dim, cfg.VocabSize, cfg.FFNHidden
	q, kv := lo.QDim(), lo.KVDim()
	type chunk struct {
		global, start, size []int
	}
	rows := func(global []int, start, n int) chunk { // rows [start, start+n) of a matrix
		return chunk{global, []int{start, 0}, []int{max(0, min(n, global[0]-start)), global[1]}}
	}
	cols := func(global []int, start, n int) chunk { // columns [start, start+n)
		return chunk{global, []int{0, start}, []int{global[0], n}}
	}
	whole := func(global []int) chunk { return chunk{global, make([]int, len(global)), global} }
	add := func(name string, tp int, decay bool, block int, c chunk, replica string, owner bool, shape ...int) {
		v := View{Name: name, Offset: l.Size, Shape: shape, TPAxis: tp, Decay: decay, Block: block,
			Global: c.global, Start: c.start, Size: c.size, Replica: replica, Owner: owner}
		if s.TP == 1 && replica != ReplicatedPP {
			v.Replica, v.Owner = Sharded, true
		}
		l.index[name] = len(l.Views)
		l.Views = append(l.Views, v)
		l.Size += v.Len()
	}
	first := s.Rank == 0
	unit := func(name, kind string, block, start int) {
		l.units = append(l.units, Unit{Name: name, Kind: kind, Offset: start, Len: l.Size - start, Block: block})
	}
	embed := rows([]int{V, d}, lo.VocabStart, lo.Vocab)
	if part.Embed {
		add("model.embed_tokens.weight", TPRows, true, -1, embed, Sharded, true, lo.Vocab, d)
		unit(UnitEmbed, UnitEmbed, -1, 0)
	}
	kvRep, kvOwner := Sharded, true
	if lo.KVReplicas > 1 {
		kvRep, kvOwner = ReplicatedKV, s.Rank%lo.KVReplicas == 0
	}
	for i := 0; i < cfg.NLayers; i++ {
		if !part.Holds(i) {
			continue
		}
		start := l.Size
		p := fmt.Sprintf("model.layers.%d.", i)
		gq, gkv := []int{cfg.qDim(), d}, []int{cfg.kvDim(), d}
		add(p+"self_attn.q_proj.weight", TPRows, true, i, rows(gq, lo.HeadStart*hd, q), Sharded, true, q, d)
		add(p+"self_attn.k_proj.weight", TPRows, true, i, rows(gkv, lo.KVHeadStart*hd, kv), kvRep, kvOwner, kv, d)
		add(p+"self_attn.v_proj.weight", TPRows, true, i, rows(gkv, lo.KVHeadStart*hd, kv), kvRep, kvOwner, kv, d)
		add(p+"self_attn.o_proj.weight", TPCols, true, i, cols([]int{d, cfg.qDim()}, lo.HeadStart*hd, q), Sharded, true, d, q)
		add(p+"mlp.gate_proj.weight", TPRows, true, i, rows([]int{ffn, d}, lo.FFNStart, lo.FFN), Sharded, true, lo.FFN, d)
		add(p+"mlp.up_proj.weight", TPRows, true, i, rows([]int{ffn, d}, lo.FFNStart, lo.FFN), Sharded, true, lo.FFN, d)
		add(p+"mlp.down_proj.weight", TPCols, true, i, cols([]int{d, ffn}, lo.FFNStart, lo.FFN), Sharded, true, d, lo.FFN)
		add(p+"input_layernorm.weight", TPNone, false, i, whole([]int{d}), ReplicatedTP, first, d)
		add(p+"post_attention_layernorm.weight", TPNone, false, i, whole([]int{d}), ReplicatedTP, first, d)
		l.blockUnit[i] = len(l.units)
		unit(fmt.Sprintf("block.%d", i), UnitBlock, i, start)
	}
	if part.Head {
		start := l.Size
		add("model.norm.weight", TPNone, false, -1, whole([]int{d}), ReplicatedTP, first, d)
		if !cfg.TieEmbeddings {
			add("lm_head.weight", TPRows, true, -1, rows([]int{V, d}, lo.VocabStart, lo.Vocab), Sharded, true, lo.Vocab, d)
		}
		unit(UnitHead, UnitHead, -1, start)
		if cfg.TieEmbeddings && !part.Embed {
			// The last stage's own copy of the tied weight, a unit of its
			// own so that its ZeRO partition matches the first stage's
			// embedding unit element for element.
			start := l.Size
			add("model.embed_tokens.weight", TPRows, true, -1, embed, ReplicatedPP, false, lo.Vocab, d)
			unit(UnitTied, UnitTied, -1, start)
		}
	}
	if s.TP == 1 && s.Part == nil && l.Size != cfg.NumParams() {
		panic(fmt.Sprintf("model layout: size %d != Config.NumParams %d", l.Size, cfg.NumParams()))
	}
	return l, nil
}

// Config returns the (global) configuration the layout was built from.
func (l *Layout) Config() Config { return l.cfg }

// Local returns the rank-local shape.
func (l *Layout) Local() Local { return l.local }

// Lookup returns the view with the given HF name.
func (l *Layout) Lookup(name string) (View, bool) {
	i, ok := l.index[name]
	if !ok {
		return View{}, false
	}
	return l.Views[i], true
}

// Part returns the units the layout holds.
func (l *Layout) Part() Part { return l.part }

// BlockRange returns the flat range [start, end) holding the parameters of
// blocks first..last-1, which the layout must hold (first < last).
func (l *Layout) BlockRange(first, last int) (start, end int) {
	return l.units[l.blockUnit[first]].Offset, l.units[l.blockUnit[last-1]].End()
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
	Q, K, V, O        []float32 // [qDim,d], [kvDim,d], [kvDim,d], [d,qDim] (local widths)
	Gate, Up, Down    []float32 // [ffn,d], [ffn,d], [d,ffn] (local ffn)
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
	Out  []float32 // lm_head.weight [Vocab,d] (local rows), or model.embed_tokens.weight when tied
}

// Head returns the head's views into flat.
func (l *Layout) Head(flat []float32) HeadWeights {
	out := "lm_head.weight"
	if l.cfg.TieEmbeddings {
		out = "model.embed_tokens.weight"
	}
	return HeadWeights{Norm: l.Slice(flat, "model.norm.weight"), Out: l.Slice(flat, out)}
}

// Embedding returns the model.embed_tokens.weight view [Vocab,d] into flat.
func (l *Layout) Embedding(flat []float32) []float32 {
	return l.Slice(flat, "model.embed_tokens.weight")
}

// Unit kinds.
const (
	UnitEmbed = "embed" // model.embed_tokens.weight
	UnitBlock = "block" // one decoder block
	UnitHead  = "head"  // model.norm.weight and, untied, lm_head.weight
	UnitTied  = "tied"  // a last pipeline stage's copy of the tied embedding (its head's output projection)
)

// Unit is a contiguous range of the layout that one pass reads and whose
// gradient one backward pass finishes: the embedding, one decoder block,
// the head (the final norm and, untied, lm_head), or the last stage's copy
// of a tied embedding. Units tile the layout in order; ZeRO gathers
// parameters and reduces gradients unit by unit.
type Unit struct {
	Name   string // "embed", "block.N", "head" or "tied"
	Kind   string // UnitEmbed, UnitBlock, UnitHead or UnitTied
	Offset int    // first flat element
	Len    int    // elements
	Block  int    // block index, or -1
}

// End is Offset+Len.
func (u Unit) End() int { return u.Offset + u.Len }

// Units returns the units in layout order. For the whole model index 0 is
// the embedding, 1+i block i, NLayers+1 the head; a pipeline rank's
// layout lists only the units its part holds (EmbedUnit, BlockUnit,
// HeadUnit and TiedUnit find them).
func (l *Layout) Units() []Unit { return append([]Unit(nil), l.units...) }

// EmbedUnit is the index of the embedding unit, or -1.
func (l *Layout) EmbedUnit() int { return l.unitOf(UnitEmbed) }

// HeadUnit is the index of the head unit, or -1.
func (l *Layout) HeadUnit() int { return l.unitOf(UnitHead) }

// TiedUnit is the index of the tied-embedding copy, or -1.
func (l *Layout) TiedUnit() int { return l.unitOf(UnitTied) }

// BlockUnit is the index of block i's unit, or -1 when the layout does
// not hold it.
func (l *Layout) BlockUnit(i int) int {
	if i < 0 || i >= len(l.blockUnit) {
		return -1
	}
	return l.blockUnit[i]
}

func (l *Layout) unitOf(kind string) int {
	for i, u := range l.units {
		if u.Kind == kind {
			return i
		}
	}
	return -1
}

// GradUnits lists the units whose gradients unit u's backward pass writes:
// u itself, and for the head with tied embeddings the unit holding the
// tied weight (the embedding, or the last stage's copy).
func (l *Layout) GradUnits(u int) []int {
	if l.units[u].Kind != UnitHead || !l.cfg.TieEmbeddings {
		return []int{u}
	}
	if t := l.TiedUnit(); t >= 0 {
		return []int{u, t}
	}
	return []int{u, l.EmbedUnit()}
}

// String lists the views, one per line, for debugging and golden diffs:
// with one rank the flat offset, shape and attributes; split over ranks
// also the chunk of the global tensor and its replication.
func (l *Layout) String() string {
	var b strings.Builder
	for _, v := range l.Views {
		fmt.Fprintf(&b, "%-48s off=%-9d shape=%v tp=%d decay=%v block=%d", v.Name, v.Offset, v.Shape, v.TPAxis, v.Decay, v.Block)
		if l.local.TP > 1 {
			fmt.Fprintf(&b, " chunk=%s of %v", ChunkString(v.Start, v.Size), v.Global)
		}
		if v.Replica != Sharded {
			fmt.Fprintf(&b, " replica=%s owner=%v", v.Replica, v.Owner)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// ChunkString prints a chunk as [a:b, c:d] (half-open ranges per dim).
func ChunkString(start, size []int) string {
	parts := make([]string, len(start))
	for i := range start {
		parts[i] = fmt.Sprintf("%d:%d", start[i], start[i]+size[i])
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// Runs calls f for each contiguous run of the view's chunk, in order:
// elements [local, local+n) of the view (offsets relative to the view) are
// elements [global, global+n) of the row-major global tensor. Padding
// elements (past Size) are in no run.
func (v View) Runs(f func(local, global, n int)) {
	if len(v.Shape) == 1 {
		if v.Size[0] > 0 {
			f(0, v.Start[0], v.Size[0])
		}
		return
	}
	rows, cols, width := v.Size[0], v.Size[1], v.Global[1]
	if rows == 0 || cols == 0 {
		return
	}
	if cols == width && v.Shape[1] == width {
		f(0, v.Start[0]*width, rows*width)
		return
	}
	for i := range rows {
		f(i*v.Shape[1], (v.Start[0]+i)*width+v.Start[1], cols)
	}
}

// FromGlobal copies the view's chunk of a global tensor (row-major, all of
// it) into dst, the view's local elements; padding is cleared.
func (v View) FromGlobal(dst, global []float32) {
	clear(dst[:v.Len()])
	v.Runs(func(l, g, n int) { copy(dst[l:l+n], global[g:g+n]) })
}

// ToGlobal copies the view's local elements src into its chunk of a
// global tensor (row-major).
func (v View) ToGlobal(global, src []float32) {
	v.Runs(func(l, g, n int) { copy(global[g:g+n], src[l:l+n]) })
}
