package hf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/safetensors"
)

func tinyConfig() Config {
	bos := 0
	return Config{
		VocabSize: 16, HiddenSize: 8, IntermediateSize: 12, NumHiddenLayers: 2, NumAttentionHeads: 2,
		NumKeyValueHeads: 1, MaxPositionEmbeddings: 32, RMSNormEps: 1e-5, RopeTheta: 10000, HiddenAct: "silu",
		BOSTokenID: &bos, EOSTokenID: TokenIDs{1}, InitializerRange: 0.02, UseCache: true,
	}
}

// tinyTensors fills every expected tensor with values that identify it.
func tinyTensors(cfg Config) []safetensors.Tensor {
	var out []safetensors.Tensor
	for i, ts := range LlamaTensorShapes(cfg) {
		n := int64(1)
		for _, d := range ts.Shape {
			n *= d
		}
		data := make([]float32, n)
		for j := range data {
			data[j] = float32(i) + float32(j)/1024
		}
		out = append(out, safetensors.Tensor{Name: ts.Name, Shape: ts.Shape, Data: data})
	}
	return out
}

func TestLlamaTensorShapes(t *testing.T) {
	cfg := tinyConfig()
	shapes := LlamaTensorShapes(cfg)
	if len(shapes) != 1+9*2+2 {
		t.Fatalf("%d tensors, want 21", len(shapes))
	}
	byName := map[string][]int64{}
	for _, s := range shapes {
		byName[s.Name] = s.Shape
	}
	for name, want := range map[string][]int64{
		"model.embed_tokens.weight":              {16, 8},
		"model.layers.0.self_attn.q_proj.weight": {8, 8},
		"model.layers.1.self_attn.k_proj.weight": {4, 8}, // 1 KV head × head_dim 4
		"model.layers.1.self_attn.o_proj.weight": {8, 8},
		"model.layers.0.mlp.down_proj.weight":    {8, 12},
		"model.layers.0.mlp.gate_proj.weight":    {12, 8},
		"model.norm.weight":                      {8},
		"lm_head.weight":                         {16, 8},
	} {
		if got := byName[name]; len(got) != len(want) || (len(got) > 0 && (got[0] != want[0] || got[len(got)-1] != want[len(want)-1])) {
			t.Errorf("%s: shape %v, want %v", name, got, want)
		}
	}
	cfg.TieWordEmbeddings = true
	for _, s := range LlamaTensorShapes(cfg) {
		if s.Name == "lm_head.weight" {
			t.Error("tied embeddings still list lm_head.weight")
		}
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "export")
	cfg := tinyConfig()
	tensors := tinyTensors(cfg)
	if err := SaveDir(dir, cfg, tensors); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ConfigFile, WeightsFile, GenerationConfigFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s mode %v, want 0644", f, st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o755 {
		t.Errorf("dir mode %v, want 0755", st.Mode().Perm())
	}
	gen, _ := os.ReadFile(filepath.Join(dir, GenerationConfigFile))
	if !strings.Contains(string(gen), `"eos_token_id": 1`) {
		t.Errorf("generation_config.json = %s", gen)
	}
	got, ts, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	if got.TorchDtype != "float32" || got.VocabSize != 16 {
		t.Errorf("config = %+v", got)
	}
	if err := ts.Check(LlamaTensorShapes(got)); err != nil {
		t.Error(err)
	}
	if extra := ts.Unexpected(LlamaTensorShapes(got)); len(extra) != 0 {
		t.Errorf("unexpected tensors %v", extra)
	}
	for _, want := range tensors {
		v, err := ts.ReadFloat32(want.Name)
		if err != nil {
			t.Fatal(err)
		}
		for j := range v {
			if v[j] != want.Data[j] {
				t.Fatalf("%s[%d] = %v, want %v", want.Name, j, v[j], want.Data[j])
			}
		}
	}
	part, err := ts.ReadFloat32Range("lm_head.weight", 8, 8)
	if err != nil || part[0] != tensors[len(tensors)-1].Data[8] {
		t.Errorf("ReadFloat32Range = %v, %v", part, err)
	}
	f, err := safetensors.Open(filepath.Join(dir, WeightsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Metadata()["format"] != "pt" {
		t.Errorf("metadata %v lacks format=pt, which transformers requires", f.Metadata())
	}

	// Saving again replaces the directory whole and leaves no siblings behind.
	cfg.RopeTheta = 500000
	if err := SaveDir(dir, cfg, tensors); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadConfig(dir); err != nil || got.RopeTheta != 500000 {
		t.Errorf("after overwrite: %+v, %v", got, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(dir))
	if len(ents) != 1 {
		t.Errorf("parent has %d entries, want only the export", len(ents))
	}
}

func TestSaveDirRejectsWrongTensors(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "export")
	cfg := tinyConfig()
	tensors := tinyTensors(cfg)
	tensors[1].Shape = []int64{4, 16}
	tensors = tensors[:len(tensors)-1] // drop lm_head.weight
	tensors = append(tensors, safetensors.Tensor{Name: "extra", Shape: []int64{1}, Data: []float32{0}})
	err := SaveDir(dir, cfg, tensors)
	for _, want := range []string{
		`tensor "model.layers.0.self_attn.q_proj.weight": shape [4 16], want [8 8]`,
		`tensor "lm_head.weight": missing`,
		`tensor "extra": not a LlamaForCausalLM weight`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to contain %s", err, want)
		}
	}
	if !errors.Is(err, ErrShapeMismatch) || !errors.Is(err, ErrMissingTensor) || !errors.Is(err, ErrUnexpectedTensor) {
		t.Errorf("err classes missing: %v", err)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("failed save left %d entries", len(ents))
	}
	mixed := tinyTensors(cfg)
	mixed[0].DType = safetensors.BF16
	if err := SaveDir(dir, cfg, mixed); err == nil || !strings.Contains(err.Error(), "mix bfloat16 and float32") {
		t.Errorf("mixed dtypes: err = %v", err)
	}
}

