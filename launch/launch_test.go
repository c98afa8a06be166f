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
	_ = os.WriteFile(filepath.Join(pidDir, strconv.Itoa(os.Getpid())), nil, 0o644)
	var cfg worker.Config
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	delay := fs.Duration("step-delay", 5*time.Millisecond, "")
	failRank := fs.Int("fail-rank", -1, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
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
