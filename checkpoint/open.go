package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/safetensors"
	"github.com/loomtrain/loom/tensor"
)

// Info describes one step directory under a job directory.
type Info struct {
	Dir      string
	Step     int
	Partial  bool      // step-N.partial: ranks were (or are) writing it
	Manifest *Manifest // nil when there is none or it does not parse
	Size     int64     // bytes of the directory's regular files
	Verified bool      // every file's SHA-256 was checked and matches
	// Err is nil for a complete checkpoint; otherwise a *CheckError
	// naming the file and the reason.
	Err error
}

// List describes the step directories of jobDir, oldest step first. With
// verify it checks every file's SHA-256 against the manifest; without,
// only that each file exists with its size.
func List(jobDir string, verify bool) ([]Info, error) {
	ents, err := os.ReadDir(jobDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: list %s: %w", jobDir, err)
	}
	var out []Info
	for _, e := range ents {
		step, partial, ok := parseStepDir(e.Name())
		if !ok || !e.IsDir() {
			continue
		}
		in := Info{Dir: filepath.Join(jobDir, e.Name()), Step: step, Partial: partial}
		in.Size = dirSize(in.Dir)
		if partial {
			in.Err = &CheckError{Dir: in.Dir, Reason: "partial: ranks did not all report, or the commit did not finish", Err: ErrIncomplete}
			if _, err := os.Stat(filepath.Join(in.Dir, ManifestFile)); err != nil {
				in.Err = &CheckError{Dir: in.Dir, File: ManifestFile, Reason: "no manifest: the save did not finish", Err: ErrIncomplete}
			}
		} else {
			in.Manifest, in.Err = ReadManifest(in.Dir)
			if in.Err == nil {
				in.Err = Check(in.Dir, in.Manifest, verify)
				in.Verified = verify && in.Err == nil
			}
		}
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Step != out[j].Step {
			return out[i].Step < out[j].Step
		}
		return !out[i].Partial && out[j].Partial
	})
	return out, nil
}

