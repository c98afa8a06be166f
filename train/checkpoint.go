package train

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/model"
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
	cfg CheckpointConfig
	// every is checkpoint.every; cfg.Every is how often the step loop
	// calls save: every, or its gcd with the in-memory snapshots' interval
	// (snap, nil: none).
	every      int
	snapTarget *checkpoint.SnapshotTarget
	snap       *checkpoint.Snapshot
	done       chan saveResult // the in-flight write's result; nil when idle
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
// steps. The step loop is blocked only while the rank's own chunks are
// copied; the files are written in the background while the next steps
// run.
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
	t.ck = &saver{cfg: cfg, snap: snap, every: cfg.Every}
	if st := cfg.Write.Snapshot; st != nil && st.Every > 0 && st.JobDir != "" && st.Report != nil {
		t.ck.snapTarget = st
		t.ck.cfg.Every = gcd(cfg.Every, st.Every)
	}
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
	disk := t.step%s.every == 0
	mem := s.snapTarget != nil && t.step%s.snapTarget.Every == 0
	if !disk && !mem {
		return 0, nil
	}
	start := time.Now()
	if err := s.wait(); err != nil {
		return 0, err
	}
	if err := t.fillSnapshot(s.snap); err != nil {
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
		if mem {
			// The in-memory snapshot first: it is the cheap one, and the
			// one a restart after a lost worker wants.
			m0 := time.Now()
			part, err := checkpoint.WriteRank(wctx, s.snapTarget.JobDir, snap, checkpoint.WriteOptions{})
			if err == nil {
				rctx, cancel := context.WithTimeout(wctx, time.Minute)
				err = s.snapTarget.Report(rctx, part)
				cancel()
			}
			if err != nil {
				// Not fatal: a restart without it resumes from disk.
				fmt.Fprintf(s.cfg.Log, "rank %d: warning: in-memory snapshot of step %d: %v\n", snap.Part.Rank, snap.Part.Step, err)
			} else {
				fmt.Fprintf(s.cfg.Log, "loom: rank %d kept the in-memory snapshot of step %d in %v\n", snap.Part.Rank, snap.Part.Step, time.Since(m0).Round(time.Millisecond))
			}
		}
		if !disk {
			done <- res
			return
		}
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

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
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

// newSnapshot lays out this rank's chunks: for each kind (parameters,
// then the two AdamW moments), the boxes of global tensors its ZeRO shard
// of its local layout owns (plan.DPShard.Chunks), so every element of
// every tensor is written by exactly one rank whatever the layout, and
// nothing is gathered first.
func (t *Trainer) newSnapshot(spec string) *checkpoint.Snapshot {
	me := t.rp.Zero.Ranks[t.rp.DPIndex]
	n := 0
	for _, c := range me.Chunks {
		n += c.Len()
	}
	s := &checkpoint.Snapshot{
		Part: checkpoint.RankPart{Job: t.spec.Name, Rank: t.rp.Rank, Layout: checkpoint.LayoutOf(t.spec.Parallel),
			Model: checkpoint.ModelInfoOf(t.Model.Config), Spec: spec},
		Data: make([]float32, 3*n),
	}
	for _, kind := range []string{checkpoint.KindParam, checkpoint.KindExpAvg, checkpoint.KindExpAvgSq} {
		for _, c := range me.Chunks {
			s.Slices = append(s.Slices, checkpoint.Slice{Key: checkpoint.ChunkKey(kind, c.Name, c.Start), Kind: kind,
				Name: c.Name, Shape: c.Global, Offsets: c.Start, Sizes: c.Size, Len: int64(c.Len())})
		}
	}
	return s
}

// fillSnapshot copies the current parameters and AdamW state of this
// rank's chunks into s, from the live buffers (under ZeRO stage 3, from
// the rank's own shard: nothing is gathered).
func (t *Trainer) fillSnapshot(s *checkpoint.Snapshot) error {
	me := t.rp.Zero.Ranks[t.rp.DPIndex]
	off := int64(0)
	for i := range s.Slices {
		sl := &s.Slices[i]
		c := me.Chunks[i%len(me.Chunks)]
		dst := s.Data[off : off+sl.Len]
		off += sl.Len
		if sl.Kind == checkpoint.KindParam {
			src, err := t.engine.Params(c.Flat, c.Len())
			if err != nil {
				return err
			}
			copy(dst, src)
			continue
		}
		m, v, o, err := t.engine.Moments(c.Flat, c.Len())
		if err != nil {
			return fmt.Errorf("rank %d: %s %s: %w", t.rp.Rank, sl.Name, model.ChunkString(c.Start, c.Size), err)
		}
		src := m
		if sl.Kind == checkpoint.KindExpAvgSq {
			src = v
		}
		copy(dst, src)
		_, _, sl.Step = o.State()
	}
	s.Part.Step = t.step
	s.State = checkpoint.RankState{
		DataStep: t.step, DataSeed: t.spec.Data.Seed, DataShuffle: t.spec.Data.Shuffle, GlobalBatch: t.spec.Train.GlobalBatch,
		TrainSeed: t.spec.Train.Seed, ScheduleStep: t.step, NextLR: t.sched.LR(t.step),
	}
	return nil
}

// Restore loads a checkpoint saved under any layout (dp, tp, ZeRO stage)
// into this trainer's: each rank reads only the boxes of global tensors
// its local layout holds — every parameter at stages 0–2, its own shard
// at stage 3, AdamW moments for its optimizer shards — from whichever
// files hold the chunks that intersect them. The model configuration must
// match the job's; the step counter, the LR schedule position and the
// data position continue from the checkpoint.
func (t *Trainer) Restore(ck *checkpoint.Checkpoint) error {
	if err := checkpoint.CompareConfigs(t.Model.Config, ck.Manifest.Model.Config()); err != nil {
		return fmt.Errorf("checkpoint %s: %w", ck.Dir, err)
	}
	r, err := ck.NewReader(t.Model.Config)
	if err != nil {
		return err
	}
	defer r.Close()
	l := t.Model.Layout
	// readRange fills dst with local flat elements [lo, hi) of kind.
	readRange := func(kind string, lo, hi int, dst []float32) (int, error) {
		step := -1
		for _, v := range l.Views {
			a, b := max(lo, v.Offset), min(hi, v.End())
			if a >= b {
				continue
			}
			s, err := r.ReadLocal(kind, v, a-v.Offset, b-v.Offset, dst[a-lo:b-lo])
			if err != nil {
				return 0, err
			}
			if kind != checkpoint.KindParam && step >= 0 && s != step {
				return 0, &checkpoint.CheckError{Dir: ck.Dir, Reason: fmt.Sprintf("%s records AdamW steps %d and %d within one shard", kind, step, s), Err: checkpoint.ErrCorrupt}
			}
			step = s
		}
		return max(step, 0), nil
	}
	for _, s := range t.engine.ParamRanges() {
		dst, err := t.engine.Params(s.Offset, s.Len)
		if err != nil {
			return err
		}
		if _, err := readRange(checkpoint.KindParam, s.Offset, s.End(), dst); err != nil {
			return err
		}
	}
	opts, on := t.engine.Optimizers()
	for i, o := range opts {
		m, v := make([]float32, on[i].Len), make([]float32, on[i].Len)
		sm, err := readRange(checkpoint.KindExpAvg, on[i].Offset, on[i].End(), m)
		if err != nil {
			return err
		}
		sv, err := readRange(checkpoint.KindExpAvgSq, on[i].Offset, on[i].End(), v)
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
