package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/coordinator"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// serveSnapshots opens the process's snapshot store and serves its
// Snapshot service on Config.SnapshotListen, advertised on the data
// plane's host (dataAddr). The returned function stops both and removes
// the store's files.
func (w *Worker) serveSnapshots(dataAddr string) (func(), error) {
	removeStaleStores(w.log.Warn)
	held := make(chan struct{}, 1)
	pending := map[string]*loomv1.SnapshotHolding{}
	store, err := newSnapStore(w.log, func(job string, h *loomv1.SnapshotHolding) {
		w.mu.Lock()
		pending[job] = h
		w.mu.Unlock()
		select {
		case held <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return nil, err
	}
	listen := w.cfg.SnapshotListen
	if listen == "" {
		host, _, _ := net.SplitHostPort(w.cfg.Listen)
		listen = net.JoinHostPort(host, "0")
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		store.close()
		return nil, fmt.Errorf("worker: snapshot service listen on %s: %w; set another snapshot listen address", listen, err)
	}
	var opts []grpc.ServerOption
	if w.cfg.PeerTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(w.cfg.PeerTLS)))
	}
	opts = append(opts, grpc.MaxRecvMsgSize(2*snapChunk), grpc.MaxSendMsgSize(2*snapChunk))
	srv := grpc.NewServer(opts...)
	loomv1.RegisterSnapshotServer(srv, &snapServer{store: store})
	go srv.Serve(lis)
	host, _, _ := net.SplitHostPort(dataAddr)
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	w.snaps, w.snapAddr = store, net.JoinHostPort(host, port)
	// One writer of the holdings, so that a newer one is never overwritten
	// by an older.
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			case <-held:
			}
			w.mu.Lock()
			batch := pending
			pending = map[string]*loomv1.SnapshotHolding{}
			w.mu.Unlock()
			for job, h := range batch {
				w.writeHolding(job, h)
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
		srv.Stop()
		store.close()
	}, nil
}

// writeHolding records in etcd, under the registration's lease, the
// newest complete snapshot this worker holds of job.
func (w *Worker) writeHolding(job string, h *loomv1.SnapshotHolding) {
	w.mu.Lock()
	id, lease := w.id, w.lease
	w.mu.Unlock()
	if lease == 0 {
		return
	}
	h.WorkerId, h.Addr = id, w.snapAddr
	ctx, cancel := context.WithTimeout(w.quit, w.cfg.DialTimeout)
	defer cancel()
	if _, err := w.etcd.Put(ctx, w.keys.Snapshot(job, id), coordinator.Encode(h), clientv3.WithLease(lease)); err != nil {
		w.log.Warn("worker: could not record the snapshot it holds; a restart resumes from disk", "job", job, "step", h.Step, "err", err)
	}
}

// dropSnapshots forgets job's snapshots: files and the etcd record.
func (w *Worker) dropSnapshots(job string) {
	w.snaps.drop(job)
	w.mu.Lock()
	id := w.id
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(w.quit, w.cfg.DialTimeout)
	defer cancel()
	if _, err := w.etcd.Delete(ctx, w.keys.Snapshot(job, id)); err != nil {
		w.log.Warn("worker: could not delete its snapshot record; it goes with the lease", "job", job, "err", err)
	}
}

// reportSnapshot files rank's part p of an in-memory snapshot in the
// store and pushes a copy to the worker of the rank's data-parallel
// neighbour ((d+1) mod dp, same tp and pp). A failed push is logged, not
// returned: training goes on, and a restart that lacks the copy resumes
// from disk.
func (w *Worker) reportSnapshot(ctx context.Context, a *loomv1.Assignment, spec api.JobSpec, rank int, p checkpoint.RankPart) error {
	dp, tp := spec.Parallel.DP, max(spec.Parallel.TP, 1)
	ri := a.Ranks[rank]
	at := func(d int) int { return (int(ri.Pp)*dp+(d%dp+dp)%dp)*tp + int(ri.Tp) }
	pred, succ := -1, -1
	if dp > 1 {
		pred, succ = at(int(ri.Dp)-1), at(int(ri.Dp)+1)
	}
	k := snapKey{gen: a.Generation, step: int64(p.Step)}
	if err := w.snaps.addOwn(a.Job, k, int(a.WorldSize), pred, p); err != nil {
		return err
	}
	if succ < 0 {
		return nil
	}
	to := a.Ranks[succ]
	own, _ := w.snaps.part(a.Job, k, rank)
	if to.SnapshotAddr == "" {
		w.log.Warn("worker: the dp neighbour serves no snapshot service; its copy is missing", "job", a.Job, "rank", rank, "neighbour", succ)
		return nil
	}
	t0 := time.Now()
	if err := pushSnapshot(ctx, to.SnapshotAddr, w.cfg.PeerTLS, a.Job, k, w.snaps.dir(a.Job, k), own); err != nil {
		if ctx.Err() == nil {
			w.log.Warn("worker: could not copy the snapshot to the dp neighbour; a restart that needs it resumes from disk",
				"job", a.Job, "step", p.Step, "rank", rank, "neighbour", succ, "addr", to.SnapshotAddr, "err", err)
		}
		return nil
	}
	w.log.Debug("worker: snapshot copied to the dp neighbour", "job", a.Job, "step", p.Step, "rank", rank, "neighbour", succ,
		"took", time.Since(t0).Round(time.Microsecond))
	return nil
}

// removeStaleStores removes snapshot stores left by worker processes that
// are gone (killed: a store is RAM until removed).
func removeStaleStores(warn func(string, ...any)) {
	for _, base := range []string{"/dev/shm", os.TempDir()} {
		dirs, _ := filepath.Glob(filepath.Join(base, "loom-snapshots-*-*"))
		for _, d := range dirs {
			f := strings.Split(filepath.Base(d), "-")
			if len(f) != 4 {
				continue
			}
			pid, err := strconv.Atoi(f[2])
			if err != nil || pid == os.Getpid() || pidAlive(pid) {
				continue
			}
			if err := os.RemoveAll(d); err != nil {
				warn("worker: could not remove a dead worker's snapshot store", "dir", d, "err", err)
			}
		}
	}
}

func pidAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

func orNone(s string) string {
	if s == "" {
		return "none: from the start"
	}
	return s
}
