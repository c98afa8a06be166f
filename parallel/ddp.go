package parallel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultBucketBytes is the gradient bucket size of a BucketReducer: large
// enough that per-operation latency is small beside transfer time, small
// enough that the first bucket starts early in the backward pass.
const DefaultBucketBytes = 1 << 20

// BucketReducer averages a flat gradient buffer across a data-parallel
// group in buckets that start while the backward pass is still running, as
// PyTorch DDP does. The backward pass reports finished ranges with Ready, in
// descending, contiguous order; the reducer merges them into buckets of at
// least BucketBytes and all-reduces each bucket on its own goroutine, in the
// same order on every rank. Wait flushes the last bucket and returns when
// every range is averaged.
//
// Ready, Wait and Stats must be called from one goroutine (the training
// loop's).
type BucketReducer struct {
	g           Comm
	grads       []float32
	bucketElems int

	pending  [2]int // merged range not yet enqueued; empty when lo == hi
	queue    chan [2]int
	done     chan struct{}
	mu       sync.Mutex
	err      error
	ops      []opSpan
	started  bool
	ctx      context.Context
	backward time.Time // when the backward pass ended (set by Wait)
}

// opSpan is one bucket's all-reduce: its size and when it ran.
type opSpan struct {
	bytes      int64
	start, end time.Time
}

// ReduceStats describes the gradient exchange of one step.
type ReduceStats struct {
	Buckets int
	Bytes   int64         // bytes all-reduced (this rank's buffer)
	Comm    time.Duration // total time inside all-reduce calls
	// Overlapped is the part of Comm that ran before the backward pass
	// ended (before Wait was called), i.e. hidden behind computation.
	Overlapped time.Duration
	// Exposed is how long Wait blocked the step after the backward pass.
	Exposed time.Duration
}

// NewBucketReducer returns a reducer of grads over g. bucketBytes ≤ 0 means
// DefaultBucketBytes.
func NewBucketReducer(g Comm, grads []float32, bucketBytes int) *BucketReducer {
	if bucketBytes <= 0 {
		bucketBytes = DefaultBucketBytes
	}
	return &BucketReducer{g: g, grads: grads, bucketElems: max(bucketBytes/4, 1)}
}

// Start begins a step's exchange; ctx bounds every all-reduce of the step.
func (r *BucketReducer) Start(ctx context.Context) {
	r.ctx = ctx
	r.pending = [2]int{len(r.grads), len(r.grads)}
	r.queue = make(chan [2]int, 64)
	r.done = make(chan struct{})
	r.ops = r.ops[:0]
	r.err = nil
	r.started = true
	go r.loop()
}

func (r *BucketReducer) loop() {
	defer close(r.done)
	for b := range r.queue {
		r.mu.Lock()
		failed := r.err != nil
		r.mu.Unlock()
		if failed {
			continue
		}
		start := time.Now()
		err := r.g.AllReduce(r.ctx, r.grads[b[0]:b[1]], Mean)
		end := time.Now()
		r.mu.Lock()
		if err != nil {
			r.err = fmt.Errorf("gradient bucket [%d,%d): %w", b[0], b[1], err)
		}
		r.ops = append(r.ops, opSpan{bytes: int64(b[1]-b[0]) * 4, start: start, end: end})
		r.mu.Unlock()
	}
}

// Ready reports that the backward pass is done with grads[lo:hi]. Ranges
// must arrive in descending order, each ending where the previous began.
func (r *BucketReducer) Ready(lo, hi int) {
	if !r.started {
		panic("parallel: BucketReducer.Ready before Start")
	}
	if hi != r.pending[0] || lo > hi {
		panic(fmt.Sprintf("parallel: BucketReducer.Ready(%d, %d) does not continue the pending range %v", lo, hi, r.pending))
	}
	r.pending[0] = lo
	if r.pending[1]-r.pending[0] >= r.bucketElems {
		r.flush()
	}
}

func (r *BucketReducer) flush() {
	if r.pending[0] < r.pending[1] {
		r.queue <- r.pending
	}
	r.pending[1] = r.pending[0]
}

// Wait enqueues the last bucket and waits until every bucket is averaged.
// Ranges never reported are all-reduced too, so the whole buffer is always
// covered.
func (r *BucketReducer) Wait() (ReduceStats, error) {
	if !r.started {
		return ReduceStats{}, errors.New("parallel: BucketReducer.Wait before Start")
	}
	r.backward = time.Now()
	r.pending[0] = 0
	r.flush()
	close(r.queue)
	<-r.done
	r.started = false
	exposed := time.Since(r.backward)
	r.mu.Lock()
	defer r.mu.Unlock()
	st := ReduceStats{Buckets: len(r.ops), Exposed: exposed}
	for _, op := range r.ops {
		st.Bytes += op.bytes
		st.Comm += op.end.Sub(op.start)
		if op.start.Before(r.backward) {
			end := op.end
			if end.After(r.backward) {
				end = r.backward
			}
			st.Overlapped += end.Sub(op.start)
		}
	}
	return st, r.err
}
