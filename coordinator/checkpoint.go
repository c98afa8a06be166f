package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// The checkpoint commit protocol. Saves happen at deterministic step
// boundaries (every checkpoint.every steps), so no message starts them:
// each rank snapshots its state after the step, writes its files into
// DIR/NAME/step-N.partial in the background, fsyncs them and reports under
// jobs/NAME/checkpoints/STEP/RANK (a write fenced on its generation's
// assignment). When every rank of one generation has reported a step,
// Decide asks for CommitCheckpoint; the leader checks the reported files,
// writes the manifest (write, fsync, rename, fsync dir), renames the
// directory to step-N, applies retention, and only then records
// jobs/NAME/checkpoint and deletes the reports in one fenced transaction.
// A crash anywhere before the manifest leaves step-N.partial, which is
// never loaded; the previous checkpoint is untouched. A crash after it
// leaves the reports, and the next leader's Commit finds the checkpoint
// already written (Commit is idempotent) and records it.

// decideCheckpoints returns the checkpoint actions of one job: commit each
// step every rank of one generation has reported and that is newer than
// the latest checkpoint; drop the reports of steps that can no longer
// complete (their generation ended) or are not newer.
func decideCheckpoints(j JobObserved) []Action {
	if len(j.Reports) == 0 {
		return nil
	}
	latest := int64(-1)
	if j.Checkpoint != nil {
		latest = j.Checkpoint.Step
	}
	steps := make([]int64, 0, len(j.Reports))
	for s := range j.Reports {
		steps = append(steps, s)
	}
	sort.Slice(steps, func(a, b int) bool { return steps[a] < steps[b] })
	var acts []Action
	for _, step := range steps {
		byRank := j.Reports[step]
		reports := make([]*loomv1.CheckpointReport, 0, len(byRank))
		for _, r := range byRank {
			reports = append(reports, r)
		}
		sort.Slice(reports, func(a, b int) bool { return reports[a].Rank < reports[b].Rank })
		act := Action{Job: j.Desired.Name, Step: step, Reports: reports, Run: j.Desired.RunId}
		if step <= latest {
			act.Kind = DropCheckpointReports
			acts = append(acts, act)
			continue
		}
		gen, world := reports[0].Generation, int(reports[0].WorldSize)
		complete := len(reports) == world
		for i, r := range reports {
			complete = complete && r.Generation == gen && int(r.Rank) == i && int(r.WorldSize) == world
		}
		running := j.Assignment != nil && j.Assignment.Generation == gen
		switch {
		case complete:
			act.Kind = CommitCheckpoint
			latest = step
		case !running:
			act.Kind = DropCheckpointReports
		default:
			continue // ranks are still writing
		}
		acts = append(acts, act)
	}
	return acts
}

// commitCheckpoints does the file I/O of the CommitCheckpoint actions:
// it writes each manifest (checkpoint.Commit) and retention, and fills in
// the record that apply writes to etcd. A step whose files do not check
// out is logged and dropped; the previous checkpoint stays the latest. It
// returns an error, and nothing is to be applied, when ctx ends meanwhile.
func (c *Coordinator) commitCheckpoints(ctx context.Context, acts []Action) ([]Action, error) {
	for i := range acts {
		a := &acts[i]
		if a.Kind != CommitCheckpoint {
			continue
		}
		dir, keep, err := c.commitOne(a)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			c.log.Warn("coordinator: checkpoint not committed; the previous one stays the latest",
				"job", a.Job, "step", a.Step, "err", err)
			a.Kind = DropCheckpointReports
			continue
		}
		a.Record = &loomv1.CheckpointRecord{Job: a.Job, Step: a.Step, Dir: dir, Generation: a.Reports[0].Generation,
			CommittedUnixMs: c.cfg.Now().UnixMilli()}
		removed, err := checkpoint.Retain(filepath.Dir(dir), keep, a.Run)
		for _, r := range removed {
			c.log.Info("coordinator: checkpoint retention removed", "job", a.Job, "dir", r, "keep", keep)
		}
		if err != nil {
			c.log.Warn("coordinator: checkpoint retention", "job", a.Job, "err", err)
		}
		c.log.Info("coordinator: checkpoint complete", "job", a.Job, "step", a.Step, "dir", dir)
	}
	return acts, nil
}

// commitOne decodes a step's reports and commits them; it returns the
// step directory and the job's checkpoint.keep.
func (c *Coordinator) commitOne(a *Action) (string, int, error) {
	parts := make([]checkpoint.RankPart, len(a.Reports))
	for i, r := range a.Reports {
		if err := json.Unmarshal(r.PartJson, &parts[i]); err != nil {
			return "", 0, fmt.Errorf("rank %d's report: %w", r.Rank, err)
		}
	}
	keep := 1
	if spec, err := api.ParseSpec([]byte(parts[0].Spec), "checkpoint spec"); err == nil {
		keep = spec.Checkpoint.Keep
	}
	opt := checkpoint.CommitOptions{Now: c.cfg.Now, Run: a.Run}
	if h := c.cfg.BeforeCheckpointManifest; h != nil {
		opt.BeforeManifest = func() error { return h(a.Job, a.Step) }
	}
	dir, err := checkpoint.Commit(parts, opt)
	return dir, keep, err
}
