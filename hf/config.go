// Package hf reads and writes Hugging Face model directories for
// LlamaForCausalLM: config.json, model.safetensors (or a sharded set with
// model.safetensors.index.json) and generation_config.json. It knows HF's file
// layout and tensor names but nothing about Loom's model code: tensors are
// plain names, shapes and []float32.
package hf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/loomtrain/loom/internal/atomicfile"
)

// File names inside a Hugging Face model directory.
const (
	ConfigFile           = "config.json"
	GenerationConfigFile = "generation_config.json"
	WeightsFile          = "model.safetensors"
	WeightsIndexFile     = "model.safetensors.index.json"
)

// Error classes; every config problem is a *FieldError wrapping one of them.
var (
	// ErrConfig marks a config.json that is malformed or inconsistent.
	ErrConfig = errors.New("invalid config")
	// ErrUnsupported marks a valid Hugging Face setting that Loom does not implement.
	ErrUnsupported = errors.New("not supported")
)

// FieldError describes one problem with one config.json field.
type FieldError struct {
	File  string // path of config.json, or "" when validating a Config value
	Field string // JSON key, e.g. "hidden_act"
	Msg   string // what is wrong and what is allowed
	Err   error  // ErrConfig or ErrUnsupported
}

// Error implements error.
func (e *FieldError) Error() string {
	s := "hf: "
	if e.File != "" {
		s += e.File + ": "
	}
	s += e.Field + ": " + e.Msg
	if errors.Is(e.Err, ErrUnsupported) {
		s += " (not supported)"
	}
	return s
}

// Unwrap returns the error class.
func (e *FieldError) Unwrap() error { return e.Err }

// LlamaArchitecture is the transformers class name Loom reads and writes.
const LlamaArchitecture = "LlamaForCausalLM"

// Config is the subset of transformers' LlamaConfig that determines a Llama
// model Loom can run. Field names follow config.json.
type Config struct {
	Architectures         []string // ["LlamaForCausalLM"]
	ModelType             string   // "llama"
	VocabSize             int
	HiddenSize            int
	IntermediateSize      int
	NumHiddenLayers       int
	NumAttentionHeads     int
	NumKeyValueHeads      int // transformers defaults it to NumAttentionHeads
	HeadDim               int // 0 means HiddenSize/NumAttentionHeads; any other value is unsupported
	MaxPositionEmbeddings int
	RMSNormEps            float64
	RopeTheta             float64
	TieWordEmbeddings     bool
	HiddenAct             string   // "silu"
	TorchDtype            string   // "float32", "bfloat16" or "float16"; empty on write means derive from the tensors
	BOSTokenID            *int     // nil: no BOS token
	EOSTokenID            TokenIDs // one or several ids
	PadTokenID            *int
	AttentionBias         bool // must be false
	MLPBias               bool // must be false
	AttentionDropout      float64
	InitializerRange      float64
	UseCache              bool
	TransformersVersion   string // informational; written only when set
}

// TokenIDs is a token id field that config.json spells as null, an integer,
// or a list of integers (Llama 3 lists several EOS ids).
type TokenIDs []int

// UnmarshalJSON accepts null, an integer or a list of integers.
func (t *TokenIDs) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case string(b) == "null":
		*t = nil
		return nil
	case len(b) > 0 && b[0] == '[':
		var ids []int
		if err := json.Unmarshal(b, &ids); err != nil {
			return fmt.Errorf("must be an integer or a list of integers: %w", err)
		}
		*t = ids
		return nil
	}
	var id int
	if err := json.Unmarshal(b, &id); err != nil {
		return fmt.Errorf("must be an integer or a list of integers: %w", err)
	}
	*t = TokenIDs{id}
	return nil
}

// MarshalJSON writes null, a bare integer for one id, or a list.
func (t TokenIDs) MarshalJSON() ([]byte, error) {
	switch len(t) {
	case 0:
		return []byte("null"), nil
	case 1:
		return json.Marshal(t[0])
	}
	return json.Marshal([]int(t))
}