func dirSize(dir string) int64 {
	ents, _ := os.ReadDir(dir)
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// Check compares dir's files with manifest m: each must exist with its
// size and, with hashes, its SHA-256. The error names the first file
// that does not match and why.
func Check(dir string, m *Manifest, hashes bool) error {
	if m.Step < 0 || len(m.Files) == 0 {
		return &CheckError{Dir: dir, File: ManifestFile, Reason: "lists no files", Err: ErrCorrupt}
	}
	for _, f := range m.Files {
		path := filepath.Join(dir, f.Path)
		fi, err := os.Stat(path)
		if err != nil {
			return &CheckError{Dir: dir, File: f.Path, Reason: "missing: " + err.Error(), Err: ErrIncomplete}
		}
		if fi.Size() != f.Size {
			return &CheckError{Dir: dir, File: f.Path, Reason: fmt.Sprintf("size %d bytes, manifest says %d (truncated or overwritten)", fi.Size(), f.Size), Err: ErrCorrupt}
		}
		if !hashes {
			continue
		}
		sum, err := fileSHA256(path)
		if err != nil {
			return &CheckError{Dir: dir, File: f.Path, Reason: err.Error(), Err: ErrCorrupt}
		}
		if sum != f.SHA256 {
			return &CheckError{Dir: dir, File: f.Path, Reason: fmt.Sprintf("SHA-256 %s…, manifest says %s… (the contents changed)", sum[:12], f.SHA256[:min(12, len(f.SHA256))]), Err: ErrCorrupt}
		}
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Skipped is a checkpoint newer than the one chosen, and why it was not.
type Skipped struct {
	Dir string
	Err error
}

// Resolve picks the checkpoint to resume from. which is "auto" (like
// latest, but a job directory with no complete checkpoint returns a nil
// Checkpoint and no error: start fresh), "latest" (the
// newest complete and verified checkpoint under jobDir; newer incomplete or
// corrupt ones are returned in skipped, each naming its file and reason)
// or a step directory. The chosen checkpoint's files are verified against
// its manifest's SHA-256. Every rank resolving the same files chooses the
// same checkpoint. A "latest" with nothing usable is ErrNone.
func Resolve(jobDir, which string) (ck *Checkpoint, skipped []Skipped, err error) {
	if which != "latest" && which != "auto" {
		ck, err := Open(which)
		return ck, nil, err
	}
	infos, err := List(jobDir, false)
	if err != nil {
		return nil, nil, err
	}
	for i := len(infos) - 1; i >= 0; i-- {
		in := infos[i]
		if in.Err != nil {
			skipped = append(skipped, Skipped{Dir: in.Dir, Err: in.Err})
			continue
		}
		ck, err := Open(in.Dir)
		if err != nil {
			skipped = append(skipped, Skipped{Dir: in.Dir, Err: err})
			continue
		}
		return ck, skipped, nil
	}
	if which == "auto" {
		return nil, skipped, nil
	}
	return nil, skipped, fmt.Errorf("checkpoint: %s: %w", jobDir, ErrNone)
}

// Checkpoint is a complete, verified checkpoint opened for reading.
type Checkpoint struct {
	Dir      string
	Manifest *Manifest
	// State is rank 0's state file (every rank records the same step and
	// data position).
	State RankState
}

// Open reads dir's manifest and verifies every file it lists (size and
// SHA-256).
func Open(dir string) (*Checkpoint, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	if err := Check(dir, m, true); err != nil {
		return nil, err
	}
	ck := &Checkpoint{Dir: dir, Manifest: m}
	for _, f := range m.Files {
		if f.Path == stateFile(0) {
			b, err := os.ReadFile(filepath.Join(dir, f.Path))
			if err != nil {
				return nil, &CheckError{Dir: dir, File: f.Path, Reason: err.Error(), Err: ErrCorrupt}
			}
			if err := json.Unmarshal(b, &ck.State); err != nil {
				return nil, &CheckError{Dir: dir, File: f.Path, Reason: "does not parse: " + err.Error(), Err: ErrCorrupt}
			}
		}
	}
	if ck.State.Format != FormatName || ck.State.Step != m.Step {
		return nil, &CheckError{Dir: dir, File: stateFile(0), Reason: fmt.Sprintf("missing or for step %d, manifest says %d", ck.State.Step, m.Step), Err: ErrCorrupt}
	}
	return ck, nil
}

// Reader reads flat ranges of a checkpoint's state in any layout: it maps
// a range of the flat buffer to the global tensors it covers and those to
// the slices, in whichever files, that hold them. Files are opened on
// first use. Not safe for concurrent use; Close releases the files.
type Reader struct {
	ck     *Checkpoint
	layout *model.Layout
	index  map[string][]sliceRef // kind + "\x00" + name
	files  map[string]*safetensors.File
	// Bytes counts the bytes of tensor data read.
	Bytes int64
}

type sliceRef struct {
	file string
	s    Slice
}

// NewReader indexes ck's slices for a model of layout l, which must have
// the checkpoint's tensors and shapes.
func (ck *Checkpoint) NewReader(l *model.Layout) (*Reader, error) {
	r := &Reader{ck: ck, layout: l, index: map[string][]sliceRef{}, files: map[string]*safetensors.File{}}
	for _, f := range ck.Manifest.Files {
		for _, s := range f.Slices {
			k := s.Kind + "\x00" + s.Name
			r.index[k] = append(r.index[k], sliceRef{file: f.Path, s: s})
		}
	}
	for _, v := range l.Views {
		for _, ref := range r.index[KindParam+"\x00"+v.Name] {
			if fmt.Sprint(ref.s.Shape) != fmt.Sprint(v.Shape) {
				return nil, &CheckError{Dir: ck.Dir, File: ref.file, Reason: fmt.Sprintf("tensor %s has shape %v, the job's model %v", v.Name, ref.s.Shape, v.Shape), Err: ErrCorrupt}
			}
		}
	}
	return r, nil
}

// Close releases the files opened.
func (r *Reader) Close() error {
	var errs []error
	for _, f := range r.files {
		errs = append(errs, f.Close())
	}
	r.files = nil
	return errors.Join(errs...)
}

// ReadFlat fills dst with flat elements [offset, offset+len(dst)) of kind
// and returns the AdamW step count the slices record (the same for every
// slice read, or an error). Every element must be held by some slice.
func (r *Reader) ReadFlat(kind string, offset int, dst []float32) (step int, err error) {
	end := offset + len(dst)
	step = -1
	for _, v := range r.layout.Views {
		lo, hi := max(offset, v.Offset), min(end, v.End())
		if lo >= hi {
			continue
		}
		// Tensor-relative [a, b) still to fill.
		a, b := int64(lo-v.Offset), int64(hi-v.Offset)
		covered := int64(0)
		for _, ref := range r.index[kind+"\x00"+v.Name] {
			s0, s1 := max(a, ref.s.Start), min(b, ref.s.Start+ref.s.Len)
			if s0 >= s1 {
				continue
			}
			f, err := r.file(ref.file)
			if err != nil {
				return 0, err
			}
			out := dst[int64(v.Offset)+s0-int64(offset) : int64(v.Offset)+s1-int64(offset)]
			if err := f.ReadFloat32RangeInto(ref.s.Key, s0-ref.s.Start, out); err != nil {
				return 0, &CheckError{Dir: r.ck.Dir, File: ref.file, Reason: err.Error(), Err: ErrCorrupt}
			}
			r.Bytes += 4 * (s1 - s0)
			covered += s1 - s0
			if kind != KindParam {
				if step >= 0 && ref.s.Step != step {
					return 0, &CheckError{Dir: r.ck.Dir, File: ref.file, Reason: fmt.Sprintf("%s of %s records AdamW step %d, other slices %d", kind, v.Name, ref.s.Step, step), Err: ErrCorrupt}
				}
				step = ref.s.Step
			}
		}
		if covered != b-a {
			return 0, &CheckError{Dir: r.ck.Dir, Reason: fmt.Sprintf("%s of %s: elements [%d, %d) are held %d times in total, want exactly once",
				kind, v.Name, a, b, covered), Err: ErrCorrupt}
		}
	}
	return max(step, 0), nil
}

func (r *Reader) file(name string) (*safetensors.File, error) {
	if f, ok := r.files[name]; ok {
		return f, nil
	}
	f, err := safetensors.Open(filepath.Join(r.ck.Dir, name))
	if err != nil {
		return nil, &CheckError{Dir: r.ck.Dir, File: name, Reason: err.Error(), Err: ErrCorrupt}
	}
	r.files[name] = f
	return f, nil
}

// Model builds a model of the checkpoint's configuration on k holding the
// checkpoint's parameters, gathered from every rank's shard (for export
// and sampling).
func (ck *Checkpoint) Model(k tensor.Kernels) (*model.Model, error) {
	m, err := model.New(ck.Manifest.Model.Config(), k)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", ck.Dir, err)
	}
	r, err := ck.NewReader(m.Layout)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if _, err := r.ReadFlat(KindParam, 0, m.Params); err != nil {
		return nil, err
	}
	return m, nil
}

// CompareState names what in spec makes a run resumed from st differ from
// the run that saved it (the data stream or the batch), for warnings; the
// resume itself goes ahead.
func CompareState(spec api.JobSpec, st RankState) []string {
	var notes []string
	if spec.Data.Seed != st.DataSeed || spec.Data.Shuffle != st.DataShuffle {
		notes = append(notes, fmt.Sprintf("data.seed/shuffle are %d/%v, the checkpoint's %d/%v: the resumed run sees other windows",
			spec.Data.Seed, spec.Data.Shuffle, st.DataSeed, st.DataShuffle))
	}
	if spec.Train.GlobalBatch != st.GlobalBatch {
		notes = append(notes, fmt.Sprintf("train.global_batch is %d, the checkpoint's %d: the data position is kept in steps, so the resumed run sees other windows",
			spec.Train.GlobalBatch, st.GlobalBatch))
	}
	return notes
}
