package checkpoint

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/plan"
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
	// Any box, across slice and file boundaries: version-1 flat slices are
	// read as the boxes they cover.
	r, err := ck.NewReader(m.Config)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	v, _ := m.Layout.Lookup("model.layers.0.self_attn.q_proj.weight")
	dst := make([]float32, 5*7)
	if _, err := r.ReadBox(KindParam, v.Name, []int{3, 2}, []int{5, 7}, dst); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		for j := range 7 {
			if got, want := dst[i*7+j], m.Params[v.Offset+(3+i)*v.Shape[1]+2+j]; got != want {
				t.Fatalf("box element (%d,%d) = %v, want %v", i, j, got, want)
			}
		}
	}
	// No moments were saved: reading them names the tensor.
	e, _ := m.Layout.Lookup("model.embed_tokens.weight")
	if _, err := r.ReadView(KindExpAvg, e, make([]float32, e.Len())); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "exp_avg of model.embed_tokens.weight") {
		t.Fatalf("missing slices: %v", err)
	}
}

// Chunks saved as N-d boxes by one tensor-parallel split — a column split
// is one record per rank — read back into any other split, with the
// padding of an uneven vocabulary neither stored nor read.
func TestChunksReshardAcrossSplits(t *testing.T) {
	cfg := tinyConfig(false)
	cfg.VocabSize = 23
	whole, _ := model.New(cfg, tensor.Reference{})
	whole.Init(8)
	jobDir := filepath.Join(t.TempDir(), "j")
	const tp = 2
	var parts []RankPart
	for r := range tp {
		l, err := model.NewLocalLayout(cfg, model.Split{TP: tp, Rank: r})
		if err != nil {
			t.Fatal(err)
		}
		s := &Snapshot{Part: RankPart{Job: "j", Step: 1, Rank: r, Layout: Layout{DP: 1, TP: tp, PP: 1, WorldSize: tp}, Model: ModelInfoOf(cfg)}}
		local := make([]float32, l.Size)
		for _, v := range l.Views {
			gv, _ := whole.Layout.Lookup(v.Name)
			v.FromGlobal(local[v.Offset:v.End()], whole.Params[gv.Offset:gv.End()])
			if !v.Owner {
				continue
			}
			for _, c := range plan.Boxes(v, 0, v.Len()) {
				s.Slices = append(s.Slices, Slice{Key: ChunkKey(KindParam, v.Name, c.Start), Kind: KindParam, Name: v.Name,
					Shape: v.Global, Offsets: c.Start, Sizes: c.Size, Len: int64(c.Len())})
				s.Data = append(s.Data, local[c.Flat:c.Flat+c.Len()]...)
			}
		}
		for _, sl := range s.Slices {
			if strings.HasSuffix(sl.Name, "o_proj.weight") && len(sl.Sizes) != 2 {
				t.Fatalf("o_proj chunk %v", sl)
			}
		}
		p, err := WriteRank(context.Background(), jobDir, s, WriteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, p)
	}
	dir, err := Commit(parts, CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ck, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ck.Model(tensor.Reference{})
	if err != nil {
		t.Fatal(err)
	}
	if !slicesEqual(got.Params, whole.Params) {
		t.Fatal("the whole model read from tp=2 chunks differs")
	}
	r, _ := ck.NewReader(cfg)
	defer r.Close()
	for _, split := range []model.Split{{TP: 4, Rank: 3}, {TP: 4, Rank: 1}} {
		l, err := model.NewLocalLayout(cfg, split)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range l.Views {
			dst := make([]float32, v.Len())
			if _, err := r.ReadView(KindParam, v, dst); err != nil {
				t.Fatal(err)
			}
			gv, _ := whole.Layout.Lookup(v.Name)
			want := make([]float32, v.Len())
			v.FromGlobal(want, whole.Params[gv.Offset:gv.End()])
			if !slicesEqual(dst, want) {
				t.Fatalf("split %+v: %s differs", split, v.Name)
			}
		}
	}
}

func slicesEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
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

// The part WriteRank returns does not share the snapshot's slices: the
// next save refills them (AdamW steps included) while a committer may
// still have to encode this part.
func TestWriteRankPartOwnsItsSlices(t *testing.T) {
	s := &Snapshot{Part: RankPart{Job: "j", Step: 1, Layout: Layout{DP: 1, TP: 1, PP: 1, WorldSize: 1}},
		Slices: []Slice{{Key: "exp_avg/w/0", Kind: KindExpAvg, Name: "w", Shape: []int{2}, Offsets: []int{0}, Sizes: []int{2}, Len: 2, Step: 1}},
		Data:   []float32{1, 2}}
	p, err := WriteRank(context.Background(), filepath.Join(t.TempDir(), "j"), s, WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Slices[0].Step = 2
	if got := p.Files[0].Slices[0].Step; got != 1 {
		t.Fatalf("the reported part's slice records step %d after the snapshot was refilled", got)
	}
}
