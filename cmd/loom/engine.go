package main

import (
	"context"
	"errors"

	"github.com/loomtrain/loom/worker"
)

// newTrainingEngine returns the engine `loom worker` trains with.
//
// Placeholder until the training engine (model, optimizer and the parallel
// communicator groups) is wired in: every assignment fails with a clear
// error, which the coordinator reports as the job's failure.
func newTrainingEngine() worker.Engine {
	return worker.EngineFunc(func(ctx context.Context, a worker.Assignment, report func(worker.StepStats)) error {
		return errors.New("training engine not wired yet: this loom build can coordinate multi-worker jobs but not train them")
	})
}
