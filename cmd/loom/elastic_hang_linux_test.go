package main

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/coordinator"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// TestHangInAllReduceNamedAndRecovered: rank 1 stops answering inside an
// all-reduce of step 5 (its process and its lease stay alive: it hangs,
// it does not die). Rank 0's all-reduce times out after
// elastic.step_timeout and names it — rank, address, operation, group and
// step — the generation ends, the hung rank's engine is cancelled, its
// worker rejoins, and the job finishes at the same size, its losses on
// the uninterrupted run's curve.
func TestHangInAllReduceNamedAndRecovered(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	const stepTimeout = 3 * time.Second
	path, src := elasticSpec(t, "hang", 2, 12, 4, "{max_restarts: 2, step_timeout: 3s, rendezvous_timeout: 20s}")
	want, _ := reference(t, path, 1)
	w := newElasticWorld(t, 2*time.Second, "LOOM_TEST_HANG=1:5")
	coord := w.coordinatorInProcess()
	w.worker(coord)
	w.worker(coord)
	w.waitRegistered(2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	final, err := w.follow(ctx, coord, src, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != loomv1.JobState_JOB_STATE_SUCCEEDED || final.Generation != 2 || final.Restarts != 1 {
		t.Fatalf("final status: %s gen %d restarts %d: %s", final.State, final.Generation, final.Restarts, final.Message)
	}
	var hungAt int64
	var hungAddr string
	re := regexp.MustCompile(`LOOM_TEST_HANG: rank 1 stops answering in an all-reduce of step 5 at=(\d+)`)
	w.mu.Lock()
	for _, p := range w.workers {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			hungAt, _ = strconv.ParseInt(m[1], 10, 64)
			hungAddr = registeredAddr(p.out.String())
		}
	}
	w.mu.Unlock()
	if hungAt == 0 {
		t.Fatal("rank 1 never hung")
	}
	f := final.Failures[0]
	t.Logf("generation 1 ended %v after rank 1 hung: %s", time.Duration(final.Recoveries[0].EndedUnixMs-hungAt)*time.Millisecond, coordinator.DescribeFailure(f))
	if f.Rank != 1 || f.Addr != hungAddr || f.Kind != "hang" || f.Op != "all-reduce" || f.Group != "dp.pp0.tp0" || f.Step != 5 {
		t.Errorf("failure %+v: want rank 1 at %s hung in all-reduce on group dp.pp0.tp0 at step 5", f, hungAddr)
	}
	for _, s := range []string{"hung rank 1 (" + hungAddr, "stopped answering in all-reduce on group dp.pp0.tp0 at step 5", "rank 0 ("} {
		if msg := coordinator.DescribeFailure(f); !strings.Contains(msg, s) {
			t.Errorf("failure %q lacks %q", msg, s)
		}
	}
	r := final.Recoveries[0]
	if r.Reason != "hang" || r.DpAfter != 2 || r.ResumeStep != 4 {
		t.Errorf("recovery %s", recoveryLine(r))
	}
	// Named within the step timeout (plus the leader's round): the peer's
	// all-reduce waits step_timeout for its next frame, then fails.
	if took := time.Duration(r.EndedUnixMs-hungAt) * time.Millisecond; took > stepTimeout+3*time.Second {
		t.Errorf("the hang ended the generation %v after it began; want within the step timeout (%v) and a round", took, stepTimeout)
	}
	same, _, n := w.compareLosses(want, map[uint64]int32{1: 2, 2: 2}, 2)
	if same > 1e-5 || n < 12 {
		t.Errorf("%d steps reported, losses within %.2g of the uninterrupted run; want ≥ 12 within 1e-5", n, same)
	}
}
