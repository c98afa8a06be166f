package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/schedule"
	"github.com/loomtrain/loom/timeline"
)

// tagFloats is the length of a pipeline message's tag: (stage, kind,
// micro-batch) of the send, as uint32 bit patterns after the payload.
const tagFloats = 3

// p2p moves one pipeline rank's activations and gradients to and from its
// neighbours over the pipeline group: asynchronous, tagged and bounded.
// A goroutine per neighbour receives that neighbour's messages ahead, in
// the neighbour's send order (the transport matches a pair's messages in
// order; schedule.Incoming says which they are), into buffers from a pool
// of schedule.Buffers — the most that can be waiting under any timing, so
// receiving never waits for a buffer the compute loop would free only
// later — and checks each message's tag; the compute loop's receive action
// takes its message by tag. A send copies the payload and its tag into
// one of plan.SendBuffers buffers per neighbour, which a goroutine hands
// to the transport while compute goes on. Every call is bounded by the
// step's context and the group's timeout. Not safe for concurrent use
// beyond its own goroutines: one compute loop drives it.
type p2p struct {
	c      parallel.Comm
	sched  *schedule.Schedule
	me     int   // pipeline coordinate
	ranks  []int // global rank by pipeline coordinate
	floats int   // message length, tag included
	in     map[int]*inbox
	out    map[int]*outbox

	running bool // start was called and finish not yet

	mu     sync.Mutex
	spans  []span        // the transfers of the step, for the timeline
	err    error         // the step's first transfer failure
	failed chan struct{} // closed on it
}

// inbox receives one neighbour's messages.
type inbox struct {
	src   int
	order []schedule.Action       // the neighbour's sends to this rank, in its order
	index map[schedule.Action]int // position of each send in order
	pool  chan []float32
	got   []chan []float32 // by position: the received message
	done  chan struct{}
	bytes int64
}

// outbox sends to one neighbour.
type outbox struct {
	dst   int
	pool  chan []float32
	queue chan []float32
	done  chan struct{}
	bytes int64
}

func newP2P(c parallel.Comm, s *schedule.Schedule, me int, ranks []int, payload int) *p2p {
	x := &p2p{c: c, sched: s, me: me, ranks: ranks, floats: payload + tagFloats, in: map[int]*inbox{}, out: map[int]*outbox{}}
	for q := range s.PP {
		if q == me {
			continue
		}
		if order := s.Incoming(me, q); len(order) > 0 {
			ib := &inbox{src: q, order: order, index: map[schedule.Action]int{}, pool: make(chan []float32, s.Buffers(me, q))}
			for i, a := range order {
				ib.index[a] = i
			}
			for range cap(ib.pool) {
				ib.pool <- make([]float32, x.floats)
			}
			x.in[q] = ib
		}
		if len(s.Incoming(q, me)) > 0 {
			ob := &outbox{dst: q, pool: make(chan []float32, 2)}
			for range cap(ob.pool) {
				ob.pool <- make([]float32, x.floats)
			}
			x.out[q] = ob
		}
	}
	return x
}

// bytes is the memory of the message buffers.
func (x *p2p) bytes() int64 {
	n := 0
	for _, ib := range x.in {
		n += cap(ib.pool)
	}
	for _, ob := range x.out {
		n += cap(ob.pool)
	}
	return 4 * int64(n) * int64(x.floats)
}

// start launches the step's receivers and senders.
func (x *p2p) start(ctx context.Context) {
	x.running = true
	x.mu.Lock()
	x.spans = x.spans[:0]
	x.err, x.failed = nil, make(chan struct{})
	x.mu.Unlock()
	for _, ib := range x.in {
		ib.got = make([]chan []float32, len(ib.order))
		for i := range ib.got {
			ib.got[i] = make(chan []float32, 1)
		}
		ib.done, ib.bytes = make(chan struct{}), 0
		go x.receive(ctx, ib)
	}
	for _, ob := range x.out {
		ob.queue = make(chan []float32, cap(ob.pool))
		ob.done, ob.bytes = make(chan struct{}), 0
		go x.send(ctx, ob)
	}
}

func encodeTag(buf []float32, a schedule.Action) {
	t := buf[len(buf)-tagFloats:]
	t[0], t[1], t[2] = math.Float32frombits(uint32(a.Stage)), math.Float32frombits(uint32(a.Kind)), math.Float32frombits(uint32(a.MB))
}

func decodeTag(buf []float32) schedule.Action {
	t := buf[len(buf)-tagFloats:]
	return schedule.Action{Stage: int(math.Float32bits(t[0])), Kind: schedule.Kind(math.Float32bits(t[1])), MB: int(math.Float32bits(t[2]))}
}

