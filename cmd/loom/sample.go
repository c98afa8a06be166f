package main

import (
	"context"
	"errors"
)

func cmdSample(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("sample: not implemented yet")
}
