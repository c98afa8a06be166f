package worker_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
	"github.com/loomtrain/loom/worker"

	"github.com/loomtrain/loom/internal/testnet"
)

// systemEtcd is the etcd server binary of Debian's etcd-server package.
const systemEtcd = "/usr/bin/etcd"

// TestSystemEtcd runs a job against a separately started etcd server (the
// distribution's, v3.4 on Debian): the control plane must work with an
// etcd it does not embed, as on a real cluster.
func TestSystemEtcd(t *testing.T) {
	if _, err := os.Stat(systemEtcd); err != nil {
		t.Skipf("%s not found (Debian: apt-get install etcd-server); skipping the test against a system etcd", systemEtcd)
	}
	if testing.Short() {
		t.Skip("starts an etcd server process")
	}
	addrs := testnet.FreeAddrs(t, 2)
	client, peer := addrs[0], addrs[1]
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, systemEtcd, "--name", "loomtest", "--data-dir", dir,
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "loomtest=http://"+peer, "--log-level", "error")
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+archName())
	if testing.Verbose() {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	endpoints := []string{"http://" + client}
	waitEtcd(t, endpoints)

	cl := clusterOn(t, endpoints)
	co := cl.startCoordinator("")
	for range 2 {
		// One worker finds etcd through the coordinator, one is told it.
		cl.startWorker(worker.Config{Coordinator: co.addr, Engine: stepEngine(2 * time.Millisecond)})
	}
	cl.startWorker(worker.Config{Etcd: endpoints, Engine: stepEngine(2 * time.Millisecond)})
	c := dial(t, co.addr)
	submit(t, c, specYAML("sys", 3, 10), 0)
	j := waitFor(t, c, "sys", 20*time.Second, "succeeded", inState(loomv1.JobState_JOB_STATE_SUCCEEDED, loomv1.JobState_JOB_STATE_FAILED))
	if j.Status.State != loomv1.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("status %v", j.Status)
	}
}

func archName() string {
	// etcd 3.4 refuses to start on architectures other than amd64 unless
	// told; the test only needs it to run.
	return runtime.GOARCH
}

func waitEtcd(t *testing.T, endpoints []string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(fmt.Errorf("etcd at %v not ready after 15s: %w", endpoints, err))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
