package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/tensor/gemm"
	"github.com/loomtrain/loom/train"
	"github.com/loomtrain/loom/worker"
)

// newTrainingEngine returns the engine `loom worker` trains with: one rank
// of the assigned generation, built by train.RunRank from the job's plan
// (the coordinator's coordinates are checked against it), on the worker's
// thread budget, reporting every step to the coordinator; peerTLS (nil:
// plaintext) secures its data plane.
func newTrainingEngine(transport string, peerTLS *tls.Config) worker.Engine {
	var peaks peakCache
	return worker.EngineFunc(func(ctx context.Context, a worker.Assignment, report func(worker.StepStats)) error {
		a.Metrics.SetPeakFLOPS(peaks.get(a.Threads))
		k, closeK, err := newTrainKernels(a.Threads, a.Spec)
		if err != nil {
			return err
		}
		defer closeK()
		// The step's communication, told by OnComm (once per kind: data- and
		// tensor-parallel) just before the step's report (same goroutine); it goes in the report, so the worker
		// and the coordinator both count it.
		var comm []worker.CommStat
		rc := train.RankConfig{
			Spec: a.Spec, Job: a.Job, Generation: a.Generation, Rank: a.Rank,
			Coord: &plan.Coord{DP: a.DP, TP: a.TP, PP: a.PP},
			Peers: a.Peers, Listener: a.Listener, Kernels: k,
			OnComm: func(op string, bytes int64, d time.Duration) {
				comm = append(comm, worker.CommStat{Op: op, Bytes: bytes, Time: d})
			},
			OnPlan:       testBrokenLayout(a.Rank),
			Transport:    transport,
			TransportTLS: peerTLS,
			OnLink:       func(li parallel.LinkInfo) { a.Metrics.SetLink(li.Peer, li.Transport) },
			OnMemory: func(m plan.Memory) {
				for _, kb := range m.Kinds() {
					a.Metrics.SetMemory(kb.Kind, kb.Bytes)
				}
			},
			Log:             os.Stderr,
			Resume:          a.Resume,
			CheckpointWrite: checkpoint.WriteOptions{Fault: testCheckpointFault(a.Rank, a.Generation)},
			TestStepDelay:   testSlowRank(a.Rank),
			// A peer silent for the step timeout is named as hung; the
			// worker's watchdog bounds the phases and names what was in
			// flight.
			Timeout:  a.Spec.Elastic.StepTimeout,
			WrapComm: testHang(a, a.Ops.Wrap),
			OnResume: a.Metrics.SetResume,
		}
		if a.ReportCheckpoint != nil {
			rc.ReportCheckpoint = func(ctx context.Context, p checkpoint.RankPart) error {
				b, err := json.Marshal(p)
				if err != nil {
					return err
				}
				return a.ReportCheckpoint(ctx, p.Step, b)
			}
		}
		_, err = train.RunRank(ctx, rc, func(s train.Stats) {
			step := seconds(s.StepSeconds)
			exposed := max(0, seconds(s.CommSeconds-s.OverlapSeconds)) // exposed communication
			data := seconds(s.DataSeconds)
			report(worker.StepStats{
				Step: s.Step, Loss: s.Loss, LR: s.LR, GradNorm: s.GradNorm, TokensPerSec: s.TokensPerSec,
				StepTime: step, CommTime: exposed, DataTime: data, ComputeTime: max(0, step-exposed-data),
				CheckpointTime: seconds(s.CheckpointSeconds), Tokens: int64(s.Tokens), Comm: comm, ValLoss: s.ValLoss,
			})
			comm = nil
		})
		return err
	})
}

// testHang reads LOOM_TEST_HANG=RANK:STEP (the hang test only): the
// worker running RANK of generation 1 stops answering inside its first
// data-parallel all-reduce of step STEP — the call blocks, sending
// nothing, until the generation ends — while the process and its lease
// stay alive. Otherwise it returns wrap.
func testHang(a worker.Assignment, wrap func(string, parallel.Comm) parallel.Comm) func(string, parallel.Comm) parallel.Comm {
	r, st, ok := strings.Cut(os.Getenv("LOOM_TEST_HANG"), ":")
	step, err := strconv.Atoi(st)
	if !ok || err != nil || r != strconv.Itoa(a.Rank) || a.Generation != 1 {
		return wrap
	}
	return func(group string, c parallel.Comm) parallel.Comm {
		if strings.HasPrefix(group, "dp") {
			c = &hangComm{Comm: c, step: step, at: a.Metrics.Step, rank: a.Rank}
		}
		return wrap(group, c) // the worker sees the hung call in flight
	}
}

// hangComm blocks its first all-reduce once the rank is in step step.
type hangComm struct {
	parallel.Comm
	step, rank int
	at         func() int // the last step the rank finished
	once       sync.Once
}

