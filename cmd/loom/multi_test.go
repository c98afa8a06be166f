package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
)

// TestMain lets the test binary act as the loom binary: launch.Local starts
// worker processes by re-executing it with LOOM_TEST_MAIN=1.
func TestMain(m *testing.M) {
	if os.Getenv("LOOM_TEST_MAIN") == "1" {
		var env = &cmdEnv{stdout: os.Stdout, stderr: os.Stderr}
		// Signals end the command as they do in main.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := dispatch(ctx, env, os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "loom: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Setenv("LOOM_TEST_MAIN", "1") // inherited by the workers launch.Local starts
	os.Exit(m.Run())
}

// stepLosses parses the per-step JSON lines of `loom run --log-format json`.
func stepLosses(t *testing.T, out string) []float64 {
	t.Helper()
	var losses []float64
	for _, line := range strings.Split(out, "\n") {
		var rec struct {
			Step *int    `json:"step"`
			Loss float64 `json:"loss"`
		}
		if line == "" || json.Unmarshal([]byte(line), &rec) != nil || rec.Step == nil {
			continue
		}
		if *rec.Step != len(losses)+1 {
			t.Fatalf("step %d out of order in:\n%s", *rec.Step, out)
		}
		losses = append(losses, rec.Loss)
	}
	return losses
}

// dp=2 and dp=4 worker processes, rendezvoused through an embedded etcd and
// a coordinator and exchanging gradients over gRPC, reproduce the dp=1 loss
// trajectory for the same global batch.
func TestMultiWorkerMatchesSingleWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	base, _ := fixture(t, "")
	src, _ := os.ReadFile(base)
	steps := 10
	spec := func(dp int) string {
		s := strings.Replace(string(src), "train: {steps: 6, global_batch: 4, micro_batch: 2,",
			fmt.Sprintf("train: {steps: %d, global_batch: 8, micro_batch: %d, grad_clip: 0.5, eval_every: 5,", steps, 8/dp/2), 1)
		s = strings.Replace(s, ".bin}\n", ".bin, validation: {fraction: 0.1}}\n", 1)
		s = strings.Replace(s, "name: t\n", fmt.Sprintf("name: dp%d\nparallel: {dp: %d}\n", dp, dp), 1)
		p := strings.TrimSuffix(base, ".yaml") + fmt.Sprintf("-dp%d.yaml", dp)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	out, _, err := loom(t, "run", spec(1), "--log-format", "json", "--threads", "1")
	if err != nil {
		t.Fatal(err)
	}
	want := stepLosses(t, out)
	wantVal := valLosses(t, out)
	if len(wantVal) != 2 {
		t.Fatalf("dp=1: validation after steps 5 and 10 expected:\n%s", out)
	}
	if len(want) != steps {
		t.Fatalf("dp=1: %d steps:\n%s", len(want), out)
	}
	for _, dp := range []int{2, 4} {
		t.Run(fmt.Sprintf("dp=%d", dp), func(t *testing.T) {
			out, stderr, err := loom(t, "run", spec(dp), "--log-format", "json", "--threads", "1")
			if err != nil {
				t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
			}
			// Everything but the JSON objects belongs on stderr.
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				var obj map[string]any
				if err := json.Unmarshal([]byte(line), &obj); err != nil {
					t.Errorf("--log-format json: stdout line is not a JSON object: %q", line)
				}
			}
			got := stepLosses(t, out)
			if len(got) != steps {
				t.Fatalf("%d steps reported:\n%s", len(got), out)
			}
			for i := range want {
				if rel := math.Abs(got[i]-want[i]) / want[i]; rel > 1e-5 {
					t.Errorf("step %d: dp=%d loss %.7f, dp=1 %.7f (rel %.2g)", i+1, dp, got[i], want[i], rel)
				}
			}
			gotVal := valLosses(t, out)
			for i := range wantVal {
				if i >= len(gotVal) || math.Abs(gotVal[i]-wantVal[i]) > 1e-5*wantVal[i] {
					t.Errorf("validation %d: dp=%d %v, dp=1 %v", i, dp, gotVal, wantVal)
					break
				}
			}
		})
	}
}

// valLosses returns the val_loss of every JSON step line that has one.
func valLosses(t *testing.T, out string) []float64 {
	t.Helper()
	var v []float64
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec struct {
			ValLoss float64 `json:"val_loss"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.ValLoss > 0 {
			v = append(v, rec.ValLoss)
		}
	}
	return v
}
