package hf

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/loomtrain/loom/internal/atomicfile"
	"github.com/loomtrain/loom/safetensors"
)

// Tensors gives read access to the weights of a model directory, whether
// they live in one model.safetensors or in shards listed by
// model.safetensors.index.json. Reads are safe for concurrent use; Close is not.
type Tensors struct {
	dir   string
	files []*safetensors.File
	where map[string]int // tensor name → index into files
}

// LoadDir reads and validates DIR/config.json and opens the weights:
// model.safetensors if present, otherwise the shards named by
// model.safetensors.index.json. The caller must Close the returned Tensors.
// LoadDir does not check tensor names or shapes; call
// ts.Check(LlamaTensorShapes(cfg)) (and ts.Unexpected) before reading.
func LoadDir(dir string) (Config, *Tensors, error) {
	cfg, err := ReadConfig(dir)
	if err != nil {
		return Config{}, nil, err
	}
	ts, err := OpenTensors(dir)
	if err != nil {
		return Config{}, nil, err
	}
	return cfg, ts, nil
}

// OpenTensors opens the weights of a model directory without reading config.json.
func OpenTensors(dir string) (*Tensors, error) {
	single := filepath.Join(dir, WeightsFile)
	if _, err := os.Stat(single); err == nil {
		f, err := safetensors.Open(single)
		if err != nil {
			return nil, err
		}
		ts := &Tensors{dir: dir, files: []*safetensors.File{f}, where: make(map[string]int)}
		for _, n := range f.Names() {
			ts.where[n] = 0
		}
		return ts, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("hf: %w", err)
	}
	index := filepath.Join(dir, WeightsIndexFile)
	b, err := os.ReadFile(index)
	if errors.Is(err, os.ErrNotExist) {
		hint := ""
		if _, err := os.Stat(filepath.Join(dir, "pytorch_model.bin")); err == nil {
			hint = "; found pytorch_model.bin, which Loom does not read: re-save with safe_serialization=True"
		}
		return nil, fmt.Errorf("hf: %s: no %s or %s%s: %w", dir, WeightsFile, WeightsIndexFile, hint, os.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("hf: %w", err)
	}
	return openSharded(dir, index, b)
}

// openSharded opens the shards named by an index and checks that the index
// and the shards agree: every listed tensor is in its shard, and every tensor
// in a shard is listed for that shard.
func openSharded(dir, index string, b []byte) (*Tensors, error) {
	var idx struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("hf: %s: invalid index (want {\"metadata\": {...}, \"weight_map\": {tensor: file}}): %v", index, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("hf: %s: weight_map is empty or missing", index)
	}
	ts := &Tensors{dir: dir, where: make(map[string]int)}
	fileIdx := make(map[string]int)
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(idx.WeightMap)) {
		shard := idx.WeightMap[name]
		if shard == "" || shard != filepath.Base(shard) || shard == "." || shard == ".." || strings.ContainsAny(shard, `/\`) {
			errs = append(errs, fmt.Errorf("hf: %s: tensor %q maps to %q; shard names must be plain file names in the same directory", index, name, shard))
			continue
		}
		i, ok := fileIdx[shard]
		if !ok {
			f, err := safetensors.Open(filepath.Join(dir, shard))
			if err != nil {
				ts.Close()
				return nil, fmt.Errorf("hf: shard listed in %s: %w", index, err)
			}
			i = len(ts.files)
			fileIdx[shard] = i
			ts.files = append(ts.files, f)
		}
		if _, ok := ts.files[i].Tensor(name); !ok {
			errs = append(errs, fmt.Errorf("hf: %s lists tensor %q in %s, but that file does not contain it", index, name, shard))
			continue
		}
		ts.where[name] = i
	}
	for _, f := range ts.files {
		for _, n := range f.Names() {
			if ts.where[n] != fileIdx[filepath.Base(f.Path())] || idx.WeightMap[n] == "" {
				errs = append(errs, fmt.Errorf("hf: %s contains tensor %q, which %s does not list for that file", f.Path(), n, index))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		ts.Close()
		return nil, err
	}
	return ts, nil
}

// Close releases every open file.
func (t *Tensors) Close() error {
	var errs []error
	for _, f := range t.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// Names returns every tensor name, sorted.
func (t *Tensors) Names() []string { return slices.Sorted(maps.Keys(t.where)) }

// Info describes the named tensor and returns the path of the file holding it.
func (t *Tensors) Info(name string) (info safetensors.TensorInfo, path string, ok bool) {
	i, ok := t.where[name]
	if !ok {
		return safetensors.TensorInfo{}, "", false
	}
	info, _ = t.files[i].Tensor(name)
	return info, t.files[i].Path(), true
}

func (t *Tensors) file(name string) (*safetensors.File, error) {
	i, ok := t.where[name]
	if !ok {
		return nil, &TensorError{Dir: t.dir, Tensor: name, Msg: "not in the checkpoint", Err: ErrMissingTensor}
	}
	return t.files[i], nil
}

// ReadFloat32 returns the whole named tensor as float32.
func (t *Tensors) ReadFloat32(name string) ([]float32, error) {
	f, err := t.file(name)
	if err != nil {
		return nil, err
	}
	return f.ReadFloat32(name)
}

// ReadFloat32Range returns n elements of the named tensor from elemOffset,
// in row-major order, as float32.
func (t *Tensors) ReadFloat32Range(name string, elemOffset, n int64) ([]float32, error) {
	f, err := t.file(name)
	if err != nil {
		return nil, err
	}
	return f.ReadFloat32Range(name, elemOffset, n)
}

// ReadFloat32RangeInto fills dst from the named tensor starting at elemOffset.
func (t *Tensors) ReadFloat32RangeInto(name string, elemOffset int64, dst []float32) error {
	f, err := t.file(name)
	if err != nil {
		return err
	}
	return f.ReadFloat32RangeInto(name, elemOffset, dst)
}

// SaveDir writes a Hugging Face LlamaForCausalLM directory: config.json,
// model.safetensors (metadata {"format": "pt"}, which transformers requires)
// and, when cfg has BOS or EOS ids, generation_config.json. The tensors must
// be exactly LlamaTensorShapes(cfg). The directory appears complete or not at
// all: files are written into a sibling temporary directory that is renamed
// into place; an existing DIR is replaced (moved aside first, removed after).
// If cfg.TorchDtype is empty it is derived from the tensors' dtype.
func SaveDir(dir string, cfg Config, tensors []safetensors.Tensor) error {
	if cfg.TorchDtype == "" {
		dt, err := torchDtypeOf(tensors)
		if err != nil {
			return fmt.Errorf("hf: save %s: %w", dir, err)
		}
		cfg.TorchDtype = dt
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("hf: save %s: %w", dir, err)
	}
	if err := checkShapes(dir, cfg, tensors); err != nil {
		return err
	}
	dir = filepath.Clean(dir)
	parent, base := filepath.Dir(dir), filepath.Base(dir)
	tmp, err := os.MkdirTemp(parent, "."+base+".tmp-")
	if err != nil {
		return fmt.Errorf("hf: save %s: %w", dir, err)
	}
	err = os.Chmod(tmp, 0o755) // MkdirTemp makes 0700
	if err == nil {
		err = writeDirContents(tmp, cfg, tensors)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("hf: save %s: %w", dir, err)
	}
	if err := replaceDir(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("hf: save %s: %w", dir, err)
	}
	return nil
}

func writeDirContents(dir string, cfg Config, tensors []safetensors.Tensor) error {
	if err := WriteConfig(dir, cfg); err != nil {
		return err
	}
	if cfg.BOSTokenID != nil || len(cfg.EOSTokenID) > 0 {
		gen := map[string]any{"_from_model_config": true, "bos_token_id": cfg.BOSTokenID, "eos_token_id": cfg.EOSTokenID}
		if cfg.PadTokenID != nil {
			gen["pad_token_id"] = *cfg.PadTokenID
		}
		if cfg.TransformersVersion != "" {
			gen["transformers_version"] = cfg.TransformersVersion
		}
		b, err := json.MarshalIndent(gen, "", "  ")
		if err != nil {
			return err
		}
		if err := atomicfile.WriteFile(filepath.Join(dir, GenerationConfigFile), append(b, '\n')); err != nil {
			return err
		}
	}
	if err := safetensors.Write(filepath.Join(dir, WeightsFile), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	return safetensors.SyncDir(dir)
}

// replaceDir renames the complete directory tmp to dst. An existing dst is
// first moved aside and removed only after the new one is in place, so a
// crash leaves either the old or the new directory at dst (plus, at worst, a
// leftover .old or .tmp sibling), never a partial one.
func replaceDir(tmp, dst string) error {
	parent := filepath.Dir(dst)
	old := ""
	if _, err := os.Lstat(dst); err == nil {
		o, err := os.MkdirTemp(parent, "."+filepath.Base(dst)+".old-")
		if err != nil {
			return err
		}
		old = filepath.Join(o, "d")
		if err := os.Rename(dst, old); err != nil {
			os.Remove(o)
			return err
		}
		defer os.RemoveAll(o)
	}
	if err := os.Rename(tmp, dst); err != nil {
		if old != "" {
			os.Rename(old, dst) // put the previous version back
		}
		return err
	}
	return safetensors.SyncDir(parent)
}

func torchDtypeOf(tensors []safetensors.Tensor) (string, error) {
	names := map[safetensors.DType]string{"": "float32", safetensors.F32: "float32", safetensors.BF16: "bfloat16", safetensors.F16: "float16"}
	dt := ""
	for _, t := range tensors {
		n, ok := names[t.DType]
		if !ok {
			return "", fmt.Errorf("tensor %q: dtype %s cannot be saved; use F32, BF16 or F16", t.Name, t.DType)
		}
		if dt != "" && n != dt {
			return "", fmt.Errorf("tensors mix %s and %s (tensor %q); set Config.TorchDtype to say which is the model's dtype", dt, n, t.Name)
		}
		dt = n
	}
	if dt == "" {
		dt = "float32"
	}
	return dt, nil
}
