package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/checkpoint"
)

// ckFixture is fixture with checkpoint.every/keep set; it returns the spec
// path and the job's checkpoint directory.
func ckFixture(t *testing.T, name, extra, ck string) (spec, jobDir string) {
	t.Helper()
	spec, _ = fixture(t, extra)
	src, err := os.ReadFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(filepath.Dir(spec), "ck")
	s := strings.Replace(string(src), "checkpoint: {dir: "+dir+"}", "checkpoint: {dir: "+dir+", "+ck+"}", 1)
	s = strings.Replace(s, "name: t\n", "name: "+name+"\n", 1)
	if err := os.WriteFile(spec, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return spec, filepath.Join(dir, name)
}

// stepLossMap parses `--log-format json` lines by step (a resumed run
// starts after step 1).
func stepLossMap(t *testing.T, out string) map[int]float64 {
	t.Helper()
	m := map[int]float64{}
	for _, line := range strings.Split(out, "\n") {
		var rec struct {
			Step *int    `json:"step"`
			Loss float64 `json:"loss"`
		}
		if line != "" && json.Unmarshal([]byte(line), &rec) == nil && rec.Step != nil {
			m[*rec.Step] = rec.Loss
		}
	}
	return m
}

// `loom run --resume latest` after the newest checkpoints were damaged
// (a truncated shard, a flipped byte) skips each, naming the file and the
// reason, resumes from the newest complete one, and reproduces the
// uninterrupted run's losses bit for bit. `loom checkpoints` reports the
// same; `loom export` works from the sharded checkpoint; a checkpoint of
// another model configuration is refused naming the fields.
func TestRunResumeLatestSkipsBrokenCheckpoints(t *testing.T) {
	spec, jobDir := ckFixture(t, "ck1", "", "every: 2, keep: 5")
	out, stderr, err := loom(t, "run", spec, "--log-format", "json", "--threads", "1")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	want := stepLossMap(t, out)
	if len(want) != 6 || !strings.Contains(stderr, "checkpoint step 6 complete") {
		t.Fatalf("first run: %d steps\n%s\n%s", len(want), out, stderr)
	}
	// The final model equals the step-6 checkpoint exported.
	exported := filepath.Join(t.TempDir(), "hf")
	if _, stderr, err := loom(t, "export", "--model", jobDir, "--out", exported); err != nil || !strings.Contains(stderr, "step-6") {
		t.Fatalf("export: %v\n%s", err, stderr)
	}
	a, _ := os.ReadFile(filepath.Join(exported, "model.safetensors"))
	b, _ := os.ReadFile(filepath.Join(filepath.Dir(jobDir), "ck1", "final", "model.safetensors"))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatalf("exported step-6 weights (%d bytes) differ from the final model (%d bytes)", len(a), len(b))
	}

	shard := func(step int) string {
		return filepath.Join(checkpoint.StepDir(jobDir, step), "rank-00000.safetensors")
	}
	if err := os.Truncate(shard(6), 1000); err != nil {
		t.Fatal(err)
	}
	flip, err := os.ReadFile(shard(4))
	if err != nil {
		t.Fatal(err)
	}
	flip[len(flip)-5] ^= 0x10
	if err := os.WriteFile(shard(4), flip, 0o644); err != nil {
		t.Fatal(err)
	}
	// Listing corrupt checkpoints is a failure (exit status 1) naming them.
	list, _, err := loom(t, "checkpoints", filepath.Dir(jobDir))
	if err == nil || !strings.Contains(err.Error(), "2 of 3") || !strings.Contains(err.Error(), "step-4, step-6") {
		t.Errorf("loom checkpoints with two corrupt checkpoints: err %v, want 2 of 3 named", err)
	}
	for _, w := range []string{"step-2 ", "complete, verified", "dp=1 zero=0", "CORRUPT: rank-00000.safetensors: size 1000 bytes", "CORRUPT: rank-00000.safetensors: SHA-256"} {
		if !strings.Contains(list, w) {
			t.Errorf("loom checkpoints output lacks %q:\n%s", w, list)
		}
	}

	out, stderr, err = loom(t, "run", spec, "--log-format", "json", "--threads", "1", "--resume", "latest", "--sample-tokens", "0")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, w := range []string{"skipping checkpoint " + shard(6) + ": corrupt checkpoint: size 1000 bytes",
		"skipping checkpoint " + shard(4) + ": corrupt checkpoint: SHA-256", "resumed from " + checkpoint.StepDir(jobDir, 2)} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
	got := stepLossMap(t, out)
	if len(got) != 4 {
		t.Fatalf("resumed run reported %d steps, want 4 (3–6):\n%s", len(got), out)
	}
	for step := 3; step <= 6; step++ {
		if got[step] != want[step] {
			t.Errorf("step %d: resumed loss %v, uninterrupted %v", step, got[step], want[step])
		}
	}

	// Another model configuration is refused, naming the field.
	src, _ := os.ReadFile(spec)
	other := filepath.Join(t.TempDir(), "other.yaml")
	os.WriteFile(other, []byte(strings.Replace(string(src), "ffn_hidden: 64", "ffn_hidden: 96", 1)), 0o644)
	if _, _, err := loom(t, "run", other, "--resume", "latest", "--threads", "1"); err == nil || !strings.Contains(err.Error(), "model.ffn_hidden: job has 96, checkpoint has 64") {
		t.Fatalf("mismatched model: %v", err)
	}
}

