package main

import (
	"context"
	"errors"
)

func cmdCoordinator(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("coordinator: not implemented yet")
}

func cmdWorker(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("worker: not implemented yet")
}

func cmdSubmit(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("submit: not implemented yet")
}

func cmdStatus(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("status: not implemented yet")
}

func cmdStop(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("stop: not implemented yet")
}
