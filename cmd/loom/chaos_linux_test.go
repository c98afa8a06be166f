package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

var (
	chaos      = flag.Bool("chaos", false, "run the chaos test (make chaos): a dp 4 job of the tiny model, workers killed with SIGKILL at random moments and replaced")
	chaosSeed  = flag.Int64("chaos.seed", 0, "the chaos run's seed (0: the time)")
	chaosSteps = flag.Int("chaos.steps", 300, "the chaos job's steps")
	chaosKills = flag.Int("chaos.kills", 5, "how many workers the chaos run kills")
)

// chaosKill is one kill and what followed it.
type chaosKill struct {
	at       time.Time
	gen      uint64
	rank     int32
	step     int64 // rank 0's last reported step at the kill
	duringCk bool  // the kill fell while a checkpoint was being written
	rec      *loomv1.Recovery
}

// TestChaos (make chaos): a dp 4 elastic job of the tiny model (a few
// hundred steps, checkpoints every 10, each save slowed to half a second
// so that kills land in them) loses a random worker to SIGKILL five times
// at random steps (each kill within its share of the steps left, so all
// five land however fast the machine is), two of them during a save; each
// is replaced after a random delay. The job must end SUCCEEDED having lost at most one
// checkpoint interval (plus the save in flight) per kill, leave no
// process or port behind, and end with the model a run resumed by hand
// from the same checkpoint produces. It reports each recovery's parts:
// detection (kill → the leader ending the generation), rendezvous, setup
// with the checkpoint load, first step.
func TestChaos(t *testing.T) {
	if !*chaos {
		t.Skip("the chaos run: make chaos (go test ./cmd/loom -run TestChaos -chaos -v)")
	}
	seed := *chaosSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	r := rand.New(rand.NewSource(seed))
	t.Logf("chaos seed %d (replay: -chaos.seed %d)", seed, seed)
	steps, every := *chaosSteps, 10

	// The tiny model (DefaultSpec's) on a corpus of Go-like text.
	dir := t.TempDir()
	var corpus strings.Builder
	for i := 0; corpus.Len() < 400_000; i++ {
		fmt.Fprintf(&corpus, "func f%d(xs []int) (sum int) {\n\tfor i, x := range xs {\n\t\tsum += x * %d\n\t}\n\treturn sum\n}\n", i, i%97)
	}
	src := filepath.Join(dir, "corpus.txt")
	if err := os.WriteFile(src, []byte(corpus.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tok.bin")
	if _, _, err := loom(t, "prep", src, "--out", tokens, "--quiet"); err != nil {
		t.Fatal(err)
	}
	ckDir := filepath.Join(dir, "ck")
	spec := fmt.Sprintf(`name: chaos
data: {path: %s}
parallel: {dp: 4}
train: {steps: %d, global_batch: 12, micro_batch: 1, warmup_steps: 10}
checkpoint: {dir: %s, every: %d, keep: 1000}
elastic: {min_dp: 2, max_dp: 4, max_restarts: 20, step_timeout: 30s, rendezvous_timeout: 10s}
`, tokens, steps, ckDir, every)
	specPath := filepath.Join(dir, "chaos.yaml")
	if err := os.WriteFile(specPath, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}

	w := newElasticWorld(t, 2*time.Second, "LOOM_TEST_SLOW_SAVE=500ms")
	coord := w.coordinatorInProcess()
	for range 4 {
		w.worker(coord)
	}
	w.waitRegistered(4)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	var mu sync.Mutex
	var cur *loomv1.JobStatus
	var ckStep int64 // the job's latest committed checkpoint, from Get
	var kills []*chaosKill
	var replacements sync.WaitGroup
	driverDone := make(chan error, 1)
	jobDone := make(chan struct{})
	current := func() *loomv1.JobStatus {
		mu.Lock()
		defer mu.Unlock()
		return cur
	}
	// wait polls cond until it holds; false when the job has ended first.
	wait := func(cond func() bool) bool {
		for !cond() {
			select {
			case <-jobDone:
				return false
			case <-time.After(5 * time.Millisecond):
			}
		}
		return true
	}
	go func() {
		driverDone <- func() error {
			duringSave := map[int]bool{1: true, 3: true} // kills 2 and 4 land in saves
			for k := 0; k < *chaosKills; k++ {
				// Wait for the current generation to train, then a random
				// number of steps.
				if !wait(func() bool {
					st := current()
					return st != nil && st.State == loomv1.JobState_JOB_STATE_RUNNING && w.lastStep(st.Generation) > 0
				}) {
					return nil
				}
				// A random step of this kill's share of the steps left, so
				// every kill lands before the job ends on a fast machine as on
				// a slow one (a kill costs at most a checkpoint interval and
				// the save in flight; the last 2 intervals stay free).
				st := current()
				from := w.lastStep(st.Generation)
				room := int64(steps) - from - int64(2*every)
				target := from + 1 + r.Int63n(max(1, room/int64(*chaosKills-k)))
				if !wait(func() bool {
					return current().Generation != st.Generation || w.lastStep(st.Generation) >= target
				}) {
					return nil
				}
				if duringSave[k] {
					// Kill just after rank 0 reports a checkpoint step: the
					// save of that step (half a second) is in flight.
					at := w.lastStep(st.Generation)
					if !wait(func() bool {
						s := w.lastStep(st.Generation)
						return current().Generation != st.Generation || s != at && s%int64(every) == 0
					}) {
						return nil
					}
				}
				if now := current(); now.Generation != st.Generation || now.State != loomv1.JobState_JOB_STATE_RUNNING {
					k-- // the generation changed meanwhile: try again
					continue
				}
				rank := st.Ranks[r.Intn(len(st.Ranks))]
				p := w.workerAt(rank.Addr)
				if p == nil || p.exited() {
					k--
					continue
				}
				kl := &chaosKill{at: time.Now(), gen: st.Generation, rank: rank.Rank, step: w.lastStep(st.Generation)}
				_ = p.cmd.Process.Kill()
				mu.Lock()
				kl.duringCk = kl.step-kl.step%int64(every) > ckStep
				kills = append(kills, kl)
				mu.Unlock()
				t.Logf("kill %d: SIGKILL %s (rank %d of generation %d) after step %d (latest checkpoint %d)%s",
					k+1, p.name, rank.Rank, st.Generation, kl.step, ckStep, map[bool]string{true: ", during a save", false: ""}[kl.duringCk])
				delay := time.Duration(500+r.Intn(4500)) * time.Millisecond
				replacements.Add(1)
				go func() {
					defer replacements.Done()
					select {
					case <-jobDone:
					case <-time.After(delay):
						w.worker(coord)
					}
				}()
				// The next kill waits for this generation to end.
				if !wait(func() bool { return current().Generation > st.Generation }) {
					return nil
				}
			}
			return nil
		}()
	}()
	// The latest checkpoint, polled (it is not in the stream).
	go func() {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := api.Dial(dctx, coord)
		dcancel()
		if err != nil {
			return
		}
		defer c.Close()
		for ctx.Err() == nil {
			gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
			j, err := c.Get(gctx, "chaos")
			gcancel()
			if err == nil && j.Checkpoint != nil {
				mu.Lock()
				ckStep = j.Checkpoint.Step
				mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	start := time.Now()
	final, err := w.follow(ctx, coord, []byte(spec), -1, func(ev *loomv1.JobEvent) {
		if s := ev.GetStatus(); s != nil {
			mu.Lock()
			cur = s
			mu.Unlock()
		}
	})
	close(jobDone)
	if err != nil {
		t.Fatal(err)
	}
	if derr := <-driverDone; derr != nil {
		t.Fatalf("driver: %v", derr)
	}
	cancel()
	replacements.Wait()
	took := time.Since(start)
	if final.State != loomv1.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("final: %s: %s", final.State, final.Message)
	}
	if len(kills) != *chaosKills {
		t.Fatalf("%d kills happened before the job finished, want %d: raise -chaos.steps", len(kills), *chaosKills)
	}

	// Each kill's recovery: the first one ending the generation it hit.
	var lines []string
	var detect, rendezvous, setup, load, first, total []time.Duration
	maxLost := int64(0)
	saves := 0
	for i, k := range kills {
		for _, rec := range final.Recoveries {
			if rec.Generation == k.gen && rec.Reason != "grow" {
				k.rec = rec
			}
		}
		if k.rec == nil {
			t.Errorf("kill %d (generation %d) has no recovery: %v", i+1, k.gen, final.Recoveries)
			continue
		}
		rec := k.rec
		if k.duringCk {
			saves++
		}
		d := func(a, b int64) time.Duration { return time.Duration(b-a) * time.Millisecond }
		detect = append(detect, time.UnixMilli(rec.EndedUnixMs).Sub(k.at))
		rendezvous = append(rendezvous, d(rec.EndedUnixMs, rec.AssignedUnixMs))
		setup = append(setup, time.Duration(rec.SetupSeconds*float64(time.Second)))
		load = append(load, time.Duration(rec.LoadSeconds*float64(time.Second)))
		first = append(first, d(rec.AssignedUnixMs, rec.ResumedUnixMs))
		total = append(total, time.UnixMilli(rec.ResumedUnixMs).Sub(k.at))
		maxLost = max(maxLost, rec.LostSteps)
		lines = append(lines, fmt.Sprintf("kill %d: gen %d rank %d at step %d%s: detected %v, rendezvous %v, setup %v (load %v), assignment → first step %v; kill → first step %v; dp %d → %d, resumed from %d, %d steps lost",
			i+1, k.gen, k.rank, k.step, map[bool]string{true: " (during a save)", false: ""}[k.duringCk],
			detect[i].Round(time.Millisecond), rendezvous[i], setup[i].Round(time.Millisecond), load[i].Round(time.Millisecond),
			first[i], total[i].Round(time.Millisecond), rec.DpBefore, rec.DpAfter, rec.ResumeStep, rec.LostSteps))
	}
	pct := func(name string, ds []time.Duration) string {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
		if len(s) == 0 {
			return name + ": -"
		}
		return fmt.Sprintf("%s p50 %v max %v", name, s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
	}
	grows := 0
	for _, rec := range final.Recoveries {
		if rec.Reason == "grow" {
			grows++
		}
	}
	report := fmt.Sprintf("chaos: seed %d, %d steps of the tiny model at dp 4 (min 2), checkpoints every %d (saves slowed to 500ms), lease TTL 2s: SUCCEEDED in %v after %d kills (%d during saves), %d restarts, %d resizes back up\n  %s\n  %s; %s; %s; %s; %s; %s\n  steps lost per kill: max %d (checkpoint interval %d)\n",
		seed, steps, every, took.Round(time.Second), len(kills), saves, final.Restarts, grows, strings.Join(lines, "\n  "),
		pct("detection", detect), pct("rendezvous", rendezvous), pct("setup", setup), pct("load", load), pct("assignment → first step", first),
		pct("kill → first step", total), maxLost, every)
	t.Log("\n" + report)
	if out := os.Getenv("LOOM_CHAOS_REPORT"); out != "" {
		if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
			t.Error(err)
		}
	}
	if saves < 1 {
		t.Errorf("no kill fell during a save")
	}
	// At most one checkpoint interval lost per kill, plus the steps taken
	// while the save in flight at the kill was being written (it did not
	// complete): 500 ms at this step time is a few steps.
	if maxLost > int64(every)+5 {
		t.Errorf("a kill lost %d steps; want ≤ %d (one checkpoint interval) + the save in flight", maxLost, every)
	}

	// The final model equals a run resumed by hand from the checkpoint the
	// last generation resumed from, at its dp size.
	last := final.Recoveries[len(final.Recoveries)-1]
	from := checkpoint.StepDir(filepath.Join(ckDir, "chaos"), int(last.ResumeStep))
	byHand := filepath.Join(dir, "byhand")
	if err := os.MkdirAll(filepath.Join(byHand, "chaos"), 0o755); err != nil {
		t.Fatal(err)
	}
	to := checkpoint.StepDir(filepath.Join(byHand, "chaos"), int(last.ResumeStep))
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
	hand := strings.Replace(strings.Replace(spec, "parallel: {dp: 4}", fmt.Sprintf("parallel: {dp: %d}", final.Dp), 1),
		"dir: "+ckDir, "dir: "+byHand, 1)
	handPath := filepath.Join(dir, "byhand.yaml")
	if err := os.WriteFile(handPath, []byte(hand), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := loom(t, "run", handPath, "--resume", to, "--threads", "1", "--sample-tokens", "0", "--log-format", "json", "--http", ""); err != nil {
		t.Fatalf("run resumed by hand from %s: %v\n%s", to, err, stderr)
	}
	a, err := os.ReadFile(filepath.Join(ckDir, "chaos", "final", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(byHand, "chaos", "final", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("the chaos run's final model differs from the run resumed by hand from step %d at dp %d", last.ResumeStep, final.Dp)
	} else {
		t.Logf("final model: identical to the run resumed by hand from step %d at dp %d (%d bytes)", last.ResumeStep, final.Dp, len(a))
	}

	// Nothing is left: every process has exited (close checks the pids)
	// and no port the run used still accepts connections.
	var addrs []string
	w.mu.Lock()
	for _, p := range w.workers {
		if a := registeredAddr(p.out.String()); a != "" {
			addrs = append(addrs, a)
		}
	}
	w.mu.Unlock()
	w.close()
	for _, a := range append(addrs, coord) {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after the run", a)
		}
	}
}
