package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrUnsupported is the class of errors about a tokenizer file that uses a
// part Loom does not implement; match it with errors.Is.
var ErrUnsupported = errors.New("unsupported tokenizer")

// FileError reports a problem in a tokenizer file, naming the JSON field
// (e.g. "pre_tokenizer.pretokenizers[0].pattern.Regex").
type FileError struct {
	Path    string
	Field   string
	Problem string
	// Unsupported marks a valid file using a part Loom does not implement.
	Unsupported bool
}

// Error returns "tokenizer: PATH: FIELD: PROBLEM".
func (e *FileError) Error() string {
	s := "tokenizer: " + e.Path + ": "
	if e.Field != "" {
		s += e.Field + ": "
	}
	return s + e.Problem
}

// Unwrap returns ErrUnsupported for an unsupported part.
func (e *FileError) Unwrap() error {
	if e.Unsupported {
		return ErrUnsupported
	}
	return nil
}

type hfFile struct {
	Version       string          `json:"version"`
	Truncation    json.RawMessage `json:"truncation"`
	Padding       json.RawMessage `json:"padding"`
	AddedTokens   []hfAdded       `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         json.RawMessage `json:"model"`
}

type hfAdded struct {
	ID         int32  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type hfBPE struct {
	Type                    string           `json:"type"`
	Dropout                 *float64         `json:"dropout"`
	UnkToken                *string          `json:"unk_token"`
	ContinuingSubwordPrefix *string          `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string          `json:"end_of_word_suffix"`
	FuseUnk                 bool             `json:"fuse_unk"`
	ByteFallback            bool             `json:"byte_fallback"`
	IgnoreMerges            bool             `json:"ignore_merges"`
	Vocab                   map[string]int32 `json:"vocab"`
	Merges                  json.RawMessage  `json:"merges"`
}

// component is any typed part (normalizer, pre-tokenizer, decoder).
type component struct {
	Type string `json:"type"`
	// Sequence members.
	Normalizers   []json.RawMessage `json:"normalizers"`
	Pretokenizers []json.RawMessage `json:"pretokenizers"`
	Decoders      []json.RawMessage `json:"decoders"`
	// ByteLevel.
	AddPrefixSpace *bool `json:"add_prefix_space"`
	UseRegex       *bool `json:"use_regex"`
	// Split, Replace.
	Pattern  *hfPattern `json:"pattern"`
	Behavior string     `json:"behavior"`
	Invert   bool       `json:"invert"`
	Content  *string    `json:"content"`
	// Prepend.
	Prepend *string `json:"prepend"`
	// Metaspace.
	Replacement   *string `json:"replacement"`
	PrependScheme string  `json:"prepend_scheme"`
	Split         *bool   `json:"split"`
	// Strip.
	Start int `json:"start"`
	Stop  int `json:"stop"`
}

type hfPattern struct {
	Regex  *string `json:"Regex"`
	String *string `json:"String"`
}