func (h *hangComm) AllReduce(ctx context.Context, buf []float32, op parallel.ReduceOp) error {
	if h.at()+1 >= h.step {
		hang := false
		h.once.Do(func() { hang = true })
		if hang {
			fmt.Fprintf(os.Stderr, "LOOM_TEST_HANG: rank %d stops answering in an all-reduce of step %d at=%d\n", h.rank, h.at()+1, time.Now().UnixMilli())
			<-ctx.Done()
			return ctx.Err()
		}
	}
	return h.Comm.AllReduce(ctx, buf, op)
}

// testBrokenLayout reads LOOM_TEST_BROKEN_LAYOUT (tests of `loom verify`
// only): "decay-norm" makes tensor-parallel rank 1 decay its copy of the
// replicated model.norm.weight, which no correct layout does. The first
// step is unchanged (decay acts in the update); the replicas drift apart
// from then on, so the loss diverges from the second step.
func testBrokenLayout(rank int) func(*plan.Plan) error {
	if os.Getenv("LOOM_TEST_BROKEN_LAYOUT") != "decay-norm" {
		return nil
	}
	return func(p *plan.Plan) error {
		if p.Mesh.TP < 2 {
			return nil
		}
		fmt.Fprintf(os.Stderr, "LOOM_TEST_BROKEN_LAYOUT: rank %d decays tp rank 1's model.norm.weight\n", rank)
		for pp := range p.Mesh.PP {
			i := p.PartIndex(pp, 1)
			l := *p.Layouts[i]
			l.Views = append([]model.View(nil), l.Views...)
			for j := range l.Views {
				if l.Views[j].Name == "model.norm.weight" {
					l.Views[j].Decay = true
				}
			}
			part, err := plan.NewPartition(&l, p.Mesh.DP, p.ZeroStage, 0)
			if err != nil {
				return err
			}
			p.Layouts[i], p.Partitions[i] = &l, part
			for r := range p.Ranks {
				if c := p.Ranks[r].Coord; c.TP == 1 && c.PP == pp {
					p.Ranks[r].Layout, p.Ranks[r].Zero = &l, part
				}
			}
		}
		return nil
	}
}

// testCheckpointFault reads LOOM_TEST_CHECKPOINT_KILL=POINT:STEP:RANK
// (fault tests only): the worker running RANK of generation 1 kills itself
// with SIGKILL when its writer of the checkpoint of STEP reaches POINT
// ("shard-half": half its shard written, nothing renamed into place;
// "written": files durable, not yet reported).
//
// LOOM_TEST_SLOW_SAVE=DELAY (the chaos run only) makes every checkpoint
// write of every rank sleep DELAY halfway, so that kills land during
// saves.
func testCheckpointFault(rank int, gen uint64) func(string, int) {
	if d, err := time.ParseDuration(os.Getenv("LOOM_TEST_SLOW_SAVE")); err == nil && d > 0 {
		return func(p string, _ int) {
			if p == "shard-half" {
				time.Sleep(d)
			}
		}
	}
	f := strings.Split(os.Getenv("LOOM_TEST_CHECKPOINT_KILL"), ":")
	if len(f) != 3 || gen != 1 || f[2] != strconv.Itoa(rank) {
		return nil
	}
	point, step := f[0], f[1]
	return func(p string, s int) {
		if p == point && strconv.Itoa(s) == step {
			fmt.Fprintf(os.Stderr, "LOOM_TEST_CHECKPOINT_KILL: rank %d kills itself at %s\n", rank, p)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
}

// peakCache measures the FMA peak (FLOP/s) once per thread count, so a
// worker pays the 100 ms probe once, not per generation. It is safe for
// concurrent use.
type peakCache struct {
	mu    sync.Mutex
	peaks map[int]float64
}

func (c *peakCache) get(threads int) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.peaks[threads]; ok {
		return p
	}
	if c.peaks == nil {
		c.peaks = map[int]float64{}
	}
	p := gemm.MeasurePeak(threads, 100*time.Millisecond) * 1e9
	c.peaks[threads] = p
	return p
}

// testSlowRank reads LOOM_TEST_SLOW_RANK=RANK:DELAY (the dashboard's
// straggler test only): the worker running RANK sleeps DELAY in every
// step, counted as compute, so the page must flag it as the straggler.
func testSlowRank(rank int) time.Duration {
	r, d, ok := strings.Cut(os.Getenv("LOOM_TEST_SLOW_RANK"), ":")
	if !ok || r != strconv.Itoa(rank) {
		return 0
	}
	delay, err := time.ParseDuration(d)
	if err != nil {
		fmt.Fprintf(os.Stderr, "LOOM_TEST_SLOW_RANK=%s:%s: %v; ignored\n", r, d, err)
		return 0
	}
	fmt.Fprintf(os.Stderr, "LOOM_TEST_SLOW_RANK: rank %d sleeps %v per step\n", rank, delay)
	return delay
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
