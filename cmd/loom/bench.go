package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
)

// benchCommands lists the `loom bench` subcommands.
func benchCommands() map[string]command {
	return map[string]command{
		"gemm":           {summary: "float32 GEMM GFLOP/s", run: cmdBenchGemm},
		"step":           {summary: "training step tokens/s, TFLOP/s and MFU", run: cmdBenchStep},
		"allreduce":      {summary: "all-reduce time and bandwidth over a data-plane transport (--transport)", run: cmdBenchAllReduce},
		"reduce-scatter": {summary: "reduce-scatter time and bandwidth over a data-plane transport (--transport)", run: cmdBenchReduceScatter},
		"all-gather":     {summary: "all-gather time and bandwidth over a data-plane transport (--transport)", run: cmdBenchAllGather},
		"wire":           {summary: "raw socket between two processes, both ways at once: the wire's limit", run: cmdBenchWire},
	}
}

func cmdBench(ctx context.Context, env *cmdEnv, args []string) error {
	cmds := benchCommands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(env.stdout, "Usage: loom bench WHAT [flags]\n\nWhat:")
		for _, n := range []string{"gemm", "step", "allreduce", "reduce-scatter", "all-gather", "wire"} {
			fmt.Fprintf(env.stdout, "  %-15s %s\n", n, cmds[n].summary)
		}
		return nil
	}
	c, ok := cmds[args[0]]
	if !ok {
		return fmt.Errorf("bench: unknown benchmark %q (want gemm, step, allreduce, reduce-scatter, all-gather or wire)", args[0])
	}
	return c.run(ctx, env, args[1:])
}

// startCPUProfile writes a CPU profile to path until the returned function
// is called.
func startCPUProfile(path string) (stop func(), err error) {
	return startRecording(path, "cpu profile", pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// startRecording creates path (and its directory) and has start record
// what into it until the returned function calls stop and closes the file.
func startRecording(path, what string, start func(io.Writer) error, stop func()) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return func() {
		stop()
		f.Close()
	}, nil
}
