package tokenizer

import "unicode/utf8"

// byteRune is GPT-2's bytes_to_unicode table: the printable character that
// stands for each byte in byte-level vocabularies (byte 0x20, the space, is
// 'Ġ'). runeByte inverts it.
var byteRune, runeByte = func() (br [256]rune, rb map[rune]byte) {
	rb = make(map[rune]byte, 256)
	n := rune(0)
	for b := range 256 {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF {
			br[b] = rune(b)
		} else {
			br[b] = 256 + n
			n++
		}
		rb[br[b]] = byte(b)
	}
	return br, rb
}()

// byteLevelString returns the byte-level spelling of raw bytes, as a
// vocabulary key in tokenizer.json.
func byteLevelString(b []byte) string {
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = utf8.AppendRune(out, byteRune[c])
	}
	return string(out)
}

// byteLevelBytes returns the raw bytes a byte-level vocabulary string
// stands for; ok is false when it holds a character outside the table.
func byteLevelBytes(s string) (b []byte, ok bool) {
	b = make([]byte, 0, len(s))
	for _, r := range s {
		c, in := runeByte[r]
		if !in {
			return []byte(s), false
		}
		b = append(b, c)
	}
	return b, true
}
