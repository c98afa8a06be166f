package checkpoint

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// OpenParts opens a checkpoint whose manifest was never written: the
// ranks' parts of one step (as WriteRank returned them), with every
// rank's files gathered in dir — an in-memory snapshot of elastic
// recovery (elastic.snapshot_every), kept in a worker's memory-backed
// store rather than committed to disk. The parts must agree and cover
// ranks 0..world-1 once each, as for Commit; every file is verified
// (size and SHA-256) as Open does, and the result reads through the same
// resharding Reader.
func OpenParts(dir string, parts []RankPart) (*Checkpoint, error) {
	m, err := ManifestOf(parts)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: snapshot in %s: %w", dir, err)
	}
	return openVerified(dir, m)
}

// ManifestOf is the manifest a commit of parts would write (without a
// time or a run), after checking that they agree and cover ranks
// 0..world-1 once each.
func ManifestOf(parts []RankPart) (*Manifest, error) {
	if len(parts) == 0 {
		return nil, fmt.Errorf("no rank parts")
	}
	parts = slices.Clone(parts)
	sort.Slice(parts, func(i, j int) bool { return parts[i].Rank < parts[j].Rank })
	p0 := parts[0]
	if len(parts) != p0.Layout.WorldSize {
		return nil, fmt.Errorf("step %d: %d parts of %d ranks (layout %v)", p0.Step, len(parts), p0.Layout.WorldSize, p0.Layout)
	}
	m := &Manifest{Format: FormatName, Version: FormatVersion, Job: p0.Job, Step: p0.Step, Layout: p0.Layout, Model: p0.Model, Spec: p0.Spec}
	for i, p := range parts {
		if p.Rank != i || p.Step != p0.Step || p.Layout != p0.Layout || p.Model != p0.Model || p.Job != p0.Job {
			return nil, fmt.Errorf("step %d: rank %d's part (step %d, layout %v, job %q) does not match rank 0's (step %d, layout %v, job %q) or a rank is missing",
				p0.Step, p.Rank, p.Step, p.Layout, p.Job, p0.Step, p0.Layout, p0.Job)
		}
		for _, f := range p.Files {
			if f.Path == "" || filepath.IsAbs(f.Path) || strings.Contains(f.Path, "..") || strings.ContainsRune(f.Path, '/') {
				return nil, fmt.Errorf("step %d: rank %d's file path %q must be a plain name", p0.Step, p.Rank, f.Path)
			}
			m.Files = append(m.Files, f)
			m.Bytes += f.Size
		}
	}
	return m, nil
}

// openVerified checks dir's files against m (sizes and SHA-256) and reads
// rank 0's state file.
func openVerified(dir string, m *Manifest) (*Checkpoint, error) {
	if err := Check(dir, m, true); err != nil {
		return nil, err
	}
	ck := &Checkpoint{Dir: dir, Manifest: m}
	for _, f := range m.Files {
		if f.Path == stateFile(0) {
			b, err := os.ReadFile(filepath.Join(dir, f.Path))
			if err != nil {
				return nil, &CheckError{Dir: dir, File: f.Path, Reason: err.Error(), Err: ErrCorrupt}
			}
			if err := json.Unmarshal(b, &ck.State); err != nil {
				return nil, &CheckError{Dir: dir, File: f.Path, Reason: "does not parse: " + err.Error(), Err: ErrCorrupt}
			}
		}
	}
	if ck.State.Format != FormatName || ck.State.Step != m.Step {
		return nil, &CheckError{Dir: dir, File: stateFile(0), Reason: fmt.Sprintf("missing or for step %d, manifest says %d", ck.State.Step, m.Step), Err: ErrCorrupt}
	}
	return ck, nil
}
