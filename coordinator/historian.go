package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// DefaultHistoryPersist is how often the leader writes changed histories
// to etcd.
const DefaultHistoryPersist = 5 * time.Second

// DefaultSeriesGrace is how long a finished job's series stay in /metrics
// (its history stays on the page until the job is resubmitted).
const DefaultSeriesGrace = 10 * time.Minute

// HistoryPrefix is where histories are persisted: beside the state prefix,
// not under it, so that the leader's reconcile, which reads everything
// under the prefix, never reads them (e.g. "/loom/v1-history/").
func (k Keys) HistoryPrefix() string { return strings.TrimSuffix(k.Prefix, "/") + "-history/" }

// HistoryJob is the key of a job's persisted history (JSON).
func (k Keys) HistoryJob(name string) string { return k.HistoryPrefix() + name + "/job" }

// HistoryRank is the key of one rank's persisted history (JSON).
func (k Keys) HistoryRank(name string, rank int) string {
	return fmt.Sprintf("%s%s/ranks/%d", k.HistoryPrefix(), name, rank)
}

// historian follows the jobs' keys and keeps every job's history. It is
// safe for concurrent use.
type historian struct {
	etcd    *clientv3.Client
	keys    Keys
	log     *slog.Logger
	now     func() time.Time
	leader  func() bool
	persist time.Duration

	mu      sync.Mutex
	jobs    map[string]*jobHistory
	version uint64
	changed chan struct{} // closed and replaced on every change
	ready   bool          // loaded once
}

func newHistorian(cli *clientv3.Client, keys Keys, log *slog.Logger, now func() time.Time, leader func() bool, persist time.Duration) *historian {
	if persist <= 0 {
		persist = DefaultHistoryPersist
	}
	return &historian{etcd: cli, keys: keys, log: log, now: now, leader: leader, persist: persist,
		jobs: map[string]*jobHistory{}, changed: make(chan struct{})}
}

// run loads the histories and follows etcd until ctx is done; a failed
// watch (etcd unreachable, revisions compacted) reloads.
func (h *historian) run(ctx context.Context) {
	tick := time.NewTicker(h.persist)
	defer tick.Stop()
	for ctx.Err() == nil {
		err := h.follow(ctx, tick.C)
		if ctx.Err() != nil {
			break
		}
		h.log.Warn("coordinator: step history: following etcd failed; reloading", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	// Last write of what changed since the last tick, so a standby taking
	// over after this coordinator stops has every step.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	h.save(sctx)
	cancel()
}

func (h *historian) follow(ctx context.Context, tick <-chan time.Time) error {
	savedRev, rev, err := h.load(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := h.etcd.Watch(clientv3.WithRequireLeader(wctx), h.keys.Jobs(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	hch := h.etcd.Watch(clientv3.WithRequireLeader(wctx), h.keys.HistoryPrefix(), clientv3.WithPrefix(), clientv3.WithRev(savedRev+1))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick:
			if h.leader() {
				sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
				h.save(sctx)
				scancel()
			}
		case wr, ok := <-hch:
			if !ok {
				return errors.New("etcd watch closed")
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("etcd watch of %s: %w", h.keys.HistoryPrefix(), err)
			}
			if h.leader() {
				continue // its own writes
			}
			var kvs []*mvccpb.KeyValue
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					kvs = append(kvs, ev.Kv)
				}
			}
			h.mu.Lock()
			h.restore(kvs, nil, true)
			h.notifyLocked()
			h.mu.Unlock()
		case wr, ok := <-wch:
			if !ok {
				return errors.New("etcd watch closed")
			}
			if err := wr.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					return fmt.Errorf("watch fell behind etcd's compaction: %w", err)
				}
				return fmt.Errorf("etcd watch: %w", err)
			}
			h.mu.Lock()
			for _, ev := range wr.Events {
				h.apply(string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
			}
			h.notifyLocked()
			h.mu.Unlock()
		}
	}
}