// Load reads a tokenizer: a Hugging Face tokenizer.json, a directory
// holding one (a Hugging Face model directory), or a tiktoken rank file
// (lines of base64 token and rank, e.g. cl100k_base.tiktoken or LLaMA-3's
// tokenizer.model).
func Load(path string) (*Tokenizer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if st.IsDir() {
		p := filepath.Join(path, "tokenizer.json")
		if _, err := os.Stat(p); err != nil {
			if m := filepath.Join(path, "tokenizer.model"); fileExists(m) {
				return Load(m)
			}
			return nil, fmt.Errorf("tokenizer: %s holds no tokenizer.json (a Hugging Face model directory has one; or pass a tiktoken file)", path)
		}
		t, err := Load(p)
		if err != nil {
			return nil, err
		}
		if err := t.applyConfig(filepath.Join(path, "tokenizer_config.json")); err != nil {
			return nil, err
		}
		return t, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		return ParseJSON(b, path)
	}
	return ParseTiktoken(b, path, TiktokenOptions{})
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// ParseJSON builds a tokenizer from the bytes of a tokenizer.json; name
// names the file in errors and becomes the tokenizer's Name.
func ParseJSON(b []byte, name string) (*Tokenizer, error) {
	bad := func(field, format string, a ...any) error {
		return &FileError{Path: name, Field: field, Problem: fmt.Sprintf(format, a...)}
	}
	unsupported := func(field, format string, a ...any) error {
		return &FileError{Path: name, Field: field, Problem: fmt.Sprintf(format, a...), Unsupported: true}
	}
	var f hfFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, bad("", "not a tokenizer.json: %v", err)
	}
	if len(f.Model) == 0 || string(f.Model) == "null" {
		return nil, bad("model", "missing")
	}
	var m hfBPE
	if err := json.Unmarshal(f.Model, &m); err != nil {
		return nil, bad("model", "%v", err)
	}
	if m.Type != "BPE" && m.Type != "" {
		return nil, unsupported("model.type", "%q is not supported (Loom reads BPE models)", m.Type)
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, unsupported("model.dropout", "%g: BPE dropout is for training-time regularization, not supported", *m.Dropout)
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, unsupported("model.continuing_subword_prefix", "%q is not supported", *m.ContinuingSubwordPrefix)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, unsupported("model.end_of_word_suffix", "%q is not supported", *m.EndOfWordSuffix)
	}
	t := &Tokenizer{name: name, sha: sha256Hex(b), json: b, special: map[int32]bool{}}

	// Pre-tokenizer first: it decides whether the model is byte-level.
	byteLevel := false
	var buildPre func(raw json.RawMessage, field string) error
	buildPre = func(raw json.RawMessage, field string) error {
		if isNull(raw) {
			return nil
		}
		var c component
		if err := json.Unmarshal(raw, &c); err != nil {
			return bad(field, "%v", err)
		}
		switch c.Type {
		case "Sequence":
			for i, p := range c.Pretokenizers {
				if err := buildPre(p, fmt.Sprintf("%s.pretokenizers[%d]", field, i)); err != nil {
					return err
				}
			}
		case "ByteLevel":
			byteLevel = true
			if c.AddPrefixSpace != nil && *c.AddPrefixSpace {
				t.pre = append(t.pre, prefixSpaceStep{})
			}
			if c.UseRegex == nil || *c.UseRegex {
				t.pre = append(t.pre, splitStep{s: gpt2Splitter{}, keep: true})
			}
		case "Split":
			if c.Invert {
				return unsupported(field+".invert", "true is not supported")
			}
			keep := true
			switch c.Behavior {
			case "Isolated":
			case "Removed":
				keep = false
			default:
				return unsupported(field+".behavior", "%q is not supported (Isolated, Removed)", c.Behavior)
			}
			var s splitter
			switch {
			case c.Pattern != nil && c.Pattern.Regex != nil:
				var err error
				if s, err = newSplitter(*c.Pattern.Regex, field+".pattern.Regex"); err != nil {
					return &FileError{Path: name, Problem: err.Error(), Unsupported: true}
				}
			case c.Pattern != nil && c.Pattern.String != nil && *c.Pattern.String != "":
				var err error
				if s, err = newRegexpSplitter(regexpQuote(*c.Pattern.String), field+".pattern.String"); err != nil {
					return &FileError{Path: name, Problem: err.Error(), Unsupported: true}
				}
			default:
				return bad(field+".pattern", "want {\"Regex\": …} or {\"String\": …}")
			}
			t.pre = append(t.pre, splitStep{s: s, keep: keep})
		case "Metaspace":
			ms, err := metaspace(c, field, bad)
			if err != nil {
				return err
			}
			t.pre = append(t.pre, ms)
		default:
			return unsupported(field+".type", "%q is not supported (ByteLevel, Split, Metaspace, Sequence)", c.Type)
		}
		return nil
	}
	if err := buildPre(f.PreTokenizer, "pre_tokenizer"); err != nil {
		return nil, err
	}

	var buildNorm func(raw json.RawMessage, field string) error
	buildNorm = func(raw json.RawMessage, field string) error {
		if isNull(raw) {
			return nil
		}
		var c component
		if err := json.Unmarshal(raw, &c); err != nil {
			return bad(field, "%v", err)
		}
		switch c.Type {
		case "Sequence":
			for i, n := range c.Normalizers {
				if err := buildNorm(n, fmt.Sprintf("%s.normalizers[%d]", field, i)); err != nil {
					return err
				}
			}
		case "Prepend":
			if c.Prepend == nil {
				return bad(field+".prepend", "missing")
			}
			t.normalizers = append(t.normalizers, prependNorm{[]byte(*c.Prepend)})
		case "Replace":
			if c.Pattern == nil || c.Pattern.String == nil || *c.Pattern.String == "" {
				return unsupported(field+".pattern", "only a non-empty {\"String\": …} pattern is supported")
			}
			if c.Content == nil {
				return bad(field+".content", "missing")
			}
			t.normalizers = append(t.normalizers, replaceNorm{[]byte(*c.Pattern.String), []byte(*c.Content)})
		default:
			return unsupported(field+".type", "%q is not supported (Prepend, Replace, Sequence)", c.Type)
		}
		return nil
	}
	if err := buildNorm(f.Normalizer, "normalizer"); err != nil {
		return nil, err
	}

	var buildDec func(raw json.RawMessage, field string) error
	buildDec = func(raw json.RawMessage, field string) error {
		var c component
		if err := json.Unmarshal(raw, &c); err != nil {
			return bad(field, "%v", err)
		}
		switch c.Type {
		case "Sequence":
			for i, d := range c.Decoders {
				if err := buildDec(d, fmt.Sprintf("%s.decoders[%d]", field, i)); err != nil {
					return err
				}
			}
		case "ByteLevel":
			t.decoders = append(t.decoders, byteLevelDecoder{})
		case "Replace":
			if c.Pattern == nil || c.Pattern.String == nil || *c.Pattern.String == "" || c.Content == nil {
				return unsupported(field+".pattern", "only a {\"String\": …} pattern with content is supported")
			}
			t.decoders = append(t.decoders, replaceDecoder{[]byte(*c.Pattern.String), []byte(*c.Content)})
		case "ByteFallback":
			t.decoders = append(t.decoders, byteFallbackDecoder{})
		case "Fuse":
			t.decoders = append(t.decoders, fuseDecoder{})
		case "Strip":
			if c.Content == nil {
				return bad(field+".content", "missing")
			}
			t.decoders = append(t.decoders, stripDecoder{[]byte(*c.Content), c.Start, c.Stop})
		case "Metaspace":
			ms, err := metaspace(c, field, bad)
			if err != nil {
				return err
			}
			t.decoders = append(t.decoders, metaspaceDecoder{repl: ms.repl, prepend: ms.prepend != "never"})
		default:
			return unsupported(field+".type", "%q is not supported (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)", c.Type)
		}
		return nil
	}
	if isNull(f.Decoder) {
		t.decoders = append(t.decoders, joinDecoder{})
	} else if err := buildDec(f.Decoder, "decoder"); err != nil {
		return nil, err
	}
	t.plainByteDecode = len(t.decoders) == 1 && t.decoders[0] == decoder(byteLevelDecoder{})

	// Vocabulary and merges.
	maxID := int32(-1)
	for tok, id := range m.Vocab {
		if id < 0 {
			return nil, bad("model.vocab", "token %q has negative id %d", tok, id)
		}
		maxID = max(maxID, id)
	}
	for i, a := range f.AddedTokens {
		if a.ID < 0 {
			return nil, bad(fmt.Sprintf("added_tokens[%d].id", i), "negative id %d", a.ID)
		}
		maxID = max(maxID, a.ID)
	}
	if maxID < 0 {
		return nil, bad("model.vocab", "empty vocabulary")
	}
	if maxID >= 1<<30 {
		return nil, bad("model.vocab", "id %d is too large", maxID)
	}
	t.vocabSize = int(maxID) + 1
	t.tokens = make([]string, t.vocabSize)
	t.raw = make([][]byte, t.vocabSize)
	mdl := bpeModel{vocab: make(map[string]int32, len(m.Vocab)), byteLevel: byteLevel, unk: -1,
		fuseUnk: m.FuseUnk, byteFallback: m.ByteFallback, wholeFirst: m.IgnoreMerges}
	for i := range mdl.byteID {
		mdl.byteID[i], mdl.byteFallbackID[i] = -1, -1
	}
	for tok, id := range m.Vocab {
		if t.tokens[id] != "" {
			return nil, bad("model.vocab", "id %d is given to both %q and %q", id, t.tokens[id], tok)
		}
		t.tokens[id] = tok
		if byteLevel {
			raw, ok := byteLevelBytes(tok)
			t.raw[id] = raw
			if ok {
				mdl.vocab[string(raw)] = id
				if len(raw) == 1 {
					mdl.byteID[raw[0]] = id
				}
			}
		} else {
			t.raw[id] = []byte(tok)
			mdl.vocab[tok] = id
			if b, ok := parseByteToken([]byte(tok)); ok {
				mdl.byteFallbackID[b] = id
			}
		}
	}
	if m.UnkToken != nil && *m.UnkToken != "" {
		id, ok := m.Vocab[*m.UnkToken]
		if !ok {
			return nil, bad("model.unk_token", "%q is not in model.vocab", *m.UnkToken)
		}
		mdl.unk = id
	}
	merges, err := parseMerges(m.Merges)
	if err != nil {
		return nil, bad("model.merges", "%v", err)
	}
	mdl.merges = make(map[uint64]merge, len(merges))
	for i, mg := range merges {
		a, okA := m.Vocab[mg[0]]
		b, okB := m.Vocab[mg[1]]
		c, okC := m.Vocab[mg[0]+mg[1]]
		if !okA || !okB || !okC {
			return nil, bad(fmt.Sprintf("model.merges[%d]", i), "%q + %q: a part or the merged token %q is not in model.vocab", mg[0], mg[1], mg[0]+mg[1])
		}
		k := pairKey(a, b)
		if _, dup := mdl.merges[k]; !dup { // Hugging Face keeps the first rank of a repeated pair
			mdl.merges[k] = merge{rank: int32(i), id: c}
		}
	}
	t.model = mdl

	// Hugging Face gives an added token its model.vocab id, else the next
	// free id in file order, whatever id the file states; refuse a file
	// where the two differ rather than guess.
	maxAdded, nvocab := int32(-1), int32(len(m.Vocab))
	for i, a := range f.AddedTokens {
		want, ok := m.Vocab[a.Content]
		if !ok {
			want = nvocab
			if maxAdded >= nvocab || nvocab == 0 {
				want = maxAdded + 1
			}
		}
		maxAdded = max(maxAdded, want)
		if want != a.ID {
			return nil, bad(fmt.Sprintf("added_tokens[%d].id", i), "%q has id %d, but Hugging Face gives it id %d (added tokens not in model.vocab take the next free id in file order: list them by id)", a.Content, a.ID, want)
		}
	}
	for i, a := range f.AddedTokens {
		if a.Content == "" {
			return nil, bad(fmt.Sprintf("added_tokens[%d].content", i), "empty")
		}
		if t.tokens[a.ID] != "" && t.tokens[a.ID] != a.Content {
			return nil, bad(fmt.Sprintf("added_tokens[%d]", i), "id %d is %q in model.vocab but %q here", a.ID, t.tokens[a.ID], a.Content)
		}
		t.tokens[a.ID] = a.Content
		t.raw[a.ID] = []byte(a.Content)
		at := addedToken{id: a.ID, content: []byte(a.Content), lstrip: a.LStrip, rstrip: a.RStrip, single: a.SingleWord, special: a.Special, normalizedFlag: a.Normalized}
		if a.Normalized && len(t.normalizers) > 0 {
			t.normAdded.add(at)
		} else {
			t.rawAdded.add(at)
		}
		if a.Special {
			t.special[a.ID] = true
		}
	}
	if byteLevel {
		// Added tokens decode to their content, never through the byte map.
		for _, a := range f.AddedTokens {
			t.raw[a.ID] = []byte(a.Content)
		}
	}
	t.setSpecialIDs(f.AddedTokens)
	return t, nil
}

