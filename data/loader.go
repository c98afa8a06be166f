package data

import (
	"fmt"
	"math"
	"math/bits"
	"strings"
)

// LoaderConfig says how a token file is cut into training windows and in
// what order they are visited.
type LoaderConfig struct {
	SeqLen  int    // T: tokens per window input (and target); window i starts at token i·T
	Shuffle bool   // visit each epoch's windows in a seeded permutation; false: in file order
	Seed    uint64 // seeds every epoch's permutation
}

// Validate reports every problem in c at once.
func (c LoaderConfig) Validate() error {
	var probs []string
	if c.SeqLen < 1 {
		probs = append(probs, fmt.Sprintf("seq_len is %d, want ≥ 1", c.SeqLen))
	}
	if len(probs) > 0 {
		return fmt.Errorf("data: loader config: %s", strings.Join(probs, "; "))
	}
	return nil
}

// NumWindows returns the number of windows of seqLen in ntokens tokens:
// (ntokens−1)/seqLen, since a window needs one more token than its length
// for the last target.
func NumWindows(ntokens int64, seqLen int) int64 {
	if ntokens < 1 || seqLen < 1 {
		return 0
	}
	return (ntokens - 1) / int64(seqLen)
}

// Source is one corpus a loader draws windows from: a token file, its
// weight in a blend, and the range of its windows in use.
type Source struct {
	File   *File
	Weight float64 // relative; any positive number for a single source
	// First and Count select the windows [First, First+Count) of the file;
	// Count 0 means all from First.
	First, Count int
	// Split, when set, takes only the training or only the validation part
	// of those windows (see [Split]).
	Split *Split
}

// Split divides a source's windows into training and validation parts
// spread over the whole file: the windows form periods of Period chunks
// of Chunk windows, and the last chunk of every period is held out (all
// but its first window, so that no training target is a validation
// input). Windows after the last whole period are all training.
type Split struct {
	Chunk, Period int
	Validation    bool // this source is the held-out part
}

// NewSplit returns the split that holds out about fraction of n windows:
// Period = round(1/fraction), Chunk = up to 64 windows, smaller when n is
// short, so that at least one whole period fits; ok is false when n is too
// short for even that.
func NewSplit(n int, fraction float64) (sp Split, ok bool) {
	p := max(2, int(math.Round(1/fraction)))
	c := min(64, n/(4*p))
	if c < 2 {
		c = n / p
	}
	if c < 2 {
		return Split{}, false
	}
	return Split{Chunk: c, Period: p}, true
}

// count returns the number of windows of the part among n.
func (sp Split) count(n int) int {
	l := sp.Chunk * sp.Period
	k := n / l
	if sp.Validation {
		return k * (sp.Chunk - 1)
	}
	return k*sp.Chunk*(sp.Period-1) + n - k*l
}

// window maps index i of the part to a window among n.
func (sp Split) window(i, n int) int {
	l := sp.Chunk * sp.Period
	if sp.Validation {
		q, r := i/(sp.Chunk-1), i%(sp.Chunk-1)
		return q*l + sp.Chunk*(sp.Period-1) + 1 + r
	}
	per := sp.Chunk * (sp.Period - 1)
	if k := n / l; i >= k*per {
		return k*l + i - k*per
	}
	return i/per*l + i%per
}

// BlendBlock is the number of consecutive global samples over which a
// blend meets its weights exactly: each block holds round(weight·4096)
// samples of each source (largest remainders), interleaved as evenly as
// Megatron's BlendedDataset does.
const BlendBlock = 4096

// Loader turns token files into the windows of each training step. Which
// windows make up step s is a pure function of (seed, shuffle, s, global
// batch) and the sources' lengths and weights, never of the data-parallel
// size: ranks take disjoint slices of the same global batch. A Loader
// caches permutations and is not safe for concurrent use; give each
// goroutine its own (they may share the Files).
type Loader struct {
	srcs []sourceState
	cfg  LoaderConfig
	// For a blend: per position in a block, the source and the index
	// among that source's positions in the block; and each source's
	// samples per block.
	blendSrc, blendRank []int32
	quota               []int
}

type sourceState struct {
	f           *File
	first, nwin int
	seed        uint64
	split       Split // Chunk 0: none
	span        int   // windows the split divides
	// Two cached epoch permutations, so that a step that straddles an
	// epoch boundary does not recompute either.
	perm  [2][]int32
	epoch [2]int // -1: slot empty
	evict int
}

