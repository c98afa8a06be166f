package tokenizer

import (
	"fmt"
	"math"
	"unicode/utf8"
)

// noRank marks an adjacent pair that has no merge.
const noRank = math.MaxInt32

// merge is what a pair of adjacent symbols becomes: the pair with the
// lowest rank merges first.
type merge struct {
	rank int32
	id   int32
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// bpeModel is the BPE model of a tokenizer: its vocabulary, merges and how
// a pre-token piece becomes initial symbols.
type bpeModel struct {
	// vocab maps a token to its id: raw bytes for a byte-level model,
	// the token text for a character-level one.
	vocab  map[string]int32
	merges map[uint64]merge
	// byteLevel models start from one symbol per byte (byteID); the others
	// from one symbol per character, falling back to the <0xXX> tokens
	// (byteFallbackID) when byteFallback is set, then to unk.
	byteLevel      bool
	byteID         [256]int32
	byteFallback   bool
	byteFallbackID [256]int32
	unk            int32 // -1: none
	fuseUnk        bool
	// wholeFirst: a piece that is itself a token is that token (Hugging
	// Face's ignore_merges; always so for tiktoken).
	wholeFirst bool
}

// longPiece is the symbol count above which a piece merges with a heap
// instead of rescanning its pairs after every merge.
const longPiece = 96

// encState is per-goroutine scratch for encoding: a piece cache and the
// merge buffers. It is never shared between goroutines.
type encState struct {
	cache  map[string][]int32
	arena  []int32
	syms   []int32
	prank  []int32
	pid    []int32
	heap   []heapEntry
	next   []int32
	prev   []int32
	pieces []int
	norm   []byte
}

const (
	maxCacheEntries = 1 << 15
	maxCachedPiece  = 64 // bytes
)

func newEncState() *encState {
	return &encState{cache: make(map[string][]int32, 1024)}
}

// encodePiece appends the ids of one pre-token piece.
func (m *bpeModel) encodePiece(st *encState, dst []int32, piece []byte) []int32 {
	if len(piece) == 0 {
		return dst
	}
	if m.wholeFirst {
		if id, ok := m.vocab[string(piece)]; ok {
			return append(dst, id)
		}
	}
	cacheable := len(piece) <= maxCachedPiece
	if cacheable {
		if ids, ok := st.cache[string(piece)]; ok {
			return append(dst, ids...)
		}
	}
	syms := m.initialSymbols(st.syms[:0], piece)
	if len(syms) > longPiece {
		syms = m.mergeHeap(st, syms)
	} else {
		syms = m.mergeScan(st, syms)
	}
	st.syms = syms
	if cacheable {
		if len(st.cache) >= maxCacheEntries {
			clear(st.cache)
			st.arena = st.arena[:0]
		}
		if cap(st.arena)-len(st.arena) < len(syms) {
			st.arena = make([]int32, 0, max(1<<14, len(syms)))
		}
		n := len(st.arena)
		st.arena = append(st.arena, syms...)
		st.cache[string(piece)] = st.arena[n:len(st.arena):len(st.arena)]
	}
	return append(dst, syms...)
}

// initialSymbols appends a piece's starting symbols.
func (m *bpeModel) initialSymbols(syms []int32, piece []byte) []int32 {
	if m.byteLevel {
		for _, b := range piece {
			if id := m.byteID[b]; id >= 0 {
				syms = append(syms, id)
			} else if m.unk >= 0 {
				if !m.fuseUnk || len(syms) == 0 || syms[len(syms)-1] != m.unk {
					syms = append(syms, m.unk)
				}
			}
		}
		return syms
	}
	pendingUnk := false
	for i := 0; i < len(piece); {
		_, w := utf8.DecodeRune(piece[i:])
		ch := piece[i : i+w]
		i += w
		if id, ok := m.vocab[string(ch)]; ok {
			if pendingUnk {
				syms = append(syms, m.unk)
				pendingUnk = false
			}
			syms = append(syms, id)
			continue
		}
		if m.byteFallback {
			all := true
			for _, b := range ch {
				if m.byteFallbackID[b] < 0 {
					all = false
				}
			}
			if all {
				// Hugging Face adds the byte tokens without flushing a
				// pending unknown first.
				for _, b := range ch {
					syms = append(syms, m.byteFallbackID[b])
				}
				continue
			}
		}
		if m.unk >= 0 {
			if pendingUnk && !m.fuseUnk {
				syms = append(syms, m.unk)
			}
			pendingUnk = true
		}
	}
	if pendingUnk {
		syms = append(syms, m.unk)
	}
	return syms
}

func (m *bpeModel) pair(a, b int32) merge {
	if mg, ok := m.merges[pairKey(a, b)]; ok {
		return mg
	}
	return merge{rank: noRank, id: -1}
}

// mergeScan merges syms in place: the adjacent pair of lowest rank first,
// the leftmost of equal ranks, until no pair has a merge.
func (m *bpeModel) mergeScan(st *encState, syms []int32) []int32 {
	if len(syms) < 2 {
		return syms
	}
	n := len(syms) - 1
	prank, pid := st.prank[:0], st.pid[:0]
	for i := range n {
		mg := m.pair(syms[i], syms[i+1])
		prank = append(prank, mg.rank)
		pid = append(pid, mg.id)
	}
	for {
		best, bi := int32(noRank), -1
		for i, r := range prank {
			if r < best {
				best, bi = r, i
			}
		}
		if bi < 0 {
			break
		}
		syms[bi] = pid[bi]
		copy(syms[bi+1:], syms[bi+2:])
		syms = syms[:len(syms)-1]
		copy(prank[bi:], prank[bi+1:])
		copy(pid[bi:], pid[bi+1:])
		prank, pid = prank[:len(prank)-1], pid[:len(pid)-1]
		if bi > 0 {
			mg := m.pair(syms[bi-1], syms[bi])
			prank[bi-1], pid[bi-1] = mg.rank, mg.id
		}
		if bi < len(prank) {
			mg := m.pair(syms[bi], syms[bi+1])
			prank[bi], pid[bi] = mg.rank, mg.id
		}
	}
	st.prank, st.pid = prank, pid
	return syms
}

// heapEntry is a candidate merge of the symbol at pos with its right
// neighbour, ordered by (rank, pos) as Hugging Face's Word::merge_all.
type heapEntry struct {
	rank, pos, id int32
}

func (a heapEntry) less(b heapEntry) bool {
	return a.rank < b.rank || a.rank == b.rank && a.pos < b.pos
}

// mergeHeap is mergeScan for long pieces: a priority queue of candidate
// merges over a linked list of symbols, stale entries skipped, so a piece
// of n symbols merges in O(n log n).
func (m *bpeModel) mergeHeap(st *encState, syms []int32) []int32 {
	n := len(syms)
	next, prev := st.next[:0], st.prev[:0]
	for i := range n {
		next = append(next, int32(i+1))
		prev = append(prev, int32(i-1))
	}
	next[n-1] = -1
	h := st.heap[:0]
	push := func(e heapEntry) {
		h = append(h, e)
		for i := len(h) - 1; i > 0; {
			p := (i - 1) / 2
			if !h[i].less(h[p]) {
				break
			}
			h[i], h[p] = h[p], h[i]
			i = p
		}
	}
	pop := func() heapEntry {
		top := h[0]
		last := len(h) - 1
		h[0] = h[last]
		h = h[:last]
		for i := 0; ; {
			l, r, s := 2*i+1, 2*i+2, i
			if l < len(h) && h[l].less(h[s]) {
				s = l
			}
			if r < len(h) && h[r].less(h[s]) {
				s = r
			}
			if s == i {
				break
			}
			h[i], h[s] = h[s], h[i]
			i = s
		}
		return top
	}
	for i := 0; i+1 < n; i++ {
		if mg := m.pair(syms[i], syms[i+1]); mg.rank != noRank {
			push(heapEntry{mg.rank, int32(i), mg.id})
		}
	}
	removed := int32(-2)
	for len(h) > 0 {
		e := pop()
		if prev[e.pos] == removed {
			continue
		}
		nx := next[e.pos]
		if nx < 0 {
			continue
		}
		if mg := m.pair(syms[e.pos], syms[nx]); mg.id != e.id {
			continue // stale: a neighbour merged since this entry was queued
		}
		syms[e.pos] = e.id
		nn := next[nx]
		next[e.pos] = nn
		if nn >= 0 {
			prev[nn] = e.pos
		}
		prev[nx] = removed
		if p := prev[e.pos]; p >= 0 {
			if mg := m.pair(syms[p], syms[e.pos]); mg.rank != noRank {
				push(heapEntry{mg.rank, p, mg.id})
			}
		}
		if nn >= 0 {
			if mg := m.pair(syms[e.pos], syms[nn]); mg.rank != noRank {
				push(heapEntry{mg.rank, e.pos, mg.id})
			}
		}
	}
	out := syms[:0]
	for i := int32(0); i >= 0; i = next[i] {
		out = append(out, syms[i])
	}
	st.next, st.prev, st.heap = next, prev, h
	return out
}

// checkMergeIDs reports a merge whose result is not a token.
func (m *bpeModel) validate(vocabSize int) error {
	for k, mg := range m.merges {
		if mg.id < 0 || int(mg.id) >= vocabSize {
			return fmt.Errorf("merge of ids %d and %d yields id %d, outside the vocabulary", int32(k>>32), int32(uint32(k)), mg.id)
		}
	}
	return nil
}
