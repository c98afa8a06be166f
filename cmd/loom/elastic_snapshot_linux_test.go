package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// TestElasticResumesFromMemorySnapshot: a dp 3 job with in-memory
// snapshots every 2 steps and no disk checkpoint within its steps (every
// 100) loses a worker mid-step (kill -9). Its rank's part survives on its
// dp neighbour, so the restart at dp 2 gathers the snapshot from the
// surviving workers' memory (fetched over their Snapshot service,
// verified), resharded 3 → 2, loses at most 2 steps, reads no checkpoint
// from disk, and finishes on the uninterrupted run's curve.
func TestElasticResumesFromMemorySnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	path, src := elasticSpec(t, "snap", 3, 16, 100,
		"{min_dp: 2, max_dp: 3, max_restarts: 2, step_timeout: 30s, rendezvous_timeout: 20s, snapshot_every: 2}")
	want, _ := reference(t, path, 1)
	// Slow steps (200 ms) against a snapshot's push (milliseconds): a kill
	// finds the newest snapshot complete unless it lands within the push.
	w := newElasticWorld(t, 2*time.Second, "LOOM_TEST_SLOW_RANK=0:200ms")
	coord := w.coordinatorInProcess()
	for range 3 {
		w.worker(coord)
	}
	w.waitRegistered(3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	killed := false
	var victim *loomProc
	final, err := w.follow(ctx, coord, src, -1, func(ev *loomv1.JobEvent) {
		if p := ev.GetProgress(); p != nil && !killed && p.Generation == 1 && p.Steps[len(p.Steps)-1].Step >= 7 {
			killed = true
			// Rank 2: its part's copy is on rank 0's worker ((2+1) mod 3).
			if pr := w.workerAt(w.statuses[len(w.statuses)-1].Ranks[2].Addr); pr != nil {
				victim = pr
				_ = pr.cmd.Process.Kill()
			}
		}
	})
	if err != nil {
		w.dump()
		t.Fatal(err)
	}
	if victim == nil {
		t.Fatal("no worker was killed")
	}
	if final.State != loomv1.JobState_JOB_STATE_SUCCEEDED || final.Generation != 2 || final.Dp != 2 {
		w.dump()
		t.Fatalf("final: %s gen %d dp %d: %s", final.State, final.Generation, final.Dp, final.Message)
	}
	r := final.Recoveries[0]
	t.Logf("recovery: %s (from %s)", recoveryLine(r), r.ResumeSource)
	if r.ResumeSource != "memory" || r.ResumeStep < 2 || r.ResumeStep%2 != 0 || r.LostSteps > 2 || r.DpBefore != 3 || r.DpAfter != 2 {
		w.dump()
		t.Fatalf("recovery from %q step %d, %d steps lost, dp %d → %d; want memory, ≤ 2 steps lost (snapshot_every 2), dp 3 → 2",
			r.ResumeSource, r.ResumeStep, r.LostSteps, r.DpBefore, r.DpAfter)
	}
	// `loom status` says where the resume came from.
	out, _, err := loom(t, "status", "snap", "--coordinator", coord)
	if err != nil {
		t.Fatal(err)
	}
	flat := strings.Join(strings.Fields(out), " ")
	if want := "1→2 worker_lost 3→2 " + strconv.FormatInt(r.LastStep, 10) + " memory step " + strconv.FormatInt(r.ResumeStep, 10) + " " +
		strconv.FormatInt(r.LostSteps, 10) + " "; !strings.Contains(flat, want) {
		t.Errorf("loom status lacks %q:\n%s", want, out)
	}
	// Every rank of generation 2 gathered the snapshot into its store and
	// restored it from there: nothing came from the checkpoint directory,
	// which holds no step directory at all.
	restored := regexp.MustCompile(`rank (\d+): resumed from (\S+) \(step (\d+)`)
	n := 0
	for _, p := range w.workers {
		if p == victim {
			continue
		}
		out := p.out.String()
		for _, m := range restored.FindAllStringSubmatch(out, -1) {
			n++
			if !strings.Contains(m[2], "loom-snapshots-") || m[3] != strconv.FormatInt(r.ResumeStep, 10) {
				t.Errorf("rank %s restored %s (step %s); want the in-memory snapshot of step %d", m[1], m[2], m[3], r.ResumeStep)
			}
		}
		if strings.Count(out, "worker: gathered the in-memory snapshot") != strings.Count(out, "resumed from") {
			t.Errorf("%s: a rank resumed without gathering the snapshot", p.name)
		}
	}
	if n != 2 {
		t.Errorf("%d ranks logged a restore; want the 2 of generation 2", n)
	}
	ck := filepath.Join(filepath.Dir(path), "ck", "snap")
	if steps, _ := filepath.Glob(filepath.Join(ck, "step-*")); len(steps) != 0 {
		t.Errorf("disk checkpoints written (checkpoint.every 100): %v", steps)
	}
	same, other, m := w.compareLosses(want, map[uint64]int32{1: 3, 2: 2}, 1)
	t.Logf("%d steps: max relative difference from the uninterrupted dp 1 run %.2g (dp 3 and 2)", m, max(same, other))
	if same > 1e-5 || other > 1e-5 {
		t.Errorf("losses off the uninterrupted curve: %.2g, %.2g", same, other)
	}
	// A stopped worker removes its store; the killed one's stays until
	// the next worker on the host starts (the test removes it).
	w.close()
	left, _ := filepath.Glob(filepath.Join(os.TempDir(), "loom-snapshots-*"))
	shm, _ := filepath.Glob("/dev/shm/loom-snapshots-*")
	for _, d := range append(left, shm...) {
		pid := pidOfStore(d)
		if pid == victim.cmd.Process.Pid {
			os.RemoveAll(d)
			continue
		}
		for _, p := range w.workers {
			if p != victim && pid == p.cmd.Process.Pid {
				t.Errorf("%s left its snapshot store %s", p.name, d)
			}
		}
	}
}

// pidOfStore is the pid in a snapshot store's name
// (loom-snapshots-PID-RANDOM), or -1.
func pidOfStore(dir string) int {
	f := strings.Split(filepath.Base(dir), "-")
	if len(f) != 4 {
		return -1
	}
	pid, err := strconv.Atoi(f[2])
	if err != nil {
		return -1
	}
	return pid
}