// NewLoader returns a loader over all windows of f. The file must hold at
// least SeqLen+1 tokens.
func NewLoader(f *File, cfg LoaderConfig) (*Loader, error) {
	return NewBlendLoader([]Source{{File: f, Weight: 1}}, cfg)
}

// NewBlendLoader returns a loader mixing sources by weight. Global sample
// j is sample k of source d, where block j / BlendBlock holds a fixed
// number of each source's samples in a fixed interleave; within a source,
// samples walk its windows epoch by epoch, each epoch in its own
// permutation. One source behaves exactly as NewLoader always has.
func NewBlendLoader(srcs []Source, cfg LoaderConfig) (*Loader, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(srcs) == 0 {
		return nil, fmt.Errorf("data: a loader needs at least one source")
	}
	l := &Loader{cfg: cfg}
	var weights []float64
	for i, s := range srcs {
		if s.File == nil {
			return nil, fmt.Errorf("data: source %d has no file", i)
		}
		f := s.File
		nwin := NumWindows(f.Len(), cfg.SeqLen)
		if nwin < 1 {
			return nil, fmt.Errorf("data: %s holds %d tokens, too few for one window of seq_len %d (needs %d): use a larger corpus or a shorter seq_len", f.Path(), f.Len(), cfg.SeqLen, cfg.SeqLen+1)
		}
		if nwin > math.MaxInt32 {
			return nil, fmt.Errorf("data: %s holds %d windows of seq_len %d, more than the %d a loader indexes: use a longer seq_len or split the file", f.Path(), nwin, cfg.SeqLen, math.MaxInt32)
		}
		count := s.Count
		if count == 0 {
			count = int(nwin) - s.First
		}
		if s.First < 0 || count < 1 || int64(s.First+count) > nwin {
			return nil, fmt.Errorf("data: %s: windows [%d, %d) are not within its %d windows of seq_len %d", f.Path(), s.First, s.First+count, nwin, cfg.SeqLen)
		}
		if !(s.Weight > 0) || math.IsInf(s.Weight, 0) {
			return nil, fmt.Errorf("data: %s: weight %v must be a positive number", f.Path(), s.Weight)
		}
		seed := cfg.Seed
		if len(srcs) > 1 {
			seed = mix64(cfg.Seed ^ mix64(uint64(i)+0x7f4a7c159e3779b9))
		}
		st := sourceState{f: f, first: s.First, nwin: count, seed: seed, epoch: [2]int{-1, -1}}
		if s.Split != nil {
			if s.Split.Chunk < 2 || s.Split.Period < 2 {
				return nil, fmt.Errorf("data: %s: split chunk %d and period %d must be ≥ 2", f.Path(), s.Split.Chunk, s.Split.Period)
			}
			st.split, st.span = *s.Split, count
			if st.nwin = s.Split.count(count); st.nwin < 1 {
				return nil, fmt.Errorf("data: %s: its %d windows of seq_len %d are too few for the split %+v", f.Path(), count, cfg.SeqLen, *s.Split)
			}
		}
		l.srcs = append(l.srcs, st)
		weights = append(weights, s.Weight)
	}
	if len(srcs) > 1 {
		q, err := blendQuotas(weights, BlendBlock)
		if err != nil {
			return nil, err
		}
		l.quota = q
		l.blendSrc, l.blendRank = blendOrder(q)
	}
	return l, nil
}

// blendQuotas splits a block of n samples among the weights by largest
// remainder (ties to the earlier source).
func blendQuotas(w []float64, n int) ([]int, error) {
	var total float64
	for _, x := range w {
		total += x
	}
	q := make([]int, len(w))
	rem := make([]float64, len(w))
	left := n
	for i, x := range w {
		exact := x / total * float64(n)
		q[i] = int(exact)
		rem[i] = exact - float64(q[i])
		left -= q[i]
	}
	for ; left > 0; left-- {
		best := 0
		for i := range rem {
			if rem[i] > rem[best] {
				best = i
			}
		}
		q[best]++
		rem[best] = -1
	}
	for i, x := range q {
		if x == 0 {
			return nil, fmt.Errorf("data: source %d's weight %g is below 1/%d of the total %g: it would never be sampled", i, w[i], n, total)
		}
	}
	return q, nil
}

