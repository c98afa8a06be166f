package tokenizer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Tokenizer is a BPE tokenizer loaded from a tokenizer.json or tiktoken
// file, or trained by [Train]. It is immutable once built and safe for
// concurrent use. It satisfies data.Tokenizer.
type Tokenizer struct {
	name      string
	sha       string
	model     bpeModel
	vocabSize int
	// tokens holds every id's vocabulary string (byte-level spelling for
	// byte-level models), what decoders see; raw the bytes each id decodes
	// to under a plain ByteLevel decoder.
	tokens []string
	raw    [][]byte
	// Added tokens matched on the raw text (normalized=false, or every one
	// when there is no normalizer) and on normalized text.
	rawAdded, normAdded addedSet
	special             map[int32]bool
	normalizers         []normalizer
	pre                 []preStep
	decoders            []decoder
	plainByteDecode     bool // the decoder is exactly ByteLevel
	bos, eos, pad       int32
	states              sync.Pool
	// json is the tokenizer.json this tokenizer writes (Hugging Face's
	// format); for a loaded tokenizer.json, the file itself.
	json []byte
}

// Name identifies the tokenizer in token-file sidecars.
func (t *Tokenizer) Name() string { return t.name }

// SHA256 is the lowercase hex SHA-256 of the tokenizer's tokenizer.json
// (for a tiktoken file, of the file).
func (t *Tokenizer) SHA256() string { return t.sha }

// VocabSize is one more than the largest id, added tokens included.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// BOS is the beginning-of-sequence id: the added special token named
// <|begin_of_text|>, <s>, <|startoftext|>, <bos> or, failing those,
// <|endoftext|>; -1 when there is none.
func (t *Tokenizer) BOS() int32 { return t.bos }

// EOS is the end-of-sequence id: <|end_of_text|>, </s>, <|endoftext|> or
// <eos>; -1 when there is none.
func (t *Tokenizer) EOS() int32 { return t.eos }

// Pad is the padding id (<|pad|>, <pad>), or -1.
func (t *Tokenizer) Pad() int32 { return t.pad }

// IDToken returns the vocabulary string of id ("" when unused).
func (t *Tokenizer) IDToken(id int32) string {
	if id < 0 || int(id) >= len(t.tokens) {
		return ""
	}
	return t.tokens[id]
}

// IsSpecial reports whether id is a special added token.
func (t *Tokenizer) IsSpecial(id int32) bool { return t.special[id] }

// JSON returns the tokenizer in Hugging Face's tokenizer.json format.
func (t *Tokenizer) JSON() []byte { return t.json }

func (t *Tokenizer) state() *encState {
	if st, ok := t.states.Get().(*encState); ok {
		return st
	}
	return newEncState()
}

// Encode appends the ids of text to dst, as Hugging Face's
// encode(text, add_special_tokens=False): added tokens written in the
// text (special ones included) become their ids.
func (t *Tokenizer) Encode(dst []int32, text []byte) []int32 {
	st := t.state()
	dst = t.encode(st, dst, text, true)
	t.states.Put(st)
	return dst
}

// EncodeOrdinary is Encode with added tokens treated as plain text, as
// tiktoken's encode_ordinary.
func (t *Tokenizer) EncodeOrdinary(dst []int32, text []byte) []int32 {
	st := t.state()
	dst = t.encode(st, dst, text, false)
	t.states.Put(st)
	return dst
}

func (t *Tokenizer) encode(st *encState, dst []int32, text []byte, added bool) []int32 {
	if !added || t.rawAdded.empty() {
		return t.encodeSegment(st, dst, text, true, added)
	}
	first := true
	t.rawAdded.split(text, func(seg []byte, id int32) {
		if id >= 0 {
			dst = append(dst, id)
		} else {
			dst = t.encodeSegment(st, dst, seg, first, added)
		}
		first = false
	})
	return dst
}

// encodeSegment normalizes, pre-tokenizes and BPE-encodes text that holds
// no raw-matched added token; atStart says it begins the input.
func (t *Tokenizer) encodeSegment(st *encState, dst []int32, text []byte, atStart, added bool) []int32 {
	if len(text) == 0 {
		return dst
	}
	if len(t.normalizers) > 0 {
		norm := append([]byte(nil), text...)
		for _, n := range t.normalizers {
			norm = n.apply(norm)
		}
		text = norm
		if added && !t.normAdded.empty() {
			first := atStart
			t.normAdded.split(text, func(seg []byte, id int32) {
				if id >= 0 {
					dst = append(dst, id)
				} else {
					dst = t.preTokenize(st, dst, seg, first)
				}
				first = false
			})
			return dst
		}
	}
	return t.preTokenize(st, dst, text, atStart)
}

