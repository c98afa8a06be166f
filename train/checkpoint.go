package train

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/loomtrain/loom/checkpoint"
)

// CheckpointConfig turns on periodic sharded checkpoints (see
// docs/checkpoints.md).
type CheckpointConfig struct {
	// JobDir is checkpoint.dir/NAME; step N goes to JobDir/step-N.
	JobDir string
	// Every is the step interval (checkpoint.every, > 0).
	Every int
	// SpecYAML is recorded in the manifest (default: the spec re-encoded).
	SpecYAML []byte
	// Report receives the rank's part of the manifest once its files are
	// durable, on the background writer's goroutine. With world size 1 it
	// commits (CommitLocal); a worker sends it to the coordinator.
	Report func(ctx context.Context, p checkpoint.RankPart) error
	// Write holds test hooks of the writer.
	Write checkpoint.WriteOptions
	// Log receives a line per checkpoint written (nil: discard).
	Log io.Writer
}

// CommitLocal returns a Report for world size 1: the trainer acts as its
// own coordinator, committing the checkpoint as run's and applying
// retention to run's checkpoints only.
func CommitLocal(jobDir string, keep int, run string, log io.Writer) func(context.Context, checkpoint.RankPart) error {
	if log == nil {
		log = io.Discard
	}
	return func(_ context.Context, p checkpoint.RankPart) error {
		dir, err := checkpoint.Commit([]checkpoint.RankPart{p}, checkpoint.CommitOptions{Run: run})
		if err != nil {
			return err
		}
		removed, err := checkpoint.Retain(jobDir, keep, run)
		for _, r := range removed {
			fmt.Fprintf(log, "loom: checkpoint retention (keep %d): removed %s\n", keep, r)
		}
		if err != nil {
			return fmt.Errorf("checkpoint retention: %w", err)
		}
		fmt.Fprintf(log, "loom: checkpoint step %d complete: %s\n", p.Step, dir)
		return nil
	}
}

// saver is the asynchronous checkpoint writer: the step loop copies the
// rank's state into snap and goes on; one goroutine writes it and reports.
// At most one write is in flight; the next save waits for it.
type saver struct {
	cfg  CheckpointConfig
	snap *checkpoint.Snapshot
	done chan saveResult // the in-flight write's result; nil when idle
	// written and writing count the bytes written by finished writes and
	// the background time they took.
	written int64
	writing time.Duration
}

type saveResult struct {
	err   error
	bytes int64
	took  time.Duration
}

