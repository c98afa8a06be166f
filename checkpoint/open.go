package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/plan"
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
	return openVerified(dir, m)
}

// Reader reads boxes of a checkpoint's global tensors for any layout: a
// box the new layout needs is filled from every stored chunk that
// intersects it, in whichever files (version-1 flat slices are read as
// the boxes they cover). Files are opened on first use. Not safe for
// concurrent use; Close releases the files.
type Reader struct {
	ck     *Checkpoint
	shapes map[string][]int      // global shape by tensor name
	index  map[string][]chunkRef // kind + "\x00" + name
	files  map[string]*safetensors.File
	// Bytes counts the bytes of tensor data read.
	Bytes int64
}

// chunkRef is one stored box: elements of the box in row-major order start
// at element off of tensor key in file.
type chunkRef struct {
	file, key   string
	off         int64
	start, size []int
	step        int
}

// NewReader indexes ck's slices for a model of configuration cfg, whose
// tensors the checkpoint must hold with their global shapes.
func (ck *Checkpoint) NewReader(cfg model.Config) (*Reader, error) {
	l, err := model.NewLayout(cfg)
	if err != nil {
		return nil, err
	}
	r := &Reader{ck: ck, shapes: map[string][]int{}, index: map[string][]chunkRef{}, files: map[string]*safetensors.File{}}
	for _, v := range l.Views {
		r.shapes[v.Name] = v.Global
	}
	for _, f := range ck.Manifest.Files {
		for _, s := range f.Slices {
			shape, ok := r.shapes[s.Name]
			if !ok {
				continue
			}
			if fmt.Sprint(s.Shape) != fmt.Sprint(shape) {
				return nil, &CheckError{Dir: ck.Dir, File: f.Path, Reason: fmt.Sprintf("tensor %s has shape %v, the job's model %v", s.Name, s.Shape, shape), Err: ErrCorrupt}
			}
			k := s.Kind + "\x00" + s.Name
			if s.Offsets == nil {
				r.index[k] = append(r.index[k], flatBoxes(f.Path, s, shape)...)
				continue
			}
			if len(s.Offsets) != len(shape) || len(s.Sizes) != len(shape) || int64(prod(s.Sizes)) != s.Len {
				return nil, &CheckError{Dir: ck.Dir, File: f.Path, Reason: fmt.Sprintf("chunk %s offsets %v sizes %v of %d elements do not fit tensor %s %v", s.Key, s.Offsets, s.Sizes, s.Len, s.Name, shape), Err: ErrCorrupt}
			}
			for i := range shape {
				if s.Offsets[i] < 0 || s.Sizes[i] < 0 || s.Offsets[i]+s.Sizes[i] > shape[i] {
					return nil, &CheckError{Dir: ck.Dir, File: f.Path, Reason: fmt.Sprintf("chunk %s %v+%v lies outside tensor %s %v", s.Key, s.Offsets, s.Sizes, s.Name, shape), Err: ErrCorrupt}
				}
			}
			r.index[k] = append(r.index[k], chunkRef{file: f.Path, key: s.Key, start: s.Offsets, size: s.Sizes, step: s.Step})
		}
	}
	return r, nil
}