func (t *Tokenizer) preTokenize(st *encState, dst []int32, text []byte, atStart bool) []int32 {
	// The common shapes (one splitting step) need no copies.
	if len(t.pre) == 1 {
		if s, ok := t.pre[0].(splitStep); ok && s.keep {
			st.pieces = splitPieces(st.pieces[:0], text, s.s, true)
			pieces := st.pieces
			for i := 0; i < len(pieces); i += 2 {
				dst = t.model.encodePiece(st, dst, text[pieces[i]:pieces[i+1]])
			}
			return dst
		}
	}
	pieces := [][]byte{text}
	for _, p := range t.pre {
		pieces = p.apply(pieces, atStart)
	}
	for _, p := range pieces {
		dst = t.model.encodePiece(st, dst, p)
	}
	return dst
}

// Decode appends the text of ids to dst. Special tokens produce no text;
// other added tokens produce their content; an id outside the vocabulary
// is an error.
func (t *Tokenizer) Decode(dst []byte, ids []int32) ([]byte, error) {
	return t.decode(dst, ids, true)
}

// DecodeAll is Decode with special tokens written out as well.
func (t *Tokenizer) DecodeAll(dst []byte, ids []int32) ([]byte, error) {
	return t.decode(dst, ids, false)
}

func (t *Tokenizer) decode(dst []byte, ids []int32, skipSpecial bool) ([]byte, error) {
	for i, id := range ids {
		if id < 0 || int(id) >= t.vocabSize || t.raw[id] == nil {
			return dst, fmt.Errorf("tokenizer %s: id %d at position %d is not in the vocabulary of %d", t.name, id, i, t.vocabSize)
		}
	}
	if t.plainByteDecode {
		for _, id := range ids {
			if !skipSpecial || !t.special[id] {
				dst = append(dst, t.raw[id]...)
			}
		}
		return dst, nil
	}
	toks := make([][]byte, 0, len(ids))
	for _, id := range ids {
		if !skipSpecial || !t.special[id] {
			toks = append(toks, []byte(t.tokens[id]))
		}
	}
	for _, d := range t.decoders {
		toks = d.decode(toks)
	}
	for _, tk := range toks {
		dst = append(dst, tk...)
	}
	return dst, nil
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// addedToken is a token matched in the text before normalization.
type addedToken struct {
	id                      int32
	content                 []byte
	lstrip, rstrip, single  bool
	special, normalizedFlag bool
}

// addedSet finds added tokens in text: at the leftmost position where any
// matches, the longest (Hugging Face's leftmost-longest Aho–Corasick).
type addedSet struct {
	byFirst [256][]addedToken // by first byte, longest first
	any     bool
}

func (s *addedSet) empty() bool { return !s.any }

func (s *addedSet) add(a addedToken) {
	if len(a.content) == 0 {
		return
	}
	l := append(s.byFirst[a.content[0]], a)
	for i := len(l) - 1; i > 0 && len(l[i].content) > len(l[i-1].content); i-- {
		l[i], l[i-1] = l[i-1], l[i]
	}
	s.byFirst[a.content[0]] = l
	s.any = true
}

// split calls fn with the runs of text between added tokens (id −1) and
// each added token found (its id), in order.
func (s *addedSet) split(text []byte, fn func(seg []byte, id int32)) {
	done := 0 // text[:done] has been handed to fn
	for p := 0; p < len(text); p++ {
		cands := s.byFirst[text[p]]
		if len(cands) == 0 {
			continue
		}
		for _, a := range cands {
			if !bytes.HasPrefix(text[p:], a.content) {
				continue
			}
			start, end := p, p+len(a.content)
			if a.single && (isWordBefore(text, start) || isWordAfter(text, end)) {
				continue
			}
			if a.lstrip {
				for start > done {
					r, w := utf8.DecodeLastRune(text[done:start])
					if !unicode.IsSpace(r) {
						break
					}
					start -= w
				}
			}
			if a.rstrip {
				for end < len(text) {
					r, w := utf8.DecodeRune(text[end:])
					if !unicode.IsSpace(r) {
						break
					}
					end += w
				}
			}
			if start > done {
				fn(text[done:start], -1)
			}
			fn(text[start:end], a.id)
			done = end
			p = end - 1
			break
		}
	}
	if done < len(text) {
		fn(text[done:], -1)
	}
}

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsNumber(r) || r == '_' }

