package main

import (
	"context"
	"errors"
)

func cmdRun(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("run: not implemented yet")
}
