package train

import (
	"context"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/loomtrain/loom/checkpoint"
)

// In-memory snapshots ride the checkpoint writer: with checkpoint.every 3
// and snapshots every 2, six steps save disk checkpoints at steps 3 and 6
// and snapshots at 2, 4 and 6 — each a rank part in the snapshot
// directory that opens (OpenParts) and resumes the run bit for bit.
func TestSnapshotsBesideCheckpoints(t *testing.T) {
	spec := zeroSpec(corpus(t))
	spec.Train.Steps = 6
	dir := filepath.Join(t.TempDir(), "job")
	mem := filepath.Join(t.TempDir(), "mem")
	var mu sync.Mutex
	var disk, snaps []int
	parts := map[int]checkpoint.RankPart{}
	c := &committer{world: 1, parts: map[int][]checkpoint.RankPart{}}
	stats, _ := layoutRun(t, spec, runOpts{setup: func(_ int, tr *Trainer) error {
		return tr.EnableCheckpoints(CheckpointConfig{JobDir: dir, Every: 3,
			Report: func(ctx context.Context, p checkpoint.RankPart) error {
				mu.Lock()
				disk = append(disk, p.Step)
				mu.Unlock()
				return c.report(ctx, p)
			},
			Write: checkpoint.WriteOptions{Snapshot: &checkpoint.SnapshotTarget{Every: 2, JobDir: mem,
				Report: func(_ context.Context, p checkpoint.RankPart) error {
					mu.Lock()
					defer mu.Unlock()
					snaps = append(snaps, p.Step)
					parts[p.Step] = p
					return nil
				}}}})
	}})
	sort.Ints(disk)
	if len(disk) != 2 || disk[0] != 3 || disk[1] != 6 || len(snaps) != 3 || snaps[0] != 2 || snaps[1] != 4 || snaps[2] != 6 {
		t.Fatalf("disk checkpoints at %v, snapshots at %v; want [3 6] and [2 4 6]", disk, snaps)
	}
	ck, err := checkpoint.OpenParts(parts[4].Dir, []checkpoint.RankPart{parts[4]})
	if err != nil {
		t.Fatal(err)
	}
	if ck.Manifest.Step != 4 || ck.State.DataStep != 4 {
		t.Fatalf("snapshot of step 4: manifest step %d, data step %d", ck.Manifest.Step, ck.State.DataStep)
	}
	resumed, _ := layoutRun(t, spec, runOpts{setup: func(_ int, tr *Trainer) error { return tr.Restore(ck) }})
	if len(resumed[0]) != 2 {
		t.Fatalf("resumed from step 4: %d steps, want 2", len(resumed[0]))
	}
	for i, s := range resumed[0] {
		if want := stats[0][4+i]; s.Step != want.Step || s.Loss != want.Loss {
			t.Errorf("step %d: resumed loss %.9g, uninterrupted step %d %.9g", s.Step, s.Loss, want.Step, want.Loss)
		}
	}
}
