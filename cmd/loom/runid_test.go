package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/checkpoint"
)

// stepDirs lists the names of jobDir's step directories and the run of
// each complete one.
func stepDirs(t *testing.T, jobDir string) (names []string, runs map[string]string) {
	t.Helper()
	infos, err := checkpoint.List(jobDir, true)
	if err != nil {
		t.Fatal(err)
	}
	runs = map[string]string{}
	for _, in := range infos {
		n := filepath.Base(in.Dir)
		names = append(names, n)
		// Read from the file, not checkpoint.Manifest: the test also runs
		// against builds from before run ids (it must fail there).
		var m struct {
			Run string `json:"run"`
		}
		if b, err := os.ReadFile(filepath.Join(in.Dir, checkpoint.ManifestFile)); err == nil && json.Unmarshal(b, &m) == nil {
			runs[n] = m.Run
		}
	}
	return names, runs
}

// A fresh run into a directory holding another run's checkpoints is
// refused, naming --resume and --overwrite, and changes nothing there;
// --overwrite moves the old run aside and its checkpoints survive whole;
// retention of the new run (and of a run resumed from it) removes only
// that run's checkpoints.
func TestFreshRunRefusesAnotherRunsCheckpoints(t *testing.T) {
	spec30, jobDir := ckFixture(t, "rid", "", "every: 5, keep: 3")
	src, _ := os.ReadFile(spec30)
	if !strings.Contains(string(src), "steps: 6,") {
		t.Fatalf("fixture changed: %s", src)
	}
	withSteps := func(n int) string {
		p := strings.TrimSuffix(spec30, ".yaml") + fmt.Sprintf("-%d.yaml", n)
		if err := os.WriteFile(p, []byte(strings.Replace(string(src), "steps: 6,", fmt.Sprintf("steps: %d,", n), 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	spec30, spec10 := withSteps(30), withSteps(10)
	run := func(args ...string) (string, error) {
		t.Helper()
		_, stderr, err := loom(t, append([]string{"run", "--log-format", "json", "--threads", "1", "--sample-tokens", "0"}, args...)...)
		return stderr, err
	}
	if stderr, err := run(spec30); err != nil {
		t.Fatalf("first run: %v\n%s", err, stderr)
	}
	before, oldRuns := stepDirs(t, jobDir)
	if strings.Join(before, " ") != "step-20 step-25 step-30" {
		t.Fatalf("first run left %v, want step-20 step-25 step-30", before)
	}
	finalBefore, _ := os.ReadFile(filepath.Join(filepath.Dir(jobDir), "rid", "final", "model.safetensors"))

	// A shorter version of the job into the same directory, no flags.
	stderr, err := run(spec10)
	if err == nil {
		after, _ := stepDirs(t, jobDir)
		t.Fatalf("a fresh run into another run's checkpoints was not refused; it left %v\n%s", after, stderr)
	}
	for _, w := range []string{jobDir, "another run", "step-20, step-25, step-30", "--resume latest", "--overwrite"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("refusal does not mention %q:\n%v", w, err)
		}
	}
	if oldRuns["step-20"] == "" || oldRuns["step-20"] != oldRuns["step-30"] {
		t.Errorf("the first run's manifests name runs %v, want one run id", oldRuns)
	}
	after, afterRuns := stepDirs(t, jobDir)
	finalAfter, _ := os.ReadFile(filepath.Join(filepath.Dir(jobDir), "rid", "final", "model.safetensors"))
	if fmt.Sprint(after, afterRuns) != fmt.Sprint(before, oldRuns) || string(finalAfter) != string(finalBefore) {
		t.Fatalf("the refused run changed the directory: %v %v", after, afterRuns)
	}
	if _, err := run(spec10, "--overwrite", "--resume", "latest"); err == nil || !strings.Contains(err.Error(), "exclude each other") {
		t.Errorf("--overwrite with --resume: %v", err)
	}

	// --overwrite: the old run is moved aside whole; the new run's own
	// checkpoints are kept by its retention.
	if stderr, err = run(spec10, "--overwrite"); err != nil {
		t.Fatalf("--overwrite: %v\n%s", err, stderr)
	}
	moved, _ := filepath.Glob(jobDir + ".replaced-*")
	if len(moved) != 1 || !strings.Contains(stderr, "moved the other run's "+jobDir+" aside to "+moved[0]) {
		t.Fatalf("moved aside to %v; stderr:\n%s", moved, stderr)
	}
	if names, runs := stepDirs(t, moved[0]); fmt.Sprint(names, runs) != fmt.Sprint(before, oldRuns) {
		t.Errorf("moved-aside run holds %v %v, want %v %v", names, runs, before, oldRuns)
	}
	if strings.Contains(stderr, "removed") {
		t.Errorf("the new run's retention removed something:\n%s", stderr)
	}
	names, newRuns := stepDirs(t, jobDir)
	if strings.Join(names, " ") != "step-5 step-10" || newRuns["step-5"] == "" || newRuns["step-5"] != newRuns["step-10"] ||
		newRuns["step-5"] == oldRuns["step-30"] {
		t.Fatalf("new run left %v (runs %v; old run %s), want step-5 step-10 of a new run", names, newRuns, oldRuns["step-30"])
	}

	// Retention across runs sharing the directory: put the old run's
	// checkpoints back beside the new run's, resume the new run to step 30.
	for _, n := range before {
		if err := os.Rename(filepath.Join(moved[0], n), filepath.Join(jobDir, n+"0")); err != nil { // step-200, step-250, step-300
			t.Fatal(err)
		}
	}
	if stderr, err = run(spec30, "--resume", checkpoint.StepDir(jobDir, 10)); err != nil {
		t.Fatalf("resume: %v\n%s", err, stderr)
	}
	names, runs := stepDirs(t, jobDir)
	if strings.Join(names, " ") != "step-20 step-25 step-30 step-200 step-250 step-300" {
		t.Fatalf("after the resumed run: %v (runs %v)", names, runs)
	}
	for _, n := range names {
		want := newRuns["step-5"]
		if strings.HasSuffix(n, "00") || strings.HasSuffix(n, "50") {
			want = oldRuns["step-30"]
		}
		if runs[n] != want {
			t.Errorf("%s: run %q, want %q", n, runs[n], want)
		}
	}
	// A fresh run is refused again: these are the resumed run's now.
	if _, err := run(spec10); err == nil || !strings.Contains(err.Error(), "another run") {
		t.Errorf("fresh run after the resumed one: %v", err)
	}
}
