package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// TestCoordinatorKilledMidRunNoRestart: the leader coordinator (a `loom
// coordinator` process) is killed with SIGKILL mid-run; the standby takes
// over once the leader's election lease expires, and the running
// generation goes on: no restart, no step trained twice or lost, every
// rank's reports reach the new leader (the workers find it by
// themselves), and the checkpoints reported meanwhile are committed.
func TestCoordinatorKilledMidRunNoRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts coordinator and worker processes")
	}
	const steps = 30
	path, src := elasticSpec(t, "fo", 2, steps, 4, "{max_restarts: 2}")
	want, _ := reference(t, path, 1)
	w := newElasticWorld(t, 2*time.Second, "LOOM_TEST_SLOW_RANK=0:100ms")
	first := w.coordinatorProcess()
	dctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		c, err := api.Dial(dctx, first.addr)
		if err == nil {
			info, ierr := c.Info(dctx)
			c.Close()
			if ierr == nil && info.Leader {
				break
			}
		}
		if dctx.Err() != nil {
			t.Fatal("the first coordinator never led")
		}
		time.Sleep(20 * time.Millisecond)
	}
	standby := w.coordinatorProcess()
	coords := first.addr + "," + standby.addr
	w.worker(coords)
	w.worker(coords)
	w.waitRegistered(2)

	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	var killedAt time.Time
	final, err := w.follow(ctx, coords, src, -1, func(ev *loomv1.JobEvent) {
		if p := ev.GetProgress(); p != nil && killedAt.IsZero() && p.Steps[len(p.Steps)-1].Step >= 6 {
			killedAt = time.Now()
			_ = first.cmd.Process.Kill()
		}
	})
	if err != nil {
		t.Fatalf("follow through the takeover: %v", err)
	}
	t.Logf("leader killed with SIGKILL at %v; job %s after %v: %s", killedAt.Format("15:04:05.000"), final.State, time.Since(killedAt).Round(time.Millisecond), final.Message)
	if final.State != loomv1.JobState_JOB_STATE_SUCCEEDED || final.Generation != 1 || final.Restarts != 0 || len(final.Recoveries) != 0 {
		t.Fatalf("after the takeover: %s gen %d restarts %d recoveries %v", final.State, final.Generation, final.Restarts, final.Recoveries)
	}
	// The new leader has every rank's last step.
	c, err := api.Dial(ctx, standby.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	j, err := c.Get(ctx, "fo")
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Latest) != 2 || j.Latest[0].Steps[0].Step != steps || j.Latest[1].Steps[0].Step != steps {
		t.Errorf("the new leader's latest steps: %v, want step %d of both ranks", j.Latest, steps)
	}
	// Each rank trained every step once, in one generation.
	w.mu.Lock()
	for _, p := range w.workers {
		out := p.out.String()
		if n := strings.Count(out, "worker: training"); n != 1 {
			t.Errorf("%s started %d generations, want 1", p.name, n)
		}
		if !strings.Contains(out, ": 30 steps, mean step") {
			t.Errorf("%s's rank did not train 30 steps in its generation:\n%s", p.name, out)
		}
	}
	w.mu.Unlock()
	same, _, n := w.compareLosses(want, map[uint64]int32{1: 2}, 2)
	if same > 1e-5 {
		t.Errorf("losses of %d steps within %.2g of the uninterrupted run, want 1e-5", n, same)
	}
	// Checkpoints reported while no coordinator led were committed by the
	// new leader: every step is complete.
	infos, err := checkpoint.List(filepath.Join(filepath.Dir(path), "ck", "fo"), true)
	if err != nil {
		t.Fatal(err)
	}
	var complete int
	for _, in := range infos {
		if in.Err == nil {
			complete++
		}
	}
	if complete != steps/4 {
		t.Errorf("%d complete checkpoints, want %d: %v", complete, steps/4, infos)
	}
}
