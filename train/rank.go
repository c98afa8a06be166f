package train

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/internal/human"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/timeline"
)

// RankConfig is one rank of a job: what `loom run` (world size 1) and a
// worker (one assignment of a multi-worker job) hand to RunRank.
type RankConfig struct {
	Spec       api.JobSpec
	Job        string
	Generation uint64
	Rank       int
	// Coord, if set, is the (dp, tp, pp) position the coordinator assigned
	// to Rank; it must be the plan's.
	Coord *plan.Coord
	// Peers holds every rank's data-plane address, indexed by rank; nil
	// for world size 1.
	Peers []string
	// Listener accepts peers' connections at Peers[Rank].
	Listener net.Listener
	Kernels  tensor.Kernels
	// Timeout is how long a collective waits on a silent peer before it
	// fails naming that peer (0: parallel.DefaultTimeout).
	Timeout time.Duration
	// BucketBytes is the stage-0 gradient bucket size (0: default).
	BucketBytes int
	// Transport overrides the spec's parallel.transport for this rank
	// ("": the spec's); `loom worker --transport` sets it.
	Transport string
	// OnLink, if set, is told how payloads travel to each peer (for the
	// loom_worker_link metric); each is also logged to Log.
	OnLink func(parallel.LinkInfo)
	// TransportTLS, if set, secures the data plane (the gRPC Peer streams
	// and tcp bulk links): parallel.TransportOptions.TLS.
	TransportTLS *tls.Config
	// OnComm, if set, is told the bytes sent and seconds of each step's
	// communication (for metrics).
	OnComm func(op string, bytes int64, d time.Duration)
	// OnMemory, if set, is told the rank's counted memory once, before the
	// first step: a worker sets the gauge loom_worker_memory_bytes{kind}
	// from plan.Memory.Kinds.
	OnMemory func(plan.Memory)
	// Log, if set, receives the rank's lines: the layout and counted
	// memory at start, warnings, resume and checkpoint lines, a summary at
	// the end.
	Log io.Writer
	// Init, if set, is a Hugging Face LLaMA directory to start from
	// (continued pretraining); each rank keeps its chunks.
	Init string
	// Resume is what to restore before training: "" (nothing), "latest",
	// "auto" (the latest complete checkpoint if any) or a step directory
	// (checkpoint.Resolve).
	Resume string
	// SpecYAML is recorded in checkpoint manifests (default: the spec
	// re-encoded).
	SpecYAML []byte
	// ReportCheckpoint, with checkpoint.every > 0, receives the rank's
	// part of each checkpoint once its files are durable; the coordinator
	// (or, for world size 1, CommitLocal) writes the manifest when every
	// rank has reported. Nil: no checkpoints are saved.
	ReportCheckpoint func(ctx context.Context, p checkpoint.RankPart) error
	// CheckpointWrite holds the checkpoint writer's test hooks.
	CheckpointWrite checkpoint.WriteOptions
	// OnPlan, if set, may inspect or alter the plan before the rank is
	// built (tests inject broken layouts with it).
	OnPlan func(*plan.Plan) error
	// TestStepDelay is Config.TestStepDelay (a test hook: a slow rank).
	TestStepDelay time.Duration
	// WrapComm, if set, wraps each process group (by the plan's group
	// name) before the rank uses it; a worker records the calls in flight
	// with it, so that a hang names what the rank waited on.
	WrapComm func(group string, c parallel.Comm) parallel.Comm
	// OnResume, if set, is told the checkpoint step the rank restored and
	// how long restoring took (a worker reports it as recovery time).
	OnResume func(step int, d time.Duration)
}

// Result is what a finished rank leaves.
type Result struct {
	// Final is the whole trained model on rank 0 (nil on other ranks),
	// also saved under checkpoint.dir/NAME/final.
	Final    *model.Model
	FinalDir string
	Steps    int
}

