package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/checkpoint"
)

// tpFixture writes a job spec for the tensor-parallel tests: one kv head
// (fewer than any tp), a vocabulary of 259 (not divisible by tp), an odd
// sequence length, accumulation and clipping; extra is appended.
func tpFixture(t *testing.T, name, extra string) (spec, dir string) {
	t.Helper()
	base, tokens := fixture(t, "")
	dir = filepath.Dir(base)
	spec = filepath.Join(dir, name+".yaml")
	y := "name: " + name + "\nmodel: {dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 1, ffn_hidden: 64, seq_len: 9, vocab_size: 259}\n" +
		"data: {path: " + tokens + "}\ntrain: {steps: 10, global_batch: 8, micro_batch: 2, warmup_steps: 2, grad_clip: 0.5}\n" +
		"checkpoint: {dir: " + filepath.Join(dir, "ck") + "}\n" + extra
	if err := os.WriteFile(spec, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	return spec, dir
}

// `loom verify` passes on every kind of layout — tp 2 and 4 (kv heads
// replicated), dp × tp with ZeRO 3 and sequence parallelism, dp with ZeRO
// 2 — each run by worker processes over real sockets beside one worker,
// 10 steps within 1e-5; and it fails, naming the first diverging step, on
// a deliberately broken layout (tp rank 1 decays its copy of a replicated
// norm weight: step 1 agrees, step 2 does not).
func TestVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	for _, layout := range []string{"{tp: 2}", "{tp: 4}", "{dp: 2, tp: 2, zero: 3, sequence_parallel: true}", "{dp: 2, zero: 2}"} {
		name := strings.NewReplacer("{", "", "}", "", ": ", "=", ", ", "/").Replace(layout)
		t.Run(name, func(t *testing.T) {
			spec, _ := tpFixture(t, "v", "parallel: "+layout+"\n")
			out, stderr, err := loom(t, "verify", spec, "--threads", "1")
			if err != nil {
				t.Fatalf("%v\n%s\n%s", err, out, stderr)
			}
			if !strings.Contains(out, "reproduces one worker over 10 steps") || strings.Count(out, "\n") < 12 {
				t.Fatalf("output:\n%s", out)
			}
		})
	}
	t.Run("broken", func(t *testing.T) {
		t.Setenv("LOOM_TEST_BROKEN_LAYOUT", "decay-norm") // inherited by the workers
		spec, _ := tpFixture(t, "v", "parallel: {tp: 2}\n")
		out, stderr, err := loom(t, "verify", spec, "--steps", "4", "--threads", "1")
		if err == nil || !strings.Contains(err.Error(), "diverges from one worker at step 2") {
			t.Fatalf("broken layout: err %v\n%s\n%s", err, out, stderr)
		}
		if !strings.Contains(out, "← first divergence") {
			t.Fatalf("table does not mark the step:\n%s", out)
		}
	})
}

// A checkpoint that worker processes saved at (dp 2, tp 2, ZeRO 1) resumes
// at (tp 4, ZeRO 0) — every rank reading the chunks it needs — within 1e-5
// of the uninterrupted run; `loom export` writes full tensors from the tp 4
// checkpoint and `loom eval` reads them.
func TestMultiWorkerTensorParallelResumeResharded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	spec, dir := tpFixture(t, "r", "parallel: {dp: 2, tp: 2, zero: 1}\n")
	src, _ := os.ReadFile(spec)
	os.WriteFile(spec, []byte(strings.Replace(strings.Replace(string(src), "steps: 10", "steps: 4", 1),
		"checkpoint: {dir: "+filepath.Join(dir, "ck")+"}", "checkpoint: {dir: "+filepath.Join(dir, "ck")+", every: 2}", 1)), 0o644)
	out, stderr, err := loom(t, "run", spec, "--log-format", "json", "--threads", "1", "--sample-tokens", "0")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	want := stepLossMap(t, out)
	jobDir := filepath.Join(dir, "ck", "r")
	src, _ = os.ReadFile(spec)
	tp4 := filepath.Join(dir, "r4.yaml")
	os.WriteFile(tp4, []byte(strings.Replace(string(src), "parallel: {dp: 2, tp: 2, zero: 1}", "parallel: {tp: 4}", 1)), 0o644)
	out, stderr, err = loom(t, "run", tp4, "--log-format", "json", "--threads", "1", "--sample-tokens", "0", "--resume", checkpoint.StepDir(jobDir, 2))
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	got := stepLossMap(t, out)
	if len(got) != 2 {
		t.Fatalf("resumed run reported %d steps:\n%s", len(got), out)
	}
	for step := 3; step <= 4; step++ {
		if rel := math.Abs(got[step]-want[step]) / want[step]; rel > 1e-5 {
			t.Errorf("step %d: resumed at tp 4 %.7f, uninterrupted %.7f (rel %.2g)", step, got[step], want[step], rel)
		}
	}
	hf := filepath.Join(dir, "hf")
	if _, stderr, err := loom(t, "export", "--model", checkpoint.StepDir(jobDir, 4), "--out", hf); err != nil {
		t.Fatalf("export: %v\n%s", err, stderr)
	}
	tokens := strings.TrimSuffix(strings.SplitN(strings.SplitN(string(src), "data: {path: ", 2)[1], "}", 2)[0], " ")
	if out, stderr, err := loom(t, "eval", "--model", hf, "--data", tokens, "--max-windows", "8"); err != nil || !strings.Contains(out, "loss") {
		t.Fatalf("eval of the export: %v\n%s\n%s", err, out, stderr)
	}
}
