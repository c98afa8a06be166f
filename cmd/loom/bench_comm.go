package main

import (
	"context"
	"errors"
)

func cmdCommWorker(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("bench_comm: not implemented yet")
}

func cmdBenchAllReduce(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("bench allreduce: not implemented yet")
}

func cmdBenchReduceScatter(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("bench reduce-scatter: not implemented yet")
}

func cmdBenchAllGather(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("bench all-gather: not implemented yet")
}