// RunRank trains one rank of a job: it computes the plan, serves the data
// plane and joins the rank's process groups (tensor-parallel, data-parallel,
// kv-replica, pipeline, embedding) when the world is larger than one, opens
// the data, builds the trainer, restores a checkpoint or initial weights,
// enables periodic checkpoints, trains every step, saves the last step's
// timeline (timeline.Dir; world size 1 also merges it into timeline.json)
// and the final model (the whole model, assembled from every rank's
// chunks, on rank 0). It is the one composition root of `loom run` and
// `loom worker`. With world size 1 a run stopped early still saves the
// model it has.
func RunRank(ctx context.Context, rc RankConfig, report func(Stats)) (*Result, error) {
	s := rc.Spec
	world := max(1, len(rc.Peers))
	p, err := plan.New(s, world)
	if err != nil {
		return nil, fmt.Errorf("rank %d: %w", rc.Rank, err)
	}
	if rc.OnPlan != nil {
		if err := rc.OnPlan(p); err != nil {
			return nil, fmt.Errorf("rank %d: %w", rc.Rank, err)
		}
	}
	if rc.Rank < 0 || rc.Rank >= world {
		return nil, fmt.Errorf("rank %d with %d peer addresses for world size %d", rc.Rank, len(rc.Peers), world)
	}
	if rc.Coord != nil {
		if err := p.CheckCoord(rc.Rank, *rc.Coord); err != nil {
			return nil, err
		}
	}
	log := rc.Log
	if log == nil {
		log = io.Discard
	}
	rp := p.Rank(rc.Rank)
	var comms Comms
	if world > 1 {
		mode := s.Parallel.Transport
		if rc.Transport != "" {
			mode = rc.Transport
		}
		topts := parallel.TransportOptions{Listener: rc.Listener, AdvertiseAddr: rc.Peers[rc.Rank], OnLink: rc.OnLink, TLS: rc.TransportTLS}
		if mode != "" {
			if topts.Mode, err = parallel.ParseTransportMode(mode); err != nil {
				return nil, fmt.Errorf("rank %d: parallel.transport: %w", rc.Rank, err)
			}
		}
		if rc.Log != nil {
			topts.Logger = slog.New(slog.NewTextHandler(rc.Log, nil)).With("rank", rc.Rank)
		}
		tr, err := parallel.NewTransport(ctx, topts)
		if err != nil {
			return nil, fmt.Errorf("rank %d: data plane: %w", rc.Rank, err)
		}
		// Leave gracefully: peers still finishing the last collective get every
		// frame this rank sent before its connections close. A generation
		// that ended (ctx cancelled) has nothing left to deliver: its
		// connections close at once.
		defer func() {
			if ctx.Err() != nil {
				tr.Close()
				return
			}
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tr.Shutdown(sctx)
		}()
		join := func(g plan.Group) (parallel.Comm, error) {
			if g.Size() <= 1 {
				return nil, nil
			}
			addrs := map[int]string{}
			for _, r := range g.Ranks {
				addrs[r] = rc.Peers[r]
			}
			grp, err := tr.NewGroup(parallel.GroupSpec{Job: rc.Job, Generation: rc.Generation, Name: g.Name, Ranks: g.Ranks, MyRank: rc.Rank, Addrs: addrs, Timeout: rc.Timeout})
			if err != nil {
				return nil, fmt.Errorf("rank %d: group %s: %w", rc.Rank, g.Name, err)
			}
			return grp, nil
		}
		for _, j := range []struct {
			dst *parallel.Comm
			g   plan.Group
		}{{&comms.TP, rp.TP}, {&comms.DP, rp.DP}, {&comms.KV, rp.KV}, {&comms.PP, rp.PP}, {&comms.Emb, rp.Emb}} {
			c, err := join(j.g)
			if err != nil {
				return nil, err
			}
			if c != nil {
				defer c.(*parallel.Group).Close()
				if rc.WrapComm != nil {
					c = rc.WrapComm(j.g.Name, c)
				}
				*j.dst = c
			}
		}
	}
	ds, err := data.OpenDataset(s.Data, s.Model.SeqLen)
	if err != nil {
		return nil, fmt.Errorf("rank %d: %w", rc.Rank, err)
	}
	defer ds.Close()
	l := ds.Train
	t, err := New(Config{Spec: s, Kernels: rc.Kernels, Loader: l, Validation: ds.Validation, Plan: p, Rank: rc.Rank, Comms: comms, BucketBytes: rc.BucketBytes, TestStepDelay: rc.TestStepDelay})
	if err != nil {
		return nil, fmt.Errorf("rank %d: %w", rc.Rank, err)
	}
	if rc.Init != "" && rc.Resume != "" {
		return nil, errors.New("--init and --resume exclude each other: --resume restores the weights and the optimizer")
	}
	jobDir := checkpoint.JobDir(s)
	if rc.Resume != "" {
		if err := resume(t, rc, jobDir, log); err != nil {
			return nil, err
		}
	}
	if rc.Init != "" {
		src, err := checkpoint.LoadModel(rc.Init, tensor.Reference{}, s.Model.SeqLen)
		if err != nil {
			return nil, fmt.Errorf("rank %d: --init: %w", rc.Rank, err)
		}
		if err := t.LoadWeights(src); err != nil {
			return nil, fmt.Errorf("rank %d: --init %s: %w", rc.Rank, rc.Init, err)
		}
	}
	if s.Checkpoint.Every > 0 && rc.ReportCheckpoint != nil {
		if err := t.EnableCheckpoints(CheckpointConfig{JobDir: jobDir, Every: s.Checkpoint.Every, SpecYAML: rc.SpecYAML,
			Report: rc.ReportCheckpoint, Write: rc.CheckpointWrite, Log: log}); err != nil {
			return nil, fmt.Errorf("rank %d: %w", rc.Rank, err)
		}
	}
	mem := t.Memory()
	cfg := p.Model
	if rc.Rank == 0 {
		fmt.Fprintf(log, "loom: job %q: %s parameters (d %d, %d layers, %d/%d heads, ffn %d, vocab %d), %s, zero %d%s, %d tokens per step, %d steps, %d windows of %d tokens in %s\n",
			s.Name, human.Count(int64(cfg.NumParams())), cfg.Dim, cfg.NLayers, cfg.NHeads, cfg.NKVHeads, cfg.FFNHidden, cfg.VocabSize,
			p.Mesh, p.ZeroStage, spSuffix(p.SequenceParallel), s.Train.GlobalBatch*s.Model.SeqLen, s.Train.Steps, l.NumWindows(), s.Model.SeqLen, s.Data.Describe())
	}
	est := p.Memory(rc.Rank)
	fmt.Fprintf(log, "rank %d %v: counted memory %s (the plan predicts %s, plus a %s runtime allowance)\n",
		rc.Rank, rp.Coord, mem, plan.MiB(est.Total()-est.Runtime), plan.MiB(est.Runtime))
	if rc.OnMemory != nil {
		rc.OnMemory(mem)
	}
	op := "all-reduce"
	if s.Parallel.Zero > 0 {
		op = fmt.Sprintf("zero-%d", s.Parallel.Zero)
	}
	var sum summary
	runErr := t.Run(ctx, func(st Stats) {
		if rc.OnComm != nil {
			if b := st.CommBytes - st.TPCommBytes - st.PipelineBytes; b > 0 {
				rc.OnComm(op, b, seconds(st.CommSeconds-st.TPCommSeconds-st.PipelineWaitSeconds))
			}
			if st.TPCommBytes > 0 {
				rc.OnComm("tensor-parallel", st.TPCommBytes, seconds(st.TPCommSeconds))
			}
			if st.PipelineBytes > 0 {
				rc.OnComm("pipeline", st.PipelineBytes, seconds(st.PipelineWaitSeconds))
			}
		}
		sum.add(st)
		report(st)
	})
	sum.print(log, rc.Rank, t)
	if tl := t.LastTimeline(); tl != nil {
		if err := timeline.Save(jobDir, tl); err != nil {
			fmt.Fprintf(log, "rank %d: warning: saving the timeline: %v\n", rc.Rank, err)
		} else if world == 1 {
			if path, err := timeline.SaveMerged(jobDir, 1); err != nil {
				fmt.Fprintf(log, "rank 0: warning: %v\n", err)
			} else {
				fmt.Fprintf(log, "loom: the last step's timeline (Chrome trace, opens in Perfetto): %s\n", path)
			}
		}
	}
	res := &Result{Steps: t.StepsDone(), FinalDir: filepath.Join(s.Checkpoint.Dir, s.Name, "final")}
	if runErr != nil && (world > 1 || t.StepsDone() == 0) {
		return res, fmt.Errorf("rank %d: %w", rc.Rank, runErr)
	}
	// Every rank takes part in assembling the whole model; rank 0 saves it.
	m, err := t.WholeModel(ctx)
	if err != nil {
		return res, fmt.Errorf("rank %d: gathering the final weights: %w", rc.Rank, errors.Join(runErr, err))
	}
	if rc.Rank == 0 {
		if err := checkpoint.SaveModel(res.FinalDir, m, &s); err != nil {
			return res, fmt.Errorf("rank 0: %w", errors.Join(runErr, err))
		}
		res.Final = m
		fmt.Fprintf(log, "loom: saved the model after step %d to %s\n", t.StepsDone(), res.FinalDir)
	}
	if runErr != nil {
		return res, fmt.Errorf("rank %d: %w", rc.Rank, runErr)
	}
	return res, nil
}

