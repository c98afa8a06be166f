// Package model owns the LLaMA decoder: its configuration, the flat parameter layout with Hugging Face names, and forward/backward passes built on tensor.Kernels.
package model

import (
	"errors"
	"fmt"
	"math"
)

// Config describes a LLaMA-architecture model (Hugging Face LlamaForCausalLM
// with head_dim = Dim/NHeads, no biases, SwiGLU MLP, RMSNorm, rotary
// embeddings). It is a plain value; check it with Validate.
type Config struct {
	VocabSize     int     // V: number of token ids; tokens are int32 in [0, V)
	Dim           int     // d: hidden size
	NLayers       int     // number of decoder blocks
	NHeads        int     // query heads; must divide Dim
	NKVHeads      int     // key/value heads; must divide NHeads (GQA)
	FFNHidden     int     // intermediate size of the MLP
	SeqLen        int     // maximum context length (RoPE tables are built for it)
	RopeTheta     float64 // RoPE base, e.g. 10000
	NormEps       float64 // RMSNorm epsilon, e.g. 1e-5
	TieEmbeddings bool    // lm_head shares model.embed_tokens.weight
}

// ErrInvalidConfig is the class of every error Validate returns.
var ErrInvalidConfig = errors.New("invalid model config")

// FieldError reports one bad Config field: its name, its value and what is allowed.
type FieldError struct {
	Field   string
	Value   any
	Allowed string
}

// Error implements error.
func (e *FieldError) Error() string {
	return fmt.Sprintf("model config: %s = %v: must be %s", e.Field, e.Value, e.Allowed)
}

// Unwrap makes errors.Is(err, ErrInvalidConfig) true.
func (e *FieldError) Unwrap() error { return ErrInvalidConfig }

// Validate reports every invalid field at once (joined *FieldError values).
func (c Config) Validate() error {
	var errs []error
	bad := func(field string, value any, allowed string) {
		errs = append(errs, &FieldError{Field: field, Value: value, Allowed: allowed})
	}
	if c.VocabSize < 1 || c.VocabSize > math.MaxInt32 {
		bad("VocabSize", c.VocabSize, "in [1, 2^31-1] (tokens are int32)")
	}
	if c.Dim < 1 {
		bad("Dim", c.Dim, ">= 1")
	}
	if c.NLayers < 1 {
		bad("NLayers", c.NLayers, ">= 1")
	}
	if c.NHeads < 1 {
		bad("NHeads", c.NHeads, ">= 1")
	} else if c.Dim >= 1 {
		if c.Dim%c.NHeads != 0 {
			bad("NHeads", c.NHeads, fmt.Sprintf("a divisor of Dim (%d)", c.Dim))
		} else if (c.Dim/c.NHeads)%2 != 0 {
			bad("NHeads", c.NHeads, fmt.Sprintf("such that head dim Dim/NHeads = %d is even (RoPE rotates pairs)", c.Dim/c.NHeads))
		}
	}
	if c.NKVHeads < 1 {
		bad("NKVHeads", c.NKVHeads, ">= 1")
	} else if c.NHeads >= 1 && c.NHeads%c.NKVHeads != 0 {
		bad("NKVHeads", c.NKVHeads, fmt.Sprintf("a divisor of NHeads (%d)", c.NHeads))
	}
	if c.FFNHidden < 1 {
		bad("FFNHidden", c.FFNHidden, ">= 1")
	}
	if c.SeqLen < 1 {
		bad("SeqLen", c.SeqLen, ">= 1")
	}
	if !(c.RopeTheta > 0) || math.IsInf(c.RopeTheta, 0) {
		bad("RopeTheta", c.RopeTheta, "finite and > 0")
	}
	if !(c.NormEps > 0) || math.IsInf(c.NormEps, 0) {
		bad("NormEps", c.NormEps, "finite and > 0")
	}
	return errors.Join(errs...)
}

// HeadDim is Dim/NHeads.
func (c Config) HeadDim() int { return c.Dim / c.NHeads }

// qDim is the width of the query projection, NHeads·HeadDim (= Dim).
func (c Config) qDim() int { return c.NHeads * c.HeadDim() }

// kvDim is the width of the key and value projections, NKVHeads·HeadDim.
func (c Config) kvDim() int { return c.NKVHeads * c.HeadDim() }

// blockParams is the number of parameters in one decoder block.
func (c Config) blockParams() int {
	d := c.Dim
	return 2*d + 2*c.qDim()*d + 2*c.kvDim()*d + 3*c.FFNHidden*d
}

// NumParams is the length of the flat parameter buffer (every parameter once;
// a tied head is not counted twice).
func (c Config) NumParams() int {
	n := c.VocabSize*c.Dim + c.NLayers*c.blockParams() + c.Dim
	if !c.TieEmbeddings {
		n += c.VocabSize * c.Dim
	}
	return n
}

// MatmulParams is N for FLOP accounting: every weight that takes part in a
// matrix multiply — all attention and MLP projections plus the LM head (counted
// even when tied to the embedding) — excluding the input embedding, which is a
// lookup, and the norm weights.
func (c Config) MatmulParams() int64 {
	d := int64(c.Dim)
	perBlock := 2*int64(c.qDim())*d + 2*int64(c.kvDim())*d + 3*int64(c.FFNHidden)*d
	return int64(c.NLayers)*perBlock + int64(c.VocabSize)*d
}

// TrainFLOPsPerToken is the model FLOPs of one training token (forward and
// backward) at context length seqLen, for MFU: 6·N + 12·NLayers·NHeads·HeadDim·seqLen
// (PaLM, appendix B). The attention term counts the full T×T score matrix, not
// the causal half, as is conventional.
func (c Config) TrainFLOPsPerToken(seqLen int) float64 {
	return 6*float64(c.MatmulParams()) + 12*float64(c.NLayers)*float64(c.qDim())*float64(seqLen)
}