// receive takes ib's messages in the sender's order.
func (x *p2p) receive(ctx context.Context, ib *inbox) {
	defer close(ib.done)
	src := x.ranks[ib.src]
	for i, want := range ib.order {
		var buf []float32
		select {
		case buf = <-ib.pool:
		case <-ctx.Done():
			x.fail(fmt.Errorf("pipeline: waiting for a buffer to receive %v from rank %d: %w", want, src, ctx.Err()))
			return
		}
		start := time.Now()
		if err := x.c.Recv(ctx, src, buf); err != nil {
			x.fail(fmt.Errorf("pipeline: receiving %v from rank %d: %w", want, src, err))
			return
		}
		x.record(span{Name: "recv " + want.String(), Cat: timeline.Recv, Kind: timeline.Recv, Stage: want.Stage, Micro: want.MB, Start: start, End: time.Now()})
		if got := decodeTag(buf); got != want {
			x.fail(fmt.Errorf("pipeline: rank %d sent %v where its schedule sends %v next (do both ranks run the same plan?): %w", src, got, want, schedule.ErrInvalid))
			return
		}
		ib.bytes += 4 * int64(len(buf))
		ib.got[i] <- buf
	}
}

// send hands ob's queued messages to the transport.
func (x *p2p) send(ctx context.Context, ob *outbox) {
	defer close(ob.done)
	dst := x.ranks[ob.dst]
	failed := false
	for buf := range ob.queue {
		if !failed {
			start := time.Now()
			if err := x.c.Send(ctx, dst, buf); err != nil {
				x.fail(fmt.Errorf("pipeline: sending %v to rank %d: %w", decodeTag(buf), dst, err))
				failed = true
			} else {
				a := decodeTag(buf)
				x.record(span{Name: "send " + a.String(), Cat: timeline.Send, Kind: timeline.Send, Stage: a.Stage, Micro: a.MB, Start: start, End: time.Now()})
				ob.bytes += 4 * int64(len(buf))
			}
		}
		ob.pool <- buf
	}
}

// fail records the step's first transfer failure and wakes the compute
// loop, whatever it waits on.
func (x *p2p) fail(err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.err == nil {
		x.err = err
		close(x.failed)
	}
}

// failure is the recorded failure.
func (x *p2p) failure() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.err
}

func (x *p2p) record(s span) {
	x.mu.Lock()
	x.spans = append(x.spans, s)
	x.mu.Unlock()
}

// post sends payload as action a (SEND_F or SEND_B) to the peer stage's
// rank: it waits for a free buffer, copies, and returns.
func (x *p2p) post(ctx context.Context, a schedule.Action, payload []float32) error {
	_, peer := x.sched.Peer(a)
	ob := x.out[peer]
	if ob == nil {
		return fmt.Errorf("pipeline: %v: no messages to pipeline rank %d in the schedule", a, peer)
	}
	var buf []float32
	select {
	case buf = <-ob.pool:
	case <-x.failed:
		return x.failure()
	case <-ctx.Done():
		return fmt.Errorf("pipeline: %v: waiting for a send buffer: %w", a, ctx.Err())
	}
	copy(buf, payload)
	encodeTag(buf, a)
	ob.queue <- buf
	return nil
}

// take waits for the message receive action a (RECV_F or RECV_B) takes and
// copies its payload into dst.
func (x *p2p) take(ctx context.Context, a schedule.Action, dst []float32) error {
	send := schedule.Match(a)
	_, peer := x.sched.Peer(a)
	ib := x.in[peer]
	if ib == nil {
		return fmt.Errorf("pipeline: %v: nothing comes from pipeline rank %d in the schedule", a, peer)
	}
	i, ok := ib.index[send]
	if !ok {
		return fmt.Errorf("pipeline: %v: rank %d's schedule does not send %v", a, x.ranks[peer], send)
	}
	var buf []float32
	select {
	case buf = <-ib.got[i]:
	case <-x.failed:
		return x.failure()
	case <-ctx.Done():
		return fmt.Errorf("pipeline: %v: waiting for rank %d: %w", a, x.ranks[peer], ctx.Err())
	}
	copy(dst, buf[:len(buf)-tagFloats])
	ib.pool <- buf
	return nil
}

// finish waits for the step's transfers to end: every send handed to the
// transport, every receiver done (a failed step drains what it can within
// ctx). It returns the bytes sent and received and the first error; after
// the first call it does nothing until the next start.
func (x *p2p) finish(ctx context.Context) (sent, received int64, err error) {
	if !x.running {
		return 0, 0, nil
	}
	x.running = false
	var errs []error
	for _, ob := range x.out {
		close(ob.queue)
		<-ob.done
		sent += ob.bytes
	}
	for _, ib := range x.in {
		select {
		case <-ib.done:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("pipeline: receiver from rank %d: %w", x.ranks[ib.src], ctx.Err()))
			continue
		}
		received += ib.bytes
		// Messages received but never taken (a failed step) go back.
		for _, ch := range ib.got {
			select {
			case buf := <-ch:
				ib.pool <- buf
			default:
			}
		}
	}
	return sent, received, errors.Join(append([]error{x.failure()}, errs...)...)
}

// takeSpans returns the step's transfers.
func (x *p2p) takeSpans() []span {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]span(nil), x.spans...)
}
