package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/model"
)

// The sharded training checkpoint (docs/checkpoints.md). A checkpoint of
// job NAME at step N is the directory DIR/NAME/step-N holding, per rank,
// a safetensors shard file and a small JSON state file, and a manifest
// written last. While ranks write, the directory is step-N.partial; the
// committer writes the manifest there and renames it to step-N.
const (
	// ManifestFile is written last; a checkpoint without it is incomplete.
	ManifestFile = "manifest.json"
	// FormatName and FormatVersion identify manifests and state files.
	// Version 2 records shards as N-d chunks of global tensors (Slice.Offsets
	// and Sizes); version 1 recorded flat ranges and still loads.
	FormatName    = "loom-checkpoint"
	FormatVersion = 2
	// MinFormatVersion is the oldest version this Loom reads.
	MinFormatVersion = 1
	// partialSuffix marks a step directory ranks are still writing.
	partialSuffix = ".partial"
	stepPrefix    = "step-"
)

// Kinds of state a shard file holds. Parameters and the two AdamW moments
// share the flat layout, so every kind is sliced the same way.
const (
	KindParam    = "param"
	KindExpAvg   = "exp_avg"
	KindExpAvgSq = "exp_avg_sq"
)

// Kinds lists the kinds in the order a shard file stores them.
var kinds = [...]string{KindParam, KindExpAvg, KindExpAvgSq}

// ErrIncomplete is the class of checkpoints that lack a manifest or a file
// the manifest lists; ErrCorrupt of those whose files do not match it.
var (
	ErrIncomplete = errors.New("incomplete checkpoint")
	ErrCorrupt    = errors.New("corrupt checkpoint")
	ErrNone       = errors.New("no complete checkpoint")
)

// CheckError says which checkpoint, which file and why it cannot be used.
type CheckError struct {
	Dir    string // the step directory
	File   string // relative to Dir; "" for the directory itself
	Reason string
	Err    error // ErrIncomplete or ErrCorrupt
}

func (e *CheckError) Error() string {
	where := e.Dir
	if e.File != "" {
		where = filepath.Join(e.Dir, e.File)
	}
	return fmt.Sprintf("%s: %v: %s", where, e.Err, e.Reason)
}

func (e *CheckError) Unwrap() error { return e.Err }

// Layout is the parallel layout a checkpoint was saved with.
type Layout struct {
	DP               int  `json:"dp"`
	TP               int  `json:"tp"`
	PP               int  `json:"pp"`
	Zero             int  `json:"zero"`
	SequenceParallel bool `json:"sequence_parallel,omitempty"`
	WorldSize        int  `json:"world_size"`
}

// LayoutOf is the layout of a job spec.
func LayoutOf(p api.ParallelSpec) Layout {
	return Layout{DP: p.DP, TP: p.TP, PP: p.PP, Zero: p.Zero, SequenceParallel: p.SequenceParallel && p.TP > 1, WorldSize: p.WorldSize()}
}

func (l Layout) String() string {
	s := fmt.Sprintf("dp=%d zero=%d", l.DP, l.Zero)
	if l.TP > 1 || l.PP > 1 {
		s += fmt.Sprintf(" tp=%d pp=%d", l.TP, l.PP)
	}
	if l.SequenceParallel {
		s += " sp"
	}
	return s
}

// ModelInfo is the model configuration recorded in a manifest.
type ModelInfo struct {
	VocabSize     int     `json:"vocab_size"`
	Dim           int     `json:"dim"`
	NLayers       int     `json:"n_layers"`
	NHeads        int     `json:"n_heads"`
	NKVHeads      int     `json:"n_kv_heads"`
	FFNHidden     int     `json:"ffn_hidden"`
	SeqLen        int     `json:"seq_len"`
	RopeTheta     float64 `json:"rope_theta"`
	NormEps       float64 `json:"norm_eps"`
	TieEmbeddings bool    `json:"tie_embeddings"`
}

// ModelInfoOf records c.
func ModelInfoOf(c model.Config) ModelInfo {
	return ModelInfo{VocabSize: c.VocabSize, Dim: c.Dim, NLayers: c.NLayers, NHeads: c.NHeads, NKVHeads: c.NKVHeads,
		FFNHidden: c.FFNHidden, SeqLen: c.SeqLen, RopeTheta: c.RopeTheta, NormEps: c.NormEps, TieEmbeddings: c.TieEmbeddings}
}

// Config is the model configuration m records.
func (m ModelInfo) Config() model.Config {
	return model.Config{VocabSize: m.VocabSize, Dim: m.Dim, NLayers: m.NLayers, NHeads: m.NHeads, NKVHeads: m.NKVHeads,
		FFNHidden: m.FFNHidden, SeqLen: m.SeqLen, RopeTheta: m.RopeTheta, NormEps: m.NormEps, TieEmbeddings: m.TieEmbeddings}
}

// Slice is a chunk of one global tensor held in a shard file, as PyTorch
// DCP records one: the box Offsets[i] ≤ x_i < Offsets[i]+Sizes[i] of the
// row-major tensor Name of global shape Shape, stored in the box's
// row-major order as the 1-D tensor Key (Len elements) of the file. A
// column-split tensor-parallel shard is one record. Without Offsets (what
// format version 1 wrote) the slice is the flat range [Start, Start+Len)
// of the tensor instead. Loading reads whatever intersects what the new
// layout needs, so any layout loads any other.
type Slice struct {
	Key     string `json:"key"`
	Kind    string `json:"kind"` // KindParam, KindExpAvg or KindExpAvgSq
	Name    string `json:"name"`
	Shape   []int  `json:"shape"`
	Offsets []int  `json:"offsets,omitempty"`
	Sizes   []int  `json:"sizes,omitempty"`
	Start   int64  `json:"start,omitempty"`
	Len     int64  `json:"len"`
	// Step is the AdamW step count of the optimizer that held a moment
	// slice (its bias correction); 0 for parameters.
	Step int `json:"step,omitempty"`
}

