package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/loomtrain/loom/checkpoint"
)

func cmdCheckpoints(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "checkpoints", "DIR [--no-verify]\n\n"+
		"Lists the sharded checkpoints under DIR (a job's checkpoint directory,\n"+
		"checkpoint.dir/NAME, or checkpoint.dir itself) with step, time, layout, size\n"+
		"and whether each is complete and verified (every file's SHA-256 matches the\n"+
		"manifest). Incomplete and corrupt ones name the file and the reason, and the\n"+
		"command then exits with status 1 (partial saves in progress excepted).")
	noVerify := fs.Bool("no-verify", false, "check only that files exist with their sizes, not their SHA-256")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("checkpoints: need exactly one DIR")
	}
	jobDirs, err := checkpointJobDirs(pos[0])
	if err != nil {
		return fmt.Errorf("checkpoints: %w", err)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECKPOINT\tSTEP\tTIME\tLAYOUT\tSIZE\tSTATUS")
	n := 0
	var broken []string // corrupt, or a step-N whose files are missing
	for _, jd := range jobDirs {
		infos, err := checkpoint.List(jd, !*noVerify)
		if err != nil {
			return fmt.Errorf("checkpoints: %w", err)
		}
		for _, in := range infos {
			n++
			when, layout := "-", "-"
			if m := in.Manifest; m != nil {
				when, layout = m.Time.Local().Format(time.DateTime), m.Layout.String()
			}
			status := "complete, verified"
			switch {
			case in.Err != nil:
				status = describeCheckError(in.Err)
				// A partial directory is a save in progress or abandoned:
				// listed, not an error. A step-N that does not check is.
				if errors.Is(in.Err, checkpoint.ErrCorrupt) || !in.Partial {
					broken = append(broken, filepath.Base(in.Dir))
				}
			case !in.Verified:
				status = "complete (not verified)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", in.Dir, in.Step, when, layout, humanBytes(in.Size), status)
		}
	}
	if n == 0 {
		fmt.Fprintf(env.stdout, "no checkpoints under %s\n", pos[0])
		return nil
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(broken) > 0 {
		return fmt.Errorf("checkpoints: %d of %d under %s cannot be loaded (%s); `--resume latest` skips them; delete them (or move them away) to clear this",
			len(broken), n, pos[0], strings.Join(broken, ", "))
	}
	return nil
}

// describeCheckError renders why a checkpoint is unusable: the class, the
// file and the reason.
func describeCheckError(err error) string {
	var ce *checkpoint.CheckError
	if !errors.As(err, &ce) {
		return err.Error()
	}
	what := "incomplete"
	if errors.Is(err, checkpoint.ErrCorrupt) {
		what = "CORRUPT"
	}
	if ce.File != "" {
		return fmt.Sprintf("%s: %s: %s", what, ce.File, ce.Reason)
	}
	return fmt.Sprintf("%s: %s", what, ce.Reason)
}

// checkpointJobDirs returns dir when it holds step directories, else its
// subdirectories (a checkpoint.dir with one directory per job).
func checkpointJobDirs(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var subs []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if m, _ := filepath.Match("step-*", e.Name()); m {
			return []string{dir}, nil
		}
		subs = append(subs, filepath.Join(dir, e.Name()))
	}
	return subs, nil
}