// blendOrder interleaves a block: position o goes to the source furthest
// behind its share, q_d·(o+1)/n − taken_d (Megatron's greedy rule), the
// earlier source on a tie, so every prefix of a block is close to the
// weights and each source gets exactly its quota.
func blendOrder(q []int) (src, rank []int32) {
	n := 0
	for _, x := range q {
		n += x
	}
	taken := make([]int, len(q))
	src, rank = make([]int32, n), make([]int32, n)
	for o := range n {
		best, bestErr := -1, 0
		for d, x := range q {
			if taken[d] >= x {
				continue
			}
			if e := x*(o+1) - taken[d]*n; best < 0 || e > bestErr {
				best, bestErr = d, e
			}
		}
		src[o], rank[o] = int32(best), int32(taken[best])
		taken[best]++
	}
	return src, rank
}

// File returns the first source's token file.
func (l *Loader) File() *File { return l.srcs[0].f }

// Sources returns the number of sources.
func (l *Loader) Sources() int { return len(l.srcs) }

// SourceFile returns source d's token file.
func (l *Loader) SourceFile(d int) *File { return l.srcs[d].f }

// VocabSize is the largest vocabulary among the sources.
func (l *Loader) VocabSize() int {
	v := 0
	for _, s := range l.srcs {
		v = max(v, s.f.VocabSize())
	}
	return v
}

// Config returns the loader's configuration.
func (l *Loader) Config() LoaderConfig { return l.cfg }

// NumWindows returns the number of windows in use, all sources together
// (one epoch of a single source).
func (l *Loader) NumWindows() int {
	n := 0
	for _, s := range l.srcs {
		n += s.nwin
	}
	return n
}

// Sample returns the source and the window of that source's file that
// global sample index j trains on. It panics if j < 0.
func (l *Loader) Sample(j int) (src, window int) {
	if j < 0 {
		panic(fmt.Sprintf("data: Loader.Sample: negative sample index %d", j))
	}
	k := j
	if l.quota != nil {
		b, o := j/BlendBlock, j%BlendBlock
		src = int(l.blendSrc[o])
		k = b*l.quota[src] + int(l.blendRank[o])
	}
	s := &l.srcs[src]
	epoch, pos := k/s.nwin, k%s.nwin
	if l.cfg.Shuffle {
		pos = int(s.permutation(epoch)[pos])
	}
	return src, s.windowAt(pos)
}

// windowAt is the file window of the source's index i.
func (s *sourceState) windowAt(i int) int {
	if s.split.Chunk == 0 {
		return s.first + i
	}
	return s.first + s.split.window(i, s.span)
}

// Window returns the window (of its source's file) that global sample
// index j trains on; see Sample. For a single source, j is position
// j mod NumWindows of epoch j / NumWindows. It panics if j < 0.
func (l *Loader) Window(j int) int {
	_, w := l.Sample(j)
	return w
}

// Epoch returns the epoch that global sample index j belongs to in its
// source.
func (l *Loader) Epoch(j int) int {
	if l.quota == nil {
		return j / l.srcs[0].nwin
	}
	b, o := j/BlendBlock, j%BlendBlock
	d := int(l.blendSrc[o])
	return (b*l.quota[d] + int(l.blendRank[o])) / l.srcs[d].nwin
}

// AppendStepWindows appends the globalBatch windows of step (global
// samples step·globalBatch … step·globalBatch+globalBatch−1) to dst. It
// panics on a negative step, a non-positive batch or an index overflow.
func (l *Loader) AppendStepWindows(dst []int, step, globalBatch int) []int {
	first := stepStart(step, globalBatch)
	for k := range globalBatch {
		dst = append(dst, l.Window(first+k))
	}
	return dst
}

// StepWindows returns the globalBatch windows of step; see AppendStepWindows.
func (l *Loader) StepWindows(step, globalBatch int) []int {
	return l.AppendStepWindows(make([]int, 0, globalBatch), step, globalBatch)
}

func stepStart(step, globalBatch int) int {
	if step < 0 || globalBatch < 1 || step > (math.MaxInt-globalBatch)/globalBatch {
		panic(fmt.Sprintf("data: step %d with global batch %d: want step ≥ 0, batch ≥ 1 and step·batch to fit an int", step, globalBatch))
	}
	return step * globalBatch
}

