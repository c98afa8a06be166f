package main

import (
	"context"
	"fmt"

	"github.com/loomtrain/loom/internal/version"
)

func cmdVersion(ctx context.Context, env *cmdEnv, args []string) error {
	fmt.Fprintln(env.stdout, "loom", version.Version)
	return nil
}