// configJSON mirrors config.json; pointers tell absent from zero.
type configJSON struct {
	Architectures         []string        `json:"architectures"`
	ModelType             *string         `json:"model_type"`
	VocabSize             *int            `json:"vocab_size"`
	HiddenSize            *int            `json:"hidden_size"`
	IntermediateSize      *int            `json:"intermediate_size"`
	NumHiddenLayers       *int            `json:"num_hidden_layers"`
	NumAttentionHeads     *int            `json:"num_attention_heads"`
	NumKeyValueHeads      *int            `json:"num_key_value_heads"`
	HeadDim               *int            `json:"head_dim"`
	MaxPositionEmbeddings *int            `json:"max_position_embeddings"`
	RMSNormEps            *float64        `json:"rms_norm_eps"`
	RopeTheta             *float64        `json:"rope_theta"`
	RopeScaling           json.RawMessage `json:"rope_scaling"`
	RopeParameters        json.RawMessage `json:"rope_parameters"`
	TieWordEmbeddings     *bool           `json:"tie_word_embeddings"`
	HiddenAct             *string         `json:"hidden_act"`
	TorchDtype            *string         `json:"torch_dtype"`
	Dtype                 *string         `json:"dtype"` // newer transformers' name for torch_dtype
	BOSTokenID            *int            `json:"bos_token_id"`
	EOSTokenID            TokenIDs        `json:"eos_token_id"`
	PadTokenID            *int            `json:"pad_token_id"`
	AttentionBias         *bool           `json:"attention_bias"`
	MLPBias               *bool           `json:"mlp_bias"`
	AttentionDropout      *float64        `json:"attention_dropout"`
	InitializerRange      *float64        `json:"initializer_range"`
	PretrainingTP         *int            `json:"pretraining_tp"`
	UseCache              *bool           `json:"use_cache"`
	TransformersVersion   *string         `json:"transformers_version"`
}

// knownKeys returns every config.json key ReadConfig understands.
func knownKeys() map[string]bool {
	keys := make(map[string]bool)
	rt := reflect.TypeFor[configJSON]()
	for i := range rt.NumField() {
		keys[strings.Split(rt.Field(i).Tag.Get("json"), ",")[0]] = true
	}
	// Generic PretrainedConfig keys that do not change the model.
	for _, k := range []string{
		"_name_or_path", "_attn_implementation_autoset", "output_attentions",
		"output_hidden_states", "return_dict", "torchscript", "tokenizer_class",
	} {
		keys[k] = true
	}
	return keys
}

// ReadConfig reads and validates DIR/config.json. Every problem is reported
// at once; unsupported settings (hidden_act other than silu, biases,
// rope_scaling, ...) fail with ErrUnsupported rather than being ignored.
func ReadConfig(dir string) (Config, error) {
	path := filepath.Join(dir, ConfigFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("hf: read config: %w", err)
	}
	return ParseConfig(path, b)
}

