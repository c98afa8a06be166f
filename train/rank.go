package train

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/zero"
)

// RankConfig is one rank of a multi-worker job, as a worker receives it.
type RankConfig struct {
	Spec       api.JobSpec
	Job        string
	Generation uint64
	Rank       int
	// Peers holds every rank's data-plane address, indexed by rank.
	Peers []string
	// Listener accepts peers' connections at Peers[Rank].
	Listener net.Listener
	Kernels  tensor.Kernels
	// Timeout is how long a collective waits on a silent peer before it
	// fails naming that peer (0: parallel.DefaultTimeout).
	Timeout time.Duration
	// OnComm, if set, is told the bytes sent and seconds of each step's
	// gradient exchange (for metrics).
	OnComm func(op string, bytes int64, d time.Duration)
	// OnMemory, if set, is told the rank's counted memory once, before the
	// first step: a worker sets the gauge loom_worker_memory_bytes{kind}
	// from zero.Memory.Kinds.
	OnMemory func(zero.Memory)
	// Log, if set, receives one line at start naming the ZeRO stage and
	// the counted memory by kind, and the checkpoint lines.
	Log io.Writer
	// Resume is what to restore before training: "" (nothing), "latest",
	// "auto" (the latest complete checkpoint if any) or a step directory
	// (checkpoint.Resolve).
	Resume string
	// ReportCheckpoint, with checkpoint.every > 0, receives the rank's
	// part of each checkpoint once its files are durable; the coordinator
	// writes the manifest when every rank has reported. Nil: no
	// checkpoints are saved.
	ReportCheckpoint func(ctx context.Context, p checkpoint.RankPart) error
	// CheckpointWrite holds the checkpoint writer's test hooks.
	CheckpointWrite checkpoint.WriteOptions
	// TestStepDelay is Config.TestStepDelay (a test hook: a slow rank).
	TestStepDelay time.Duration
}

