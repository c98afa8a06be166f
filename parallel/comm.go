package parallel

import (
	"context"
	"sync"
	"time"
)

// Comm is what the model, ZeRO and the trainer use to talk to the other
// members of one process group. *Group (gRPC and the transports beneath
// it) implements it for real workers; parallel/inproc implements it
// between goroutines of one process for fast unit tests. The semantics are
// Group's: collectives are called by every member in the same order, any
// length works, all-reduce results are bit-identical on every member,
// ReduceScatter and AllGather shard buffers by ShardRange, and Send/Recv
// address members by global rank.
type Comm interface {
	// Size is the number of members; Index this member's position in
	// Spec().Ranks; Rank its global rank.
	Size() int
	Index() int
	Rank() int
	// Spec describes the group (name, members and algorithm settings).
	Spec() GroupSpec
	AllReduce(ctx context.Context, buf []float32, op ReduceOp) error
	ReduceScatter(ctx context.Context, buf []float32, op ReduceOp) ([]float32, error)
	AllGather(ctx context.Context, buf []float32) error
	Broadcast(ctx context.Context, buf []float32, root int) error
	Barrier(ctx context.Context) error
	Send(ctx context.Context, dst int, buf []float32) error
	Recv(ctx context.Context, src int, buf []float32) error
}

var _ Comm = (*Group)(nil)

// Op names an operation counted by a Counter.
type Op string

// Operations a Counter tells apart.
const (
	OpAllReduce     Op = "all-reduce"
	OpReduceScatter Op = "reduce-scatter"
	OpAllGather     Op = "all-gather"
	OpBroadcast     Op = "broadcast"
	OpBarrier       Op = "barrier"
	OpSend          Op = "send"
	OpRecv          Op = "recv"
)

// OpCount is what a Counter saw of one operation.
type OpCount struct {
	Calls    int64
	Elements int64 // float32 elements of the buffers passed
	Sent     int64 // bytes this member sent (see BytesSent)
	Time     time.Duration
}

// Counter is a Comm that counts every call it passes on to the wrapped
// Comm: calls, buffer elements, bytes sent (by the algorithm the group
// runs) and time spent. It is safe for concurrent use; Take returns and
// resets the counts (a trainer takes them once per step).
type Counter struct {
	Comm
	mu     sync.Mutex
	counts map[Op]OpCount
}

// NewCounter wraps c.
func NewCounter(c Comm) *Counter { return &Counter{Comm: c, counts: map[Op]OpCount{}} }

func (c *Counter) add(op Op, n int, start time.Time) {
	d := time.Since(start)
	c.mu.Lock()
	oc := c.counts[op]
	oc.Calls++
	oc.Elements += int64(n)
	oc.Sent += BytesSent(c.Comm, op, n)
	oc.Time += d
	c.counts[op] = oc
	c.mu.Unlock()
}

// Take returns the counts since the last Take and resets them.
func (c *Counter) Take() map[Op]OpCount {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.counts
	c.counts = map[Op]OpCount{}
	return out
}

// AllReduce counts and forwards.
func (c *Counter) AllReduce(ctx context.Context, buf []float32, op ReduceOp) error {
	defer c.add(OpAllReduce, len(buf), time.Now())
	return c.Comm.AllReduce(ctx, buf, op)
}

// ReduceScatter counts and forwards.
func (c *Counter) ReduceScatter(ctx context.Context, buf []float32, op ReduceOp) ([]float32, error) {
	defer c.add(OpReduceScatter, len(buf), time.Now())
	return c.Comm.ReduceScatter(ctx, buf, op)
}

// AllGather counts and forwards.
func (c *Counter) AllGather(ctx context.Context, buf []float32) error {
	defer c.add(OpAllGather, len(buf), time.Now())
	return c.Comm.AllGather(ctx, buf)
}

// Broadcast counts and forwards.
func (c *Counter) Broadcast(ctx context.Context, buf []float32, root int) error {
	defer c.add(OpBroadcast, len(buf), time.Now())
	return c.Comm.Broadcast(ctx, buf, root)
}

// Barrier counts and forwards.
func (c *Counter) Barrier(ctx context.Context) error {
	defer c.add(OpBarrier, 0, time.Now())
	return c.Comm.Barrier(ctx)
}

// Send counts and forwards.
func (c *Counter) Send(ctx context.Context, dst int, buf []float32) error {
	defer c.add(OpSend, len(buf), time.Now())
	return c.Comm.Send(ctx, dst, buf)
}

// Recv counts and forwards.
func (c *Counter) Recv(ctx context.Context, src int, buf []float32) error {
	defer c.add(OpRecv, len(buf), time.Now())
	return c.Comm.Recv(ctx, src, buf)
}

// BytesSent is the payload member c sends in operation op on n float32
// elements, following the group's algorithms: a ring reduce-scatter or
// all-gather sends every segment but one, 4·n·(size−1)/size bytes (by
// ring and by halving-doubling alike); an all-reduce above SmallBytes (or
// forced to Ring or HalvingDoubling) twice that, and by
// recursive doubling the whole buffer per round (plus the fold-in of
// ranks beyond the largest power of two), by Direct the whole buffer to
// each other member; a broadcast is counted as a
// ring all-gather of the buffer; Send sends 4·n.
func BytesSent(c Comm, op Op, n int) int64 {
	size, me := c.Size(), c.Index()
	if size <= 1 || n == 0 {
		if op == OpSend {
			return 4 * int64(n)
		}
		return 0
	}
	ring := 4 * int64(n) * int64(size-1) / int64(size)
	switch op {
	case OpReduceScatter, OpAllGather:
		return ring
	case OpSend:
		return 4 * int64(n)
	case OpBroadcast:
		return ring
	case OpAllReduce:
		if a, ok := c.(interface{ AllReduceAlgorithm(int) Algorithm }); ok && a.AllReduceAlgorithm(n) == Direct {
			return 4 * int64(n) * int64(size-1)
		}
		spec := c.Spec()
		small := spec.SmallBytes
		if small == 0 {
			small = DefaultSmallBytes
		}
		if spec.AllReduce == Ring || spec.AllReduce == HalvingDoubling || (spec.AllReduce == Auto && 4*n > small) {
			return 2 * ring
		}
		p, rounds := 1, 0
		for p*2 <= size {
			p, rounds = p*2, rounds+1
		}
		switch {
		case me >= p:
			return 4 * int64(n)
		case me < size-p:
			return 4 * int64(n) * int64(rounds+1)
		}
		return 4 * int64(n) * int64(rounds)
	}
	return 0
}