// ParseConfig validates config.json bytes; path is used in error messages.
func ParseConfig(path string, b []byte) (Config, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		return Config{}, &FieldError{File: path, Field: "(file)", Msg: fmt.Sprintf("not a JSON object: %v", err), Err: ErrConfig}
	}
	var errs []error
	known := knownKeys()
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if !known[k] {
			errs = append(errs, &FieldError{File: path, Field: k, Msg: "unknown key; Loom reads LlamaForCausalLM configs only and will not ignore settings it does not understand", Err: ErrUnsupported})
		}
	}
	var raw configJSON
	if err := json.Unmarshal(b, &raw); err != nil {
		field := "(file)"
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field = te.Field
		}
		return Config{}, &FieldError{File: path, Field: field, Msg: err.Error(), Err: ErrConfig}
	}
	cfg, convErrs := raw.toConfig(path)
	errs = append(errs, convErrs...)
	reported := make(map[string]bool)
	for _, e := range errs {
		reported[e.(*FieldError).Field] = true
	}
	for _, e := range cfg.validate(path) {
		if !reported[e.(*FieldError).Field] { // a missing field is not also "0; must be positive"
			errs = append(errs, e)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// toConfig applies transformers' defaults to optional fields and reports
// missing required ones and unsupported settings that Config cannot express.
func (r configJSON) toConfig(path string) (Config, []error) {
	var errs []error
	bad := func(field, msg string, class error) {
		errs = append(errs, &FieldError{File: path, Field: field, Msg: msg, Err: class})
	}
	reqInt := func(field string, p *int) int {
		if p == nil {
			bad(field, "required field is missing", ErrConfig)
			return 0
		}
		return *p
	}
	cfg := Config{
		Architectures:         r.Architectures,
		VocabSize:             reqInt("vocab_size", r.VocabSize),
		HiddenSize:            reqInt("hidden_size", r.HiddenSize),
		IntermediateSize:      reqInt("intermediate_size", r.IntermediateSize),
		NumHiddenLayers:       reqInt("num_hidden_layers", r.NumHiddenLayers),
		NumAttentionHeads:     reqInt("num_attention_heads", r.NumAttentionHeads),
		MaxPositionEmbeddings: reqInt("max_position_embeddings", r.MaxPositionEmbeddings),
		BOSTokenID:            r.BOSTokenID,
		EOSTokenID:            r.EOSTokenID,
		PadTokenID:            r.PadTokenID,
		HiddenAct:             "silu",
		RMSNormEps:            1e-6,
		RopeTheta:             10000,
		InitializerRange:      0.02,
		UseCache:              true,
	}
	if r.ModelType == nil {
		bad("model_type", `required field is missing; want "llama"`, ErrConfig)
	} else {
		cfg.ModelType = *r.ModelType
	}
	cfg.NumKeyValueHeads = cfg.NumAttentionHeads
	if r.NumKeyValueHeads != nil {
		cfg.NumKeyValueHeads = *r.NumKeyValueHeads
	}
	if r.HeadDim != nil {
		cfg.HeadDim = *r.HeadDim
	}
	if r.RMSNormEps != nil {
		cfg.RMSNormEps = *r.RMSNormEps
	}
	if r.RopeTheta != nil {
		cfg.RopeTheta = *r.RopeTheta
	}
	if r.TieWordEmbeddings != nil {
		cfg.TieWordEmbeddings = *r.TieWordEmbeddings
	}
	if r.HiddenAct != nil {
		cfg.HiddenAct = *r.HiddenAct
	}
	switch {
	case r.TorchDtype != nil && r.Dtype != nil && *r.TorchDtype != *r.Dtype:
		bad("dtype", fmt.Sprintf("%q disagrees with torch_dtype %q", *r.Dtype, *r.TorchDtype), ErrConfig)
	case r.TorchDtype != nil:
		cfg.TorchDtype = *r.TorchDtype
	case r.Dtype != nil:
		cfg.TorchDtype = *r.Dtype
	}
	if r.AttentionBias != nil {
		cfg.AttentionBias = *r.AttentionBias
	}
	if r.MLPBias != nil {
		cfg.MLPBias = *r.MLPBias
	}
	if r.AttentionDropout != nil {
		cfg.AttentionDropout = *r.AttentionDropout
	}
	if r.InitializerRange != nil {
		cfg.InitializerRange = *r.InitializerRange
	}
	if r.UseCache != nil {
		cfg.UseCache = *r.UseCache
	}
	if r.TransformersVersion != nil {
		cfg.TransformersVersion = *r.TransformersVersion
	}
	if r.PretrainingTP != nil && *r.PretrainingTP != 1 {
		bad("pretraining_tp", fmt.Sprintf("%d; only 1 is supported (other values change the numerics of the linear layers)", *r.PretrainingTP), ErrUnsupported)
	}
	if len(r.RopeScaling) > 0 && string(r.RopeScaling) != "null" {
		bad("rope_scaling", fmt.Sprintf("%s; only null (plain RoPE) is supported", r.RopeScaling), ErrUnsupported)
	}
	if len(r.RopeParameters) > 0 && string(r.RopeParameters) != "null" {
		var rp map[string]json.RawMessage
		if err := json.Unmarshal(r.RopeParameters, &rp); err != nil {
			bad("rope_parameters", fmt.Sprintf("must be an object: %v", err), ErrConfig)
		} else {
			for _, k := range slices.Sorted(maps.Keys(rp)) {
				switch k {
				case "rope_type":
					if string(rp[k]) != `"default"` {
						bad("rope_parameters.rope_type", fmt.Sprintf(`%s; only "default" (plain RoPE) is supported`, rp[k]), ErrUnsupported)
					}
				case "rope_theta":
					var theta float64
					if err := json.Unmarshal(rp[k], &theta); err != nil {
						bad("rope_parameters.rope_theta", "must be a number", ErrConfig)
					} else if r.RopeTheta != nil && *r.RopeTheta != theta {
						bad("rope_parameters.rope_theta", fmt.Sprintf("%v disagrees with rope_theta %v", theta, *r.RopeTheta), ErrConfig)
					} else {
						cfg.RopeTheta = theta
					}
				default:
					bad("rope_parameters."+k, "unknown key; only rope_type \"default\" and rope_theta are supported", ErrUnsupported)
				}
			}
		}
	}
	return cfg, errs
}

// Validate checks that c describes a Llama model Loom supports and that its
// dimensions are consistent. All problems are returned at once.
func (c Config) Validate() error { return errors.Join(c.validate("")...) }

func (c Config) validate(path string) []error {
	var errs []error
	bad := func(field, msg string, class error) {
		errs = append(errs, &FieldError{File: path, Field: field, Msg: msg, Err: class})
	}
	if c.ModelType != "" && c.ModelType != "llama" {
		bad("model_type", fmt.Sprintf(`%q; only "llama" is supported`, c.ModelType), ErrUnsupported)
	}
	if len(c.Architectures) > 0 && !slices.Contains(c.Architectures, LlamaArchitecture) {
		bad("architectures", fmt.Sprintf("%q; want [%q]", c.Architectures, LlamaArchitecture), ErrUnsupported)
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumHiddenLayers}, {"num_attention_heads", c.NumAttentionHeads},
		{"num_key_value_heads", c.NumKeyValueHeads}, {"max_position_embeddings", c.MaxPositionEmbeddings},
	} {
		if f.v <= 0 {
			bad(f.name, fmt.Sprintf("%d; must be a positive integer", f.v), ErrConfig)
		}
	}
	if c.NumAttentionHeads > 0 && c.NumKeyValueHeads > 0 && c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		bad("num_key_value_heads", fmt.Sprintf("%d does not divide num_attention_heads %d", c.NumKeyValueHeads, c.NumAttentionHeads), ErrConfig)
	}
	if c.NumAttentionHeads > 0 && c.HiddenSize%c.NumAttentionHeads != 0 {
		bad("hidden_size", fmt.Sprintf("%d is not divisible by num_attention_heads %d", c.HiddenSize, c.NumAttentionHeads), ErrUnsupported)
	} else if c.NumAttentionHeads > 0 && c.HeadDim != 0 && c.HeadDim != c.HiddenSize/c.NumAttentionHeads {
		bad("head_dim", fmt.Sprintf("%d; only hidden_size/num_attention_heads = %d is supported", c.HeadDim, c.HiddenSize/c.NumAttentionHeads), ErrUnsupported)
	}
	if !(c.RMSNormEps > 0) {
		bad("rms_norm_eps", fmt.Sprintf("%v; must be positive", c.RMSNormEps), ErrConfig)
	}
	if !(c.RopeTheta > 0) {
		bad("rope_theta", fmt.Sprintf("%v; must be positive", c.RopeTheta), ErrConfig)
	}
	if c.HiddenAct != "silu" {
		bad("hidden_act", fmt.Sprintf(`%q; only "silu" is supported`, c.HiddenAct), ErrUnsupported)
	}
	if c.AttentionBias {
		bad("attention_bias", "true; only false is supported", ErrUnsupported)
	}
	if c.MLPBias {
		bad("mlp_bias", "true; only false is supported", ErrUnsupported)
	}
	if c.AttentionDropout != 0 {
		bad("attention_dropout", fmt.Sprintf("%v; only 0 is supported", c.AttentionDropout), ErrUnsupported)
	}
	switch c.TorchDtype {
	case "", "float32", "bfloat16", "float16":
	default:
		bad("torch_dtype", fmt.Sprintf(`%q; want "float32", "bfloat16" or "float16"`, c.TorchDtype), ErrUnsupported)
	}
	checkID := func(field string, id int) {
		if c.VocabSize > 0 && (id < 0 || id >= c.VocabSize) {
			bad(field, fmt.Sprintf("%d is outside the vocabulary [0, %d)", id, c.VocabSize), ErrConfig)
		}
	}
	if c.BOSTokenID != nil {
		checkID("bos_token_id", *c.BOSTokenID)
	}
	for _, id := range c.EOSTokenID {
		checkID("eos_token_id", id)
	}
	if c.PadTokenID != nil {
		checkID("pad_token_id", *c.PadTokenID)
	}
	return errs
}