// FileEntry is one file of a checkpoint as the manifest lists it.
type FileEntry struct {
	Path   string  `json:"path"` // relative to the step directory
	Rank   int     `json:"rank"`
	Size   int64   `json:"size"`
	SHA256 string  `json:"sha256"`
	Slices []Slice `json:"slices,omitempty"` // shard files only
}

// RankState is a rank's small state file: everything besides tensors that
// a resumed run needs to continue exactly.
type RankState struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	Rank    int    `json:"rank"`
	// Step is the number of optimizer steps taken; the next step is Step+1.
	Step int `json:"step"`
	// DataStep is the data position: the 0-based step whose windows come
	// next. Windows are a pure function of (data seed, step), so the
	// position, the seed and the shuffle flag reproduce the stream.
	DataStep    int    `json:"data_step"`
	DataSeed    uint64 `json:"data_seed"`
	DataShuffle bool   `json:"data_shuffle"`
	GlobalBatch int    `json:"global_batch"`
	// TrainSeed seeded the initial weights; training draws no other
	// random numbers (no dropout), so it is the whole RNG state.
	TrainSeed uint64 `json:"train_seed"`
	// ScheduleStep is the LR schedule position (the 0-based index of the
	// next optimizer step) and NextLR its learning rate.
	ScheduleStep int     `json:"schedule_step"`
	NextLR       float64 `json:"next_lr"`
	// LossScale is the dynamic loss scale; null: training is float32 and
	// unscaled.
	LossScale *float64 `json:"loss_scale"`
}

// Manifest describes a complete checkpoint. It is written last.
type Manifest struct {
	Format  string    `json:"format"`
	Version int       `json:"version"`
	Job     string    `json:"job"`
	Step    int       `json:"step"`
	Time    time.Time `json:"time"`
	Layout  Layout    `json:"layout"`
	Model   ModelInfo `json:"model"`
	// Spec is the job spec (YAML) the checkpoint was saved under.
	Spec  string      `json:"spec"`
	Bytes int64       `json:"bytes"` // sum of the files' sizes
	Files []FileEntry `json:"files"`
	// Run identifies the run that saved the checkpoint: a fresh run gets a
	// new id, a resumed one keeps its checkpoint's; retention removes only
	// the run's own checkpoints. "" in checkpoints of Loom before run ids.
	Run string `json:"run,omitempty"`
}

// RankPart is what one rank reports after its files are durable: the
// manifest's facts as the rank knows them plus its own files.
type RankPart struct {
	Job    string      `json:"job"`
	Step   int         `json:"step"`
	Rank   int         `json:"rank"`
	Dir    string      `json:"dir"` // the step's partial directory, absolute
	Layout Layout      `json:"layout"`
	Model  ModelInfo   `json:"model"`
	Spec   string      `json:"spec"`
	Files  []FileEntry `json:"files"`
}

// JobDir is where a job's checkpoints go: checkpoint.dir/NAME.
func JobDir(s api.JobSpec) string { return filepath.Join(s.Checkpoint.Dir, s.Name) }

// StepDir is the directory of the complete checkpoint of step.
func StepDir(jobDir string, step int) string {
	return filepath.Join(jobDir, stepPrefix+strconv.Itoa(step))
}

// PartialDir is where ranks write the checkpoint of step.
func PartialDir(jobDir string, step int) string { return StepDir(jobDir, step) + partialSuffix }

// parseStepDir returns the step of a directory name step-N or
// step-N.partial.
func parseStepDir(name string) (step int, partial, ok bool) {
	s, found := strings.CutPrefix(name, stepPrefix)
	if !found {
		return 0, false, false
	}
	s, partial = strings.CutSuffix(s, partialSuffix)
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strconv.Itoa(n) != s {
		return 0, false, false
	}
	return n, partial, true
}

func shardFile(rank int) string { return fmt.Sprintf("rank-%05d.safetensors", rank) }
func stateFile(rank int) string { return fmt.Sprintf("rank-%05d.state.json", rank) }

// ReadManifest parses dir's manifest.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, &CheckError{Dir: dir, File: ManifestFile, Reason: "no manifest: the save did not finish", Err: ErrIncomplete}
	}
	if err != nil {
		return nil, &CheckError{Dir: dir, File: ManifestFile, Reason: err.Error(), Err: ErrIncomplete}
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, &CheckError{Dir: dir, File: ManifestFile, Reason: "does not parse: " + err.Error(), Err: ErrCorrupt}
	}
	if m.Format != FormatName || m.Version < MinFormatVersion || m.Version > FormatVersion {
		return nil, &CheckError{Dir: dir, File: ManifestFile, Reason: fmt.Sprintf("format %q version %d; this Loom reads %q versions %d to %d (a newer Loom wrote it: upgrade to load it)",
			m.Format, m.Version, FormatName, MinFormatVersion, FormatVersion), Err: ErrCorrupt}
	}
	for _, f := range m.Files {
		if f.Path == "" || filepath.IsAbs(f.Path) || strings.Contains(f.Path, "..") || strings.ContainsRune(f.Path, '/') {
			return nil, &CheckError{Dir: dir, File: ManifestFile, Reason: fmt.Sprintf("file path %q must be a plain name", f.Path), Err: ErrCorrupt}
		}
	}
	return &m, nil
}
