package worker_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/parallel"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
	"github.com/loomtrain/loom/worker"
)

// peerEngine is the test engine of a data-parallel job whose ranks are
// connected as the data plane connects them: every pair of ranks holds a
// TCP connection for the whole generation, so a peer that dies (kill -9)
// is seen at once, as a *parallel.PeerError naming it, by every rank
// that was still training. Ranks that finish say so before they hang up.
func peerEngine(delay time.Duration) worker.Engine {
	return worker.EngineFunc(func(ctx context.Context, a worker.Assignment, report func(worker.StepStats)) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		lost := make(chan *parallel.PeerError, len(a.Peers))
		var mu sync.Mutex
		doneFrom := map[int]bool{}
		conns := map[int]net.Conn{}
		watch := func(peer int, c net.Conn) {
			mu.Lock()
			conns[peer] = c
			mu.Unlock()
			go func() {
				b := make([]byte, 1)
				_, err := io.ReadFull(c, b)
				mu.Lock()
				defer mu.Unlock()
				if err == nil && b[0] == 'D' {
					doneFrom[peer] = true
					return
				}
				lost <- &parallel.PeerError{Rank: peer, Addr: a.Peers[peer], Op: "all-reduce", Err: parallel.ErrPeerGone}
			}()
		}
		// Lower ranks accept, higher ranks dial; a dialer names itself.
		go func() {
			for range a.Rank {
				c, err := a.Listener.Accept()
				if err != nil {
					return
				}
				var r [4]byte
				if _, err := io.ReadFull(c, r[:]); err != nil {
					c.Close()
					continue
				}
				watch(int(binary.BigEndian.Uint32(r[:])), c)
			}
		}()
		for peer := a.Rank + 1; peer < len(a.Peers); peer++ {
			var c net.Conn
			var err error
			for deadline := time.Now().Add(2 * time.Second); ; {
				d := net.Dialer{Timeout: time.Second}
				if c, err = d.DialContext(ctx, "tcp", a.Peers[peer]); err == nil || time.Now().After(deadline) || ctx.Err() != nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				return fmt.Errorf("rank %d: %w", a.Rank, &parallel.PeerError{Rank: peer, Addr: a.Peers[peer], Op: "connect", Err: err})
			}
			var r [4]byte
			binary.BigEndian.PutUint32(r[:], uint32(a.Rank))
			if _, err := c.Write(r[:]); err != nil {
				return err
			}
			watch(peer, c)
		}
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		}()
		for s := 1; s <= a.Spec.Train.Steps; s++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case pe := <-lost:
				return fmt.Errorf("rank %d: %w", a.Rank, pe)
			case <-time.After(delay):
			}
			report(worker.StepStats{Step: s, Loss: 1, StepTime: delay})
		}
		mu.Lock()
		for _, c := range conns {
			c.Write([]byte{'D'})
		}
		mu.Unlock()
		// Wait for the others to finish too before hanging up.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			mu.Lock()
			all := len(doneFrom) == len(a.Peers)-1
			mu.Unlock()
			if all {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case pe := <-lost:
				mu.Lock()
				finished := doneFrom[pe.Rank]
				mu.Unlock()
				if !finished {
					return fmt.Errorf("rank %d: %w", a.Rank, pe)
				}
			case <-time.After(10 * time.Millisecond):
			}
		}
		return errors.New("peers did not finish within 5 s")
	})
}

// TestKilledRankNamedAndNotReused: kill -9 of rank 0's worker process of a
// dp=2 job with --max-restarts 1 and a spare registered. The surviving rank
// sees its peer lost at once, long before the killed worker's lease
// expires. The failure names rank 0 as lost (seen by rank 1), not the
// survivor; the restart does not go to the killed worker (still
// registered), it takes the spare and the survivor, and the job succeeds.
func TestKilledRankNamedAndNotReused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker process")
	}
	cl := newCluster(t)
	co := cl.startCoordinator("")
	// Rendezvous order is by host: the child (hA) is rank 0, the
	// in-process survivor (hB) rank 1, the spare (hZ) is left over.
	proc := startWorkerProcess(t, co.addr, "LOOM_TEST_WORKER_ENGINE=peer", "LOOM_TEST_WORKER_HOST=hA")
	survivor := cl.startWorker(worker.Config{Coordinator: co.addr, Engine: peerEngine(10 * time.Millisecond), Host: "hB"})
	c := dial(t, co.addr)
	spec := specYAML("kill9", 2, 150)
	waitWorkers := func(n int) {
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := cl.cli.Get(ctx, coordinator.NewKeys("").Workers(), clientv3.WithPrefix())
			cancel()
			if err == nil && len(resp.Kvs) >= n {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("fewer than %d workers registered", n)
	}
	waitWorkers(2)
	submit(t, c, spec, 1)
	j := waitFor(t, c, "kill9", 15*time.Second, "running", inState(loomv1.JobState_JOB_STATE_RUNNING))
	if j.Status.Ranks[0].Host != "hA" || j.Status.Ranks[1].WorkerId != survivor.w.ID() {
		t.Fatalf("generation 1 ranks %v: want the child as rank 0 and the survivor as rank 1", j.Status.Ranks)
	}
	killed, seenBy := j.Status.Ranks[0], j.Status.Ranks[1]
	cl.startWorker(worker.Config{Coordinator: co.addr, Engine: peerEngine(10 * time.Millisecond), Host: "hZ"})
	waitWorkers(3)
	time.Sleep(200 * time.Millisecond)
	if err := proc.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = proc.Wait()
	j = waitFor(t, c, "kill9", 30*time.Second, "finished", inState(loomv1.JobState_JOB_STATE_SUCCEEDED, loomv1.JobState_JOB_STATE_FAILED))
	if len(j.Status.Failures) == 0 {
		t.Fatalf("no failure recorded: %v", j.Status)
	}
	f := j.Status.Failures[0]
	t.Logf("generation 1 ended: %s", describe(f))
	if f.Generation != 1 || f.Rank != 0 || f.WorkerId != killed.WorkerId || f.Addr != killed.Addr || !f.Lost {
		t.Errorf("generation 1's failure %q: want rank 0 (%s, worker %s) lost", describe(f), killed.Addr, killed.WorkerId)
	}
	if want := "rank 1 (" + seenBy.Addr + ") lost its connection to it"; !strings.Contains(f.Reason, want) {
		t.Errorf("reason %q does not say %q", f.Reason, want)
	}
	if j.Status.State != loomv1.JobState_JOB_STATE_SUCCEEDED || j.Status.Generation != 2 || j.Status.Restarts != 1 {
		t.Fatalf("after the restart: %v (failures: %v)", j.Status, j.Status.Failures)
	}
	for _, r := range j.Status.Ranks {
		if r.WorkerId == killed.WorkerId {
			t.Errorf("generation 2 went to the killed worker %s: %v", killed.WorkerId, j.Status.Ranks)
		}
	}
	if j.Status.Ranks[0].Host != "hZ" {
		t.Errorf("generation 2 ranks %v: want the spare first", j.Status.Ranks)
	}
}

func describe(f *loomv1.Failure) string {
	what := "failed"
	if f.Lost {
		what = "lost"
	}
	return fmt.Sprintf("generation %d: %s rank %d (%s, worker %s): %s", f.Generation, what, f.Rank, f.Addr, f.WorkerId, f.Reason)
}
