package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/hf"
	"github.com/loomtrain/loom/internal/atomicfile"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/safetensors"
	"github.com/loomtrain/loom/tensor"
)

// JobFile is the name of the job spec Loom writes beside a saved model.
const JobFile = "loom-job.yaml"

// Byte-tokenizer special ids, written to config.json so `transformers`
// generation stops where Loom's does.
const (
	bosID = 256
	eosID = 257
)

// ModelConfig converts the job spec's model section to the model's config.
// It is plan.ModelConfig.
func ModelConfig(s api.ModelSpec) model.Config { return plan.ModelConfig(s) }

// HFConfig converts a model config to a Hugging Face LlamaForCausalLM config.
func HFConfig(c model.Config) hf.Config {
	bos := bosID
	hc := hf.Config{
		Architectures: []string{hf.LlamaArchitecture}, ModelType: "llama",
		VocabSize: c.VocabSize, HiddenSize: c.Dim, IntermediateSize: c.FFNHidden,
		NumHiddenLayers: c.NLayers, NumAttentionHeads: c.NHeads, NumKeyValueHeads: c.NKVHeads,
		MaxPositionEmbeddings: c.SeqLen, RMSNormEps: c.NormEps, RopeTheta: c.RopeTheta,
		TieWordEmbeddings: c.TieEmbeddings, HiddenAct: "silu", TorchDtype: "float32",
		InitializerRange: model.InitStd, UseCache: true,
	}
	if c.VocabSize > eosID {
		hc.BOSTokenID = &bos
		hc.EOSTokenID = hf.TokenIDs{eosID}
	}
	return hc
}

// FromHF converts a Hugging Face config to a model config. seqLen overrides
// max_position_embeddings when positive.
func FromHF(hc hf.Config, seqLen int) model.Config {
	if seqLen <= 0 {
		seqLen = hc.MaxPositionEmbeddings
	}
	kv := hc.NumKeyValueHeads
	if kv == 0 {
		kv = hc.NumAttentionHeads
	}
	return model.Config{
		VocabSize: hc.VocabSize, Dim: hc.HiddenSize, NLayers: hc.NumHiddenLayers,
		NHeads: hc.NumAttentionHeads, NKVHeads: kv, FFNHidden: hc.IntermediateSize,
		SeqLen: seqLen, RopeTheta: hc.RopeTheta, NormEps: hc.RMSNormEps,
		TieEmbeddings: hc.TieWordEmbeddings,
	}
}

// shapes lists every parameter of l with its shape, in layout order.
func shapes(l *model.Layout) []hf.TensorShape {
	out := make([]hf.TensorShape, len(l.Views))
	for i, v := range l.Views {
		s := make([]int64, len(v.Shape))
		for j, d := range v.Shape {
			s[j] = int64(d)
		}
		out[i] = hf.TensorShape{Name: v.Name, Shape: s}
	}
	return out
}

// SaveModel writes m's parameters to dir as a Hugging Face LLaMA directory
// (config.json, model.safetensors) and, when spec is non-nil, the job spec
// as JobFile. The weights are written atomically (a temporary directory
// renamed into place); an existing dir is replaced.
func SaveModel(dir string, m *model.Model, spec *api.JobSpec) error {
	tensors := make([]safetensors.Tensor, len(m.Layout.Views))
	for i, ts := range shapes(m.Layout) {
		v := m.Layout.Views[i]
		tensors[i] = safetensors.Tensor{Name: v.Name, DType: safetensors.F32, Shape: ts.Shape, Data: m.Params[v.Offset:v.End()]}
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	if err := hf.SaveDir(dir, HFConfig(m.Config), tensors); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	if spec != nil {
		b, err := spec.YAML()
		if err != nil {
			return fmt.Errorf("save model: encode job spec: %w", err)
		}
		if err := atomicfile.WriteFile(filepath.Join(dir, JobFile), b); err != nil {
			return fmt.Errorf("save model: %w", err)
		}
	}
	return nil
}

// LoadModel reads a Hugging Face LLaMA directory (or a model Loom saved,
// which is one) into a new model running on k. seqLen overrides the
// context length when positive. Every missing tensor or wrong shape is
// reported with its name, the expected and actual shape, and the file.
func LoadModel(dir string, k tensor.Kernels, seqLen int) (*model.Model, error) {
	hc, ts, err := hf.LoadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	defer ts.Close()
	m, err := model.New(FromHF(hc, seqLen), k)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", dir, err)
	}
	if err := LoadParams(m, ts); err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	return m, nil
}

// LoadParams checks ts against m's layout and copies every tensor into
// m.Params.
func LoadParams(m *model.Model, ts *hf.Tensors) error {
	if err := ts.Check(shapes(m.Layout)); err != nil {
		return err
	}
	for _, v := range m.Layout.Views {
		if err := ts.ReadFloat32RangeInto(v.Name, 0, m.Params[v.Offset:v.End()]); err != nil {
			return fmt.Errorf("read %s: %w", v.Name, err)
		}
	}
	return nil
}

// CompareConfigs names every field where a model loaded from disk differs
// from the job spec's model, or returns nil when they agree. The sequence
// length may differ (RoPE tables are rebuilt for the job's).
func CompareConfigs(job, disk model.Config) error {
	type field struct {
		name       string
		want, have any
	}
	fs := []field{
		{"vocab_size", job.VocabSize, disk.VocabSize}, {"dim", job.Dim, disk.Dim},
		{"n_layers", job.NLayers, disk.NLayers}, {"n_heads", job.NHeads, disk.NHeads},
		{"n_kv_heads", job.NKVHeads, disk.NKVHeads}, {"ffn_hidden", job.FFNHidden, disk.FFNHidden},
		{"rope_theta", job.RopeTheta, disk.RopeTheta}, {"norm_eps", job.NormEps, disk.NormEps},
		{"tie_embeddings", job.TieEmbeddings, disk.TieEmbeddings},
	}
	var diffs []string
	for _, f := range fs {
		if f.want != f.have {
			diffs = append(diffs, fmt.Sprintf("model.%s: job has %v, checkpoint has %v", f.name, f.want, f.have))
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	return errors.New("model config differs from the job spec:\n  " + strings.Join(diffs, "\n  "))
}
