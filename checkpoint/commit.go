package checkpoint

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/loomtrain/loom/internal/atomicfile"
	"github.com/loomtrain/loom/safetensors"
)

// CommitOptions are hooks and settings for Commit.
type CommitOptions struct {
	// Now stamps the manifest (default time.Now).
	Now func() time.Time
	// BeforeManifest, when set, runs after the parts are checked and before
	// the manifest is written; an error aborts the commit there (tests use
	// it to stand for a committer that dies at that point).
	BeforeManifest func() error
	// Run is the committing run's id, recorded in the manifest. A step
	// directory already there of another run is never replaced.
	Run string
}

// Commit makes a checkpoint complete once every rank has reported its part:
// it checks that the parts agree and cover ranks 0..world-1 once each and
// that every reported file is on disk with its reported size, removes
// anything else from the partial directory, writes the manifest (write,
// fsync, rename, fsync dir), renames step-N.partial to step-N and fsyncs
// the job directory. It returns the step directory.
//
// Commit is idempotent: when the partial directory is gone and step-N holds
// a manifest of the same run listing exactly these files, the checkpoint
// was committed already (by a committer that died before recording it) and
// Commit returns step-N. A step-N of another run (or one whose manifest
// does not say) is never replaced: that is an *OtherRunError.
func Commit(parts []RankPart, opt CommitOptions) (string, error) {
	if len(parts) == 0 {
		return "", errors.New("checkpoint: commit of no parts")
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	parts = slices.Clone(parts)
	sort.Slice(parts, func(i, j int) bool { return parts[i].Rank < parts[j].Rank })
	p0 := parts[0]
	partial := p0.Dir
	final, ok := finalOf(partial)
	if !ok {
		return "", fmt.Errorf("checkpoint: commit: %s is not a step-N%s directory", partial, partialSuffix)
	}
	m := &Manifest{Format: FormatName, Version: FormatVersion, Job: p0.Job, Step: p0.Step, Time: opt.Now().UTC(),
		Layout: p0.Layout, Model: p0.Model, Spec: p0.Spec, Run: opt.Run}
	if len(parts) != p0.Layout.WorldSize {
		return "", fmt.Errorf("checkpoint: commit step %d: %d of %d ranks reported", p0.Step, len(parts), p0.Layout.WorldSize)
	}
	for i, p := range parts {
		if p.Rank != i || p.Step != p0.Step || p.Dir != partial || p.Layout != p0.Layout || p.Model != p0.Model || p.Job != p0.Job {
			return "", fmt.Errorf("checkpoint: commit step %d: rank %d's report (step %d, dir %s, layout %v) does not match rank 0's (step %d, dir %s, layout %v)",
				p0.Step, p.Rank, p.Step, p.Dir, p.Layout, p0.Step, p0.Dir, p0.Layout)
		}
		m.Files = append(m.Files, p.Files...)
	}
	listed := map[string]bool{}
	for _, f := range m.Files {
		listed[f.Path] = true
		m.Bytes += f.Size
	}
	if _, err := os.Stat(partial); errors.Is(err, os.ErrNotExist) {
		if have, err := ReadManifest(final); err == nil && have.Run == m.Run && sameFiles(have.Files, m.Files) {
			return final, nil
		}
	}
	if err := checkReplaceable(final, m.Run); err != nil {
		return "", err
	}
	for _, f := range m.Files {
		fi, err := os.Stat(filepath.Join(partial, f.Path))
		if err != nil {
			return "", fmt.Errorf("checkpoint: commit step %d: rank %d's %w", m.Step, f.Rank, err)
		}
		if fi.Size() != f.Size {
			return "", fmt.Errorf("checkpoint: commit step %d: %s is %d bytes; rank %d reported %d",
				m.Step, filepath.Join(partial, f.Path), fi.Size(), f.Rank, f.Size)
		}
	}
	// Leftovers of an earlier attempt at this step (another layout, a
	// rank that died mid-write) are not part of this checkpoint.
	ents, err := os.ReadDir(partial)
	if err != nil {
		return "", fmt.Errorf("checkpoint: commit: %w", err)
	}
	for _, e := range ents {
		if !listed[e.Name()] {
			os.RemoveAll(filepath.Join(partial, e.Name()))
		}
	}
	if opt.BeforeManifest != nil {
		if err := opt.BeforeManifest(); err != nil {
			return "", err
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return "", fmt.Errorf("checkpoint: encode manifest: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(partial, ManifestFile), append(b, '\n')); err != nil {
		return "", fmt.Errorf("checkpoint: commit step %d: %w", m.Step, err)
	}
	// A step-N already there is this run's, from an abandoned timeline (a
	// run resumed from an earlier step): checkReplaceable said so.
	if err := os.RemoveAll(final); err != nil {
		return "", fmt.Errorf("checkpoint: commit: replace %s: %w", final, err)
	}
	if err := os.Rename(partial, final); err != nil {
		return "", fmt.Errorf("checkpoint: commit: %w", err)
	}
	if err := safetensors.SyncDir(filepath.Dir(final)); err != nil {
		return "", fmt.Errorf("checkpoint: commit: fsync %s: %w", filepath.Dir(final), err)
	}
	return final, nil
}

func finalOf(partial string) (string, bool) {
	_, isPartial, ok := parseStepDir(filepath.Base(partial))
	if !ok || !isPartial {
		return "", false
	}
	return partial[:len(partial)-len(partialSuffix)], true
}

func sameFiles(a, b []FileEntry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Path != b[i].Path || a[i].Size != b[i].Size || a[i].SHA256 != b[i].SHA256 {
			return false
		}
	}
	return true
}

// Retain deletes all but the newest keep complete checkpoints of run
// under jobDir (by step; complete means the manifest parses and every file
// it lists has its size), and the partial or broken directories of run
// older than its newest complete one (a partial directory names no run; a
// fresh run never starts where another's are, see CheckFresh). Other runs'
// checkpoints are never touched, and run's newest complete checkpoint is
// never deleted. It returns the
// directories removed.
func Retain(jobDir string, keep int, run string) ([]string, error) {
	keep = max(keep, 1)
	infos, err := List(jobDir, false)
	if err != nil {
		return nil, err
	}
	var complete []Info
	for _, in := range infos {
		if in.Err == nil && in.Manifest.Run == run {
			complete = append(complete, in)
		}
	}
	if len(complete) == 0 {
		return nil, nil
	}
	newest := complete[len(complete)-1].Step
	var removed []string
	var errs []error
	drop := func(dir string) {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
			return
		}
		removed = append(removed, dir)
	}
	for i, in := range complete {
		if i < len(complete)-keep {
			drop(in.Dir)
		}
	}
	for _, in := range infos {
		ours := in.Partial || in.Manifest != nil && in.Manifest.Run == run
		if in.Err != nil && ours && in.Step < newest {
			drop(in.Dir)
		}
	}
	return removed, errors.Join(errs...)
}

// ErrOtherRun is the class of errors for checkpoints of another run where a
// run would write its own.
var ErrOtherRun = errors.New("checkpoints of another run")

// OtherRunError says which job directory holds which other run's
// checkpoints. It unwraps to ErrOtherRun.
type OtherRunError struct {
	JobDir string
	// Dirs are the step directories in the way, oldest step first.
	Dirs []string
	// Run is the other run's id where a manifest names one.
	Run string
}

func (e *OtherRunError) Error() string {
	names := make([]string, 0, len(e.Dirs))
	for _, d := range e.Dirs {
		names = append(names, filepath.Base(d))
	}
	run := ""
	if e.Run != "" {
		run = " (run " + e.Run + ")"
	}
	return fmt.Sprintf("%s holds checkpoints of another run%s: %s", e.JobDir, run, strings.Join(names, ", "))
}

func (e *OtherRunError) Unwrap() error { return ErrOtherRun }

// checkReplaceable refuses to replace the step directory final unless it is
// absent or its manifest names run.
func checkReplaceable(final, run string) error {
	if _, err := os.Stat(final); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	m, err := ReadManifest(final)
	if err == nil && m.Run == run {
		return nil
	}
	e := &OtherRunError{JobDir: filepath.Dir(final), Dirs: []string{final}}
	if m != nil {
		e.Run = m.Run
	}
	return fmt.Errorf("checkpoint: commit: %w; not replacing it", e)
}

// CheckFresh returns nil when a fresh run may write checkpoints into jobDir:
// it holds no step directory (complete or partial) yet. Otherwise it
// returns an *OtherRunError listing them.
func CheckFresh(jobDir string) error {
	infos, err := List(jobDir, false)
	if err != nil {
		return err
	}
	if len(infos) == 0 {
		return nil
	}
	e := &OtherRunError{JobDir: jobDir}
	for _, in := range infos {
		e.Dirs = append(e.Dirs, in.Dir)
		if in.Manifest != nil && in.Manifest.Run != "" {
			e.Run = in.Manifest.Run
		}
	}
	return e
}

// MoveAside renames jobDir to a sibling named after it and now
// (NAME.replaced-20060102T150405Z), so a fresh run starts in an empty
// directory and nothing is deleted. It returns the new path.
func MoveAside(jobDir string, now time.Time) (string, error) {
	clean := filepath.Clean(jobDir)
	to := clean + ".replaced-" + now.UTC().Format("20060102T150405Z")
	if _, err := os.Stat(to); err == nil {
		return "", fmt.Errorf("checkpoint: move %s aside: %s exists already; try again in a second", jobDir, to)
	}
	if err := os.Rename(clean, to); err != nil {
		return "", fmt.Errorf("checkpoint: move %s aside: %w", jobDir, err)
	}
	if err := safetensors.SyncDir(filepath.Dir(clean)); err != nil {
		return "", fmt.Errorf("checkpoint: move %s aside: fsync %s: %w", jobDir, filepath.Dir(clean), err)
	}
	return to, nil
}

// NewRunID returns a fresh run id: the UTC time and 32 random bits.
func NewRunID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}