func isWordBefore(text []byte, p int) bool {
	if p == 0 {
		return false
	}
	r, _ := utf8.DecodeLastRune(text[:p])
	return isWordRune(r)
}

func isWordAfter(text []byte, p int) bool {
	if p >= len(text) {
		return false
	}
	r, _ := utf8.DecodeRune(text[p:])
	return isWordRune(r)
}

// normalizer rewrites a segment before pre-tokenization.
type normalizer interface {
	apply(b []byte) []byte
}

type prependNorm struct{ s []byte }

func (n prependNorm) apply(b []byte) []byte {
	if len(b) == 0 {
		return b
	}
	return append(append([]byte(nil), n.s...), b...)
}

type replaceNorm struct{ old, new []byte }

func (n replaceNorm) apply(b []byte) []byte { return bytes.ReplaceAll(b, n.old, n.new) }

// preStep is one pre-tokenizer: it cuts (or rewrites) every piece.
type preStep interface {
	apply(pieces [][]byte, atStart bool) [][]byte
}

// splitStep is Split (Isolated or Removed) and ByteLevel with use_regex.
type splitStep struct {
	s    splitter
	keep bool
}

func (s splitStep) apply(pieces [][]byte, _ bool) [][]byte {
	var out [][]byte
	var idx []int
	for _, p := range pieces {
		idx = splitPieces(idx[:0], p, s.s, s.keep)
		for i := 0; i < len(idx); i += 2 {
			out = append(out, p[idx[i]:idx[i+1]])
		}
	}
	return out
}

// prefixSpaceStep is ByteLevel's add_prefix_space: a piece that does not
// start with a space gets one.
type prefixSpaceStep struct{}

func (prefixSpaceStep) apply(pieces [][]byte, _ bool) [][]byte {
	for i, p := range pieces {
		if len(p) > 0 && p[0] != ' ' {
			pieces[i] = append([]byte{' '}, p...)
		}
	}
	return pieces
}

// metaspaceStep is the Metaspace pre-tokenizer: spaces become the
// replacement character, which is prepended by the scheme ("always",
// "first": only to the start of the input, "never"), and with split the
// pieces are cut before every replacement character.
type metaspaceStep struct {
	repl    []byte
	prepend string
	split   bool
}

func (m metaspaceStep) apply(pieces [][]byte, atStart bool) [][]byte {
	var out [][]byte
	for i, p := range pieces {
		q := bytes.ReplaceAll(p, []byte{' '}, m.repl)
		if (m.prepend == "always" || m.prepend == "first" && atStart && i == 0) && !bytes.HasPrefix(q, m.repl) {
			q = append(append([]byte(nil), m.repl...), q...)
		}
		if !m.split {
			out = append(out, q)
			continue
		}
		start := 0
		for j := 1; j < len(q); j++ {
			if bytes.HasPrefix(q[j:], m.repl) {
				out = append(out, q[start:j])
				start = j
			}
		}
		if start < len(q) {
			out = append(out, q[start:])
		}
	}
	return out
}

// decoder is one step of the decoder chain over token strings.
type decoder interface {
	decode(toks [][]byte) [][]byte
}

type byteLevelDecoder struct{}

func (byteLevelDecoder) decode(toks [][]byte) [][]byte {
	var out []byte
	for _, tk := range toks {
		if b, ok := byteLevelBytes(string(tk)); ok {
			out = append(out, b...)
		} else {
			out = append(out, tk...)
		}
	}
	return [][]byte{out}
}

type replaceDecoder struct{ old, new []byte }

func (d replaceDecoder) decode(toks [][]byte) [][]byte {
	for i, tk := range toks {
		toks[i] = bytes.ReplaceAll(tk, d.old, d.new)
	}
	return toks
}

// byteFallbackDecoder turns runs of <0xXX> tokens into their bytes.
type byteFallbackDecoder struct{}