// EnableCheckpoints makes Run save a checkpoint after every cfg.Every
// steps. The step loop is blocked only while the rank's state is copied
// (and, under ZeRO stage 3, its parameters gathered); the files are
// written in the background while the next steps run.
func (t *Trainer) EnableCheckpoints(cfg CheckpointConfig) error {
	if cfg.Every <= 0 || cfg.JobDir == "" || cfg.Report == nil {
		return fmt.Errorf("train: checkpoints need JobDir, Every > 0 and Report (every = %d, dir %q)", cfg.Every, cfg.JobDir)
	}
	if cfg.SpecYAML == nil {
		b, err := t.spec.YAML()
		if err != nil {
			return fmt.Errorf("train: encode job spec: %w", err)
		}
		cfg.SpecYAML = b
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	// The snapshot buffer is allocated and its pages touched here, not at
	// the first save: the step loop never waits for the allocation or the
	// page faults.
	snap := t.newSnapshot(string(cfg.SpecYAML))
	for i := 0; i < len(snap.Data); i += 1024 {
		snap.Data[i] = 1
	}
	t.ck = &saver{cfg: cfg, snap: snap}
	return nil
}

// SaveStats is what checkpointing cost: bytes written by this rank and the
// background seconds spent writing them, counting writes that finished
// before the last save or the end of Run. Call it after Run.
func (t *Trainer) SaveStats() (bytes int64, seconds float64) {
	if t.ck == nil {
		return 0, 0
	}
	return t.ck.written, t.ck.writing.Seconds()
}

// save snapshots the state after step t.step and starts writing it; it
// returns how long the step loop was blocked.
func (s *saver) save(ctx context.Context, t *Trainer) (time.Duration, error) {
	start := time.Now()
	if err := s.wait(); err != nil {
		return 0, err
	}
	if err := t.fillSnapshot(ctx, s.snap); err != nil {
		return 0, fmt.Errorf("checkpoint step %d: %w", t.step, err)
	}
	blocked := time.Since(start)
	snap := s.snap
	done := make(chan saveResult, 1)
	s.done = done
	// The write outlives a cancelled step context: a rank stopped mid-save
	// still leaves whole files (the commit decides whether they count).
	wctx := context.WithoutCancel(ctx)
	go func() {
		var res saveResult
		w0 := time.Now()
		part, err := checkpoint.WriteRank(wctx, s.cfg.JobDir, snap, s.cfg.Write)
		if err == nil {
			res.took = time.Since(w0)
			for _, f := range part.Files {
				res.bytes += f.Size
			}
			fmt.Fprintf(s.cfg.Log, "loom: rank %d wrote checkpoint step %d: %d bytes in %v\n", part.Rank, part.Step, res.bytes, res.took.Round(time.Millisecond))
			rctx, cancel := context.WithTimeout(wctx, time.Minute)
			err = s.cfg.Report(rctx, part)
			cancel()
		}
		if err != nil {
			res.err = fmt.Errorf("checkpoint step %d: %w", snap.Part.Step, err)
		}
		done <- res
	}()
	return blocked, nil
}

// wait blocks until the in-flight write (if any) has finished and returns
// its error.
func (s *saver) wait() error {
	if s == nil || s.done == nil {
		return nil
	}
	res := <-s.done
	s.done = nil
	s.written += res.bytes
	s.writing += res.took
	return res.err
}

// newSnapshot lays out this rank's slices: for each kind (parameters, then
// the two AdamW moments), the plan's tensor records of this rank, so that
// every rank writes what its ZeRO partition owns whatever the stage.
func (t *Trainer) newSnapshot(spec string) *checkpoint.Snapshot {
	plan := t.engine.Plan()
	me := plan.Ranks[t.rank]
	s := &checkpoint.Snapshot{
		Part: checkpoint.RankPart{Job: t.spec.Name, Rank: t.rank, Layout: checkpoint.LayoutOf(t.spec.Parallel),
			Model: checkpoint.ModelInfoOf(t.Model.Config), Spec: spec},
		Data: make([]float32, 3*me.LocalLen),
	}
	for _, kind := range []string{checkpoint.KindParam, checkpoint.KindExpAvg, checkpoint.KindExpAvgSq} {
		for _, r := range me.Tensors {
			s.Slices = append(s.Slices, checkpoint.Slice{Key: checkpoint.SliceKey(kind, r.Name, int64(r.Start)), Kind: kind,
				Name: r.Name, Shape: r.GlobalShape, Start: int64(r.Start), Len: int64(r.Len)})
		}
	}
	return s
}

// fillSnapshot copies the current parameters and AdamW state of this
// rank's slices into s. Under ZeRO stage 3 it gathers the parameters (a
// collective: every rank saves at the same step).
func (t *Trainer) fillSnapshot(ctx context.Context, s *checkpoint.Snapshot) error {
	params, err := t.Params(ctx)
	if err != nil {
		return err
	}
	opts, on := t.engine.Optimizers()
	off := int64(0)
	for i := range s.Slices {
		sl := &s.Slices[i]
		a := t.Model.Layout.Views[t.viewIndex(sl.Name)].Offset + int(sl.Start)
		b := a + int(sl.Len)
		dst := s.Data[off : off+sl.Len]
		off += sl.Len
		if sl.Kind == checkpoint.KindParam {
			copy(dst, params[a:b])
			continue
		}
		j := -1
		for k, r := range on {
			if r.Offset <= a && b <= r.End() {
				j = k
				break
			}
		}
		if j < 0 {
			return fmt.Errorf("no optimizer of rank %d holds %s [%d, %d)", t.rank, sl.Name, sl.Start, sl.Start+sl.Len)
		}
		m, v, step := opts[j].State()
		src := m
		if sl.Kind == checkpoint.KindExpAvgSq {
			src = v
		}
		copy(dst, src[a-on[j].Offset:b-on[j].Offset])
		sl.Step = step
	}
	s.Part.Step = t.step
	s.State = checkpoint.RankState{
		DataStep: t.step, DataSeed: t.spec.Data.Seed, DataShuffle: t.spec.Data.Shuffle, GlobalBatch: t.spec.Train.GlobalBatch,
		TrainSeed: t.spec.Train.Seed, ScheduleStep: t.step, NextLR: t.sched.LR(t.step),
	}
	return nil
}

// viewIndex finds a parameter view by name.
func (t *Trainer) viewIndex(name string) int {
	if t.views == nil {
		t.views = map[string]int{}
		for i, v := range t.Model.Layout.Views {
			t.views[v.Name] = i
		}
	}
	return t.views[name]
}

// Restore loads a checkpoint saved under any data-parallel size and ZeRO
// stage into this trainer's layout: each rank reads only the slices it
// needs (all parameters at stages 0–2, its own shard at stage 3; AdamW
// moments for its optimizer shards) from whichever files hold them. The
// model configuration must match the job's; the step counter, the LR
// schedule position and the data position continue from the checkpoint.
func (t *Trainer) Restore(ck *checkpoint.Checkpoint) error {
	if err := checkpoint.CompareConfigs(t.Model.Config, ck.Manifest.Model.Config()); err != nil {
		return fmt.Errorf("checkpoint %s: %w", ck.Dir, err)
	}
	r, err := ck.NewReader(t.Model.Layout)
	if err != nil {
		return err
	}
	defer r.Close()
	plan := t.engine.Plan()
	if t.Model.Params != nil {
		if _, err := r.ReadFlat(checkpoint.KindParam, 0, t.Model.Params); err != nil {
			return err
		}
	} else {
		// Stage 3: a full-size buffer of which only this rank's slices are
		// read (zero.Engine.LoadParams takes the full layout).
		full := make([]float32, plan.Size)
		for _, s := range plan.Ranks[t.rank].Slices {
			if _, err := r.ReadFlat(checkpoint.KindParam, s.Offset, full[s.Offset:s.End()]); err != nil {
				return err
			}
		}
		if err := t.engine.LoadParams(full); err != nil {
			return err
		}
	}
	opts, on := t.engine.Optimizers()
	for i, o := range opts {
		m, v := make([]float32, on[i].Len), make([]float32, on[i].Len)
		sm, err := r.ReadFlat(checkpoint.KindExpAvg, on[i].Offset, m)
		if err != nil {
			return err
		}
		sv, err := r.ReadFlat(checkpoint.KindExpAvgSq, on[i].Offset, v)
		if err != nil {
			return err
		}
		if sm != sv {
			return &checkpoint.CheckError{Dir: ck.Dir, Reason: fmt.Sprintf("AdamW step %d for exp_avg, %d for exp_avg_sq", sm, sv), Err: checkpoint.ErrCorrupt}
		}
		if err := o.SetState(m, v, sm); err != nil {
			return err
		}
	}
	t.step = ck.Manifest.Step
	return nil
}
