// Package inproc implements parallel.Comm between goroutines of one
// process: the in-process fake that lets tensor-parallel parity, ZeRO and
// schedules be unit-tested without sockets. Integration tests use
// parallel.Group over real gRPC instead.
//
// A collective completes when every member has called it with the same
// operation and length; the last member to arrive computes the result
// once, in member order, so every member gets bit-identical results. A
// call that waits longer than the group's timeout, or whose context ends,
// fails the whole group (as a lost peer fails a parallel.Group): every
// pending and later call returns an error naming the member.
package inproc

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/loomtrain/loom/parallel"
)

// DefaultTimeout bounds each call's wait for the other members.
const DefaultTimeout = 30 * time.Second

// Options configures a group.
type Options struct {
	Timeout time.Duration // per call; 0: DefaultTimeout
	// AllReduce and SmallBytes are reported by Spec so that byte
	// accounting (parallel.BytesSent) follows the algorithm a real group
	// of the same settings would run.
	AllReduce  parallel.Algorithm
	SmallBytes int
}

// NewGroup returns the members of one group named name whose global ranks
// are ranks (in ring order): member i has Index i and Rank ranks[i].
func NewGroup(name string, ranks []int, opt Options) []*Member {
	if opt.Timeout <= 0 {
		opt.Timeout = DefaultTimeout
	}
	h := &hub{name: name, ranks: ranks, timeout: opt.Timeout, rounds: map[uint64]*round{}, failCh: make(chan struct{}),
		boxes: map[[2]int]*mailbox{}}
	ms := make([]*Member, len(ranks))
	for i := range ranks {
		spec := parallel.GroupSpec{Job: "inproc", Name: name, Ranks: append([]int(nil), ranks...), MyRank: ranks[i],
			Timeout: opt.Timeout, AllReduce: opt.AllReduce, SmallBytes: opt.SmallBytes}
		ms[i] = &Member{h: h, me: i, spec: spec}
	}
	return ms
}

// New is NewGroup with ranks 0..size-1.
func New(name string, size int) []*Member {
	ranks := make([]int, size)
	for i := range ranks {
		ranks[i] = i
	}
	return NewGroup(name, ranks, Options{})
}

// Member is one member's handle. Collectives on one Member must be called
// from one goroutine at a time (as on parallel.Group, where they are
// serialized); Send and Recv may run beside them.
type Member struct {
	h    *hub
	me   int
	spec parallel.GroupSpec
	seq  uint64
}

var _ parallel.Comm = (*Member)(nil)

type hub struct {
	name    string
	ranks   []int
	timeout time.Duration

	mu     sync.Mutex
	rounds map[uint64]*round
	boxes  map[[2]int]*mailbox // (src index, dst index)
	err    error
	failCh chan struct{}
}

type round struct {
	op      string
	n       int
	root    int
	bufs    [][]float32
	arrived int
	left    int
	done    chan struct{}
	result  []float32
}

type mailbox struct {
	msgs  [][]float32
	ready chan struct{} // signalled (non-blocking) on push
}

// Size implements parallel.Comm.
func (m *Member) Size() int { return len(m.h.ranks) }

// Index implements parallel.Comm.
func (m *Member) Index() int { return m.me }

// Rank implements parallel.Comm.
func (m *Member) Rank() int { return m.h.ranks[m.me] }

// Spec implements parallel.Comm.
func (m *Member) Spec() parallel.GroupSpec { return m.spec }

func (h *hub) fail(err error) {
	if h.err == nil {
		h.err = err
		close(h.failCh)
	}
}

// collective deposits buf for the member's next collective and waits for
// the others; compute runs once, on the last arrival, under the lock.
func (m *Member) collective(ctx context.Context, op string, buf []float32, root int, compute func(r *round), finish func(r *round)) error {
	h := m.h
	seq := m.seq
	m.seq++
	h.mu.Lock()
	if h.err != nil {
		err := h.err
		h.mu.Unlock()
		return err
	}
	r := h.rounds[seq]
	if r == nil {
		r = &round{op: op, n: len(buf), root: root, bufs: make([][]float32, len(h.ranks)), done: make(chan struct{})}
		h.rounds[seq] = r
	}
	if r.op != op || r.n != len(buf) || r.root != root {
		err := fmt.Errorf("inproc: group %q: member %d (rank %d) called %s of %d elements as collective #%d, another member called %s of %d (root %d): calls out of order",
			h.name, m.me, h.ranks[m.me], op, len(buf), seq, r.op, r.n, r.root)
		h.fail(err)
		h.mu.Unlock()
		return err
	}
	r.bufs[m.me] = buf
	r.arrived++
	if r.arrived == len(h.ranks) {
		if compute != nil {
			compute(r)
		}
		close(r.done)
	}
	h.mu.Unlock()
	timer := time.NewTimer(h.timeout)
	defer timer.Stop()
	select {
	case <-r.done:
	case <-h.failCh:
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.err
	case <-ctx.Done():
		return m.failWith(fmt.Errorf("inproc: group %q: member %d (rank %d) %s: %w", h.name, m.me, h.ranks[m.me], op, ctx.Err()))
	case <-timer.C:
		return m.failWith(fmt.Errorf("inproc: group %q: member %d (rank %d) waited %v in %s #%d for %d other members",
			h.name, m.me, h.ranks[m.me], h.timeout, op, seq, len(h.ranks)-r.arrived))
	}
	if finish != nil {
		finish(r)
	}
	h.mu.Lock()
	r.left++
	if r.left == len(h.ranks) {
		delete(h.rounds, seq)
	}
	h.mu.Unlock()
	return nil
}