// Worker processes: rank 1 is killed (SIGKILL) while it writes its shard
// of the step-4 checkpoint of a dp=2 ZeRO-1 job; `loom run --resume latest`
// on dp=4 ZeRO-3 skips the partial step 4, naming it, resumes from step 2
// (resharded) and matches the uninterrupted single-worker losses.
func TestMultiWorkerKilledDuringSaveResumesResharded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	spec, jobDir := ckFixture(t, "mw", "", "every: 2, keep: 3")
	src, _ := os.ReadFile(spec)
	layout := func(dp, zero int) string {
		s := strings.Replace(string(src), "train: {steps: 6, global_batch: 4, micro_batch: 2,",
			fmt.Sprintf("train: {steps: 6, global_batch: 8, micro_batch: %d, grad_clip: 0.5,", 8/dp/2), 1)
		s = strings.Replace(s, "name: mw\n", fmt.Sprintf("name: mw\nparallel: {dp: %d, zero: %d}\n", dp, zero), 1)
		p := strings.TrimSuffix(spec, ".yaml") + fmt.Sprintf("-dp%d-z%d.yaml", dp, zero)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	out, stderr, err := loom(t, "run", layout(1, 0), "--log-format", "json", "--threads", "1", "--sample-tokens", "0")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	want := stepLossMap(t, out)
	for _, d := range []string{"step-2", "step-4", "step-6", "final"} {
		os.RemoveAll(filepath.Join(jobDir, d))
	}

	t.Setenv("LOOM_TEST_CHECKPOINT_KILL", "shard-half:4:1")
	_, stderr, err = loom(t, "run", layout(2, 1), "--log-format", "json", "--threads", "1", "--sample-tokens", "0", "--max-restarts", "0")
	if err == nil || !strings.Contains(stderr, "kills itself at shard-half") {
		t.Fatalf("killed run: err %v\n%s", err, stderr)
	}
	os.Unsetenv("LOOM_TEST_CHECKPOINT_KILL")
	if _, err := os.Stat(filepath.Join(checkpoint.PartialDir(jobDir, 4), checkpoint.ManifestFile)); err == nil {
		t.Fatal("step 4 has a manifest although rank 1 died writing it")
	}

	out, stderr, err = loom(t, "run", layout(4, 3), "--log-format", "json", "--threads", "1", "--resume", "latest", "--sample-tokens", "0")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, w := range []string{"skipping checkpoint " + checkpoint.PartialDir(jobDir, 4), "resuming from " + checkpoint.StepDir(jobDir, 2),
		"resumed from " + mustAbs(t, checkpoint.StepDir(jobDir, 2))} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
	t.Logf("resumed run:\n%s", stderr)
	got := stepLossMap(t, out)
	if len(got) != 4 {
		t.Fatalf("resumed run reported %d steps, want 4:\n%s", len(got), out)
	}
	for step := 3; step <= 6; step++ {
		if rel := math.Abs(got[step]-want[step]) / want[step]; rel > 1e-5 {
			t.Errorf("step %d: resumed dp=4 zero=3 loss %.7f, uninterrupted dp=1 %.7f (rel %.2g)", step, got[step], want[step], rel)
		}
	}
	infos, err := checkpoint.List(jobDir, true)
	if err != nil {
		t.Fatal(err)
	}
	var complete []int
	for _, in := range infos {
		if in.Err == nil {
			complete = append(complete, in.Step)
			if in.Manifest.Layout.DP != 4 && in.Step > 2 {
				t.Errorf("step %d saved with %v, want dp=4", in.Step, in.Manifest.Layout)
			}
		}
	}
	if fmt.Sprint(complete) != "[2 4 6]" {
		t.Errorf("complete checkpoints %v, want [2 4 6] (step 4 rewritten by the resumed run)", complete)
	}
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
