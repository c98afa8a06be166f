package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/tensor/gemm"
	"github.com/loomtrain/loom/train"
	"github.com/loomtrain/loom/worker"
	"github.com/loomtrain/loom/zero"
)

// newTrainingEngine returns the engine `loom worker` trains with: one
// data-parallel rank of the assigned generation (train.RunRank), on the
// worker's thread budget, reporting every step to the coordinator.
func newTrainingEngine() worker.Engine {
	var peaks peakCache
	return worker.EngineFunc(func(ctx context.Context, a worker.Assignment, report func(worker.StepStats)) error {
		a.Metrics.SetPeakFLOPS(peaks.get(a.Threads))
		k, closeK := newKernels(a.Threads)
		defer closeK()
		rc := train.RankConfig{
			Spec: a.Spec, Job: a.Job, Generation: a.Generation, Rank: a.Rank,
			Peers: a.Peers, Listener: a.Listener, Kernels: k,
			OnComm: a.Metrics.AddComm,
			OnMemory: func(m zero.Memory) {
				for _, kb := range m.Kinds() {
					a.Metrics.SetMemory(kb.Kind, kb.Bytes)
				}
			},
			Log:             os.Stderr,
			Resume:          a.Resume,
			CheckpointWrite: checkpoint.WriteOptions{Fault: testCheckpointFault(a.Rank, a.Generation)},
			TestStepDelay:   testSlowRank(a.Rank),
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
		return train.RunRank(ctx, rc, func(s train.Stats) {
			step := seconds(s.StepSeconds)
			comm := max(0, seconds(s.CommSeconds-s.OverlapSeconds)) // exposed communication
			data := seconds(s.DataSeconds)
			report(worker.StepStats{
				Step: s.Step, Loss: s.Loss, LR: s.LR, GradNorm: s.GradNorm, TokensPerSec: s.TokensPerSec,
				StepTime: step, CommTime: comm, DataTime: data, ComputeTime: max(0, step-comm-data),
				CheckpointTime: seconds(s.CheckpointSeconds), Tokens: int64(s.Tokens), ValLoss: s.ValLoss,
			})
		})
	})
}

// testCheckpointFault reads LOOM_TEST_CHECKPOINT_KILL=POINT:STEP:RANK
// (fault tests only): the worker running RANK of generation 1 kills itself
// with SIGKILL when its writer of the checkpoint of STEP reaches POINT
// ("shard-half": half its shard written, nothing renamed into place;
// "written": files durable, not yet reported).
func testCheckpointFault(rank int, gen uint64) func(string, int) {
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
