package tokenizer

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The split patterns Loom scans by hand. The strings are the patterns as
// they appear in tokenizer.json files and tiktoken encodings.
const (
	// PatternGPT2 is GPT-2's split regex, the one ByteLevel applies when
	// use_regex is true (also r50k_base and p50k_base).
	PatternGPT2 = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	// PatternLlama3 is LLaMA-3's split regex (cl100k_base's, written with
	// a case-insensitive group).
	PatternLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// PatternCL100K is cl100k_base's split regex as tiktoken writes it.
	PatternCL100K = `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+`
	// PatternCL100KExpanded is cl100k_base's split regex as the JavaScript
	// ports write it, the case-insensitive group spelled out.
	PatternCL100KExpanded = `('s|'S|'t|'T|'re|'rE|'Re|'RE|'ve|'vE|'Ve|'VE|'m|'M|'ll|'lL|'Ll|'LL|'d|'D)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// PatternQwen2 is LLaMA-3's pattern with single digits (Qwen2).
	PatternQwen2 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// splitter cuts a segment of text into pre-token pieces: it returns the
// end of the match that starts at p, or p when nothing matches there (the
// byte run up to the next match is then a piece of its own).
type splitter interface {
	match(text []byte, p int) int
}

// newSplitter returns the scanner for pattern; field names the JSON field
// in errors.
func newSplitter(pattern, field string) (splitter, error) {
	switch pattern {
	case PatternGPT2:
		return gpt2Splitter{}, nil
	case PatternLlama3, PatternCL100K:
		return llama3Splitter{digits: 3, foldLongS: true}, nil
	case PatternCL100KExpanded:
		return llama3Splitter{digits: 3}, nil
	case PatternQwen2:
		return llama3Splitter{digits: 1, foldLongS: true}, nil
	}
	return newRegexpSplitter(pattern, field)
}

// Character classes as Oniguruma and Rust's regex see them: \s is Unicode
// White_Space (the same set as unicode.IsSpace), \p{L} letters, \p{N}
// numbers. An invalid UTF-8 byte is none of them.
const (
	clsOther = iota
	clsLetter
	clsNumber
	clsSpace
)

var asciiClass = func() (t [128]uint8) {
	for c := range 128 {
		r := rune(c)
		switch {
		case unicode.IsLetter(r):
			t[c] = clsLetter
		case unicode.IsNumber(r):
			t[c] = clsNumber
		case unicode.IsSpace(r):
			t[c] = clsSpace
		}
	}
	return t
}()

// class returns the class of the rune at text[p] and its width.
func class(text []byte, p int) (uint8, int) {
	if c := text[p]; c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, w := utf8.DecodeRune(text[p:])
	switch {
	case r == utf8.RuneError && w == 1:
		return clsOther, 1
	case unicode.IsLetter(r):
		return clsLetter, w
	case unicode.IsNumber(r):
		return clsNumber, w
	case unicode.IsSpace(r):
		return clsSpace, w
	}
	return clsOther, w
}

// run returns the end of the run of class cls starting at p.
func run(text []byte, p int, cls uint8) int {
	for p < len(text) {
		c, w := class(text, p)
		if c != cls {
			break
		}
		p += w
	}
	return p
}

// spaceRun implements `\s+(?!\S)|\s+` at p (text[p] is whitespace): the
// whole run when it ends the text or is one character long, else the run
// without its last character, which then starts the next piece.
func spaceRun(text []byte, p int) int {
	end, last := p, p
	for end < len(text) {
		c, w := class(text, end)
		if c != clsSpace {
			break
		}
		last = end
		end += w
	}
	if end == len(text) || last == p {
		return end
	}
	return last
}

// gpt2Splitter scans PatternGPT2.
type gpt2Splitter struct{}

func (gpt2Splitter) match(text []byte, p int) int {
	if text[p] == '\'' && p+1 < len(text) {
		switch text[p+1] {
		case 's', 't', 'm', 'd':
			return p + 2
		case 'r', 'v':
			if p+2 < len(text) && text[p+2] == 'e' {
				return p + 3
			}
		case 'l':
			if p+2 < len(text) && text[p+2] == 'l' {
				return p + 3
			}
		}
	}
	q := p
	if text[q] == ' ' {
		q++
	}
	if q < len(text) {
		c, w := class(text, q)
		if c != clsSpace {
			return run(text, q+w, c)
		}
	}
	return spaceRun(text, p)
}

// llama3Splitter scans PatternLlama3 and its relatives: digits is the
// most digits a number piece takes, foldLongS whether (?i) lets 'ſ (long
// s, whose case fold is s) match like 's.
type llama3Splitter struct {
	digits    int
	foldLongS bool
}

func (s llama3Splitter) match(text []byte, p int) int {
	if text[p] == '\'' && p+1 < len(text) {
		switch text[p+1] | 0x20 {
		case 's', 't', 'm', 'd':
			return p + 2
		case 'r', 'v':
			if p+2 < len(text) && text[p+2]|0x20 == 'e' {
				return p + 3
			}
		case 'l':
			if p+2 < len(text) && text[p+2]|0x20 == 'l' {
				return p + 3
			}
		}
		if s.foldLongS && p+2 < len(text) && text[p+1] == 0xc5 && text[p+2] == 0xbf { // U+017F
			return p + 3
		}
	}
	c0, w0 := class(text, p)
	switch c0 {
	case clsLetter:
		return run(text, p+w0, clsLetter)
	case clsNumber:
		q := p + w0
		for n := 1; n < s.digits && q < len(text); n++ {
			c, w := class(text, q)
			if c != clsNumber {
				break
			}
			q += w
		}
		return q
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if text[p] != '\r' && text[p] != '\n' && p+w0 < len(text) {
		if c, w := class(text, p+w0); c == clsLetter {
			return run(text, p+w0+w, clsLetter)
		}
	}
	//  ?[^\s\p{L}\p{N}]+[\r\n]*
	q := p
	if text[q] == ' ' {
		q++
	}
	if q < len(text) {
		if c, w := class(text, q); c == clsOther {
			q = run(text, q+w, clsOther)
			for q < len(text) && (text[q] == '\r' || text[q] == '\n') {
				q++
			}
			return q
		}
	}
	if c0 != clsSpace {
		return p // unreachable for these patterns: every class is covered
	}
	// \s*[\r\n]+: up to the last newline of the whitespace run.
	end, nl := p, -1
	for end < len(text) {
		c, w := class(text, end)
		if c != clsSpace {
			break
		}
		if text[end] == '\r' || text[end] == '\n' {
			nl = end
		}
		end += w
	}
	if nl >= 0 {
		return nl + 1
	}
	return spaceRun(text, p)
}

// regexpSplitter runs a pattern on Go's regexp. Go has no look-ahead, so
// a trailing `\s+(?!\S)|\s+` (or `\s+(?!\S)`) is cut off and emulated,
// and \s, \S are widened to Unicode White_Space as Oniguruma reads them.
type regexpSplitter struct {
	re    *regexp.Regexp
	space int // 0: no whitespace tail; 1: `\s+(?!\S)`; 2: `\s+(?!\S)|\s+`
}

func newRegexpSplitter(pattern, field string) (splitter, error) {
	s := regexpSplitter{}
	body := pattern
	switch {
	case strings.HasSuffix(body, `|\s+(?!\S)|\s+`):
		body, s.space = strings.TrimSuffix(body, `|\s+(?!\S)|\s+`), 2
	case strings.HasSuffix(body, `|\s+(?!\S)`):
		body, s.space = strings.TrimSuffix(body, `|\s+(?!\S)`), 1
	}
	if strings.Contains(body, "(?=") || strings.Contains(body, "(?!") || strings.Contains(body, "(?<") {
		return nil, fmt.Errorf("%s: pattern %q uses look-around that Loom cannot run (only a trailing `\\s+(?!\\S)|\\s+` is emulated)", field, pattern)
	}
	if hasPossessive(body) {
		return nil, fmt.Errorf("%s: pattern %q uses possessive quantifiers, which Go's regexp lacks", field, pattern)
	}
	re, err := regexp.Compile(`^(?:` + unicodeSpaces(body) + `)`)
	if err != nil {
		return nil, fmt.Errorf("%s: pattern %q: %v", field, pattern, err)
	}
	s.re = re
	return s, nil
}

// hasPossessive reports a possessive quantifier (x?+, x*+, x++, x{n}+)
// outside character classes.
func hasPossessive(p string) bool {
	inClass := false
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '\\':
			if i+2 < len(p) && (p[i+1] == 'p' || p[i+1] == 'P') && p[i+2] == '{' {
				if j := strings.IndexByte(p[i:], '}'); j > 0 {
					i += j
					continue
				}
			}
			i++
		case c == '[':
			inClass = true
		case c == ']':
			inClass = false
		case inClass:
		case (c == '?' || c == '*' || c == '+' || c == '}') && i+1 < len(p) && p[i+1] == '+':
			if c == '+' && i > 0 && p[i-1] == '+' {
				continue
			}
			return true
		}
	}
	return false
}

// whiteSpace lists Unicode White_Space for a regexp character class.
const whiteSpace = `\t\n\x0B\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}`

// unicodeSpaces rewrites \s and \S so that they mean Unicode White_Space
// (Go's regexp reads them as ASCII only).
func unicodeSpaces(p string) string {
	var b strings.Builder
	inClass := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '\\' && i+1 < len(p) {
			n := p[i+1]
			i++
			switch {
			case n == 's' && inClass:
				b.WriteString(whiteSpace)
			case n == 's':
				b.WriteString("[" + whiteSpace + "]")
			case n == 'S' && !inClass:
				b.WriteString("[^" + whiteSpace + "]")
			default:
				b.WriteByte('\\')
				b.WriteByte(n)
			}
			continue
		}
		switch c {
		case '[':
			inClass = true
		case ']':
			inClass = false
		}
		b.WriteByte(c)
	}
	return b.String()
}

func (s regexpSplitter) match(text []byte, p int) int {
	if loc := s.re.FindIndex(text[p:]); loc != nil && loc[1] > 0 {
		return p + loc[1]
	}
	if s.space == 0 {
		return p
	}
	if c, _ := class(text, p); c != clsSpace {
		return p
	}
	end := spaceRun(text, p)
	if s.space == 1 && end < len(text) && end == run(text, p, clsSpace) {
		return p // a single space before a non-space: `\s+(?!\S)` fails
	}
	return end
}

// splitPieces appends to dst the boundaries of the pieces of text under s
// with Hugging Face's Isolated behaviour: every match is a piece, and so
// is every run of text between matches. keep reports whether matched
// pieces are kept (false: the Removed behaviour drops them).
func splitPieces(dst []int, text []byte, s splitter, keep bool) []int {
	gap := -1
	for p := 0; p < len(text); {
		e := s.match(text, p)
		if e <= p {
			if gap < 0 {
				gap = p
			}
			_, w := utf8.DecodeRune(text[p:])
			p += w
			continue
		}
		if gap >= 0 {
			dst = append(dst, gap, p)
			gap = -1
		}
		if keep {
			dst = append(dst, p, e)
		}
		p = e
	}
	if gap >= 0 {
		dst = append(dst, gap, len(text))
	}
	return dst
}