// metaspace reads a Metaspace pre-tokenizer or decoder.
func metaspace(c component, field string, bad func(string, string, ...any) error) (metaspaceStep, error) {
	repl := "▁"
	if c.Replacement != nil {
		repl = *c.Replacement
	}
	scheme := c.PrependScheme
	if scheme == "" {
		scheme = "always"
		if c.AddPrefixSpace != nil && !*c.AddPrefixSpace {
			scheme = "never"
		}
	}
	switch scheme {
	case "always", "first", "never":
	default:
		return metaspaceStep{}, bad(field+".prepend_scheme", "%q: want always, first or never", scheme)
	}
	split := true
	if c.Split != nil {
		split = *c.Split
	}
	return metaspaceStep{repl: []byte(repl), prepend: scheme, split: split}, nil
}

type joinDecoder struct{}

func (joinDecoder) decode(toks [][]byte) [][]byte { return [][]byte{bytes.Join(toks, []byte{' '})} }

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null"
}

// parseMerges reads merges in either spelling: "a b" strings (split at
// the first space, as Hugging Face does) or ["a", "b"] pairs.
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var pairs [][2]string
	if err := json.Unmarshal(raw, &pairs); err == nil {
		return pairs, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err != nil {
		return nil, fmt.Errorf("want a list of \"a b\" strings or [\"a\", \"b\"] pairs: %v", err)
	}
	pairs = make([][2]string, len(strs))
	for i, s := range strs {
		a, b, ok := strings.Cut(s, " ")
		if !ok {
			return nil, fmt.Errorf("merge %d %q has no space between its two parts", i, s)
		}
		pairs[i] = [2]string{a, b}
	}
	return pairs, nil
}

