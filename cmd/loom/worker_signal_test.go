package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/coordinator"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// lockedBuffer collects a child's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// controlPlane is an embedded etcd and a coordinator in this process, so
// a test can take both down under a worker process.
type controlPlane struct {
	etcd   *coordinator.EmbeddedEtcd
	cli    *clientv3.Client
	addr   string
	cancel context.CancelFunc
	done   chan error
	closed chan struct{} // the etcd has closed
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e, err := coordinator.StartEtcd(ctx, coordinator.EtcdOptions{LogOutput: "discard"})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := coordinator.New(coordinator.Config{Etcd: cli, Addr: lis.Addr().String(), Resync: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	cp := &controlPlane{etcd: e, cli: cli, addr: lis.Addr().String(), cancel: stop, done: make(chan error, 1)}
	go func() { cp.done <- c.Serve(sctx, lis, nil) }()
	t.Cleanup(func() {
		cp.down()
		cp.down()
	})
	return cp
}

// down stops the coordinator and the etcd; it may be called twice. The
// etcd stops serving at once but takes up to its request timeout (7 s)
// to close while clients hold streams: the test waits for that only at
// cleanup.
func (cp *controlPlane) down() {
	if cp.cancel == nil {
		if cp.closed != nil {
			<-cp.closed
		}
		return
	}
	cp.cancel()
	<-cp.done
	cp.cancel = nil
	cp.closed = make(chan struct{})
	go func() {
		defer close(cp.closed)
		cp.cli.Close()
		cp.etcd.Close()
	}()
}

// startLoomWorker runs `loom worker` (this test binary, see TestMain) with
// the coordinator's default lease TTL (10 s) and dial timeout (10 s).
func startLoomWorker(t *testing.T, coord string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	var out lockedBuffer
	cmd := exec.Command(os.Args[0], "worker", "--coordinator", coord, "--threads", "1")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	return cmd, &out
}

// stopsWithin signals the worker and waits for it to exit within limit.
func stopsWithin(t *testing.T, cmd *exec.Cmd, out *lockedBuffer, sig syscall.Signal, limit time.Duration) {
	t.Helper()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	start := time.Now()
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		t.Logf("%v: the worker exited after %v (%v)", sig, time.Since(start).Round(time.Millisecond), err)
	case <-time.After(limit):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("%v: the worker was still running %v later; it needed SIGKILL. Its output:\n%s", sig, limit, out.String())
	}
}

// A worker process stops within a few seconds of SIGTERM or SIGINT while
// the coordinator and its etcd are down: training with step reports and
// a checkpoint report pending, and idle. (The waits it would otherwise
// sit through — a step flush to the leader, a checkpoint report, the
// lease revoke, a new lease grant — are each 10 s or more.)
func TestWorkerStopsOnSignalWhileCoordinatorDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	const limit = 8 * time.Second

	t.Run("training", func(t *testing.T) {
		cp := startControlPlane(t)
		cmd, out := startLoomWorker(t, cp.addr)
		spec, _ := ckFixture(t, "sig", "", "every: 2, keep: 2")
		src, _ := os.ReadFile(spec)
		src = []byte(strings.Replace(string(src), "steps: 6,", "steps: 100000,", 1))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := api.Dial(ctx, cp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Submit(ctx, src, spec, 0); err != nil {
			t.Fatal(err)
		}
		for {
			j, err := c.Get(ctx, "sig")
			if err == nil && j.Status.State == loomv1.JobState_JOB_STATE_RUNNING && len(j.Latest) > 0 && j.Latest[0].Steps[0].Step > 4 {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("the job did not train: %v, %v\n%s", j, err, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		cp.down()
		time.Sleep(500 * time.Millisecond) // steps and a checkpoint report pile up
		stopsWithin(t, cmd, out, syscall.SIGTERM, limit)
	})

	t.Run("idle", func(t *testing.T) {
		cp := startControlPlane(t)
		cmd, out := startLoomWorker(t, cp.addr)
		deadline := time.Now().Add(15 * time.Second)
		for !strings.Contains(out.String(), "worker: registered") {
			if time.Now().After(deadline) {
				t.Fatalf("the worker did not register:\n%s", out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		cp.down()
		time.Sleep(300 * time.Millisecond)
		stopsWithin(t, cmd, out, syscall.SIGINT, limit)
	})
}
