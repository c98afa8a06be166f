package main

import (
	"context"
	"errors"
)

func cmdPrep(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("prep: not implemented yet")
}
