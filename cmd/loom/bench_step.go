package main

import (
	"context"
	"errors"
)

func cmdBenchStep(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("bench: not implemented yet")
}
