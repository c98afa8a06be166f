package checkpoint

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
)

// saveSharded writes a checkpoint of m's parameters split across world
// ranks in equal flat ranges (each cut at arbitrary points of tensors) and
// commits it unless commit is false.
func saveSharded(t *testing.T, jobDir string, m *model.Model, step, world int, commit bool) []RankPart {
	t.Helper()
	n := len(m.Params)
	var parts []RankPart
	for r := range world {
		lo, hi := r*n/world, (r+1)*n/world
		s := &Snapshot{Part: RankPart{Job: "j", Step: step, Rank: r, Layout: Layout{DP: world, TP: 1, PP: 1, WorldSize: world},
			Model: ModelInfoOf(m.Config)}}
		for _, v := range m.Layout.Views {
			a, b := max(lo, v.Offset), min(hi, v.End())
			if a >= b {
				continue
			}
			s.Slices = append(s.Slices, Slice{Key: SliceKey(KindParam, v.Name, int64(a-v.Offset)), Kind: KindParam, Name: v.Name,
				Shape: v.Shape, Start: int64(a - v.Offset), Len: int64(b - a)})
			s.Data = append(s.Data, m.Params[a:b]...)
		}
		p, err := WriteRank(context.Background(), jobDir, s, WriteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, p)
	}
	if commit {
		if _, err := Commit(parts, CommitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return parts
}

func TestShardedRoundTripAndReshardRead(t *testing.T) {
	m, _ := model.New(tinyConfig(false), tensor.Reference{})
	m.Init(3)
	jobDir := filepath.Join(t.TempDir(), "j")
	saveSharded(t, jobDir, m, 5, 3, true)
	ck, skipped, err := Resolve(jobDir, "latest")
	if err != nil || len(skipped) != 0 || ck.Manifest.Step != 5 {
		t.Fatalf("resolve: %v %v", err, skipped)
	}
	got, err := ck.Model(tensor.Reference{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range m.Params {
		if got.Params[i] != m.Params[i] {
			t.Fatalf("param %d: %v, want %v", i, got.Params[i], m.Params[i])
		}
	}
	// Any range, across slice and file boundaries.
	r, _ := ck.NewReader(m.Layout)
	defer r.Close()
	dst := make([]float32, 101)
	if _, err := r.ReadFlat(KindParam, len(m.Params)/3-50, dst); err != nil {
		t.Fatal(err)
	}
	for i, v := range dst {
		if v != m.Params[len(m.Params)/3-50+i] {
			t.Fatalf("range element %d differs", i)
		}
	}
	// No moments were saved: reading them names the tensor.
	if _, err := r.ReadFlat(KindExpAvg, 0, dst); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "exp_avg of model.embed_tokens.weight") {
		t.Fatalf("missing slices: %v", err)
	}
}

// Commit is idempotent, removes leftovers of earlier attempts and refuses
// an incomplete set of reports.
func TestCommit(t *testing.T) {
	m, _ := model.New(tinyConfig(false), tensor.Reference{})
	jobDir := filepath.Join(t.TempDir(), "j")
	parts := saveSharded(t, jobDir, m, 2, 2, false)
	os.WriteFile(filepath.Join(parts[0].Dir, "rank-00007.safetensors"), []byte("old layout"), 0o644)
	if _, err := Commit(parts[:1], CommitOptions{}); err == nil || !strings.Contains(err.Error(), "1 of 2 ranks reported") {
		t.Fatalf("partial commit: %v", err)
	}
	dir, err := Commit(parts, CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "rank-00007.safetensors")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover of an earlier attempt kept: %v", err)
	}
	if again, err := Commit(parts, CommitOptions{}); err != nil || again != dir {
		t.Fatalf("second commit: %q, %v", again, err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
}

// Retention keeps the newest keep complete checkpoints, removes older
// partial ones and never a newer partial (a save in progress) or the
// newest complete one, even when a newer one is corrupt.
func TestRetain(t *testing.T) {
	m, _ := model.New(tinyConfig(false), tensor.Reference{})
	jobDir := filepath.Join(t.TempDir(), "j")
	for _, s := range []int{1, 2, 3, 4} {
		saveSharded(t, jobDir, m, s, 1, true)
	}
	saveSharded(t, jobDir, m, 0, 1, false) // an abandoned save
	saveSharded(t, jobDir, m, 9, 1, false) // in progress
	if _, err := Retain(jobDir, 2, ""); err != nil {
		t.Fatal(err)
	}
	var left []string
	infos, _ := List(jobDir, true)
	for _, in := range infos {
		left = append(left, filepath.Base(in.Dir))
	}
	if strings.Join(left, " ") != "step-3 step-4 step-9.partial" {
		t.Fatalf("left %v", left)
	}
	if ck, _, err := Resolve(t.TempDir(), "auto"); ck != nil || err != nil {
		t.Fatalf("auto in an empty directory: %v, %v", ck, err)
	}
	if _, _, err := Resolve(t.TempDir(), "latest"); !errors.Is(err, ErrNone) {
		t.Fatalf("latest in an empty directory: %v", err)
	}
}