// MarshalJSON writes c the way transformers does: sorted keys, every
// LlamaConfig field present, rope_scaling null.
func (c Config) MarshalJSON() ([]byte, error) {
	arch := c.Architectures
	if len(arch) == 0 {
		arch = []string{LlamaArchitecture}
	}
	modelType := c.ModelType
	if modelType == "" {
		modelType = "llama"
	}
	headDim := c.HeadDim
	if headDim == 0 && c.NumAttentionHeads > 0 {
		headDim = c.HiddenSize / c.NumAttentionHeads
	}
	m := map[string]any{
		"architectures":           arch,
		"model_type":              modelType,
		"vocab_size":              c.VocabSize,
		"hidden_size":             c.HiddenSize,
		"intermediate_size":       c.IntermediateSize,
		"num_hidden_layers":       c.NumHiddenLayers,
		"num_attention_heads":     c.NumAttentionHeads,
		"num_key_value_heads":     c.NumKeyValueHeads,
		"head_dim":                headDim,
		"max_position_embeddings": c.MaxPositionEmbeddings,
		"rms_norm_eps":            c.RMSNormEps,
		"rope_theta":              c.RopeTheta,
		"rope_scaling":            nil,
		"tie_word_embeddings":     c.TieWordEmbeddings,
		"hidden_act":              c.HiddenAct,
		"torch_dtype":             c.TorchDtype,
		"bos_token_id":            c.BOSTokenID,
		"eos_token_id":            c.EOSTokenID,
		"attention_bias":          c.AttentionBias,
		"mlp_bias":                c.MLPBias,
		"attention_dropout":       c.AttentionDropout,
		"initializer_range":       c.InitializerRange,
		"pretraining_tp":          1,
		"use_cache":               c.UseCache,
	}
	if c.PadTokenID != nil {
		m["pad_token_id"] = *c.PadTokenID
	}
	if c.TransformersVersion != "" {
		m["transformers_version"] = c.TransformersVersion
	}
	return json.MarshalIndent(m, "", "  ")
}

// WriteConfig validates cfg and writes DIR/config.json atomically.
func WriteConfig(dir string, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("hf: write config to %s: %w", dir, err)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("hf: encode config: %w", err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return fmt.Errorf("hf: encode config: %w", err)
	}
	out.WriteByte('\n')
	return atomicfile.WriteFile(filepath.Join(dir, ConfigFile), out.Bytes())
}