func prod(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// flatBoxes turns a version-1 flat slice [Start, Start+Len) of a tensor of
// shape into the (at most three) boxes it covers (plan.Boxes over the whole
// tensor): a partial first row, whole rows, a partial last row.
func flatBoxes(file string, s Slice, shape []int) []chunkRef {
	whole := model.View{Name: s.Name, Shape: shape, Global: shape, Start: make([]int, len(shape)), Size: shape}
	var out []chunkRef
	for _, c := range plan.Boxes(whole, int(s.Start), int(s.Start+s.Len)) {
		out = append(out, chunkRef{file: file, key: s.Key, off: int64(c.Flat) - s.Start, start: c.Start, size: c.Size, step: s.Step})
	}
	return out
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

// ReadBox fills dst with the box start[i] ≤ x_i < start[i]+size[i] of
// tensor name's kind, in the box's row-major order, from every stored chunk
// that intersects it, and returns the AdamW step count the chunks record
// (the same for every chunk read, or an error; 0 for parameters). Every
// element must be held exactly once.
func (r *Reader) ReadBox(kind, name string, start, size []int, dst []float32) (step int, err error) {
	shape, ok := r.shapes[name]
	if !ok || len(start) != len(shape) || len(size) != len(shape) {
		return 0, fmt.Errorf("checkpoint: no tensor %s of rank %d in the job's model", name, len(start))
	}
	want := prod(size)
	if len(dst) != want {
		return 0, fmt.Errorf("checkpoint: reading %s %v+%v (%d elements) into %d", name, start, size, want, len(dst))
	}
	if want == 0 {
		return 0, nil
	}
	step = -1
	covered := 0
	for _, ref := range r.index[kind+"\x00"+name] {
		lo, hi := make([]int, len(start)), make([]int, len(start))
		empty := false
		for i := range start {
			lo[i], hi[i] = max(start[i], ref.start[i]), min(start[i]+size[i], ref.start[i]+ref.size[i])
			empty = empty || lo[i] >= hi[i]
		}
		if empty {
			continue
		}
		f, err := r.file(ref.file)
		if err != nil {
			return 0, err
		}
		n, err := copyBox(f, ref, lo, hi, start, size, dst)
		if err != nil {
			return 0, &CheckError{Dir: r.ck.Dir, File: ref.file, Reason: err.Error(), Err: ErrCorrupt}
		}
		r.Bytes += 4 * int64(n)
		covered += n
		if kind != KindParam {
			if step >= 0 && ref.step != step {
				return 0, &CheckError{Dir: r.ck.Dir, File: ref.file, Reason: fmt.Sprintf("%s of %s records AdamW step %d, other chunks %d", kind, name, ref.step, step), Err: ErrCorrupt}
			}
			step = ref.step
		}
	}
	if covered != want {
		return 0, &CheckError{Dir: r.ck.Dir, Reason: fmt.Sprintf("%s of %s %s: %d of its %d elements are stored (each must be held exactly once)",
			kind, name, model.ChunkString(start, size), covered, want), Err: ErrCorrupt}
	}
	return max(step, 0), nil
}

// copyBox copies the intersection [lo, hi) of stored chunk ref and the
// target box (start, size) from f into dst, one run per row of the
// intersection (rows that are contiguous in both boxes merged), and
// returns the elements copied.
func copyBox(f *safetensors.File, ref chunkRef, lo, hi, start, size []int, dst []float32) (int, error) {
	nd := len(lo)
	last := nd - 1
	run := hi[last] - lo[last]
	// Row-major strides of the stored and the target box.
	sStride, dStride := make([]int, nd), make([]int, nd)
	sStride[last], dStride[last] = 1, 1
	for i := last - 1; i >= 0; i-- {
		sStride[i] = sStride[i+1] * ref.size[i+1]
		dStride[i] = dStride[i+1] * size[i+1]
	}
	rows := 1
	for i := 0; i < last; i++ {
		rows *= hi[i] - lo[i]
	}
	// Whole rows of both boxes: the intersection is one contiguous run.
	if nd == 2 && run == ref.size[1] && run == size[1] {
		run, rows = run*rows, 1
	}
	idx := append([]int(nil), lo...)
	total := 0
	for range rows {
		so, do := 0, 0
		for i := range nd {
			so += (idx[i] - ref.start[i]) * sStride[i]
			do += (idx[i] - start[i]) * dStride[i]
		}
		if err := f.ReadFloat32RangeInto(ref.key, ref.off+int64(so), dst[do:do+run]); err != nil {
			return total, err
		}
		total += run
		for i := last - 1; i >= 0; i-- { // next row of the intersection
			idx[i]++
			if idx[i] < hi[i] {
				break
			}
			idx[i] = lo[i]
		}
	}
	return total, nil
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

// ReadView fills dst (the view's local elements) with layout view v's
// chunk of kind — whatever layout the checkpoint was saved with — and
// returns the AdamW step count; padding elements are cleared.
func (r *Reader) ReadView(kind string, v model.View, dst []float32) (int, error) {
	return r.ReadLocal(kind, v, 0, v.Len(), dst)
}

// ReadLocal fills dst with local elements [a, b) of view v (offsets
// relative to the view): the boxes of the global tensor they cover, read
// by ReadBox (plan.Boxes); padding elements are cleared.
func (r *Reader) ReadLocal(kind string, v model.View, a, b int, dst []float32) (int, error) {
	clear(dst[:b-a])
	step := 0
	for _, c := range plan.Boxes(v, a, b) {
		at := c.Flat - v.Offset - a
		s, err := r.ReadBox(kind, v.Name, c.Start, c.Size, dst[at:at+c.Len()])
		if err != nil {
			return 0, err
		}
		step = s
	}
	return step, nil
}

// Model builds a whole model of the checkpoint's configuration on k
// holding the checkpoint's parameters, assembled from every rank's chunks
// (for export, evaluation and sampling).
func (ck *Checkpoint) Model(k tensor.Kernels) (*model.Model, error) {
	m, err := model.New(ck.Manifest.Model.Config(), k)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", ck.Dir, err)
	}
	r, err := ck.NewReader(m.Config)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	for _, v := range m.Layout.Views {
		if _, err := r.ReadView(KindParam, v, m.Params[v.Offset:v.End()]); err != nil {
			return nil, err
		}
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