// load reads the persisted histories and the jobs' current keys and
// returns the revisions each was read at.
func (h *historian) load(ctx context.Context) (savedRev, jobsRev int64, err error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	saved, err := h.etcd.Get(lctx, h.keys.HistoryPrefix(), clientv3.WithPrefix())
	if err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", h.keys.HistoryPrefix(), err)
	}
	resp, err := h.etcd.Get(lctx, h.keys.Jobs(), clientv3.WithPrefix())
	if err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", h.keys.Jobs(), err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.jobs
	h.jobs = map[string]*jobHistory{}
	// Desired states first: they say which run each job is on.
	for _, kv := range resp.Kvs {
		if _, kind, _, ok := h.keys.parseJobKey(string(kv.Key)); ok && kind == "desired" {
			h.apply(string(kv.Key), kv.Value, false)
		}
	}
	fresh := map[string]bool{}
	for name, j := range h.jobs {
		if prev := old[name]; prev != nil && prev.run == j.run {
			h.jobs[name] = prev // this coordinator's own, newer than what is persisted
		} else {
			fresh[name] = true
		}
	}
	h.restore(saved.Kvs, fresh, false)
	for _, kv := range resp.Kvs {
		if _, kind, _, ok := h.keys.parseJobKey(string(kv.Key)); ok && kind != "desired" {
			h.apply(string(kv.Key), kv.Value, false)
		}
	}
	h.ready = true
	h.notifyLocked()
	return saved.Header.Revision, resp.Header.Revision, nil
}

// apply folds one key's new value in. h.mu is held.
func (h *historian) apply(key string, value []byte, deleted bool) {
	name, kind, rest, ok := h.keys.parseJobKey(key)
	if !ok {
		return
	}
	if kind == "desired" {
		if deleted {
			delete(h.jobs, name)
			return
		}
		d := &loomv1.JobDesired{}
		if Decode(key, value, d) != nil {
			return
		}
		if j := h.jobs[name]; j == nil || j.run != runID(d) {
			h.jobs[name] = newJobHistory(d)
		} else {
			j.desired = d
		}
		return
	}
	j := h.jobs[name]
	if j == nil || deleted {
		return
	}
	now := h.now()
	switch kind {
	case "status":
		st := &loomv1.JobStatus{}
		if Decode(key, value, st) == nil {
			j.setStatus(st, now)
		}
	case "progress":
		p := &loomv1.RankProgress{}
		if Decode(key, value, p) == nil {
			j.addProgress(p, now)
		}
	case "checkpoints":
		if strings.Contains(rest, "/") {
			rep := &loomv1.CheckpointReport{}
			if Decode(key, value, rep) == nil {
				j.addCheckpointReport(rep)
			}
		}
	case "checkpoint":
		rec := &loomv1.CheckpointRecord{}
		if Decode(key, value, rec) == nil {
			j.setCheckpoint(rec)
		}
	}
}

func (h *historian) notifyLocked() {
	h.version++
	close(h.changed)
	h.changed = make(chan struct{})
}

// wait returns a channel closed at the next change and the current version.
func (h *historian) wait() (<-chan struct{}, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changed, h.version
}

// jobState is a job's history as persisted.
type jobState struct {
	Run          string                `json:"run"`
	Generation   uint64                `json:"generation"`
	LastStep     int64                 `json:"last_step"`
	LastMs       int64                 `json:"last_ms"`
	ValLoss      float64               `json:"val_loss,omitempty"`
	ValStep      int64                 `json:"val_step,omitempty"`
	Points       seriesState[JobPoint] `json:"points"`
	Events       []Event               `json:"events"`
	SeenFailures []uint64              `json:"seen_failures,omitempty"`
	Restarts     map[string]int64      `json:"restarts,omitempty"`
	Checkpoint   checkpointTotals      `json:"checkpoint"`
	FinishedMs   int64                 `json:"finished_ms,omitempty"`
}

type checkpointTotals struct {
	Step      int64   `json:"step"`
	Saves     int64   `json:"saves"`
	Bytes     int64   `json:"bytes"`
	LastS     float64 `json:"last_s"`
	LastBytes int64   `json:"last_bytes"`
}

// rankState is a rank's history as persisted.
type rankState struct {
	Run      string                 `json:"run"`
	Gen      uint64                 `json:"generation"`
	Addr     string                 `json:"addr"`
	WorkerID string                 `json:"worker_id"`
	Memory   map[string]int64       `json:"memory_bytes,omitempty"`
	Peak     float64                `json:"peak_flops,omitempty"`
	LastStep int64                  `json:"last_step"`
	Window   []RankPoint            `json:"window"`
	Points   seriesState[RankPoint] `json:"points"`
	Totals   RankTotals             `json:"totals"`
}

// persistedBytes is the size of every history's keys, as save writes them
// (for the memory benchmark).
func (h *historian) persistedBytes() int {
	n := 0
	for _, p := range h.changes(true) {
		n += len(p.value)
	}
	return n
}

type historyPut struct {
	key   string
	value []byte
	mark  func()
}