// FillStep writes windows [lo, hi) of step's globalBatch windows into
// inputs and targets, each exactly (hi−lo)·SeqLen long, window by window:
// inputs holds tokens [w·T, w·T+T) and targets [w·T+1, w·T+T+1). Data-
// parallel ranks pass disjoint [lo, hi); micro-batches are sub-ranges. It
// allocates nothing once the step's epoch permutations are cached.
func (l *Loader) FillStep(step, globalBatch, lo, hi int, inputs, targets []int32) error {
	if step < 0 || globalBatch < 1 || step > (math.MaxInt-globalBatch)/globalBatch {
		return fmt.Errorf("data: FillStep: step %d with global batch %d: want step ≥ 0, batch ≥ 1 and step·batch to fit an int", step, globalBatch)
	}
	if lo < 0 || lo > hi || hi > globalBatch {
		return fmt.Errorf("data: FillStep: window range [%d, %d) is not within the global batch [0, %d)", lo, hi, globalBatch)
	}
	return l.FillSamples(step*globalBatch+lo, hi-lo, inputs, targets)
}

// FillSamples writes global samples [first, first+n) into inputs and
// targets, each exactly n·SeqLen long.
func (l *Loader) FillSamples(first, n int, inputs, targets []int32) error {
	T := l.cfg.SeqLen
	if first < 0 || n < 0 || first > math.MaxInt-n {
		return fmt.Errorf("data: FillSamples: samples [%d, %d+%d) out of range", first, first, n)
	}
	if len(inputs) != n*T || len(targets) != n*T {
		return fmt.Errorf("data: FillStep: inputs and targets have lengths %d and %d, want (hi−lo)·seq_len = %d", len(inputs), len(targets), n*T)
	}
	for k := range n {
		o := k * T
		src, w := l.Sample(first + k)
		if err := l.srcs[src].fill(w, T, inputs[o:o+T], targets[o:o+T]); err != nil {
			return err
		}
	}
	return nil
}

// FillWindow writes window w (of the first source's file) into inputs and
// targets, each exactly SeqLen long. Evaluation can walk windows 0 …
// NumWindows−1 of a single source with it directly.
func (l *Loader) FillWindow(w int, inputs, targets []int32) error {
	T := l.cfg.SeqLen
	s := &l.srcs[0]
	if w < s.first || w >= s.first+s.nwin {
		return fmt.Errorf("data: window %d is outside [%d, %d) of %s", w, s.first, s.first+s.nwin, s.f.Path())
	}
	if len(inputs) != T || len(targets) != T {
		return fmt.Errorf("data: FillWindow: inputs and targets have lengths %d and %d, want seq_len %d", len(inputs), len(targets), T)
	}
	return s.fill(w, T, inputs, targets)
}

func (s *sourceState) fill(w, T int, inputs, targets []int32) error {
	base := int64(w) * int64(T)
	if err := s.f.ReadTokens(inputs, base); err != nil {
		return err
	}
	copy(targets, inputs[1:])
	return s.f.ReadTokens(targets[T-1:], base+int64(T))
}

// permutation returns epoch's cached permutation, computing it if needed.
func (s *sourceState) permutation(epoch int) []int32 {
	for i := range s.epoch {
		if s.epoch[i] == epoch {
			return s.perm[i]
		}
	}
	i := s.evict
	s.evict = 1 - s.evict
	s.perm[i] = EpochPermutation(s.perm[i][:0], s.seed, epoch, s.nwin)
	s.epoch[i] = epoch
	return s.perm[i]
}

// EpochPermutation appends to dst a permutation of 0 … n−1 that depends
// only on (seed, epoch, n): a Fisher–Yates shuffle driven by SplitMix64
// with unbiased bounded draws, fixed here so it never changes with the Go
// version. n must be at most math.MaxInt32.
func EpochPermutation(dst []int32, seed uint64, epoch, n int) []int32 {
	base := len(dst)
	for i := range n {
		dst = append(dst, int32(i))
	}
	p := dst[base:]
	r := splitMix64{state: mix64(seed ^ mix64(uint64(epoch)+0x632be59bd9b4e019))}
	for i := n - 1; i > 0; i-- {
		j := r.below(uint64(i) + 1)
		p[i], p[j] = p[j], p[i]
	}
	return dst
}

// splitMix64 is Steele, Lea and Flood's SplitMix64 generator.
type splitMix64 struct{ state uint64 }

func (r *splitMix64) next() uint64 {
	r.state += 0x9e3779b97f4a7c15
	return mix64(r.state)
}

// mix64 is SplitMix64's finalizer, a bijection on uint64.
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// below returns a uniform value in [0, n) by Lemire's multiply-and-reject.
func (r *splitMix64) below(n uint64) uint64 {
	hi, lo := bits.Mul64(r.next(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(r.next(), n)
		}
	}
	return hi
}
