package tokenizer

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

// The hand-written scanners agree with the same patterns run on Go's
// regexp with the whitespace tail emulated (an independent
// implementation) on the corpus and on random text.
func TestSplittersMatchRegexp(t *testing.T) {
	cases := []struct {
		pattern string
		hand    splitter
	}{
		{PatternGPT2, gpt2Splitter{}},
		{PatternLlama3, llama3Splitter{digits: 3, foldLongS: true}},
		{PatternQwen2, llama3Splitter{digits: 1, foldLongS: true}},
	}
	texts := mixedCorpus(50 << 10)
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune(" \t\n\r\u00a0\u3000a Zé1٣'sSLlſ.,!中😀\u0301-\x0b")
	for range 1000 {
		var b strings.Builder
		for range rng.IntN(30) {
			b.WriteRune(alphabet[rng.IntN(len(alphabet))])
		}
		texts = append(texts, b.String())
	}
	for _, c := range cases {
		re, err := newRegexpSplitter(c.pattern, "test")
		if err != nil {
			t.Fatal(err)
		}
		for _, text := range texts {
			a := splitPieces(nil, []byte(text), c.hand, true)
			b := splitPieces(nil, []byte(text), re, true)
			if !equalInts(a, b) {
				t.Fatalf("pattern %.30q… on %q:\n hand   %v\n regexp %v", c.pattern, clip(text, 80), show(text, a), show(text, b))
			}
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func show(text string, idx []int) []string {
	var s []string
	for i := 0; i < len(idx); i += 2 {
		s = append(s, text[idx[i]:idx[i+1]])
	}
	return s
}

// The heap merge (long pieces) and the scan merge (short ones) agree.
func TestMergeHeapMatchesScan(t *testing.T) {
	tok := trainSmall(t, 1200)
	rng := rand.New(rand.NewPCG(3, 4))
	st := newEncState()
	words := []string{"the", " func", "ing", "aaaa", " ", "\n\t", "ab", "中文"}
	for range 300 {
		var b strings.Builder
		for range 1 + rng.IntN(80) {
			b.WriteString(words[rng.IntN(len(words))])
		}
		piece := []byte(b.String())
		s1 := tok.model.mergeScan(st, tok.model.initialSymbols(nil, piece))
		s2 := tok.model.mergeHeap(st, tok.model.initialSymbols(nil, piece))
		if !equalIDs(s1, s2) {
			t.Fatalf("piece %q: scan %v heap %v", piece, s1, s2)
		}
	}
}

// Encode is safe for concurrent use and gives the same ids from any goroutine.
func TestEncodeConcurrent(t *testing.T) {
	tok := trainSmall(t, 800)
	docs := mixedCorpus(40 << 10)
	want := make([][]int32, len(docs))
	for i, d := range docs {
		want[i] = tok.Encode(nil, []byte(d))
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range docs {
				i := (k + g*7) % len(docs)
				if got := tok.Encode(nil, []byte(docs[i])); !equalIDs(got, want[i]) {
					errs <- docs[i]
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for d := range errs {
		t.Fatalf("concurrent encode differs on %q", clip(d, 60))
	}
}

// Unsupported parts are refused with the field named.
func TestRefusesUnsupported(t *testing.T) {
	base := func(model, pre string) string {
		return `{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":` + pre +
			`,"post_processor":null,"decoder":{"type":"ByteLevel"},"model":` + model + `}`
	}
	bpe := `{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}`
	cases := []struct{ js, field string }{
		{base(`{"type":"WordPiece","vocab":{}}`, "null"), "model.type"},
		{base(`{"type":"BPE","dropout":0.1,"vocab":{"a":0},"merges":[]}`, "null"), "model.dropout"},
		{base(`{"type":"BPE","continuing_subword_prefix":"##","vocab":{"a":0},"merges":[]}`, "null"), "model.continuing_subword_prefix"},
		{base(bpe, `{"type":"Whitespace"}`), "pre_tokenizer.type"},
		{base(bpe, `{"type":"Sequence","pretokenizers":[{"type":"Digits"}]}`), "pre_tokenizer.pretokenizers[0].type"},
		{base(bpe, `{"type":"Split","pattern":{"Regex":"(?=x)a"},"behavior":"Isolated","invert":false}`), "pre_tokenizer.pattern.Regex"},
		{base(bpe, `{"type":"Split","pattern":{"Regex":"a"},"behavior":"MergedWithNext","invert":false}`), "pre_tokenizer.behavior"},
		{strings.Replace(base(bpe, "null"), `"normalizer":null`, `"normalizer":{"type":"NFKC"}`, 1), "normalizer.type"},
		{strings.Replace(base(bpe, "null"), `{"type":"ByteLevel"}`, `{"type":"WordPiece"}`, 1), "decoder.type"},
		{base(`{"type":"BPE","vocab":{"a":0,"b":1},"merges":["a b"]}`, "null"), "model.merges[0]"},
		{strings.Replace(base(bpe, "null"), `"added_tokens":[]`, `"added_tokens":[{"id":7,"content":"<s>","special":true}]`, 1), "added_tokens[0].id"},
	}
	for _, c := range cases {
		_, err := ParseJSON([]byte(c.js), "t.json")
		var fe *FileError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("want an error naming %s, got %v", c.field, err)
		}
	}
	_, err := ParseJSON([]byte(base(`{"type":"WordPiece","vocab":{}}`, "null")), "t.json")
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("unsupported model: %v does not match ErrUnsupported", err)
	}
}

func TestTiktokenUnknownEncodingNeedsPattern(t *testing.T) {
	_, err := ParseTiktoken([]byte("YQ== 0\nYg== 1\n"), "x.tiktoken", TiktokenOptions{})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "--pattern") {
		t.Fatalf("got %v", err)
	}
	_, err = ParseTiktoken([]byte("YQ== 0\nYg== 5\n"), "x.tiktoken", TiktokenOptions{Pattern: PatternGPT2})
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("out-of-order rank: %v", err)
	}
}

// The tiktoken form of a trained tokenizer reads back as a tiktoken file
// with the same vocabulary, and round-trips text.
func TestTiktokenRoundTrip(t *testing.T) {
	tok := trainSmall(t, 900)
	ranks, err := tok.Tiktoken()
	if err != nil {
		t.Fatal(err)
	}
	tt, err := ParseTiktoken(ranks, "trained.tiktoken", TiktokenOptions{Pattern: PatternGPT2, Specials: map[string]int32{}})
	if err != nil {
		t.Fatal(err)
	}
	if tt.VocabSize() != tok.VocabSize() {
		t.Fatalf("vocab %d, want %d", tt.VocabSize(), tok.VocabSize())
	}
	same, n := 0, 0
	for _, d := range mixedCorpus(30 << 10) {
		a, b := tok.EncodeOrdinary(nil, []byte(d)), tt.Encode(nil, []byte(d))
		if back, _ := tt.Decode(nil, b); string(back) != d {
			t.Fatalf("tiktoken form: decode(encode(%q)) = %q", clip(d, 40), clip(string(back), 40))
		}
		n++
		if equalIDs(a, b) {
			same++
		}
	}
	t.Logf("%d of %d documents encode to the same ids under tiktoken's rules", same, n)
}

func FuzzRoundTrip(f *testing.F) {
	for _, d := range mixedCorpus(8 << 10) {
		f.Add(d)
	}
	f.Add("\xff\xfe invalid \xc3 utf-8")
	tok := trainSmall(f, 600)
	f.Fuzz(func(t *testing.T, s string) {
		ids := tok.Encode(nil, []byte(s))
		back, err := tok.DecodeAll(nil, ids)
		if err != nil || string(back) != s {
			t.Fatalf("decode(encode(%q)) = %q, %v", s, back, err)
		}
		ord := tok.EncodeOrdinary(nil, []byte(s))
		back, err = tok.Decode(nil, ord)
		if err != nil || string(back) != s {
			t.Fatalf("ordinary: decode(encode(%q)) = %q, %v", s, back, err)
		}
		if utf8.ValidString(s) && !strings.Contains(s, "<|") {
			if !equalIDs(ids, ord) {
				t.Fatalf("Encode and EncodeOrdinary differ on %q without added tokens", s)
			}
		}
	})
}

func FuzzParseJSON(f *testing.F) {
	tok := trainSmall(f, 300)
	f.Add(string(tok.JSON()))
	f.Add(`{"model":{"type":"BPE","vocab":{"a":0},"merges":[["a","a"]]}}`)
	f.Add(`{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"],"byte_fallback":true,"unk_token":"a"},"pre_tokenizer":{"type":"Metaspace"},"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"x"}]}}`)
	f.Fuzz(func(t *testing.T, s string) {
		tk, err := ParseJSON([]byte(s), "fuzz.json")
		if err != nil {
			return
		}
		ids := tk.Encode(nil, []byte("hello world 中文 <|end_of_text|>"))
		for _, id := range ids {
			if id < 0 || int(id) >= tk.VocabSize() {
				t.Fatalf("id %d outside the vocabulary of %d", id, tk.VocabSize())
			}
		}
		if _, err := tk.Decode(nil, ids); err != nil {
			t.Fatalf("decode of its own ids: %v", err)
		}
	})
}

// Encoding the two sides of a SafeCut separately gives the ids of the
// whole, for GPT-2's and LLaMA-3's patterns, on every cut of the corpus.
func TestSafeCut(t *testing.T) {
	gpt2 := trainSmall(t, 700)
	l3js, err := hfWriter{pattern: PatternLlama3, vocab: rawVocab(gpt2), merges: nil}.encode()
	if err != nil {
		t.Fatal(err)
	}
	l3, err := ParseJSON(l3js, "l3")
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []*Tokenizer{gpt2, l3} {
		cuts := 0
		for _, d := range mixedCorpus(30 << 10) {
			text := []byte(d)
			whole := tok.Encode(nil, text)
			for end := len(text); end > 0; {
				p := tok.SafeCut(text[:end])
				if p <= 0 {
					break
				}
				cuts++
				got := append(tok.Encode(nil, text[:p]), tok.Encode(nil, text[p:])...)
				if !equalIDs(got, whole) {
					t.Fatalf("%s: cut at %d of %q… changes the ids", tok.Name(), p, clip(string(text[max(0, p-20):]), 40))
				}
				end = p - 601 // a sample of the cuts keeps the test quick
			}
		}
		if cuts < 40 {
			t.Fatalf("%s: only %d safe cuts found in the corpus", tok.Name(), cuts)
		}
		t.Logf("%s: %d cuts checked", tok.Name(), cuts)
	}
}

func rawVocab(t *Tokenizer) [][]byte {
	v := make([][]byte, t.VocabSize())
	for id := range v {
		if !t.special[int32(id)] {
			v[id] = t.raw[id]
		}
	}
	return v
}
