// Command loom is the single binary of Loom: it prepares data, runs and
// serves training jobs, and measures kernels and collectives.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one `loom` subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, env *cmdEnv, args []string) error
	hidden  bool
}

// cmdEnv carries what every subcommand writes to, so tests can capture it.
type cmdEnv struct {
	stdout io.Writer
	stderr io.Writer
}

// commands lists every subcommand; each lives in its own file.
func commands() map[string]command {
	return map[string]command{
		"run":         {summary: "train a job from a YAML spec (in-process for world size 1)", run: cmdRun},
		"prep":        {summary: "tokenize text files, directories and JSONL into a token file", run: cmdPrep},
		"tokenizer":   {summary: "train, inspect and run BPE tokenizers (train, encode, decode, info, convert, bench)", run: cmdTokenizer},
		"eval":        {summary: "mean loss of a model over a token file", run: cmdEval},
		"sample":      {summary: "generate text from a model", run: cmdSample},
		"export":      {summary: "write a model as a Hugging Face LLaMA directory", run: cmdExport},
		"bench":       {summary: "measure kernels, training steps and collectives", run: cmdBench},
		"checkpoints": {summary: "list sharded checkpoints: step, time, layout, size, complete and verified", run: cmdCheckpoints},
		"plan":        {summary: "list the layouts (dp × tp × pp, ZeRO, micro-batch) that fit, with memory, communication and pipeline bubble per rank", run: cmdPlan},
		"verify":      {summary: "train a few steps with the job's layout and with one worker, and compare them step by step", run: cmdVerify},
		"schedule":    {summary: "print a pipeline schedule: the rank × step grid of actions, the simulated timeline, bubble and peak in-flight activations", run: cmdSchedule},
		"version":     {summary: "print the Loom version", run: cmdVersion},
		"coordinator": {summary: "serve the coordinator (control plane) for multi-node jobs", run: cmdCoordinator},
		"worker":      {summary: "join a coordinator as a worker", run: cmdWorker},
		"submit":      {summary: "submit a job to a coordinator and follow it", run: cmdSubmit},
		"status":      {summary: "show jobs, their generation, ranks, step and throughput", run: cmdStatus},
		"stop":        {summary: "stop a job", run: cmdStop},
		"certs":       {summary: "make a development CA, per-component TLS certificates and bearer tokens (init, issue)", run: cmdCerts},
		"top":         {summary: "a job's ranks live in the terminal: where step time goes, stragglers flagged", run: cmdTop},
		"comm-worker": {summary: "internal: one rank of a collective benchmark", run: cmdCommWorker, hidden: true},
		"wire-peer":   {summary: "internal: the other end of `loom bench wire`", run: cmdWirePeer, hidden: true},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	env := &cmdEnv{stdout: os.Stdout, stderr: os.Stderr}
	err := dispatch(ctx, env, os.Args[1:])
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "loom: %v\n", err)
		os.Exit(1)
	}
}

func dispatch(ctx context.Context, env *cmdEnv, args []string) error {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.stdout, cmds)
		if len(args) == 0 {
			return errors.New("no command given")
		}
		return nil
	}
	c, ok := cmds[args[0]]
	if !ok {
		usage(env.stderr, cmds)
		return fmt.Errorf("unknown command %q", args[0])
	}
	return c.run(ctx, env, args[1:])
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "Usage: loom COMMAND [flags] [args]")
	fmt.Fprintln(w, "\nCommands:")
	names := make([]string, 0, len(cmds))
	for n, c := range cmds {
		if !c.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'loom COMMAND --help' for a command's flags.")
}

// newFlagSet returns a flag set whose usage text names the command and
// whose errors are returned, not printed and exited on.
func newFlagSet(env *cmdEnv, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("loom "+name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: loom %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseArgs parses fs from args, where flags may come before, between or
// after the positional arguments (and "--" ends the flags); it returns the
// positional arguments.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		consumed := len(args) - len(fs.Args())
		dashdash := consumed > 0 && args[consumed-1] == "--"
		args = fs.Args()
		if dashdash {
			return append(pos, args...), nil
		}
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
