package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/timeline"
)

// `loom verify` passes on pipelined layouts run by worker processes over
// real sockets beside one worker, 10 steps within 1e-5: dp 2 × pp 2 with
// ZeRO 1, 2 and 3 (1F1B, ZB-H1), tp 2 × pp 2, and dp 2 × tp 2 × pp 2 (8
// worker processes with every tensor on the gRPC Peer streams, tied
// embeddings, interleaved over 4 virtual stages).
func TestVerifyPipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	for _, layout := range []string{
		"{dp: 2, pp: 2, zero: 1}",
		"{dp: 2, pp: 2, zero: 2, schedule: zb-h1}",
		"{dp: 2, pp: 2, zero: 3}",
		"{tp: 2, pp: 2, schedule: gpipe}",
		"{dp: 2, tp: 2, pp: 2, zero: 1, schedule: interleaved-1f1b, virtual_stages: 2, transport: grpc}",
	} {
		name := strings.NewReplacer("{", "", "}", "", ": ", "=", ", ", "/").Replace(layout)
		t.Run(name, func(t *testing.T) {
			spec, _ := tpFixture(t, "v", "parallel: "+layout+"\n")
			src, _ := os.ReadFile(spec)
			y := strings.Replace(string(src), "n_layers: 2", "n_layers: 4", 1)
			if strings.Contains(layout, "interleaved") {
				y = strings.Replace(y, "seq_len: 9, vocab_size: 259}", "seq_len: 9, vocab_size: 259, tie_embeddings: true}", 1)
				y = strings.Replace(y, "micro_batch: 2", "micro_batch: 1", 1)
			}
			os.WriteFile(spec, []byte(y), 0o644)
			out, stderr, err := loom(t, "verify", spec, "--threads", "1")
			if err != nil {
				t.Fatalf("%v\n%s\n%s", err, out, stderr)
			}
			if !strings.Contains(out, "reproduces one worker over 10 steps") || !strings.Contains(out, "pp 2") {
				t.Fatalf("output:\n%s", out)
			}
		})
	}
}

// `loom run` of a pipelined job (two worker processes) saves every rank's
// last step as a Chrome trace and merges them into timeline.json, whose
// measured bubble is a fraction of the step; `loom schedule --timeline`
// sets it beside the simulator's prediction for the measured passes.
func TestRunPipelineTimeline(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	spec, dir := tpFixture(t, "tl", "parallel: {pp: 2, schedule: zb-h1}\n")
	src, _ := os.ReadFile(spec)
	os.WriteFile(spec, []byte(strings.Replace(strings.Replace(string(src), "steps: 10", "steps: 2", 1), "micro_batch: 2", "micro_batch: 1", 1)), 0o644)
	_, stderr, err := loom(t, "run", spec, "--log-format", "json", "--threads", "1", "--sample-tokens", "0")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	path := filepath.Join(dir, "ck", "tl", "timeline.json")
	if !strings.Contains(stderr, path) {
		t.Fatalf("the run does not name %s:\n%s", path, stderr)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := timeline.Analyze(b)
	if err != nil {
		t.Fatal(err)
	}
	if st.Ranks != 2 || !(st.Bubble > 0 && st.Bubble < 1) || len(st.Mean["W"]) != 2 {
		t.Fatalf("trace stats %+v", st)
	}
	for _, want := range []string{`"1RECV_F7"`, `"0W7"`, `"rank 1 (dp 0, tp 0, pp 1) step 2"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("timeline lacks %s", want)
		}
	}
	out, _, err := loom(t, "schedule", spec, "--timeline", path)
	if err != nil || !strings.Contains(out, "the mean passes measured in "+path) || !strings.Contains(out, "measured bubble") {
		t.Fatalf("schedule --timeline: %v\n%s", err, out)
	}
}

// `loom schedule` prints the grid, the simulated chart and the figures
// for a shape given by flags or by a job, as text or JSON, and refuses
// shapes that have no schedule, naming the flag.
func TestScheduleCommand(t *testing.T) {
	out, _, err := loom(t, "schedule", "--pp", "4", "--micro-batches", "8", "--schedule", "interleaved-1f1b", "--virtual-stages", "2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"interleaved-1f1b: 4 ranks × 2 stage(s) each, 8 micro-batches; no deadlock", "rank 3    3RECV_F0", "4SEND_F0", "predicted bubble 15.8%", "peak in flight"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = loom(t, "schedule", "--pp", "2", "--micro-batches", "8", "--schedule", "zb-h1", "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var js struct {
		Bubble float64
		Ranks  []struct {
			Actions      []string
			PeakInFlight int `json:"peak_in_flight"`
		}
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || len(js.Ranks) != 2 || js.Ranks[1].Actions[0] != "1RECV_F0" || js.Ranks[0].PeakInFlight != 2 || js.Bubble <= 0 {
		t.Fatalf("json %+v (%v):\n%s", js, err, out)
	}
	spec, _ := tpFixture(t, "s", "parallel: {pp: 2}\n")
	out, _, err = loom(t, "schedule", spec)
	if err != nil || !strings.Contains(out, "1f1b: 2 ranks × 1 stage(s) each, 4 micro-batches") || !strings.Contains(out, "estimated FLOPs") {
		t.Fatalf("from a job: %v\n%s", err, out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--schedule", "1f1b", "--virtual-stages", "2"}, "only interleaved-1f1b"},
		{[]string{"--schedule", "dualpipe"}, `parallel.schedule "dualpipe"`},
		{[]string{"--pp", "4", "--micro-batches", "9", "--schedule", "interleaved-1f1b", "--virtual-stages", "2"}, "use 8 or 10"},
		{[]string{"--cost-b", "-1"}, "--cost-b -1"},
	} {
		if _, _, err := loom(t, append([]string{"schedule"}, c.args...)...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("schedule %v: %v, want %q", c.args, err, c.want)
		}
	}
}

// `loom plan` lists pipelined layouts with their bubble, and
// --show-ranks prints the stages.
func TestPlanPipeline(t *testing.T) {
	spec, _ := tpFixture(t, "p", "parallel: {pp: 2}\n")
	out, _, err := loom(t, "plan", spec, "--memory-per-worker", "1GiB", "--show-ranks")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"  pp  ", "bubble", "pipeline: 1f1b schedule, 2 stage(s) on 2 pipeline rank(s)", "stage 1 on pipeline rank 1: blocks [1,2)", "pp.dp0.tp0"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
