package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/parallel"
)

// OpTracker records the communication calls a rank has in flight, by
// process group, so that a watchdog that fires can say what the rank was
// waiting on, and which group a lost peer was lost on. The engine wraps
// each of its groups with Wrap. A nil *OpTracker wraps nothing; a non-nil
// one is safe for concurrent use.
type OpTracker struct {
	mu       sync.Mutex
	next     uint64
	inflight map[uint64]opCall
	// peerGroup is the group of the first call that failed with a
	// *parallel.PeerError; onPeer is told of that error (nil: nobody).
	peerGroup string
	onPeer    func(group string, err error)
}

type opCall struct {
	op, group string
	since     time.Time
}

// NewOpTracker returns an empty tracker. onPeer, if set, is called once,
// on its own goroutine, with the first call's error that names a peer
// (*parallel.PeerError) and the group it failed on: a worker reports the
// lost peer at once, not after its engine has unwound.
func NewOpTracker(onPeer func(group string, err error)) *OpTracker {
	return &OpTracker{inflight: map[uint64]opCall{}, onPeer: onPeer}
}

// Wrap returns c with every blocking call recorded under group.
func (t *OpTracker) Wrap(group string, c parallel.Comm) parallel.Comm {
	if t == nil || c == nil {
		return c
	}
	return &trackedComm{Comm: c, t: t, group: group}
}

// InFlight returns the oldest call in flight.
func (t *OpTracker) InFlight() (op, group string, since time.Time, ok bool) {
	if t == nil {
		return "", "", time.Time{}, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.inflight {
		if !ok || c.since.Before(since) {
			op, group, since, ok = c.op, c.group, c.since, true
		}
	}
	return op, group, since, ok
}

// PeerGroup is the group of the first call that failed naming a peer
// ("" when none has).
func (t *OpTracker) PeerGroup() string {
	if t == nil {
		return ""
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peerGroup
}

func (t *OpTracker) begin(op, group string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	t.inflight[t.next] = opCall{op: op, group: group, since: time.Now()}
	return t.next
}

func (t *OpTracker) end(id uint64, group string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.inflight, id)
	var pe *parallel.PeerError
	if t.peerGroup == "" && errors.As(err, &pe) {
		t.peerGroup = group
		if t.onPeer != nil {
			go t.onPeer(group, err)
		}
	}
}

// trackedComm is a parallel.Comm whose blocking calls an OpTracker sees.
type trackedComm struct {
	parallel.Comm
	t     *OpTracker
	group string
}

func (c *trackedComm) track(op parallel.Op, call func() error) error {
	id := c.t.begin(string(op), c.group)
	err := call()
	c.t.end(id, c.group, err)
	return err
}

func (c *trackedComm) AllReduce(ctx context.Context, buf []float32, op parallel.ReduceOp) error {
	return c.track(parallel.OpAllReduce, func() error { return c.Comm.AllReduce(ctx, buf, op) })
}

func (c *trackedComm) ReduceScatter(ctx context.Context, buf []float32, op parallel.ReduceOp) (shard []float32, err error) {
	err = c.track(parallel.OpReduceScatter, func() error {
		var e error
		shard, e = c.Comm.ReduceScatter(ctx, buf, op)
		return e
	})
	return shard, err
}

func (c *trackedComm) AllGather(ctx context.Context, buf []float32) error {
	return c.track(parallel.OpAllGather, func() error { return c.Comm.AllGather(ctx, buf) })
}

func (c *trackedComm) Broadcast(ctx context.Context, buf []float32, root int) error {
	return c.track(parallel.OpBroadcast, func() error { return c.Comm.Broadcast(ctx, buf, root) })
}

func (c *trackedComm) Barrier(ctx context.Context) error {
	return c.track(parallel.OpBarrier, func() error { return c.Comm.Barrier(ctx) })
}

func (c *trackedComm) Send(ctx context.Context, dst int, buf []float32) error {
	return c.track(parallel.OpSend, func() error { return c.Comm.Send(ctx, dst, buf) })
}

func (c *trackedComm) Recv(ctx context.Context, src int, buf []float32) error {
	return c.track(parallel.OpRecv, func() error { return c.Comm.Recv(ctx, src, buf) })
}

// The phases of a rank a watchdog bounds (elastic.*_timeout).
const (
	PhaseSetup      = "setup"      // from the assignment to the first step
	PhaseStep       = "step"       // one step, validation included
	PhaseCheckpoint = "checkpoint" // a checkpoint's background write, until reported
	PhaseFinal      = "final"      // after the last step: the final model's gathering and save
)

// HangError is a rank that made no progress in a phase within its
// timeout, with what it had in flight.
type HangError struct {
	Rank    int
	Addr    string
	Phase   string
	Step    int // the step in flight (or whose checkpoint is written)
	Waited  time.Duration
	Timeout string // the spec field that bounds the phase
	// Op and Group are the oldest communication call in flight ("": none),
	// for InFlight long.
	Op, Group string
	InFlight  time.Duration
}

func (e *HangError) Error() string {
	where := ""
	switch e.Phase {
	case PhaseSetup:
		where = "during setup (joining peers, opening the data, restoring the checkpoint)"
	case PhaseStep:
		where = fmt.Sprintf("in step %d", e.Step)
	case PhaseCheckpoint:
		where = fmt.Sprintf("writing the checkpoint of step %d (its files are not durable yet)", e.Step)
	case PhaseFinal:
		where = "saving the final model"
	}
	msg := fmt.Sprintf("rank %d (%s) made no progress for %v %s (%s)", e.Rank, e.Addr, e.Waited.Round(time.Millisecond), where, e.Timeout)
	if e.Op != "" {
		msg += fmt.Sprintf(": in %s on group %s for %v", e.Op, e.Group, e.InFlight.Round(time.Millisecond))
	}
	return msg
}

// rankWatch follows one rank's progress through its phases (from its step
// reports and checkpoint reports) and says when one has taken longer than
// the spec allows. It is safe for concurrent use.
type rankWatch struct {
	rank  int
	addr  string
	spec  api.JobSpec
	start time.Time
	ops   *OpTracker

	mu       sync.Mutex
	lastStep int
	lastAt   time.Time
	firstAt  time.Time
	// pending are the checkpoint steps snapshotted and not yet durable,
	// with when the step was reported; early are those reported durable
	// before their step's report arrived.
	pending map[int]time.Time
	early   map[int]bool
	// resumeStep is the step the rank restored (its first step is one
	// more); 0 for a fresh start.
	resumeStep int
}

func newRankWatch(rank int, addr string, spec api.JobSpec, ops *OpTracker, start time.Time) *rankWatch {
	return &rankWatch{rank: rank, addr: addr, spec: spec, ops: ops, start: start, pending: map[int]time.Time{}, early: map[int]bool{}}
}

// stepped records a finished step (at now).
func (rw *rankWatch) stepped(step int, now time.Time) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.firstAt.IsZero() {
		rw.firstAt = now
	}
	rw.lastStep, rw.lastAt = step, now
	if e := rw.spec.Checkpoint.Every; e > 0 && step%e == 0 {
		if rw.early[step] {
			delete(rw.early, step)
		} else {
			rw.pending[step] = now
		}
	}
}

