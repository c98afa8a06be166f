package hf

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// llama2Config is config.json as transformers 4.46 writes it for a Llama-2-style model.
const llama2Config = `{
  "_name_or_path": "meta-llama/Llama-2-7b-hf",
  "architectures": [
    "LlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.46.0",
  "use_cache": true,
  "vocab_size": 32000
}`

func TestParseLlama2Config(t *testing.T) {
	cfg, err := ParseConfig("config.json", []byte(llama2Config))
	if err != nil {
		t.Fatal(err)
	}
	one := 1
	want := Config{
		Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama", VocabSize: 32000, HiddenSize: 4096,
		IntermediateSize: 11008, NumHiddenLayers: 32, NumAttentionHeads: 32, NumKeyValueHeads: 32, HeadDim: 128,
		MaxPositionEmbeddings: 4096, RMSNormEps: 1e-5, RopeTheta: 10000, HiddenAct: "silu", TorchDtype: "float16",
		BOSTokenID: &one, EOSTokenID: TokenIDs{2}, InitializerRange: 0.02, UseCache: true, TransformersVersion: "4.46.0",
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestParseMinimalConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig("c.json", []byte(`{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
		"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":16,"eos_token_id":[7,8],"dtype":"bfloat16",
		"rope_parameters":{"rope_type":"default","rope_theta":500000.0}}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NumKeyValueHeads != 2 || cfg.HiddenAct != "silu" || cfg.RMSNormEps != 1e-6 || cfg.RopeTheta != 500000 ||
		!reflect.DeepEqual(cfg.EOSTokenID, TokenIDs{7, 8}) || cfg.BOSTokenID != nil || cfg.TorchDtype != "bfloat16" {
		t.Errorf("defaults not applied as transformers does: %+v", cfg)
	}
}

func TestParseConfigRejects(t *testing.T) {
	base := map[string]string{
		"model_type": `"llama"`, "vocab_size": "10", "hidden_size": "8", "intermediate_size": "16",
		"num_hidden_layers": "1", "num_attention_heads": "2", "max_position_embeddings": "16",
	}
	build := func(edits map[string]string) []byte {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range edits {
			if v == "" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		var parts []string
		for k, v := range m {
			parts = append(parts, `"`+k+`":`+v)
		}
		return []byte("{" + strings.Join(parts, ",") + "}")
	}
	tests := []struct {
		name  string
		edits map[string]string
		field string
		class error
	}{
		{"gelu", map[string]string{"hidden_act": `"gelu"`}, "hidden_act", ErrUnsupported},
		{"attention bias", map[string]string{"attention_bias": "true"}, "attention_bias", ErrUnsupported},
		{"mlp bias", map[string]string{"mlp_bias": "true"}, "mlp_bias", ErrUnsupported},
		{"rope scaling", map[string]string{"rope_scaling": `{"rope_type":"llama3","factor":8.0}`}, "rope_scaling", ErrUnsupported},
		{"rope parameters yarn", map[string]string{"rope_parameters": `{"rope_type":"yarn"}`}, "rope_parameters.rope_type", ErrUnsupported},
		{"mistral", map[string]string{"model_type": `"mistral"`}, "model_type", ErrUnsupported},
		{"other architecture", map[string]string{"architectures": `["MistralForCausalLM"]`}, "architectures", ErrUnsupported},
		{"missing model_type", map[string]string{"model_type": ""}, "model_type", ErrConfig},
		{"missing vocab", map[string]string{"vocab_size": ""}, "vocab_size", ErrConfig},
		{"zero layers", map[string]string{"num_hidden_layers": "0"}, "num_hidden_layers", ErrConfig},
		{"unknown key", map[string]string{"quantization_config": `{}`}, "quantization_config", ErrUnsupported},
		{"kv does not divide", map[string]string{"num_key_value_heads": "3", "num_attention_heads": "4"}, "num_key_value_heads", ErrConfig},
		{"odd head_dim", map[string]string{"head_dim": "3"}, "head_dim", ErrUnsupported},
		{"hidden not divisible", map[string]string{"num_attention_heads": "3", "num_key_value_heads": "3"}, "hidden_size", ErrUnsupported},
		{"eos out of range", map[string]string{"eos_token_id": "10"}, "eos_token_id", ErrConfig},
		{"bos negative", map[string]string{"bos_token_id": "-1"}, "bos_token_id", ErrConfig},
		{"wrong type", map[string]string{"vocab_size": `"10"`}, "vocab_size", ErrConfig},
		{"dropout", map[string]string{"attention_dropout": "0.1"}, "attention_dropout", ErrUnsupported},
		{"pretraining_tp", map[string]string{"pretraining_tp": "2"}, "pretraining_tp", ErrUnsupported},
		{"int8 dtype", map[string]string{"torch_dtype": `"int8"`}, "torch_dtype", ErrUnsupported},
		{"eps zero", map[string]string{"rms_norm_eps": "0"}, "rms_norm_eps", ErrConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("dir/config.json", build(tc.edits))
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a *FieldError", err)
			}
			if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), "dir/config.json: "+tc.field+":") {
				t.Errorf("err = %v, want %v naming field %s and the file", err, tc.class, tc.field)
			}
			if tc.class == ErrUnsupported && !strings.Contains(err.Error(), "not supported") {
				t.Errorf("err = %v does not say \"not supported\"", err)
			}
		})
	}
	if _, err := ParseConfig("c.json", []byte(`[1]`)); !errors.Is(err, ErrConfig) {
		t.Errorf("non-object config: err = %v", err)
	}
}

func TestParseConfigReportsAllProblems(t *testing.T) {
	_, err := ParseConfig("c.json", []byte(`{"model_type":"llama","hidden_act":"relu","attention_bias":true,"vocab_size":4}`))
	for _, want := range []string{"hidden_act", "attention_bias", "hidden_size: required field is missing", "num_hidden_layers"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "hidden_size: 0") {
		t.Errorf("a missing field is also reported as zero: %v", err)
	}
}

func TestConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	bos := 0
	cfg := Config{
		Architectures: []string{LlamaArchitecture}, ModelType: "llama", VocabSize: 16, HiddenSize: 8, IntermediateSize: 12,
		NumHiddenLayers: 2, NumAttentionHeads: 2, NumKeyValueHeads: 1, MaxPositionEmbeddings: 32, RMSNormEps: 1e-5,
		RopeTheta: 10000, HiddenAct: "silu", TorchDtype: "float32", BOSTokenID: &bos, EOSTokenID: TokenIDs{1, 2},
		InitializerRange: 0.02, UseCache: true,
	}
	if err := WriteConfig(dir, cfg); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	for _, want := range []string{`"rope_scaling": null`, `"architectures": [`, `"eos_token_id": [`, `"head_dim": 4`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config.json lacks %s:\n%s", want, b)
		}
	}
	got, err := ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.HeadDim = 4 // written explicitly, as transformers does
	if !reflect.DeepEqual(got, cfg) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, cfg)
	}
	bad := cfg
	bad.HiddenAct = "gelu"
	if err := WriteConfig(dir, bad); !errors.Is(err, ErrUnsupported) {
		t.Errorf("WriteConfig(gelu) = %v, want ErrUnsupported", err)
	}
	if _, err := ReadConfig(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadConfig(empty dir) = %v", err)
	}
}
