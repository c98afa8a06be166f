package zero

import (
	"context"
	"sync"
	"time"

	"github.com/loomtrain/loom/parallel"
)

// queue runs a step's collectives one after another on its own goroutine,
// in the order they were enqueued. Because every rank enqueues in program
// order, every rank issues the group's collectives in the same order, as
// parallel.Group requires, while the compute goroutine runs ahead.
type queue struct {
	ctx     context.Context
	g       parallel.Comm
	ops     chan qop
	done    chan struct{}
	pending sync.WaitGroup

	mu    sync.Mutex
	err   error
	spans []span
}

// qop is one queued collective: run, then after (always), then signal.
type qop struct {
	run    func(ctx context.Context, g parallel.Comm) error
	sent   int64
	after  func()
	signal chan error
}

type span struct {
	sent       int64
	start, end time.Time
}

func newQueue(ctx context.Context, g parallel.Comm, capacity int) *queue {
	q := &queue{ctx: ctx, g: g, ops: make(chan qop, capacity), done: make(chan struct{})}
	go q.loop()
	return q
}

func (q *queue) loop() {
	defer close(q.done)
	for op := range q.ops {
		start := time.Now()
		err := op.run(q.ctx, q.g)
		end := time.Now()
		q.mu.Lock()
		if err != nil && q.err == nil {
			q.err = err
		}
		q.spans = append(q.spans, span{op.sent, start, end})
		q.mu.Unlock()
		if op.after != nil {
			op.after()
		}
		if op.signal != nil {
			op.signal <- err
		}
		q.pending.Done()
	}
}

// enqueue adds a collective that sends sent bytes from this rank; after
// runs when it has finished (even on failure), and its error goes to the
// optional signal channel, which must have room for it.
func (q *queue) enqueue(run func(context.Context, parallel.Comm) error, sent int64, after func(), signal ...chan error) {
	op := qop{run: run, sent: sent, after: after}
	if len(signal) > 0 {
		op.signal = signal[0]
	}
	q.pending.Add(1)
	q.ops <- op
}

// do runs a collective after those queued and waits for it.
func (q *queue) do(run func(context.Context, parallel.Comm) error, sent int64, after func()) error {
	ch := make(chan error, 1)
	q.enqueue(run, sent, after, ch)
	return <-ch
}

// drain waits for every queued collective and returns the first error.
func (q *queue) drain() error {
	q.pending.Wait()
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err
}

// close stops the goroutine after the queued collectives.
func (q *queue) close() {
	close(q.ops)
	<-q.done
}

// stats returns the bytes sent, the seconds inside collectives and the
// part of those before backwardEnd.
func (q *queue) stats(backwardEnd time.Time) (sent int64, comm, overlap float64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, s := range q.spans {
		sent += s.sent
		comm += s.end.Sub(s.start).Seconds()
		if s.start.Before(backwardEnd) {
			end := s.end
			if end.After(backwardEnd) {
				end = backwardEnd
			}
			overlap += end.Sub(s.start).Seconds()
		}
	}
	return sent, comm, overlap
}