// changes encodes the histories that changed (all: every one).
func (h *historian) changes(all bool) []historyPut {
	type put = historyPut
	var puts []put
	h.mu.Lock()
	for name, j := range h.jobs {
		if j.dirty || all {
			st := jobState{Run: j.run, Generation: j.gen, LastStep: j.lastStep, LastMs: j.lastMs, ValLoss: j.valLoss, ValStep: j.valStep,
				Points: j.points.state(),
				Events: j.events, Restarts: j.restarts, FinishedMs: j.finishedMs,
				Checkpoint: checkpointTotals{Step: j.ckptStep, Saves: j.ckptSaves, Bytes: j.ckptTotal, LastS: j.ckptLastS, LastBytes: j.ckptLastB}}
			for g := range j.seenFailures {
				st.SeenFailures = append(st.SeenFailures, g)
			}
			jj := j
			if b, err := json.Marshal(st); err != nil {
				h.log.Warn("coordinator: step history: cannot encode; not persisted", "job", name, "err", err)
			} else {
				puts = append(puts, put{h.keys.HistoryJob(name), b, func() { jj.dirty = false }})
			}
		}
		for _, rh := range j.ranks {
			if !rh.dirty && !all {
				continue
			}
			b, err := json.Marshal(rankState{Run: j.run, Gen: rh.gen, Addr: rh.addr, WorkerID: rh.workerID, Memory: rh.memory,
				Peak: rh.peak, LastStep: rh.lastStep, Window: rh.window, Points: rh.points.state(), Totals: rh.totals})
			if err != nil {
				h.log.Warn("coordinator: step history: cannot encode; not persisted", "job", name, "rank", rh.rank, "err", err)
				continue
			}
			r := rh
			puts = append(puts, put{h.keys.HistoryRank(name, r.rank), b, func() { r.dirty = false }})
		}
	}
	h.mu.Unlock()
	sort.Slice(puts, func(a, b int) bool { return puts[a].key < puts[b].key })
	return puts
}

// save writes the changed histories (each job's and each rank's key).
func (h *historian) save(ctx context.Context) {
	for _, p := range h.changes(false) {
		if _, err := h.etcd.Put(ctx, p.key, string(p.value)); err != nil {
			h.log.Warn("coordinator: step history: persist failed; will retry", "key", p.key, "err", err)
			return
		}
		h.mu.Lock()
		p.mark()
		h.mu.Unlock()
	}
}

// restore loads persisted histories into the fresh jobs of the same run.
// h.mu is held.
//
// With newer set (a persisted history the leader wrote while this
// coordinator follows etcd) it replaces a job's or rank's history that is
// not ahead of the persisted one: a standby that loaded an older snapshot
// and then missed steps fills the gap once the leader writes again.
func (h *historian) restore(kvs []*mvccpb.KeyValue, fresh map[string]bool, newer bool) {
	for _, kv := range kvs {
		rest, ok := strings.CutPrefix(string(kv.Key), h.keys.HistoryPrefix())
		if !ok {
			continue
		}
		name, what, _ := strings.Cut(rest, "/")
		j := h.jobs[name]
		if j == nil || !fresh[name] && !newer {
			continue // no such job, or this coordinator's own history is newer
		}
		switch {
		case what == "job":
			var st jobState
			if json.Unmarshal(kv.Value, &st) != nil || st.Run != j.run {
				continue
			}
			if newer && (st.LastStep < j.lastStep || st.Generation < j.gen) {
				continue
			}
			j.gen, j.lastStep, j.lastMs, j.finishedMs = st.Generation, st.LastStep, st.LastMs, st.FinishedMs
			j.valLoss, j.valStep = st.ValLoss, st.ValStep
			j.points.restore(st.Points)
			j.events = st.Events
			for _, g := range st.SeenFailures {
				j.seenFailures[g] = true
			}
			for k, v := range st.Restarts {
				j.restarts[k] = v
			}
			c := st.Checkpoint
			j.ckptStep, j.ckptSaves, j.ckptTotal, j.ckptLastS, j.ckptLastB = c.Step, c.Saves, c.Bytes, c.LastS, c.LastBytes
			j.dirty = false
		case strings.HasPrefix(what, "ranks/"):
			r, err := strconv.Atoi(strings.TrimPrefix(what, "ranks/"))
			var st rankState
			if err != nil || json.Unmarshal(kv.Value, &st) != nil || st.Run != j.run {
				continue
			}
			if rh := j.ranks[r]; newer && rh != nil && (st.LastStep < rh.lastStep || st.Gen < rh.gen) {
				continue
			}
			rh := j.rank(r)
			rh.gen, rh.addr, rh.workerID, rh.memory, rh.peak = st.Gen, st.Addr, st.WorkerID, st.Memory, st.Peak
			rh.lastStep, rh.window, rh.totals = st.LastStep, st.Window, st.Totals
			rh.points.restore(st.Points)
		}
	}
}
