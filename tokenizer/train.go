package tokenizer

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// TrainConfig says what [Train] builds.
type TrainConfig struct {
	// VocabSize is the target vocabulary, special tokens included.
	VocabSize int
	// MinFrequency stops training when the most frequent pair occurs fewer
	// times (0 and 1 merge every pair that occurs).
	MinFrequency int64
	// SpecialTokens get ids 0, 1, … in order, before the alphabet.
	SpecialTokens []string
	// ByteAlphabet puts all 256 bytes in the vocabulary, seen or not (Hugging
	// Face's initial_alphabet = ByteLevel.alphabet()), so any input encodes.
	ByteAlphabet bool
	// MaxTokenLength caps merged tokens at this many bytes; 0: no cap.
	MaxTokenLength int
	// Pattern is the split regex ("": GPT-2's, as ByteLevel with use_regex).
	Pattern string
	// Progress, when set, is called now and then with the merges done.
	Progress func(TrainProgress)
}

// TrainProgress reports training progress.
type TrainProgress struct {
	Merges, Target int
	Elapsed        time.Duration
}

// Validate reports every problem in c at once.
func (c *TrainConfig) Validate() error {
	var probs []string
	if c.VocabSize < 1 {
		probs = append(probs, fmt.Sprintf("vocab size is %d, want ≥ 1", c.VocabSize))
	}
	if c.MinFrequency < 0 {
		probs = append(probs, fmt.Sprintf("min frequency is %d, want ≥ 0", c.MinFrequency))
	}
	if c.MaxTokenLength < 0 {
		probs = append(probs, fmt.Sprintf("max token length is %d, want ≥ 0 (0: no cap)", c.MaxTokenLength))
	}
	seen := map[string]bool{}
	for _, s := range c.SpecialTokens {
		if s == "" || seen[s] {
			probs = append(probs, fmt.Sprintf("special token %q is empty or repeated", s))
		}
		seen[s] = true
	}
	if c.Pattern != "" {
		if _, err := newSplitter(c.Pattern, "pattern"); err != nil {
			probs = append(probs, err.Error())
		}
	}
	if len(probs) > 0 {
		return fmt.Errorf("tokenizer: train config: %s", strings.Join(probs, "; "))
	}
	return nil
}

// Counter counts the pre-token pieces of training text. It is not safe for
// concurrent use: give each goroutine its own and Merge them.
type Counter struct {
	s      splitter
	counts map[string]int64
	idx    []int
}

// NewCounter returns a counter splitting with pattern ("": GPT-2's).
func NewCounter(pattern string) (*Counter, error) {
	if pattern == "" {
		pattern = PatternGPT2
	}
	s, err := newSplitter(pattern, "pattern")
	if err != nil {
		return nil, err
	}
	return &Counter{s: s, counts: map[string]int64{}}, nil
}

// Add counts the pieces of one sequence (a document, or with Hugging
// Face's train_from_files one line with its newline).
func (c *Counter) Add(text []byte) {
	c.idx = splitPieces(c.idx[:0], text, c.s, true)
	for i := 0; i < len(c.idx); i += 2 {
		c.counts[string(text[c.idx[i]:c.idx[i+1]])]++
	}
}

// SafeCut is [Tokenizer.SafeCut] for the counter's pattern: training text
// cut there counts the same pieces.
func (c *Counter) SafeCut(text []byte) int { return safeCut(c.s, text) }

// Merge adds o's counts to c.
func (c *Counter) Merge(o *Counter) {
	for w, n := range o.counts {
		c.counts[w] += n
	}
}

// Words is the number of distinct pieces counted.
func (c *Counter) Words() int { return len(c.counts) }

// trainWord is a distinct piece as symbol ids, with each symbol's length
// in bytes when a length cap applies.
type trainWord struct {
	syms []int32
	lens []int32
}

// trainMerge is a queued candidate pair, ordered as Hugging Face's
// BpeTrainer orders its heap: higher count first, then the smaller pair.
type trainMerge struct {
	pair  uint64
	count int64
	pos   []int32 // words that may hold the pair
}

func (a *trainMerge) before(b *trainMerge) bool {
	if a.count != b.count {
		return a.count > b.count
	}
	return a.pair < b.pair
}