func (byteFallbackDecoder) decode(toks [][]byte) [][]byte {
	var out [][]byte
	var pending []byte
	for _, tk := range toks {
		if b, ok := parseByteToken(tk); ok {
			pending = append(pending, b)
			continue
		}
		if len(pending) > 0 {
			out = append(out, pending)
			pending = nil
		}
		out = append(out, tk)
	}
	if len(pending) > 0 {
		out = append(out, pending)
	}
	return out
}

// parseByteToken reads a byte-fallback token, <0xXX>.
func parseByteToken(tk []byte) (byte, bool) {
	if len(tk) != 6 || tk[0] != '<' || tk[1] != '0' || tk[2] != 'x' || tk[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range tk[3:5] {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | (c - '0')
		case c >= 'A' && c <= 'F':
			v = v<<4 | (c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return v, true
}

type fuseDecoder struct{}

func (fuseDecoder) decode(toks [][]byte) [][]byte {
	return [][]byte{bytes.Join(toks, nil)}
}

type stripDecoder struct {
	content     []byte
	start, stop int
}

func (d stripDecoder) decode(toks [][]byte) [][]byte {
	for i, tk := range toks {
		for n := 0; n < d.start && bytes.HasPrefix(tk, d.content); n++ {
			tk = tk[len(d.content):]
		}
		for n := 0; n < d.stop && bytes.HasSuffix(tk, d.content); n++ {
			tk = tk[:len(tk)-len(d.content)]
		}
		toks[i] = tk
	}
	return toks
}

type metaspaceDecoder struct {
	repl    []byte
	prepend bool
}

func (d metaspaceDecoder) decode(toks [][]byte) [][]byte {
	for i, tk := range toks {
		tk = bytes.ReplaceAll(tk, d.repl, []byte{' '})
		if i == 0 && d.prepend && len(tk) > 0 && tk[0] == ' ' {
			tk = tk[1:]
		}
		toks[i] = tk
	}
	return toks
}

// SafeCut returns the last position p in text, or −1 if there is none,
// such that encoding text[:p] and the rest of the input separately gives
// the same ids as encoding them together, whatever follows text. Prep cuts
// large documents there to stream them.
//
// Only tokenizers with no normalizer, one split step of a hand-scanned
// pattern and no added token containing a newline can be cut. Under
// LLaMA-3's pattern (and cl100k's) every whitespace run that holds a
// newline ends a piece at its last newline, so a cut there is safe when
// the rest of the run (inside text) holds no newline; under GPT-2's, a
// lone "\n" between two non-space characters is a piece of its own.
func (t *Tokenizer) SafeCut(text []byte) int {
	if !t.cuttable() {
		return -1
	}
	return safeCut(t.pre[0].(splitStep).s, text)
}

// safeCut is SafeCut for one split pattern (−1 for those not scanned by
// hand).
func safeCut(s splitter, text []byte) int {
	_, gpt2 := s.(gpt2Splitter)
	if _, l3 := s.(llama3Splitter); !gpt2 && !l3 {
		return -1
	}
	for p := len(text) - 1; p >= 2; p-- {
		if text[p-1] != '\n' {
			continue
		}
		if gpt2 {
			after, _ := class(text, p)
			r, _ := utf8.DecodeLastRune(text[:p-1])
			if after != clsSpace && !unicode.IsSpace(r) {
				return p
			}
			continue
		}
		q := p
		for q < len(text) {
			cls, w := class(text, q)
			if cls != clsSpace || text[q] == '\n' || text[q] == '\r' {
				break
			}
			q += w
		}
		if q < len(text) && text[q] != '\n' && text[q] != '\r' {
			return p
		}
	}
	return -1
}

func (t *Tokenizer) cuttable() bool {
	if len(t.normalizers) > 0 || len(t.pre) != 1 {
		return false
	}
	s, ok := t.pre[0].(splitStep)
	if !ok || !s.keep {
		return false
	}
	switch s.s.(type) {
	case gpt2Splitter, llama3Splitter:
	default:
		return false
	}
	for _, set := range []*addedSet{&t.rawAdded, &t.normAdded} {
		for _, l := range set.byFirst {
			for _, a := range l {
				if bytes.IndexByte(a.content, '\n') >= 0 {
					return false
				}
			}
		}
	}
	return true
}