func spSuffix(sp bool) string {
	if sp {
		return ", sequence-parallel"
	}
	return ""
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// resume resolves rc.Resume under jobDir and restores t from it.
func resume(t *Trainer, rc RankConfig, jobDir string, log io.Writer) error {
	start := time.Now()
	ck, skipped, err := checkpoint.Resolve(jobDir, rc.Resume)
	for _, sk := range skipped {
		fmt.Fprintf(log, "rank %d: warning: skipping checkpoint %v\n", rc.Rank, sk.Err)
	}
	if err != nil {
		return fmt.Errorf("rank %d: resume %s: %w", rc.Rank, rc.Resume, err)
	}
	if ck == nil {
		return nil
	}
	if err := t.Restore(ck); err != nil {
		return fmt.Errorf("rank %d: resume: %w", rc.Rank, err)
	}
	for _, n := range checkpoint.CompareState(rc.Spec, ck.State) {
		fmt.Fprintf(log, "rank %d: warning: %s\n", rc.Rank, n)
	}
	took := time.Since(start)
	fmt.Fprintf(log, "rank %d: resumed from %s (step %d, saved with %s, %s) in %v\n",
		rc.Rank, ck.Dir, ck.Manifest.Step, ck.Manifest.Layout, human.Bytes(ck.Manifest.Bytes), took.Round(time.Millisecond))
	if rc.OnResume != nil {
		rc.OnResume(ck.Manifest.Step, took)
	}
	return nil
}

// summary adds up a rank's steps for the line it logs at the end.
type summary struct {
	steps, stepS, commS, overlapS, tpS, tpOverS, ppS, computeS float64
	tokens                                                     float64 // Σ tokens/s × step seconds: the tokens the steps trained
	saves                                                      int
	blocked                                                    float64
}

func (s *summary) add(st Stats) {
	s.steps++
	s.stepS += st.StepSeconds
	s.commS += st.CommSeconds
	s.overlapS += st.OverlapSeconds
	s.tpS += st.TPCommSeconds
	s.tpOverS += st.TPOverlapSeconds
	s.ppS += st.PipelineWaitSeconds
	s.computeS += st.ComputeSeconds
	s.tokens += st.TokensPerSec * st.StepSeconds
	if st.CheckpointSeconds > 0 {
		s.saves++
		s.blocked += st.CheckpointSeconds
	}
}

func (s *summary) print(w io.Writer, rank int, t *Trainer) {
	if s.steps == 0 || s.stepS <= 0 {
		return
	}
	dpS := s.commS - s.tpS - s.ppS
	overlap, tpOverlap := 0.0, 0.0
	if dpS > 0 {
		overlap = 100 * (s.overlapS - s.tpOverS) / dpS
	}
	if s.tpS > 0 {
		tpOverlap = 100 * s.tpOverS / s.tpS
	}
	pipe := ""
	if t.plan.Mesh.PP > 1 {
		pipe = fmt.Sprintf(", pipeline waits %.1f%%", 100*s.ppS/s.stepS)
	}
	fmt.Fprintf(w, "rank %d: %.0f steps, mean step %.1f ms, %.0f tokens/s; compute %.1f%% of step time; communication: tensor-parallel %.1f%%, %.0f%% of it hidden behind compute, data-parallel %.1f%%, %.0f%% of it overlapped with backward%s; exposed %.1f%% in all\n",
		rank, s.steps, 1e3*s.stepS/s.steps, s.tokens/s.stepS, 100*s.computeS/s.stepS, 100*s.tpS/s.stepS, tpOverlap, 100*dpS/s.stepS, overlap, pipe, 100*(s.commS-s.overlapS)/s.stepS)
	if s.saves > 0 {
		b, secs := t.SaveStats()
		rate := 0.0
		if secs > 0 {
			rate = float64(b) / 1e6 / secs
		}
		fmt.Fprintf(w, "rank %d: checkpoints: %d saved, %s written in the background at %.0f MB/s; the step loop was blocked %.1f ms per save (%.2f%% of step time)\n",
			rank, s.saves, human.Bytes(b), rate, 1e3*s.blocked/float64(s.saves), 100*s.blocked/s.stepS)
	}
}
