package main

import (
	"context"
	"time"

	"github.com/loomtrain/loom/train"
	"github.com/loomtrain/loom/worker"
	"github.com/loomtrain/loom/zero"
)

// newTrainingEngine returns the engine `loom worker` trains with: one
// data-parallel rank of the assigned generation (train.RunRank), on the
// worker's thread budget, reporting every step to the coordinator.
func newTrainingEngine() worker.Engine {
	return worker.EngineFunc(func(ctx context.Context, a worker.Assignment, report func(worker.StepStats)) error {
		k, closeK := newKernels(a.Threads)
		defer closeK()
		return train.RunRank(ctx, train.RankConfig{
			Spec: a.Spec, Job: a.Job, Generation: a.Generation, Rank: a.Rank,
			Peers: a.Peers, Listener: a.Listener, Kernels: k,
			OnComm: a.Metrics.AddComm,
			OnMemory: func(m zero.Memory) {
				for _, kb := range m.Kinds() {
					a.Metrics.SetMemory(kb.Kind, kb.Bytes)
				}
			},
		}, func(s train.Stats) {
			step := seconds(s.StepSeconds)
			comm := seconds(s.CommSeconds - s.OverlapSeconds) // exposed communication
			report(worker.StepStats{
				Step: s.Step, Loss: s.Loss, LR: s.LR, GradNorm: s.GradNorm, TokensPerSec: s.TokensPerSec,
				StepTime: step, CommTime: comm, ComputeTime: step - comm,
			})
		})
	})
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
