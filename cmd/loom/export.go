package main

import (
	"context"
	"errors"
)

func cmdExport(ctx context.Context, env *cmdEnv, args []string) error {
	return errors.New("export: not implemented yet")
}
