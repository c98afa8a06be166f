package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/hf"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/safetensors"
	"github.com/loomtrain/loom/tensor"
)

func tinyConfig(tied bool) model.Config {
	return model.Config{VocabSize: 300, Dim: 16, NLayers: 2, NHeads: 4, NKVHeads: 2,
		FFNHidden: 24, SeqLen: 9, RopeTheta: 10000, NormEps: 1e-5, TieEmbeddings: tied}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	for _, tied := range []bool{false, true} {
		m, err := model.New(tinyConfig(tied), tensor.Reference{})
		if err != nil {
			t.Fatal(err)
		}
		m.Init(7)
		dir := filepath.Join(t.TempDir(), "final")
		spec := api.DefaultSpec()
		spec.Data.Path = "x.bin"
		if err := SaveModel(dir, m, &spec); err != nil {
			t.Fatal(err)
		}
		if _, err := api.LoadSpec(filepath.Join(dir, JobFile)); err != nil {
			t.Fatalf("saved job spec does not load: %v", err)
		}
		got, err := LoadModel(dir, tensor.Reference{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got.Config != m.Config {
			t.Fatalf("config %+v, want %+v", got.Config, m.Config)
		}
		for i := range m.Params {
			if got.Params[i] != m.Params[i] {
				t.Fatalf("tied=%v: param %d differs: %v vs %v", tied, i, got.Params[i], m.Params[i])
			}
		}
	}
}

func TestLoadModelRejectsBadTensors(t *testing.T) {
	m, _ := model.New(tinyConfig(false), tensor.Reference{})
	m.Init(1)
	build := func(mutate func([]safetensors.Tensor) []safetensors.Tensor) string {
		var ts []safetensors.Tensor
		for _, v := range m.Layout.Views {
			s := make([]int64, len(v.Shape))
			for j, d := range v.Shape {
				s[j] = int64(d)
			}
			ts = append(ts, safetensors.Tensor{Name: v.Name, Shape: s, Data: m.Params[v.Offset:v.End()]})
		}
		ts = mutate(ts)
		dir := filepath.Join(t.TempDir(), "m")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := hf.WriteConfig(dir, HFConfig(m.Config)); err != nil {
			t.Fatal(err)
		}
		if err := safetensors.Write(filepath.Join(dir, hf.WeightsFile), ts, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	missing := build(func(ts []safetensors.Tensor) []safetensors.Tensor { return ts[1:] })
	_, err := LoadModel(missing, tensor.Reference{}, 0)
	if !errors.Is(err, hf.ErrMissingTensor) || !strings.Contains(err.Error(), "model.embed_tokens.weight") {
		t.Fatalf("missing tensor: got %v", err)
	}
	wrong := build(func(ts []safetensors.Tensor) []safetensors.Tensor {
		ts[2].Shape = []int64{ts[2].Shape[1], ts[2].Shape[0]}
		return ts
	})
	_, err = LoadModel(wrong, tensor.Reference{}, 0)
	if !errors.Is(err, hf.ErrShapeMismatch) || !strings.Contains(err.Error(), "k_proj") {
		t.Fatalf("wrong shape: got %v", err)
	}
}

func TestCompareConfigs(t *testing.T) {
	a, b := tinyConfig(false), tinyConfig(true)
	b.Dim = 32
	err := CompareConfigs(a, b)
	if err == nil || !strings.Contains(err.Error(), "model.dim: job has 16, checkpoint has 32") || !strings.Contains(err.Error(), "tie_embeddings") {
		t.Fatalf("got %v", err)
	}
	if err := CompareConfigs(a, a); err != nil {
		t.Fatal(err)
	}
}
