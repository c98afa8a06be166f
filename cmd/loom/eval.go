package main

import (
	"context"
	"errors"
)

func cmdEval(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("eval: not implemented yet")
}
