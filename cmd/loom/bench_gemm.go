package main

import (
	"context"
	"errors"
)

func cmdBenchGemm(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("bench: not implemented yet")
}