func TestCheckReportsMissingAndWrongShape(t *testing.T) {
	dir := t.TempDir()
	if err := safetensors.Write(filepath.Join(dir, WeightsFile), []safetensors.Tensor{
		{Name: "a", Shape: []int64{2, 3}, Data: make([]float32, 6)},
		{Name: "b", Shape: []int64{1}, Data: []float32{1}},
	}, nil); err != nil {
		t.Fatal(err)
	}
	ts, err := OpenTensors(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	err = ts.Check([]TensorShape{{"a", []int64{3, 2}}, {"c", []int64{4}}})
	path := filepath.Join(dir, WeightsFile)
	for _, want := range []string{
		path + `: tensor "a": shape [2 3], want [3 2]`,
		`tensor "c": missing; want shape [4]`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to contain %s", err, want)
		}
	}
	var te *TensorError
	if !errors.As(err, &te) || te.Tensor != "a" || te.File != path {
		t.Errorf("first TensorError = %+v", te)
	}
	if got := ts.Unexpected([]TensorShape{{"a", nil}}); len(got) != 1 || got[0] != "b" {
		t.Errorf("Unexpected = %v", got)
	}
	if _, err := ts.ReadFloat32("zzz"); !errors.Is(err, ErrMissingTensor) {
		t.Errorf("ReadFloat32(missing) = %v", err)
	}
}

func TestLoadSharded(t *testing.T) {
	dir := t.TempDir()
	write := func(file string, names ...string) {
		var tensors []safetensors.Tensor
		for _, n := range names {
			tensors = append(tensors, safetensors.Tensor{Name: n, Shape: []int64{2}, Data: []float32{float32(len(n)), 1}})
		}
		if err := safetensors.Write(filepath.Join(dir, file), tensors, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	write("model-00001-of-00002.safetensors", "a", "bb")
	write("model-00002-of-00002.safetensors", "ccc")
	index := func(s string) {
		if err := os.WriteFile(filepath.Join(dir, WeightsIndexFile), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	index(`{"metadata":{"total_size":24},"weight_map":{"a":"model-00001-of-00002.safetensors","bb":"model-00001-of-00002.safetensors","ccc":"model-00002-of-00002.safetensors"}}`)
	ts, err := OpenTensors(dir)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := ts.ReadFloat32("ccc"); err != nil || v[0] != 3 {
		t.Errorf("ccc = %v, %v", v, err)
	}
	if _, p, _ := ts.Info("bb"); filepath.Base(p) != "model-00001-of-00002.safetensors" {
		t.Errorf("bb is in %s", p)
	}
	ts.Close()

	tests := []struct{ index, want string }{
		{`{"weight_map":{"a":"../x.safetensors"}}`, "plain file names"},
		{`{"weight_map":{"a":"model-00002-of-00002.safetensors","bb":"model-00001-of-00002.safetensors","ccc":"model-00002-of-00002.safetensors"}}`, `lists tensor "a" in model-00002-of-00002.safetensors, but that file does not contain it`},
		{`{"weight_map":{"a":"model-00001-of-00002.safetensors","ccc":"model-00002-of-00002.safetensors"}}`, `contains tensor "bb", which`},
		{`{"weight_map":{}}`, "weight_map is empty"},
		{`{"weight_map":{"a":"missing.safetensors"}}`, "missing.safetensors"},
		{`not json`, "invalid index"},
	}
	for _, tc := range tests {
		index(tc.index)
		if _, err := OpenTensors(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("index %s: err = %v, want %q", tc.index, err, tc.want)
		}
	}
}

func TestOpenTensorsMissingWeights(t *testing.T) {
	dir := t.TempDir()
	_, err := OpenTensors(dir)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), WeightsIndexFile) {
		t.Errorf("err = %v", err)
	}
	os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), nil, 0o644)
	if _, err := OpenTensors(dir); err == nil || !strings.Contains(err.Error(), "safe_serialization=True") {
		t.Errorf("err = %v, want a hint about pytorch_model.bin", err)
	}
}