// Train learns a byte-level BPE from counted pieces. It reproduces Hugging
// Face's BpeTrainer: special tokens first, then the alphabet in the order
// of the byte-level characters, then one token per merge; each step merges
// the pair of highest count, the smallest (left id, right id) among equal
// counts, with the trainer's own lazy queue so that its choices are the
// same in every case.
func Train(ctx context.Context, cfg TrainConfig, c *Counter) (*Tokenizer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	var idToWord [][]byte
	wordToID := map[string]int32{}
	addTok := func(b []byte) int32 {
		if id, ok := wordToID[string(b)]; ok {
			return id
		}
		id := int32(len(idToWord))
		idToWord = append(idToWord, b)
		wordToID[string(b)] = id
		return id
	}
	var added []hfAdded
	for _, s := range cfg.SpecialTokens {
		id := addTok([]byte(s))
		added = append(added, hfAdded{ID: id, Content: s, Special: true})
	}
	// The alphabet, sorted by byte-level character.
	var seenByte [256]bool
	if cfg.ByteAlphabet {
		for b := range seenByte {
			seenByte[b] = true
		}
	}
	words := make([]string, 0, len(c.counts))
	for w := range c.counts {
		words = append(words, w)
		for i := 0; i < len(w); i++ {
			seenByte[w[i]] = true
		}
	}
	sort.Strings(words)
	alpha := make([]int, 0, 256)
	for b, ok := range seenByte {
		if ok {
			alpha = append(alpha, b)
		}
	}
	sort.Slice(alpha, func(i, j int) bool { return byteRune[alpha[i]] < byteRune[alpha[j]] })
	var byteTok [256]int32
	for _, b := range alpha {
		byteTok[b] = addTok([]byte{byte(b)})
	}
	maxLen := cfg.MaxTokenLength
	tw := make([]trainWord, len(words))
	counts := make([]int64, len(words))
	for i, w := range words {
		counts[i] = c.counts[w]
		syms := make([]int32, len(w))
		for j := 0; j < len(w); j++ {
			syms[j] = byteTok[w[j]]
		}
		tw[i].syms = syms
		if maxLen > 0 {
			tw[i].lens = make([]int32, len(w))
			for j := range tw[i].lens {
				tw[i].lens[j] = 1
			}
		}
	}
	pairCounts := map[uint64]int64{}
	where := map[uint64][]int32{}
	for i, w := range tw {
		for j := 0; j+1 < len(w.syms); j++ {
			k := pairKey(w.syms[j], w.syms[j+1])
			pairCounts[k] += counts[i]
			if l := where[k]; len(l) == 0 || l[len(l)-1] != int32(i) {
				where[k] = append(l, int32(i))
			}
		}
	}
	var q mergeQueue
	flush := func() {
		for k, pos := range where {
			if n := pairCounts[k]; n > 0 {
				slices.Sort(pos)
				q.push(&trainMerge{pair: k, count: n, pos: slices.Compact(pos)})
			}
		}
		clear(where)
	}
	flush()
	var merges [][2]int32
	target := max(cfg.VocabSize-len(idToWord), 0)
	lastReport := time.Now()
	for len(idToWord) < cfg.VocabSize && q.len() > 0 {
		if len(merges)%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("tokenizer: training stopped after %d merges: %w", len(merges), err)
			}
			if cfg.Progress != nil && time.Since(lastReport) > 200*time.Millisecond {
				lastReport = time.Now()
				cfg.Progress(TrainProgress{Merges: len(merges), Target: target, Elapsed: time.Since(start)})
			}
		}
		top := q.pop()
		if n := pairCounts[top.pair]; top.count != n {
			top.count = n
			q.push(top)
			continue
		}
		if top.count < 1 || cfg.MinFrequency > top.count {
			break
		}
		a, b := int32(top.pair>>32), int32(uint32(top.pair))
		nt := append(append([]byte(nil), idToWord[a]...), idToWord[b]...)
		newID := addTok(nt)
		merges = append(merges, [2]int32{a, b})
		for _, wi := range top.pos {
			mergeWord(&tw[wi], a, b, newID, maxLen, func(k uint64, change int64) {
				pairCounts[k] += change * counts[wi]
				if change > 0 {
					if l := where[k]; len(l) == 0 || l[len(l)-1] != wi {
						where[k] = append(l, wi)
					}
				}
			})
		}
		flush()
	}
	if cfg.Progress != nil {
		cfg.Progress(TrainProgress{Merges: len(merges), Target: target, Elapsed: time.Since(start)})
	}
	vocab := make([][]byte, len(idToWord))
	copy(vocab, idToWord)
	js, err := hfWriter{pattern: patternForJSON(cfg.Pattern), vocab: vocab, merges: merges, added: added}.encode()
	if err != nil {
		return nil, err
	}
	return ParseJSON(js, "loom-bpe")
}

// mergeWord replaces every (a, b) in w by id, left to right, reporting the
// pair counts that change as Hugging Face's Word::merge does (a new pair
// that would exceed maxLen bytes is not counted).
func mergeWord(w *trainWord, a, b, id int32, maxLen int, change func(uint64, int64)) {
	syms, lens := w.syms, w.lens
	for i := 0; i < len(syms); i++ {
		if syms[i] != a || i+1 >= len(syms) || syms[i+1] != b {
			continue
		}
		var newLen int32
		if lens != nil {
			newLen = lens[i] + lens[i+1]
		}
		if i > 0 {
			change(pairKey(syms[i-1], a), -1)
			if lens == nil || int(lens[i-1]+newLen) < maxLen {
				change(pairKey(syms[i-1], id), 1)
			}
		}
		second := syms[i+1]
		syms[i] = id
		syms = append(syms[:i+1], syms[i+2:]...)
		if lens != nil {
			lens[i] = newLen
			lens = append(lens[:i+1], lens[i+2:]...)
		}
		if i+1 < len(syms) {
			change(pairKey(second, syms[i+1]), -1)
			if lens == nil || int(lens[i+1]+newLen) < maxLen {
				change(pairKey(id, syms[i+1]), 1)
			}
		}
	}
	w.syms, w.lens = syms, lens
}

// mergeQueue is a binary max-heap of candidate merges.
type mergeQueue struct{ h []*trainMerge }

func (q *mergeQueue) len() int { return len(q.h) }

func (q *mergeQueue) push(m *trainMerge) {
	q.h = append(q.h, m)
	for i := len(q.h) - 1; i > 0; {
		p := (i - 1) / 2
		if !q.h[i].before(q.h[p]) {
			break
		}
		q.h[i], q.h[p] = q.h[p], q.h[i]
		i = p
	}
}

func (q *mergeQueue) pop() *trainMerge {
	top := q.h[0]
	last := len(q.h) - 1
	q.h[0] = q.h[last]
	q.h[last] = nil
	q.h = q.h[:last]
	for i := 0; ; {
		l, r, s := 2*i+1, 2*i+2, i
		if l < len(q.h) && q.h[l].before(q.h[s]) {
			s = l
		}
		if r < len(q.h) && q.h[r].before(q.h[s]) {
			s = r
		}
		if s == i {
			break
		}
		q.h[i], q.h[s] = q.h[s], q.h[i]
		i = s
	}
	return top
}
