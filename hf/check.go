package hf

import (
	"errors"
	"fmt"
	"slices"

	"github.com/loomtrain/loom/safetensors"
)

// Error classes for checkpoint contents; each problem is a *TensorError.
var (
	// ErrMissingTensor marks an expected tensor absent from the checkpoint.
	ErrMissingTensor = errors.New("missing tensor")
	// ErrShapeMismatch marks a tensor whose shape differs from the expected one.
	ErrShapeMismatch = errors.New("shape mismatch")
	// ErrUnexpectedTensor marks a tensor present but not expected.
	ErrUnexpectedTensor = errors.New("unexpected tensor")
)

// TensorShape names a tensor and its expected shape, e.g.
// {"model.embed_tokens.weight", [V, d]}.
type TensorShape struct {
	Name  string
	Shape []int64
}

// TensorError describes one expected-vs-actual disagreement.
type TensorError struct {
	Dir    string  // model directory
	File   string  // file holding the tensor, when it exists
	Tensor string  // tensor name
	Want   []int64 // expected shape
	Got    []int64 // actual shape, when the tensor exists
	Msg    string
	Err    error // ErrMissingTensor, ErrShapeMismatch, ErrUnexpectedTensor, or safetensors.ErrUnsupportedDType
}

// Error implements error.
func (e *TensorError) Error() string {
	where := e.File
	if where == "" {
		where = e.Dir
	}
	return fmt.Sprintf("hf: %s: tensor %q: %s", where, e.Tensor, e.Msg)
}

// Unwrap returns the error class.
func (e *TensorError) Unwrap() error { return e.Err }

// Check verifies that every expected tensor is present with the expected
// shape and a float dtype (F32, F16 or BF16). All problems are reported at
// once. Tensors not in want are allowed; see Unexpected.
func (t *Tensors) Check(want []TensorShape) error {
	var errs []error
	for _, w := range want {
		info, path, ok := t.Info(w.Name)
		switch {
		case !ok:
			errs = append(errs, &TensorError{Dir: t.dir, Tensor: w.Name, Want: w.Shape,
				Msg: fmt.Sprintf("missing; want shape %v (files: %v)", w.Shape, t.paths()), Err: ErrMissingTensor})
		case !slices.Equal(info.Shape, w.Shape):
			errs = append(errs, &TensorError{Dir: t.dir, File: path, Tensor: w.Name, Want: w.Shape, Got: info.Shape,
				Msg: fmt.Sprintf("shape %v, want %v", info.Shape, w.Shape), Err: ErrShapeMismatch})
		case info.DType != safetensors.F32 && info.DType != safetensors.F16 && info.DType != safetensors.BF16:
			errs = append(errs, &TensorError{Dir: t.dir, File: path, Tensor: w.Name, Want: w.Shape, Got: info.Shape,
				Msg: fmt.Sprintf("dtype %s; want F32, F16 or BF16", info.DType), Err: safetensors.ErrUnsupportedDType})
		}
	}
	return errors.Join(errs...)
}

// Unexpected returns the names of tensors in the checkpoint that want does
// not list, sorted.
func (t *Tensors) Unexpected(want []TensorShape) []string {
	expected := make(map[string]bool, len(want))
	for _, w := range want {
		expected[w.Name] = true
	}
	var extra []string
	for _, n := range t.Names() {
		if !expected[n] {
			extra = append(extra, n)
		}
	}
	return extra
}

func (t *Tensors) paths() []string {
	out := make([]string, len(t.files))
	for i, f := range t.files {
		out[i] = f.Path()
	}
	return out
}

// checkShapes requires tensors to be exactly LlamaTensorShapes(cfg), so a
// saved directory loads in transformers without missing or unexpected keys.
func checkShapes(dir string, cfg Config, tensors []safetensors.Tensor) error {
	want := LlamaTensorShapes(cfg)
	got := make(map[string][]int64, len(tensors))
	for _, t := range tensors {
		got[t.Name] = t.Shape
	}
	expected := make(map[string]bool, len(want))
	var errs []error
	for _, w := range want {
		expected[w.Name] = true
		s, ok := got[w.Name]
		switch {
		case !ok:
			errs = append(errs, &TensorError{Dir: dir, Tensor: w.Name, Want: w.Shape, Msg: fmt.Sprintf("missing from the tensors to save; want shape %v", w.Shape), Err: ErrMissingTensor})
		case !slices.Equal(s, w.Shape):
			errs = append(errs, &TensorError{Dir: dir, Tensor: w.Name, Want: w.Shape, Got: s, Msg: fmt.Sprintf("shape %v, want %v", s, w.Shape), Err: ErrShapeMismatch})
		}
	}
	for _, t := range tensors {
		if !expected[t.Name] {
			errs = append(errs, &TensorError{Dir: dir, Tensor: t.Name, Got: t.Shape, Msg: "not a LlamaForCausalLM weight for this config (tied embeddings have no lm_head.weight)", Err: ErrUnexpectedTensor})
		}
	}
	return errors.Join(errs...)
}

// LlamaTensorShapes lists the weights of transformers' LlamaForCausalLM for
// cfg, in the order HF's state_dict lists them. Shapes are HF's
// [out_features, in_features] for linear layers. Note that HF stores q_proj and
// k_proj rows permuted for the rotate-half RoPE layout, unlike Meta's
// interleaved layout; mapping to Loom's layout is the model code's concern.
func LlamaTensorShapes(cfg Config) []TensorShape {
	d, v, ffn := int64(cfg.HiddenSize), int64(cfg.VocabSize), int64(cfg.IntermediateSize)
	hd := int64(cfg.HeadDim)
	if hd == 0 && cfg.NumAttentionHeads > 0 {
		hd = d / int64(cfg.NumAttentionHeads)
	}
	q, kv := int64(cfg.NumAttentionHeads)*hd, int64(cfg.NumKeyValueHeads)*hd
	out := []TensorShape{{"model.embed_tokens.weight", []int64{v, d}}}
	for l := range cfg.NumHiddenLayers {
		p := fmt.Sprintf("model.layers.%d.", l)
		out = append(out,
			TensorShape{p + "self_attn.q_proj.weight", []int64{q, d}},
			TensorShape{p + "self_attn.k_proj.weight", []int64{kv, d}},
			TensorShape{p + "self_attn.v_proj.weight", []int64{kv, d}},
			TensorShape{p + "self_attn.o_proj.weight", []int64{d, q}},
			TensorShape{p + "mlp.gate_proj.weight", []int64{ffn, d}},
			TensorShape{p + "mlp.up_proj.weight", []int64{ffn, d}},
			TensorShape{p + "mlp.down_proj.weight", []int64{d, ffn}},
			TensorShape{p + "input_layernorm.weight", []int64{d}},
			TensorShape{p + "post_attention_layernorm.weight", []int64{d}},
		)
	}
	out = append(out, TensorShape{"model.norm.weight", []int64{d}})
	if !cfg.TieWordEmbeddings {
		out = append(out, TensorShape{"lm_head.weight", []int64{v, d}})
	}
	return out
}
