// Package tokenizer owns Loom's text tokenizers: byte-level BPE read from
// Hugging Face tokenizer.json files and tiktoken rank files, encoding and
// decoding with the same ids as the reference libraries, and BPE training
// that reproduces the Hugging Face trainer's merges.
//
// A [Tokenizer] is built once and then safe for concurrent use. Its
// pipeline is the one Hugging Face's tokenizers library runs for
// encode(text, add_special_tokens=False):
//
//  1. added tokens (special or not) are split out of the text first,
//     longest match at the leftmost position, honouring lstrip, rstrip and
//     single_word;
//  2. each remaining segment is normalized (Prepend, Replace, Sequence);
//  3. pre-tokenized into pieces (ByteLevel with its GPT-2 split regex,
//     Split with a regex, Metaspace, Sequence);
//  4. each piece is encoded by BPE: byte-level symbols (or characters with
//     byte fallback), merged by rank, lowest rank first and leftmost on a
//     tie; with ignore_merges (and always for tiktoken files) a piece that
//     is itself in the vocabulary is one token.
//
// The split regexes of GPT-2, LLaMA-3 / cl100k and their relatives are
// matched by hand-written scanners (Go's regexp has no look-ahead, which
// `\s+(?!\S)` needs); other patterns run on regexp with the trailing
// whitespace alternatives emulated, and a pattern that still cannot be
// expressed is refused, naming the field. Every part of a tokenizer.json
// Loom does not implement is refused the same way.
package tokenizer
