package hf

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// FuzzParseConfig feeds arbitrary bytes to ParseConfig. It must not panic;
// every rejection is a *FieldError; an accepted config validates, and
// re-encoding it parses back to the same Config.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(llama2Config))
	f.Add([]byte(`{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":16,"eos_token_id":[7,8]}`))
	f.Add([]byte(`{"model_type":"llama","rope_parameters":{"rope_type":"default","rope_theta":1e6},"eos_token_id":null}`))
	f.Add([]byte(`{"rope_scaling":{"type":"linear"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig("config.json", b)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error is not a *FieldError: %v", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v", err)
		}
		out, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseConfig("config.json", out)
		if err != nil {
			t.Fatalf("re-encoded config rejected: %v\n%s", err, out)
		}
		if cfg.HeadDim == 0 {
			cfg.HeadDim = cfg.HiddenSize / cfg.NumAttentionHeads
		}
		if len(cfg.Architectures) == 0 {
			cfg.Architectures = []string{LlamaArchitecture}
		}
		if cfg.ModelType == "" {
			cfg.ModelType = "llama"
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("round trip changed the config:\n got %+v\nwant %+v", again, cfg)
		}
	})
}
