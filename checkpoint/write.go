package checkpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/loomtrain/loom/internal/atomicfile"
	"github.com/loomtrain/loom/safetensors"
)

// Snapshot is one rank's training state copied out of the live buffers,
// so the step loop can go on while it is written. Data holds the slices'
// values back to back, in Slices order. A Snapshot is not safe for
// concurrent use; its Data may be reused for the next save once written.
type Snapshot struct {
	Part   RankPart // Job, Step, Rank, Layout, Model, Spec (Dir and Files are set by WriteRank)
	State  RankState
	Slices []Slice
	Data   []float32
}

// SliceKey names a version-1 flat slice inside a shard file: KIND/NAME/START.
func SliceKey(kind, name string, start int64) string {
	return kind + "/" + name + "/" + strconv.FormatInt(start, 10)
}

// ChunkKey names a chunk inside a shard file: KIND/NAME/O0,O1,… (its
// offsets in the global tensor).
func ChunkKey(kind, name string, offsets []int) string {
	b := []byte(kind + "/" + name + "/")
	for i, o := range offsets {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(o), 10)
	}
	return string(b)
}

// WriteOptions are hooks for WriteRank.
type WriteOptions struct {
	// Fault, when set, is called at named points of the write of step's
	// checkpoint: "shard-half" (half the shard's tensors written, nothing
	// renamed into place) and "written" (both files durable, before
	// returning). Tests use it to crash a rank at an exact point.
	Fault func(point string, step int)
	// Snapshot, if set, makes the trainer's checkpoint writer also keep
	// in-memory snapshots (elastic.snapshot_every); WriteRank ignores it.
	Snapshot *SnapshotTarget
}

// SnapshotTarget is where a rank's in-memory snapshots go: every Every
// steps the rank's part is written, as for a checkpoint, under JobDir (a
// memory-backed store) and handed to Report.
type SnapshotTarget struct {
	Every  int
	JobDir string
	Report func(ctx context.Context, p RankPart) error
}

// WriteRank writes s as the rank's shard and state files into the partial
// directory of s.Part.Step under jobDir. Each file goes to a temporary
// name, is fsynced and renamed into place, and the directory is fsynced;
// its size and SHA-256 are computed from the bytes written. It returns the
// rank's part of the manifest.
func WriteRank(ctx context.Context, jobDir string, s *Snapshot, opt WriteOptions) (RankPart, error) {
	part := s.Part
	dir, err := filepath.Abs(PartialDir(jobDir, part.Step))
	if err != nil {
		return part, fmt.Errorf("checkpoint: %w", err)
	}
	part.Dir = dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return part, fmt.Errorf("checkpoint: step %d: %w", part.Step, err)
	}
	fault := func(p string) {
		if opt.Fault != nil {
			opt.Fault(p, part.Step)
		}
	}
	hdrs := make([]safetensors.TensorHeader, len(s.Slices))
	for i, sl := range s.Slices {
		hdrs[i] = safetensors.TensorHeader{Name: sl.Key, DType: safetensors.F32, Shape: []int64{sl.Len}}
	}
	meta := map[string]string{"format": "loom-shard", "job": part.Job, "step": strconv.Itoa(part.Step), "rank": strconv.Itoa(part.Rank)}
	shard, err := writeAtomic(filepath.Join(dir, shardFile(part.Rank)), func(w io.Writer) error {
		sw, err := safetensors.NewWriter(w, hdrs, meta)
		if err != nil {
			return err
		}
		off := int64(0)
		for i, sl := range s.Slices {
			if err := ctx.Err(); err != nil {
				return err
			}
			if i == len(s.Slices)/2 {
				fault("shard-half")
			}
			if err := sw.WriteFloat32(sl.Key, s.Data[off:off+sl.Len]); err != nil {
				return err
			}
			off += sl.Len
		}
		return sw.Close()
	})
	if err != nil {
		return part, err
	}
	// A copy: the snapshot (and its slices' AdamW steps) is refilled by the
	// next save, possibly before a committer encodes this part.
	shard.Rank, shard.Slices = part.Rank, append([]Slice(nil), s.Slices...)
	st := s.State
	st.Format, st.Version, st.Rank, st.Step = FormatName, FormatVersion, part.Rank, part.Step
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return part, fmt.Errorf("checkpoint: encode state: %w", err)
	}
	state, err := writeAtomic(filepath.Join(dir, stateFile(part.Rank)), func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		return part, err
	}
	state.Rank = part.Rank
	part.Files = []FileEntry{shard, state}
	fault("written")
	return part, nil
}

// hashWriter counts and hashes what passes through to w.
type hashWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (hw *hashWriter) Write(b []byte) (int, error) {
	n, err := hw.w.Write(b)
	hw.h.Write(b[:n])
	hw.n += int64(n)
	return n, err
}

// writeAtomic writes path through a temporary file beside it: fill, fsync,
// rename, fsync the directory. It returns the file's entry (path relative
// to its directory, size, SHA-256).
func writeAtomic(path string, fill func(io.Writer) error) (FileEntry, error) {
	var hw *hashWriter
	err := atomicfile.Write(path, func(w io.Writer) error {
		hw = &hashWriter{w: w, h: sha256.New()}
		return fill(hw)
	})
	if err != nil {
		return FileEntry{}, fmt.Errorf("checkpoint: %w", err)
	}
	return FileEntry{Path: filepath.Base(path), Size: hw.n, SHA256: hex.EncodeToString(hw.h.Sum(nil))}, nil
}