// RunRank trains one data-parallel rank: it serves the data plane on the
// listener, joins the data-parallel group, trains every step, and on rank 0
// saves the final model. Tensor and pipeline parallelism are not supported
// yet.
func RunRank(ctx context.Context, rc RankConfig, report func(Stats)) error {
	s := rc.Spec
	if s.Parallel.TP != 1 || s.Parallel.PP != 1 {
		return fmt.Errorf("parallel.tp = %d, parallel.pp = %d: tensor and pipeline parallelism are not supported yet (use dp)", s.Parallel.TP, s.Parallel.PP)
	}
	if len(rc.Peers) != s.Parallel.WorldSize() || rc.Rank < 0 || rc.Rank >= len(rc.Peers) {
		return fmt.Errorf("rank %d with %d peer addresses for world size %d", rc.Rank, len(rc.Peers), s.Parallel.WorldSize())
	}
	tr, err := parallel.NewTransport(ctx, parallel.TransportOptions{Listener: rc.Listener, AdvertiseAddr: rc.Peers[rc.Rank]})
	if err != nil {
		return fmt.Errorf("rank %d: data plane: %w", rc.Rank, err)
	}
	// Leave gracefully: peers still finishing the last collective get every
	// frame this rank sent before its connections close.
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tr.Shutdown(sctx)
	}()
	ranks := make([]int, len(rc.Peers))
	addrs := map[int]string{}
	for i, a := range rc.Peers {
		ranks[i] = i
		addrs[i] = a
	}
	g, err := tr.NewGroup(parallel.GroupSpec{Job: rc.Job, Generation: rc.Generation, Name: "dp", Ranks: ranks, MyRank: rc.Rank, Addrs: addrs, Timeout: rc.Timeout})
	if err != nil {
		return fmt.Errorf("rank %d: %w", rc.Rank, err)
	}
	defer g.Close()
	ds, err := data.OpenDataset(s.Data, s.Model.SeqLen)
	if err != nil {
		return fmt.Errorf("rank %d: %w", rc.Rank, err)
	}
	defer ds.Close()
	t, err := New(Config{Spec: s, Kernels: rc.Kernels, Loader: ds.Train, Validation: ds.Validation, DP: g, TestStepDelay: rc.TestStepDelay})
	if err != nil {
		return fmt.Errorf("rank %d: %w", rc.Rank, err)
	}
	log := rc.Log
	if log == nil {
		log = io.Discard
	}
	jobDir := checkpoint.JobDir(s)
	if rc.Resume != "" {
		start := time.Now()
		ck, skipped, err := checkpoint.Resolve(jobDir, rc.Resume)
		for _, sk := range skipped {
			fmt.Fprintf(log, "rank %d: warning: skipping checkpoint %v\n", rc.Rank, sk.Err)
		}
		if err != nil {
			return fmt.Errorf("rank %d: resume %s: %w", rc.Rank, rc.Resume, err)
		}
		if ck != nil {
			if err := t.Restore(ck); err != nil {
				return fmt.Errorf("rank %d: resume: %w", rc.Rank, err)
			}
			for _, n := range checkpoint.CompareState(s, ck.State) {
				fmt.Fprintf(log, "rank %d: warning: %s\n", rc.Rank, n)
			}
			fmt.Fprintf(log, "rank %d: resumed from %s (step %d, saved with %s) in %v\n",
				rc.Rank, ck.Dir, ck.Manifest.Step, ck.Manifest.Layout, time.Since(start).Round(time.Millisecond))
		}
	}
	if s.Checkpoint.Every > 0 && rc.ReportCheckpoint != nil {
		if err := t.EnableCheckpoints(CheckpointConfig{JobDir: jobDir, Every: s.Checkpoint.Every,
			Report: rc.ReportCheckpoint, Write: rc.CheckpointWrite, Log: log}); err != nil {
			return fmt.Errorf("rank %d: %w", rc.Rank, err)
		}
	}
	mem := t.Memory()
	if rc.Log != nil {
		fmt.Fprintf(rc.Log, "rank %d: zero stage %d, dp %d: memory %s\n", rc.Rank, s.Parallel.Zero, s.Parallel.DP, mem)
	}
	if rc.OnMemory != nil {
		rc.OnMemory(mem)
	}
	op := "all-reduce"
	if s.Parallel.Zero > 0 {
		op = fmt.Sprintf("zero-%d", s.Parallel.Zero)
	}
	var sum struct{ steps, stepS, commS, overlapS, tps float64 }
	err = t.Run(ctx, func(st Stats) {
		if rc.OnComm != nil && st.CommBytes > 0 {
			rc.OnComm(op, st.CommBytes, time.Duration(st.CommSeconds*float64(time.Second)))
		}
		sum.steps++
		sum.stepS += st.StepSeconds
		sum.commS += st.CommSeconds
		sum.overlapS += st.OverlapSeconds
		sum.tps += st.TokensPerSec
		report(st)
	})
	if err != nil {
		return fmt.Errorf("rank %d: %w", rc.Rank, err)
	}
	if rc.Log != nil && sum.steps > 0 && sum.stepS > 0 {
		overlap := 0.0
		if sum.commS > 0 {
			overlap = 100 * sum.overlapS / sum.commS
		}
		fmt.Fprintf(rc.Log, "rank %d: %.0f steps, mean step %.1f ms, %.0f tokens/s; communication %.1f%% of step time, %.0f%% of it overlapped with backward (exposed %.1f%%)\n",
			rc.Rank, sum.steps, 1e3*sum.stepS/sum.steps, sum.tps/sum.steps, 100*sum.commS/sum.stepS, overlap, 100*(sum.commS-sum.overlapS)/sum.stepS)
	}
	// Under ZeRO stage 3 the full weights are gathered from every rank.
	params, err := t.Params(ctx)
	if err != nil {
		return fmt.Errorf("rank %d: gathering the final weights: %w", rc.Rank, err)
	}
	if rc.Rank == 0 {
		m := t.Model
		if m.Params == nil {
			if m, err = model.New(m.Config, rc.Kernels); err != nil {
				return fmt.Errorf("rank 0: %w", err)
			}
			copy(m.Params, params)
		}
		dir := filepath.Join(s.Checkpoint.Dir, s.Name, "final")
		if err := checkpoint.SaveModel(dir, m, &s); err != nil {
			return fmt.Errorf("rank 0: %w", err)
		}
	}
	return nil
}
