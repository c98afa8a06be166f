package worker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/parallel/inproc"
)

func watchSpec(t *testing.T) api.JobSpec {
	t.Helper()
	s, err := api.ParseSpec([]byte(`train: {steps: 10, eval_every: 5}
data: {path: a, validation: {fraction: 0.1}}
checkpoint: {every: 4}
elastic: {setup_timeout: 20s, step_timeout: 2s, checkpoint_timeout: 8s}
`), "w.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRankWatchPhases: each phase is bounded by its own timeout, from the
// right moment, and the verdict names the rank, the phase, the step and
// what it had in flight.
func TestRankWatchPhases(t *testing.T) {
	t0 := time.Unix(1_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ops := NewOpTracker(nil)
	rw := newRankWatch(2, "10.0.0.3:7000", watchSpec(t), ops, t0)

	// Setup: 20 s from the assignment; the step in flight is the one after
	// the restored checkpoint.
	rw.resumed(4)
	if h := rw.check(at(20 * time.Second)); h != nil {
		t.Fatalf("setup within its timeout: %v", h)
	}
	h := rw.check(at(21 * time.Second))
	if h == nil || h.Phase != PhaseSetup || h.Step != 5 || h.Timeout != "elastic.setup_timeout" {
		t.Fatalf("setup past its timeout: %+v", h)
	}
	if want := "rank 2 (10.0.0.3:7000) made no progress for 21s during setup"; !strings.HasPrefix(h.Error(), want) {
		t.Errorf("error %q, want prefix %q", h.Error(), want)
	}

	// Step: step_timeout plus a grace (the waiting peers name a stuck rank
	// first), twice that before a validation pass.
	rw.stepped(5, at(21*time.Second))
	if h := rw.check(at(24 * time.Second)); h != nil { // 3 s = 2 s + 1 s grace
		t.Fatalf("step 6 within its timeout: %v", h)
	}
	id := ops.begin("all-reduce", "dp")
	h = rw.check(at(24*time.Second + time.Millisecond))
	if h == nil || h.Phase != PhaseStep || h.Step != 6 || h.Op != "all-reduce" || h.Group != "dp" {
		t.Fatalf("step 6 past its timeout: %+v", h)
	}
	if !strings.Contains(h.Error(), "in step 6 (elastic.step_timeout): in all-reduce on group dp for") {
		t.Errorf("error %q", h.Error())
	}
	ops.end(id, "dp", nil)
	for s := 6; s <= 9; s++ {
		rw.stepped(s, at(30*time.Second))
	}
	if h := rw.check(at(34 * time.Second)); h != nil { // step 10 validates: 2 s more
		t.Fatalf("step 10 (with validation) within its timeout: %v", h)
	}

	// Checkpoint: step 8's write (snapshotted at its report) has 8 s to be
	// reported durable; step 4's was reported before its step (early).
	if h := rw.check(at(38*time.Second + time.Millisecond)); h == nil || h.Phase != PhaseCheckpoint || h.Step != 8 {
		t.Fatalf("checkpoint 8 not durable after 8 s: %+v", h)
	}
	rw.checkpointed(8)
	if h := rw.check(at(34 * time.Second)); h != nil {
		t.Fatalf("after checkpoint 8 is durable: %v", h)
	}
	rw.checkpointed(12)
	rw.stepped(12, at(35*time.Second)) // reported durable before its step report: nothing pending
	if len(rw.pending) != 0 {
		t.Errorf("pending %v", rw.pending)
	}

	// Final: after the last step, the final model has checkpoint_timeout.
	rw = newRankWatch(0, "a:1", watchSpec(t), nil, t0)
	rw.stepped(10, at(time.Second))
	rw.checkpointed(8)
	if phase, step := rw.where(); phase != PhaseFinal || step != 10 {
		t.Errorf("where after the last step: %s %d", phase, step)
	}
	if h := rw.check(at(9*time.Second + time.Millisecond)); h == nil || h.Phase != PhaseFinal || h.Timeout != "elastic.checkpoint_timeout" {
		t.Fatalf("final save past its timeout: %+v", h)
	}
}

// TestOpTrackerNamesInFlightAndPeerGroup: a tracked group records its
// calls while they block and the group of the first peer failure.
func TestOpTrackerNamesInFlightAndPeerGroup(t *testing.T) {
	told := make(chan string, 2)
	ops := NewOpTracker(func(group string, err error) { told <- group + ": " + err.Error() })
	comms := inproc.New("dp", 2)
	c0, c1 := ops.Wrap("dp", comms[0]), comms[1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c0.AllReduce(ctx, make([]float32, 4), parallel.Sum) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if op, group, _, ok := ops.InFlight(); ok {
			if op != "all-reduce" || group != "dp" {
				t.Fatalf("in flight: %s on %s", op, group)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the blocked all-reduce is not in flight")
		}
		time.Sleep(time.Millisecond)
	}
	if err := c1.AllReduce(ctx, make([]float32, 4), parallel.Sum); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := ops.InFlight(); ok {
		t.Error("a finished call is still in flight")
	}
	ops.end(ops.begin("send", "pp"), "pp", &parallel.PeerError{Rank: 1, Addr: "a", Op: "send", Err: parallel.ErrPeerGone})
	ops.end(ops.begin("all-reduce", "dp"), "dp", errors.Join(errors.New("x"), &parallel.PeerError{Rank: 1, Op: "all-reduce", Err: parallel.ErrPeerTimeout}))
	if g := ops.PeerGroup(); g != "pp" {
		t.Errorf("peer group %q, want the first: pp", g)
	}
	if got := <-told; got != "pp: send: peer rank 1 (a): connection to peer lost" {
		t.Errorf("told %q", got)
	}
	select {
	case got := <-told:
		t.Errorf("told twice: %q", got)
	case <-time.After(50 * time.Millisecond):
	}
	var nilOps *OpTracker
	if nilOps.Wrap("dp", comms[0]) != parallel.Comm(comms[0]) {
		t.Error("a nil tracker wraps")
	}
}
