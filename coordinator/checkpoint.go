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
// Decide lists it in the job's Checkpoints action (one action per job, however
// many steps completed since the last round); the leader checks the
// reported files, writes each manifest (write, fsync, rename, fsync dir),
// renames the directory to step-N, applies retention, and only then
// records jobs/NAME/checkpoint (once: the newest step committed) and
// deletes the reports in one fenced transaction.
// A crash anywhere before the manifest leaves step-N.partial, which is
// never loaded; the previous checkpoint is untouched. A crash after it
// leaves the reports, and the next leader's Commit finds the checkpoint
// already written (Commit is idempotent) and records it.

// StepReports are every rank's report of one checkpoint step, by rank.
type StepReports struct {
	Step    int64
	Reports []*loomv1.CheckpointReport
}

// StepRange is the steps [From, To] whose reports one range delete removes.
type StepRange struct{ From, To int64 }

// decideCheckpoints returns the job's one Checkpoints action: commit each
// step every rank of one generation has reported and that is newer than
// the latest checkpoint; drop the reports of steps that can no longer
// complete (their generation ended) or are not newer. Steps whose ranks
// are still writing are kept. ok is false when there is nothing to do.
func decideCheckpoints(j JobObserved) (act Action, ok bool) {
	if len(j.Reports) == 0 {
		return Action{}, false
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
	act = Action{Kind: Checkpoints, Job: j.Desired.Name, Run: j.Desired.RunId}
	gone := func(step int64) {
		// Reports of adjacent removed steps go in one range delete.
		if n := len(act.DeleteReports); n > 0 && act.DeleteReports[n-1].To == prevStep(steps, step) {
			act.DeleteReports[n-1].To = step
			return
		}
		act.DeleteReports = append(act.DeleteReports, StepRange{From: step, To: step})
	}
	for _, step := range steps {
		byRank := j.Reports[step]
		reports := make([]*loomv1.CheckpointReport, 0, len(byRank))
		for _, r := range byRank {
			reports = append(reports, r)
		}
		sort.Slice(reports, func(a, b int) bool { return reports[a].Rank < reports[b].Rank })
		if step <= latest {
			act.Drops = append(act.Drops, step)
			gone(step)
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
			act.Commits = append(act.Commits, StepReports{Step: step, Reports: reports})
			latest = step
		case !running:
			act.Drops = append(act.Drops, step)
		default:
			continue // ranks are still writing
		}
		gone(step)
	}
	return act, len(act.DeleteReports) > 0
}

// prevStep is the report step before step in sorted steps (-1: none).
func prevStep(steps []int64, step int64) int64 {
	i := sort.Search(len(steps), func(i int) bool { return steps[i] >= step })
	if i == 0 {
		return -1
	}
	return steps[i-1]
}

// commitCheckpoints does the file I/O of the Checkpoints actions: it
// writes each committed step's manifest (checkpoint.Commit), oldest first,
// applies retention once, and fills in the record of the newest step
// committed, which apply writes to etcd. A step whose files do not check
// out is logged and dropped; the previous checkpoint stays the latest. It
// returns an error, and nothing is to be applied, when ctx ends meanwhile.
func (c *Coordinator) commitCheckpoints(ctx context.Context, acts []Action) ([]Action, error) {
	for i := range acts {
		a := &acts[i]
		if a.Kind != Checkpoints || len(a.Commits) == 0 {
			continue
		}
		var committed []StepReports
		var jobDir string
		keep := 1
		for _, sr := range a.Commits {
			dir, k, err := c.commitOne(a.Job, a.Run, sr)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if err != nil {
				c.log.Warn("coordinator: checkpoint not committed; the previous one stays the latest",
					"job", a.Job, "step", sr.Step, "err", err)
				a.Drops = append(a.Drops, sr.Step)
				continue
			}
			committed = append(committed, sr)
			jobDir, keep = filepath.Dir(dir), k
			a.Record = &loomv1.CheckpointRecord{Job: a.Job, Step: sr.Step, Dir: dir, Generation: sr.Reports[0].Generation,
				CommittedUnixMs: c.cfg.Now().UnixMilli()}
			c.log.Info("coordinator: checkpoint complete", "job", a.Job, "step", sr.Step, "dir", dir)
		}
		a.Commits = committed
		if jobDir == "" {
			continue
		}
		removed, err := checkpoint.Retain(jobDir, keep, a.Run)
		for _, r := range removed {
			c.log.Info("coordinator: checkpoint retention removed", "job", a.Job, "dir", r, "keep", keep)
		}
		if err != nil {
			c.log.Warn("coordinator: checkpoint retention", "job", a.Job, "err", err)
		}
	}
	return acts, nil
}

// commitOne decodes a step's reports and commits them as run's; it returns
// the step directory and the job's checkpoint.keep.
func (c *Coordinator) commitOne(job, run string, sr StepReports) (string, int, error) {
	parts := make([]checkpoint.RankPart, len(sr.Reports))
	for i, r := range sr.Reports {
		if err := json.Unmarshal(r.PartJson, &parts[i]); err != nil {
			return "", 0, fmt.Errorf("rank %d's report: %w", r.Rank, err)
		}
	}
	keep := 1
	if spec, err := api.ParseSpec([]byte(parts[0].Spec), "checkpoint spec"); err == nil {
		keep = spec.Checkpoint.Keep
	}
	opt := checkpoint.CommitOptions{Now: c.cfg.Now, Run: run}
	if h := c.cfg.BeforeCheckpointManifest; h != nil {
		opt.BeforeManifest = func() error { return h(job, sr.Step) }
	}
	dir, err := checkpoint.Commit(parts, opt)
	return dir, keep, err
}