func regexpQuote(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// setSpecialIDs picks BOS, EOS and pad among the added tokens by name, in
// order of preference.
func (t *Tokenizer) setSpecialIDs(added []hfAdded) {
	bosNames := []string{"<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>", "<|bos|>", "<|endoftext|>"}
	eosNames := []string{"<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>", "<|eos|>"}
	padNames := []string{"<|pad|>", "<pad>", "<|finetune_right_pad_id|>"}
	byName := map[string]int32{}
	for _, a := range added {
		byName[a.Content] = a.ID
	}
	pick := func(names []string) int32 {
		for _, n := range names {
			if id, ok := byName[n]; ok {
				return id
			}
		}
		return -1
	}
	t.bos, t.eos, t.pad = pick(bosNames), pick(eosNames), pick(padNames)
}

// applyConfig takes bos_token, eos_token and pad_token from a Hugging Face
// tokenizer_config.json when the file exists.
func (t *Tokenizer) applyConfig(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(b, &cfg); err != nil {
		return &FileError{Path: path, Problem: "not JSON: " + err.Error()}
	}
	ids := [3]int32{-1, -1, -1}
	for i, key := range []string{"bos_token", "eos_token", "pad_token"} {
		raw, ok := cfg[key]
		if !ok || isNull(raw) {
			continue
		}
		var name string
		if json.Unmarshal(raw, &name) != nil {
			var obj struct {
				Content string `json:"content"`
			}
			if json.Unmarshal(raw, &obj) != nil {
				return &FileError{Path: path, Field: key, Problem: "want a string or {\"content\": …}"}
			}
			name = obj.Content
		}
		id := int32(-1)
		for j, tok := range t.tokens {
			if tok == name {
				id = int32(j)
				break
			}
		}
		if id < 0 {
			return &FileError{Path: path, Field: key, Problem: fmt.Sprintf("%q is not a token of %s", name, t.name)}
		}
		ids[i] = id
	}
	return t.SetSpecial(ids[0], ids[1], ids[2])
}

// SetSpecial overrides the BOS, EOS and pad ids (e.g. from a model's
// tokenizer_config.json); −1 leaves one as it is.
func (t *Tokenizer) SetSpecial(bos, eos, pad int32) error {
	for _, id := range []int32{bos, eos, pad} {
		if id >= int32(t.vocabSize) {
			return fmt.Errorf("tokenizer %s: special id %d is outside the vocabulary of %d", t.name, id, t.vocabSize)
		}
	}
	if bos >= 0 {
		t.bos = bos
	}
	if eos >= 0 {
		t.eos = eos
	}
	if pad >= 0 {
		t.pad = pad
	}
	return nil
}

// hfWriter is the byte-level BPE tokenizer.json Loom writes (for trained
// and converted vocabularies).
type hfWriter struct {
	pattern      string // split regex; "" for ByteLevel's own (GPT-2)
	ignoreMerges bool
	vocab        [][]byte   // id → raw bytes (nil: an added token's id)
	merges       [][2]int32 // in rank order
	added        []hfAdded  // special and added tokens
}

// encode writes the tokenizer.json. Its keys and layout follow what
// Hugging Face's tokenizers library saves.
func (w hfWriter) encode() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [")
	added := append([]hfAdded(nil), w.added...)
	sort.Slice(added, func(i, j int) bool { return added[i].ID < added[j].ID })
	for i, a := range added {
		if i > 0 {
			b.WriteByte(',')
		}
		j, err := json.Marshal(a)
		if err != nil {
			return nil, err
		}
		b.WriteString("\n    ")
		b.Write(j)
	}
	b.WriteString("\n  ],\n  \"normalizer\": null,\n")
	if w.pattern == "" {
		b.WriteString(`  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},` + "\n")
	} else {
		p, _ := json.Marshal(w.pattern)
		fmt.Fprintf(&b, `  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": %s}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},`+"\n", p)
	}
	b.WriteString(`  "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},` + "\n")
	b.WriteString(`  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},` + "\n")
	fmt.Fprintf(&b, "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": %v,\n    \"vocab\": {", w.ignoreMerges)
	strs := make([]string, len(w.vocab))
	first := true
	for id, raw := range w.vocab {
		if raw == nil {
			continue
		}
		strs[id] = byteLevelString(raw)
		k, _ := json.Marshal(strs[id])
		if !first {
			b.WriteByte(',')
		}
		first = false
		fmt.Fprintf(&b, "\n      %s: %d", k, id)
	}
	b.WriteString("\n    },\n    \"merges\": [")
	for i, mg := range w.merges {
		if i > 0 {
			b.WriteByte(',')
		}
		x, _ := json.Marshal(strs[mg[0]])
		y, _ := json.Marshal(strs[mg[1]])
		fmt.Fprintf(&b, "\n      [%s, %s]", x, y)
	}
	b.WriteString("\n    ]\n  }\n}\n")
	return b.Bytes(), nil
}
