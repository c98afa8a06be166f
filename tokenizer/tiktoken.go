package tokenizer

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"sort"
	"strconv"
)

// TiktokenOptions completes a tiktoken rank file, which holds only the
// mergeable ranks: the split pattern and the special tokens come from the
// encoding's definition. Left empty, they are those of the known encoding
// with the file's number of ranks (r50k_base/GPT-2: 50,256; cl100k_base:
// 100,256; LLaMA-3: 128,000; o200k_base: 199,998).
type TiktokenOptions struct {
	Pattern  string
	Specials map[string]int32
}

// knownEncoding returns the pattern and special tokens of the tiktoken
// encoding with n mergeable ranks.
func knownEncoding(n int) (pattern string, specials map[string]int32, ok bool) {
	switch n {
	case 50256:
		return PatternGPT2, map[string]int32{"<|endoftext|>": 50256}, true
	case 100256:
		return PatternCL100K, map[string]int32{"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
			"<|fim_middle|>": 100259, "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}, true
	case 128000:
		return PatternLlama3, Llama3Specials(), true
	case 199998:
		return PatternO200K, map[string]int32{"<|endoftext|>": 199999, "<|endofprompt|>": 200018}, true
	}
	return "", nil, false
}

// PatternO200K is o200k_base's split regex (run on Go's regexp).
const PatternO200K = `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// Llama3Specials returns LLaMA-3's 256 special tokens, ids 128000–128255
// (the LLaMA 3.1 names).
func Llama3Specials() map[string]int32 {
	names := []string{"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
		"<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
		"<|eom_id|>", "<|eot_id|>", "<|python_tag|>"}
	for i := 3; len(names) < 256; i++ {
		names = append(names, fmt.Sprintf("<|reserved_special_token_%d|>", i))
	}
	m := make(map[string]int32, len(names))
	for i, n := range names {
		m[n] = int32(128000 + i)
	}
	return m
}

// ParseTiktoken builds a tokenizer from a tiktoken rank file: one
// "BASE64TOKEN RANK" line per token. Encoding follows tiktoken: a piece
// that is a token is that token, else adjacent parts merge by the rank of
// their concatenation, lowest first and leftmost on a tie.
func ParseTiktoken(b []byte, name string, opt TiktokenOptions) (*Tokenizer, error) {
	bad := func(line int, format string, a ...any) error {
		return &FileError{Path: name, Field: fmt.Sprintf("line %d", line), Problem: fmt.Sprintf(format, a...)}
	}
	var ranks [][]byte
	seen := map[string]bool{}
	line := 0
	for rest := b; len(rest) > 0; {
		var l []byte
		l, rest, _ = bytes.Cut(rest, []byte{'\n'})
		line++
		l = bytes.TrimRight(l, "\r")
		if len(l) == 0 {
			continue
		}
		tok64, rankStr, ok := bytes.Cut(l, []byte{' '})
		if !ok {
			return nil, bad(line, "want \"BASE64TOKEN RANK\", got %q", truncate(l))
		}
		tok, err := base64.StdEncoding.DecodeString(string(tok64))
		if err != nil || len(tok) == 0 {
			return nil, bad(line, "token %q is not base64 of a non-empty byte string", truncate(tok64))
		}
		r, err := strconv.Atoi(string(rankStr))
		if err != nil || r < 0 {
			return nil, bad(line, "rank %q is not a non-negative integer", truncate(rankStr))
		}
		if r != len(ranks) {
			return nil, bad(line, "rank %d out of order: want %d (ranks are consecutive from 0)", r, len(ranks))
		}
		if seen[string(tok)] {
			return nil, bad(line, "token %q appears twice", tok)
		}
		seen[string(tok)] = true
		ranks = append(ranks, tok)
	}
	if len(ranks) == 0 {
		return nil, &FileError{Path: name, Problem: "no ranks: not a tiktoken file"}
	}
	pattern, specials := opt.Pattern, opt.Specials
	if pattern == "" || specials == nil {
		kp, ks, ok := knownEncoding(len(ranks))
		if !ok && pattern == "" {
			return nil, &FileError{Path: name, Problem: fmt.Sprintf("%d ranks match no known tiktoken encoding, so the split pattern is unknown: pass it (--pattern)", len(ranks)), Unsupported: true}
		}
		if pattern == "" {
			pattern = kp
		}
		if specials == nil {
			specials = ks
		}
	}
	return fromRanks(ranks, pattern, specials, name, true)
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "…"
	}
	return string(b)
}

// fromRanks builds a byte-level tokenizer whose ids are the ranks.
// tiktoken says whether it merges by the rank of the concatenation
// (tiktoken) or needs merges derived for Hugging Face (its JSON).
func fromRanks(ranks [][]byte, pattern string, specials map[string]int32, name string, tiktoken bool) (*Tokenizer, error) {
	s, err := newSplitter(pattern, "pattern")
	if err != nil {
		return nil, &FileError{Path: name, Problem: err.Error(), Unsupported: true}
	}
	t := &Tokenizer{name: name, special: map[int32]bool{}, plainByteDecode: true, decoders: []decoder{byteLevelDecoder{}}}
	t.pre = []preStep{splitStep{s: s, keep: true}}
	n := len(ranks)
	for tok, id := range specials {
		if int(id) < len(ranks) {
			return nil, &FileError{Path: name, Field: "specials", Problem: fmt.Sprintf("%q has id %d, which is a rank (ranks end at %d)", tok, id, len(ranks)-1)}
		}
		n = max(n, int(id)+1)
	}
	t.vocabSize = n
	t.tokens = make([]string, n)
	t.raw = make([][]byte, n)
	mdl := bpeModel{vocab: make(map[string]int32, len(ranks)), byteLevel: true, unk: -1, wholeFirst: true}
	for i := range mdl.byteID {
		mdl.byteID[i], mdl.byteFallbackID[i] = -1, -1
	}
	for id, tok := range ranks {
		mdl.vocab[string(tok)] = int32(id)
		t.raw[id] = tok
		t.tokens[id] = byteLevelString(tok)
		if len(tok) == 1 {
			mdl.byteID[tok[0]] = int32(id)
		}
	}
	for b, id := range mdl.byteID {
		if id < 0 {
			return nil, &FileError{Path: name, Problem: fmt.Sprintf("byte 0x%02X has no token: a byte-level vocabulary needs all 256", b)}
		}
	}
	mdl.merges = make(map[uint64]merge, 2*len(ranks))
	for id, tok := range ranks {
		for k := 1; k < len(tok); k++ {
			a, okA := mdl.vocab[string(tok[:k])]
			c, okC := mdl.vocab[string(tok[k:])]
			if okA && okC {
				mdl.merges[pairKey(a, c)] = merge{rank: int32(id), id: int32(id)}
			}
		}
	}
	t.model = mdl
	var added []hfAdded
	for tok, id := range specials {
		t.tokens[id] = tok
		t.raw[id] = []byte(tok)
		t.special[id] = true
		t.rawAdded.add(addedToken{id: id, content: []byte(tok), special: true})
		added = append(added, hfAdded{ID: id, Content: tok, Special: true})
	}
	t.setSpecialIDs(added)
	// Hugging Face gives added tokens consecutive ids after the vocabulary,
	// so ids the encoding leaves unused (cl100k_base's 100256, 100261–100275)
	// get placeholder special tokens in the tokenizer.json.
	used := map[int32]bool{}
	for _, id := range specials {
		used[id] = true
	}
	jsAdded := append([]hfAdded(nil), added...)
	for id := int32(len(ranks)); int(id) < n; id++ {
		if !used[id] {
			jsAdded = append(jsAdded, hfAdded{ID: id, Content: fmt.Sprintf("<|loom_unused_%d|>", id), Special: true})
		}
	}
	js, err := hfWriter{pattern: patternForJSON(pattern), ignoreMerges: true, vocab: ranks, merges: t.derivedMerges(ranks), added: jsAdded}.encode()
	if err != nil {
		return nil, err
	}
	t.json = js
	t.sha = sha256Hex(js)
	return t, nil
}

// patternForJSON is "" (ByteLevel's own regex) for GPT-2's pattern.
func patternForJSON(p string) string {
	if p == PatternGPT2 {
		return ""
	}
	return p
}

// derivedMerges returns, in rank order, the merge that makes each
// multi-byte token from two lower-ranked ones: tiktoken's BPE of the
// token's bytes restricted to lower ranks (the conversion Hugging Face's
// own tiktoken converter does). A token that this does not split in two is
// reachable only as a whole piece and gets no merge.
func (t *Tokenizer) derivedMerges(ranks [][]byte) [][2]int32 {
	st := newEncState()
	var out [][2]int32
	for id, tok := range ranks {
		if len(tok) < 2 {
			continue
		}
		parts := t.model.mergeLimited(st, tok, int32(id))
		if len(parts) == 2 {
			out = append(out, [2]int32{parts[0], parts[1]})
		}
	}
	return out
}

// mergeLimited is mergeScan over a piece's bytes using only merges of rank
// below limit.
func (m *bpeModel) mergeLimited(st *encState, piece []byte, limit int32) []int32 {
	syms := m.initialSymbols(nil, piece)
	for len(syms) > 1 {
		best, bi := int32(noRank), -1
		var bid int32
		for i := 0; i+1 < len(syms); i++ {
			if mg := m.pair(syms[i], syms[i+1]); mg.rank < limit && mg.rank < best {
				best, bi, bid = mg.rank, i, mg.id
			}
		}
		if bi < 0 {
			break
		}
		syms[bi] = bid
		syms = append(syms[:bi+1], syms[bi+2:]...)
	}
	return syms
}

// Tiktoken returns the tokenizer's mergeable ranks in tiktoken's format,
// for a byte-level tokenizer whose ids below the first added token are its
// vocabulary.
func (t *Tokenizer) Tiktoken() ([]byte, error) {
	if !t.model.byteLevel {
		return nil, fmt.Errorf("tokenizer %s is not byte-level: it has no tiktoken form", t.name)
	}
	ids := make([]int, 0, len(t.model.vocab))
	for _, id := range t.model.vocab {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	var b bytes.Buffer
	for i, id := range ids {
		if id != i {
			return nil, fmt.Errorf("tokenizer %s: vocabulary ids are not consecutive from 0 (id %d missing)", t.name, i)
		}
		fmt.Fprintf(&b, "%s %d\n", base64.StdEncoding.EncodeToString(t.raw[id]), id)
	}
	return b.Bytes(), nil
}

// Bytes returns Loom's byte tokenizer (byte b is id b, BOS 256, EOS 257)
// as a byte-level BPE without merges, so that it has a tokenizer.json
// Hugging Face reads with the same ids.
func Bytes() (*Tokenizer, error) {
	vocab := make([][]byte, 256)
	for b := range vocab {
		vocab[b] = []byte{byte(b)}
	}
	js, err := hfWriter{vocab: vocab, added: []hfAdded{
		{ID: 256, Content: "<|begin_of_text|>", Special: true},
		{ID: 257, Content: "<|end_of_text|>", Special: true},
	}}.encode()
	if err != nil {
		return nil, err
	}
	return ParseJSON(js, "byte")
}