// checkpointed records that the rank's files of step's checkpoint are
// durable and reported.
func (rw *rankWatch) checkpointed(step int) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if _, ok := rw.pending[step]; ok {
		delete(rw.pending, step)
	} else {
		rw.early[step] = true
	}
}

// resumed records the step the rank restored.
func (rw *rankWatch) resumed(step int) {
	rw.mu.Lock()
	rw.resumeStep = step
	rw.mu.Unlock()
}

// where says the rank's phase and the step in flight.
func (rw *rankWatch) where() (phase string, step int) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.whereLocked()
}

func (rw *rankWatch) whereLocked() (string, int) {
	switch {
	case rw.firstAt.IsZero():
		return PhaseSetup, rw.resumeStep + 1
	case rw.lastStep >= rw.spec.Train.Steps:
		return PhaseFinal, rw.lastStep
	}
	return PhaseStep, rw.lastStep + 1
}

// stepGrace is how much longer than elastic.step_timeout a rank's own
// watchdog waits before naming it: a peer stuck in a collective is named
// by the ranks waiting for it (their calls time out after step_timeout),
// and that report, which names the right rank, must come first.
func stepGrace(t time.Duration) time.Duration { return t + max(time.Second, t/2) }

// check returns a *HangError when a phase has outlasted its timeout at now.
func (rw *rankWatch) check(now time.Time) *HangError {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	e := rw.spec.Elastic
	phase, step := rw.whereLocked()
	h := &HangError{Rank: rw.rank, Addr: rw.addr, Phase: phase, Step: step}
	for s, at := range rw.pending {
		if waited := now.Sub(at); waited > e.CheckpointTimeout {
			h.Phase, h.Step, h.Waited, h.Timeout = PhaseCheckpoint, s, waited, "elastic.checkpoint_timeout"
			return h
		}
	}
	switch phase {
	case PhaseSetup:
		if h.Waited = now.Sub(rw.start); h.Waited <= e.SetupTimeout {
			return nil
		}
		h.Timeout = "elastic.setup_timeout"
	case PhaseFinal:
		if h.Waited = now.Sub(rw.lastAt); h.Waited <= e.CheckpointTimeout {
			return nil
		}
		h.Timeout = "elastic.checkpoint_timeout"
	default:
		limit := stepGrace(e.StepTimeout)
		if v := rw.spec.Train.EvalEvery; v > 0 && (step%v == 0 || step == rw.spec.Train.Steps) {
			limit += e.StepTimeout // a validation pass follows the step
		}
		if h.Waited = now.Sub(rw.lastAt); h.Waited <= limit {
			return nil
		}
		h.Timeout = "elastic.step_timeout"
	}
	if op, group, since, ok := rw.ops.InFlight(); ok {
		h.Op, h.Group, h.InFlight = op, group, now.Sub(since)
	}
	return h
}

// watchInterval is how often a watchdog looks: a tenth of the shortest
// timeout, within [10 ms, 1 s].
func watchInterval(e api.ElasticSpec) time.Duration {
	d := min(e.SetupTimeout, e.StepTimeout, e.CheckpointTimeout) / 10
	return min(max(d, 10*time.Millisecond), time.Second)
}
