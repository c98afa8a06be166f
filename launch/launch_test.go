package launch_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/internal/cpuset"
	"github.com/loomtrain/loom/launch"
	"github.com/loomtrain/loom/worker"
)

// The test binary doubles as the loom binary: Local re-executes it as
// `TEST worker --coordinator ...` with LOOM_LAUNCH_TEST_PIDS set, and
// TestMain then runs a worker with the test engine.
func TestMain(m *testing.M) {
	if dir := os.Getenv("LOOM_LAUNCH_TEST_PIDS"); dir != "" && len(os.Args) > 1 && os.Args[1] == "worker" {
		os.Exit(runTestWorker(dir, os.Args[2:]))
	}
	os.Exit(m.Run())
}

func runTestWorker(pidDir string, args []string) int {
	var cfg worker.Config
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	delay := fs.Duration("step-delay", 5*time.Millisecond, "")
	failRank := fs.Int("fail-rank", -1, "")
	cpus := fs.String("cpus", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// The pid file holds the CPUs the worker runs on, after --cpus.
	if *cpus != "" {
		set, err := cpuset.Parse(*cpus)
		if err == nil {
			err = cpuset.Bind(set)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	allowed, _ := cpuset.Allowed()
	_ = os.WriteFile(filepath.Join(pidDir, strconv.Itoa(os.Getpid())), []byte(allowed.String()), 0o644)
	cfg.ReportInterval = 50 * time.Millisecond
	cfg.Engine = worker.EngineFunc(func(ctx context.Context, a worker.Assignment, report func(worker.StepStats)) error {
		if a.Threads <= 0 {
			return fmt.Errorf("threads %d", a.Threads)
		}
		for s := 1; s <= a.Spec.Train.Steps; s++ {
			if a.Rank == *failRank && s == 3 {
				return fmt.Errorf("rank %d: injected failure at step %d", a.Rank, s)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(*delay):
			}
			report(worker.StepStats{Step: s, Loss: 10 / float64(s), LR: 1e-3, GradNorm: 1, TokensPerSec: 100, StepTime: *delay})
		}
		return nil
	})
	w, err := worker.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signalContext()
	defer stop()
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 1)
	signalNotify(ch)
	go func() {
		select {
		case <-ch:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func testSpec(t *testing.T, dp, steps int) api.JobSpec {
	t.Helper()
	spec, err := api.ParseSpec(fmt.Appendf(nil, "name: local\ndata: {path: tokens.bin}\nparallel: {dp: %d}\ntrain: {steps: %d, global_batch: %d, micro_batch: 1}\n",
		dp, steps, dp), "test")
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of tests.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func opts(t *testing.T, pidDir string, progress, workerOut *syncBuffer, extra ...string) launch.Options {
	return launch.Options{
		Env:          []string{"LOOM_LAUNCH_TEST_PIDS=" + pidDir},
		WorkerArgs:   extra,
		LeaseTTL:     time.Second,
		Progress:     progress,
		Info:         workerOut,
		WorkerOutput: workerOut,
		StopTimeout:  5 * time.Second,
	}
}

// noOrphans checks that every worker process that started is gone.
func noOrphans(t *testing.T, pidDir string, want int) {
	t.Helper()
	ents, err := os.ReadDir(pidDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != want {
		t.Errorf("%d worker processes started, want %d", len(ents), want)
	}
	for _, e := range ents {
		pid, _ := strconv.Atoi(e.Name())
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("worker pid %d still exists after Local returned (kill 0: %v)", pid, err)
		}
	}
}

func TestLocalRunsToCompletion(t *testing.T) {
	pids := t.TempDir()
	var progress, out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := launch.Local(ctx, testSpec(t, 3, 10), opts(t, pids, &progress, &out)); err != nil {
		t.Fatalf("Local: %v\nprogress:\n%s\nworkers:\n%s", err, progress.String(), out.String())
	}
	t.Logf("3 local workers, 10 steps: %v", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{"step 10/10 | loss 1.0000", "local: SUCCEEDED"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, progress.String())
		}
	}
	// Local's own line is not progress (JSON progress must hold only JSON).
	if !strings.Contains(out.String(), "3 local workers") || strings.Contains(progress.String(), "local workers") {
		t.Errorf("the banner belongs on Info, not Progress:\nprogress:\n%s\ninfo:\n%s", progress.String(), out.String())
	}
	noOrphans(t, pids, 3)
}

func TestLocalEngineFailure(t *testing.T) {
	pids := t.TempDir()
	var progress, out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := launch.Local(ctx, testSpec(t, 2, 1000), opts(t, pids, &progress, &out, "--fail-rank", "1"))
	var je *launch.JobError
	if !errors.As(err, &je) || !strings.Contains(err.Error(), "failed rank 1") ||
		!strings.Contains(err.Error(), "injected failure at step 3") {
		t.Fatalf("err = %v, want a JobError naming rank 1's failure\nprogress:\n%s", err, progress.String())
	}
	noOrphans(t, pids, 2)
}

func TestLocalInterrupted(t *testing.T) {
	pids := t.TempDir()
	var progress, out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// Interrupt once training is under way.
		for !strings.Contains(progress.String(), "step 1/") { // the first step is always printed
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
	}()
	start := time.Now()
	err := launch.Local(ctx, testSpec(t, 2, 100000), opts(t, pids, &progress, &out))
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("err = %v, want interrupted", err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("took %v", took)
	}
	noOrphans(t, pids, 2)
}

// TestLocalBindCores: with BindCores each worker runs on CPUs of its own
// (one each here), and workers that do not fit run unbound, with a line
// that says why.
func TestLocalBindCores(t *testing.T) {
	all, err := cpuset.Allowed()
	if err != nil {
		t.Skip(err)
	}
	if len(all) < 2 {
		t.Skipf("%d CPUs: nothing to split", len(all))
	}
	for _, c := range []struct {
		workers int
		bound   bool
	}{{2, true}, {len(all) + 1, false}} {
		pids := t.TempDir()
		var progress, out syncBuffer
		o := opts(t, pids, &progress, &out)
		o.BindCores, o.ThreadsPerWorker = true, 1
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := launch.Local(ctx, testSpec(t, c.workers, 3), o)
		cancel()
		if err != nil {
			t.Fatalf("Local with %d workers: %v\nworkers:\n%s", c.workers, err, out.String())
		}
		ents, err := os.ReadDir(pids)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(pids, e.Name()))
			set, err := cpuset.Parse(string(b))
			if err != nil {
				t.Fatalf("worker %s: CPUs %q: %v", e.Name(), b, err)
			}
			switch {
			case c.bound && (len(set) != 1 || seen[set.String()]):
				t.Errorf("%d workers: worker %s runs on CPUs %s, want one CPU no other worker has (seen %v)", c.workers, e.Name(), set, seen)
			case !c.bound && set.String() != all.String():
				t.Errorf("%d workers on %d CPUs: worker %s runs on CPUs %s, want all of %s", c.workers, len(all), e.Name(), set, all)
			}
			seen[set.String()] = true
		}
		if len(ents) != c.workers {
			t.Errorf("%d workers started, want %d", len(ents), c.workers)
		}
		if want := "not binding workers to cores"; !c.bound && !strings.Contains(out.String(), want) {
			t.Errorf("%d workers on %d CPUs: output lacks %q:\n%s", c.workers, len(all), want, out.String())
		}
		if want := "(bound to CPUs "; c.bound && !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