func (m *Member) failWith(err error) error {
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	m.h.fail(err)
	return m.h.err
}

func reduce(r *round, op parallel.ReduceOp) {
	res := make([]float32, r.n)
	copy(res, r.bufs[0])
	for _, b := range r.bufs[1:] {
		for i, v := range b {
			switch op {
			case parallel.Max:
				if math.IsNaN(float64(v)) || v > res[i] {
					res[i] = v
				}
			default:
				res[i] += v
			}
		}
	}
	if op == parallel.Mean {
		d := float32(len(r.bufs))
		for i := range res {
			res[i] /= d
		}
	}
	r.result = res
}

// AllReduce implements parallel.Comm.
func (m *Member) AllReduce(ctx context.Context, buf []float32, op parallel.ReduceOp) error {
	return m.collective(ctx, "all-reduce/"+op.String(), buf, 0, func(r *round) { reduce(r, op) },
		func(r *round) { copy(buf, r.result) })
}

// ReduceScatter implements parallel.Comm.
func (m *Member) ReduceScatter(ctx context.Context, buf []float32, op parallel.ReduceOp) ([]float32, error) {
	off, n := parallel.ShardRange(len(buf), m.Size(), m.me)
	err := m.collective(ctx, "reduce-scatter/"+op.String(), buf, 0, func(r *round) { reduce(r, op) },
		func(r *round) { copy(buf[off:off+n], r.result[off:off+n]) })
	if err != nil {
		return nil, err
	}
	return buf[off : off+n], nil
}

// AllGather implements parallel.Comm.
func (m *Member) AllGather(ctx context.Context, buf []float32) error {
	size := m.Size()
	return m.collective(ctx, "all-gather", buf, 0, func(r *round) {
		r.result = make([]float32, r.n)
		for i, b := range r.bufs {
			off, n := parallel.ShardRange(r.n, size, i)
			copy(r.result[off:off+n], b[off:off+n])
		}
	}, func(r *round) { copy(buf, r.result) })
}

// Broadcast implements parallel.Comm; root is a global rank.
func (m *Member) Broadcast(ctx context.Context, buf []float32, root int) error {
	ri := -1
	for i, r := range m.h.ranks {
		if r == root {
			ri = i
		}
	}
	if ri < 0 {
		return fmt.Errorf("inproc: broadcast: root %d is not in group %q (ranks %v)", root, m.h.name, m.h.ranks)
	}
	return m.collective(ctx, "broadcast", buf, root, func(r *round) {
		r.result = append([]float32(nil), r.bufs[ri]...)
	}, func(r *round) { copy(buf, r.result) })
}

// Barrier implements parallel.Comm.
func (m *Member) Barrier(ctx context.Context) error {
	return m.collective(ctx, "barrier", nil, 0, nil, nil)
}

func (m *Member) index(rank int, op string) (int, error) {
	for i, r := range m.h.ranks {
		if r == rank {
			return i, nil
		}
	}
	return 0, fmt.Errorf("inproc: %s: rank %d is not in group %q (ranks %v)", op, rank, m.h.name, m.h.ranks)
}

func (h *hub) box(src, dst int) *mailbox {
	k := [2]int{src, dst}
	b := h.boxes[k]
	if b == nil {
		b = &mailbox{ready: make(chan struct{}, 1)}
		h.boxes[k] = b
	}
	return b
}

// Send implements parallel.Comm: it copies buf and returns at once.
func (m *Member) Send(ctx context.Context, dst int, buf []float32) error {
	i, err := m.index(dst, "send")
	if err != nil {
		return err
	}
	h := m.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return h.err
	}
	b := h.box(m.me, i)
	b.msgs = append(b.msgs, append([]float32(nil), buf...))
	select {
	case b.ready <- struct{}{}:
	default:
	}
	return nil
}

// Recv implements parallel.Comm.
func (m *Member) Recv(ctx context.Context, src int, buf []float32) error {
	i, err := m.index(src, "recv")
	if err != nil {
		return err
	}
	h := m.h
	timer := time.NewTimer(h.timeout)
	defer timer.Stop()
	for {
		h.mu.Lock()
		if h.err != nil {
			err := h.err
			h.mu.Unlock()
			return err
		}
		b := h.box(i, m.me)
		if len(b.msgs) > 0 {
			msg := b.msgs[0]
			b.msgs = b.msgs[1:]
			h.mu.Unlock()
			if len(msg) != len(buf) {
				return m.failWith(fmt.Errorf("inproc: group %q: member %d received %d elements from rank %d into a buffer of %d", h.name, m.me, len(msg), src, len(buf)))
			}
			copy(buf, msg)
			return nil
		}
		ready := b.ready
		h.mu.Unlock()
		select {
		case <-ready:
		case <-h.failCh:
		case <-ctx.Done():
			return m.failWith(fmt.Errorf("inproc: group %q: member %d recv from rank %d: %w", h.name, m.me, src, ctx.Err()))
		case <-timer.C:
			return m.failWith(fmt.Errorf("inproc: group %q: member %d waited %v for a message from rank %d", h.name, m.me, h.timeout, src))
		}
	}
}
