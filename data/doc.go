// Package data owns Loom's training data: the Tokenizer interface (the byte
// tokenizer here, BPE in package tokenizer, both through [LoadTokenizer]),
// the token file format (a nanoGPT-style little-endian array of token ids
// with a JSON sidecar), the streaming preparation of text corpora into
// token files, and the memory-mapped loader that turns token files into
// training windows: blended by weight over several sources, with a
// validation split ([OpenDataset]).
//
// # Token file format
//
// A token file FILE is a plain little-endian array of token ids, each
// [Meta.TokenBytes] wide: uint16 when every id fits (vocabulary ≤ 65,536),
// uint32 otherwise. This is exactly the layout of nanoGPT's train.bin. Beside
// it, FILE.json (the sidecar, see [Meta]) records the format version,
// vocabulary size, token width, token count, document count, the input
// bytes, the tokenizer ("byte" or its file) with the file's SHA-256, and the
// SHA-256 of the array. Every document is followed by the
// tokenizer's EOS id. The sidecar is written after the array, so a present
// sidecar describes a complete array.
//
// # Windows
//
// With sequence length T, window i holds tokens [i·T, i·T+T+1): the first T
// are the inputs and the last T the targets (inputs shifted by one). There
// are (ntokens−1)/T windows. Training step s with a global batch of G
// windows uses the global sample indices s·G … s·G+G−1; sample j is position
// j mod nwin of epoch j / nwin, and each epoch visits the windows in its own
// permutation derived from (seed, epoch) by [EpochPermutation], which is
// implemented here (SplitMix64 and Fisher–Yates) so that it never changes
// with the Go version.
//
// # Blends
//
// With several sources ([NewBlendLoader]), global sample j falls in block
// j / [BlendBlock], which holds a fixed number of each source's samples
// (their weights, by largest remainder) in a fixed interleave; source d's
// k-th sample is then its window k as above, with a seed derived from
// (seed, d). A step's windows stay a pure function of (seed, step).
package data
