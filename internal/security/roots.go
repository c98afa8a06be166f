package security

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/loomtrain/loom/api"
)

// Roots are the directories a process lets job specs name: token files
// under Data, checkpoints (and the final model) under Checkpoint. An empty
// root allows any path.
type Roots struct {
	Data       string
	Checkpoint string
}

// RegisterFlags binds --data-root and --checkpoint-root to r.
func (r *Roots) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&r.Data, "data-root", r.Data, "`DIR` a job's data paths (data.path, data.sources, data.validation.path) must lie under (default: anywhere)")
	fs.StringVar(&r.Checkpoint, "checkpoint-root", r.Checkpoint, "`DIR` a job's checkpoint.dir and --resume directory must lie under (default: anywhere)")
}

// Set reports whether any root is set.
func (r Roots) Set() bool { return r.Data != "" || r.Checkpoint != "" }

// PathError is a job spec path outside the root it must lie under.
type PathError struct {
	Field string // e.g. "data.sources[1].path"
	Path  string // as the spec gives it
	Real  string // after making it absolute and resolving symbolic links
	Root  string
	Flag  string // "--data-root" or "--checkpoint-root"
}

// Error names the field, the path, where it resolves, and the root.
func (e *PathError) Error() string {
	real := ""
	if e.Real != e.Path {
		real = fmt.Sprintf(" (resolves to %s)", e.Real)
	}
	return fmt.Sprintf("%s: %s%s is outside %s %s; this worker reads and writes only there (move the files, or give a path under it)",
		e.Field, e.Path, real, e.Flag, e.Root)
}

// CheckJob reports every path of spec (and resume, when it names a
// directory) that escapes its root, all at once.
func (r Roots) CheckJob(spec api.JobSpec, resume string) error {
	if !r.Set() {
		return nil
	}
	type p struct{ field, path string }
	var data []p
	if spec.Data.Path != "" {
		data = append(data, p{"data.path", spec.Data.Path})
	}
	for i, s := range spec.Data.Sources {
		data = append(data, p{fmt.Sprintf("data.sources[%d].path", i), s.Path})
	}
	if v := spec.Data.Validation.Path; v != "" {
		data = append(data, p{"data.validation.path", v})
	}
	ckpt := []p{{"checkpoint.dir", spec.Checkpoint.Dir}}
	if resume != "" && resume != "latest" && resume != "auto" {
		ckpt = append(ckpt, p{"resume", resume})
	}
	var errs []error
	check := func(root, flagName string, ps []p) {
		if root == "" {
			return
		}
		realRoot, err := resolve(root)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", flagName, root, err))
			return
		}
		for _, x := range ps {
			real, err := resolve(x.path)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", x.field, x.path, err))
				continue
			}
			if !within(real, realRoot) {
				errs = append(errs, &PathError{Field: x.field, Path: x.path, Real: real, Root: root, Flag: flagName})
			}
		}
	}
	check(r.Data, "--data-root", data)
	check(r.Checkpoint, "--checkpoint-root", ckpt)
	return errors.Join(errs...)
}

// within reports whether path is root or below it (both clean and absolute).
func within(path, root string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

// resolve makes path absolute and resolves the symbolic links of its
// longest existing prefix, so that neither "../" nor a link inside the
// root can point out of it; the part that does not exist yet (a
// checkpoint directory to be made) is appended as written, cleaned.
func resolve(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	existing, rest := abs, ""
	for {
		if _, err := os.Lstat(existing); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		rest = filepath.Join(filepath.Base(existing), rest)
		existing = parent
	}
	real, err := filepath.EvalSymlinks(existing)
	if err != nil {
		return "", err
	}
	return filepath.Join(real, rest), nil
}
