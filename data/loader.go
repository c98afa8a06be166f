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

// Loader turns a token file into the windows of each training step. Which
// windows make up step s is a pure function of (seed, shuffle, s, global
// batch) and the file's length. A Loader caches permutations and is not
// safe for concurrent use; give each goroutine its own (they may share the
// File).
type Loader struct {
	f    *File
	cfg  LoaderConfig
	nwin int
	// Two cached epoch permutations, so that a step that straddles an epoch
	// boundary does not recompute either.
	perm  [2][]int32
	epoch [2]int // -1: slot empty
	evict int
}

// NewLoader returns a loader over f. The file must hold at least
// SeqLen+1 tokens.
func NewLoader(f *File, cfg LoaderConfig) (*Loader, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	nwin := NumWindows(f.Len(), cfg.SeqLen)
	if nwin < 1 {
		return nil, fmt.Errorf("data: %s holds %d tokens, too few for one window of seq_len %d (needs %d): use a larger corpus or a shorter seq_len", f.Path(), f.Len(), cfg.SeqLen, cfg.SeqLen+1)
	}
	if nwin > math.MaxInt32 {
		return nil, fmt.Errorf("data: %s holds %d windows of seq_len %d, more than the %d a loader indexes: use a longer seq_len or split the file", f.Path(), nwin, cfg.SeqLen, math.MaxInt32)
	}
	return &Loader{f: f, cfg: cfg, nwin: int(nwin), epoch: [2]int{-1, -1}}, nil
}

// File returns the token file the loader reads.
func (l *Loader) File() *File { return l.f }

// Config returns the loader's configuration.
func (l *Loader) Config() LoaderConfig { return l.cfg }

// NumWindows returns the number of windows in one epoch.
func (l *Loader) NumWindows() int { return l.nwin }

// Window returns the window that global sample index j trains on: position
// j mod NumWindows of epoch j / NumWindows. It panics if j < 0.
func (l *Loader) Window(j int) int {
	if j < 0 {
		panic(fmt.Sprintf("data: Loader.Window: negative sample index %d", j))
	}
	epoch, pos := j/l.nwin, j%l.nwin
	if !l.cfg.Shuffle {
		return pos
	}
	return int(l.permutation(epoch)[pos])
}

// Epoch returns the epoch that global sample index j belongs to.
func (l *Loader) Epoch(j int) int { return j / l.nwin }

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
	T := l.cfg.SeqLen
	if n := (hi - lo) * T; len(inputs) != n || len(targets) != n {
		return fmt.Errorf("data: FillStep: inputs and targets have lengths %d and %d, want (hi−lo)·seq_len = %d", len(inputs), len(targets), n)
	}
	first := step * globalBatch
	for k := lo; k < hi; k++ {
		o := (k - lo) * T
		if err := l.FillWindow(l.Window(first+k), inputs[o:o+T], targets[o:o+T]); err != nil {
			return err
		}
	}
	return nil
}

// FillWindow writes window w's inputs and targets, each exactly SeqLen
// long. Evaluation can walk windows 0 … NumWindows−1 with it directly.
func (l *Loader) FillWindow(w int, inputs, targets []int32) error {
	T := l.cfg.SeqLen
	if w < 0 || w >= l.nwin {
		return fmt.Errorf("data: window %d is outside [0, %d) of %s", w, l.nwin, l.f.Path())
	}
	if len(inputs) != T || len(targets) != T {
		return fmt.Errorf("data: FillWindow: inputs and targets have lengths %d and %d, want seq_len %d", len(inputs), len(targets), T)
	}
	base := int64(w) * int64(T)
	if err := l.f.ReadTokens(inputs, base); err != nil {
		return err
	}
	copy(targets, inputs[1:])
	return l.f.ReadTokens(targets[T-1:], base+int64(T))
}

// permutation returns epoch's cached permutation, computing it if needed.
func (l *Loader) permutation(epoch int) []int32 {
	for i := range l.epoch {
		if l.epoch[i] == epoch {
			return l.perm[i]
		}
	}
	i := l.evict
	l.evict = 1 - l.evict
	l.perm[i] = EpochPermutation(l.perm[i][:0], l.cfg.Seed, epoch, l.nwin)
	l.epoch[i] = epoch
	return l.perm[i]
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
