package parallel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
	"unsafe"
)

// DefaultBucketBytes is the gradient bucket size of a BucketReducer: large
// enough that per-operation latency (tens of µs on shm and tcp) is small
// beside transfer time, small enough that a model's units — a decoder
// block, the head — make a bucket each. The last bucket is what the step
// waits for after the backward pass (its all-reduce cannot overlap
// anything), so buckets that merged the last two blocks (1 MiB, the
// default before) kept both blocks' all-reduce on the step's path.
const DefaultBucketBytes = 256 << 10

// BucketReducer averages a flat gradient buffer across a data-parallel
// group in buckets that start while the backward pass is still running, as
// PyTorch DDP does. The backward pass reports finished ranges with Ready, in
// descending, contiguous order; the reducer merges them into buckets of at
// least BucketBytes and all-reduces each bucket on its own goroutine, in the
// same order on every rank. Wait flushes the last bucket and returns when
// every range is averaged.
//
// A range of rows of which most are zero on every rank — an embedding
// table's gradient, whose rows only the batch's tokens touch — may be
// reported with ReadyRows instead: only the rows some rank has non-zero
// are exchanged (DeepSpeed's sparse gradients for embeddings, without the
// index lists: the ranks agree on the rows with one small all-reduce of
// per-row flags, which can carry a few values to average too:
// ReadyRowsWith). With the default job's batch a rank's 1,024 tokens touch
// about 15% of a 4,096-row table, so the step's last, exposed all-reduce
// moves a sixth of the bytes.
//
// Ready, ReadyRows, Wait and Stats must be called from one goroutine (the
// training loop's).
type BucketReducer struct {
	g           Comm
	grads       []float32
	bucketElems int

	pending  [2]int // merged range not yet enqueued; empty when lo == hi
	queue    chan bucket
	done     chan struct{}
	flags    []float32 // ReadyRows' per-row flags
	rowIdx   []int     // ReadyRows' rows exchanged
	mu       sync.Mutex
	err      error
	ops      []opSpan
	started  bool
	ctx      context.Context
	backward time.Time // when the backward pass ended (set by Wait)
}

// bucket is a range of the gradient buffer to average; rowLen > 0 marks a
// row-sparse range of rows of rowLen elements (ReadyRows), and mean the
// values averaged with its row flags (ReadyRowsWith).
type bucket struct {
	lo, hi, rowLen int
	mean           []float32
}

// opSpan is one bucket's all-reduce: its size and when it ran.
type opSpan struct {
	bytes      int64
	sent       int64 // BytesSent of its all-reduces
	start, end time.Time
}

// ReduceStats describes the gradient exchange of one step.
type ReduceStats struct {
	Buckets int
	Bytes   int64         // bytes all-reduced (this rank's buffer; of a row-sparse range, the rows exchanged and the flags)
	Sent    int64         // bytes this rank sent doing so (BytesSent of each all-reduce)
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
	r.queue = make(chan bucket, 64)
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
		var err error
		bytes, sent := int64(b.hi-b.lo)*4, BytesSent(r.g, OpAllReduce, b.hi-b.lo)
		if b.rowLen > 0 {
			bytes, sent, err = r.reduceRows(b)
		} else {
			err = r.g.AllReduce(r.ctx, r.grads[b.lo:b.hi], Mean)
		}
		end := time.Now()
		r.mu.Lock()
		if err != nil {
			r.err = fmt.Errorf("gradient bucket [%d,%d): %w", b.lo, b.hi, err)
		}
		r.ops = append(r.ops, opSpan{bytes: bytes, sent: sent, start: start, end: end})
		r.mu.Unlock()
	}
}

// reduceRows averages the rows of b that some rank has non-zero: every
// rank flags its non-zero rows, the flags are all-reduced (Sum: a row's
// count of ranks that have it, exact in float32; b.mean rides along and
// is divided by the group's size after, as Mean does), the flagged rows
// are moved to the front of the range, that prefix is all-reduced, and
// the rows go back to their places; the others are zero on every rank,
// which is their mean. It returns the bytes all-reduced and sent.
func (r *BucketReducer) reduceRows(b bucket) (bytes, sent int64, err error) {
	rows := r.grads[b.lo:b.hi]
	n := len(rows) / b.rowLen
	if cap(r.flags) < n+len(b.mean) {
		r.flags = make([]float32, n+len(b.mean))
	}
	buf := r.flags[:n+len(b.mean)]
	flags := buf[:n]
	for i := range flags {
		flags[i] = 0
		if nonZero(rows[i*b.rowLen : (i+1)*b.rowLen]) {
			flags[i] = 1
		}
	}
	copy(buf[n:], b.mean)
	if err := r.g.AllReduce(r.ctx, buf, Sum); err != nil {
		return 0, 0, err
	}
	size := float32(r.g.Size())
	for i := range b.mean {
		b.mean[i] = buf[n+i] / size
	}
	idx := r.rowIdx[:0]
	for i, f := range flags {
		if f != 0 {
			idx = append(idx, i)
		}
	}
	r.rowIdx = idx
	row := func(i int) []float32 { return rows[i*b.rowLen : (i+1)*b.rowLen] }
	for k, i := range idx { // forward: row k is free once rows < k moved
		if k != i {
			copy(row(k), row(i))
		}
	}
	packed := rows[:len(idx)*b.rowLen]
	if err := r.g.AllReduce(r.ctx, packed, Mean); err != nil {
		return 0, 0, err
	}
	for k := len(idx) - 1; k >= 0; k-- { // backward: row i ≥ k holds nothing still needed
		if i := idx[k]; i != k {
			copy(row(i), row(k))
		}
	}
	// Only the packed prefix held moved rows: clear those no rank flagged
	// (every row past it was zero and still is).
	for k := range len(idx) {
		if flags[k] == 0 {
			clear(row(k))
		}
	}
	return 4 * int64(len(buf)+len(packed)), BytesSent(r.g, OpAllReduce, len(buf)) + BytesSent(r.g, OpAllReduce, len(packed)), nil
}

// nonZero reports whether any element of x has a bit set (−0 counts: a
// row flagged needlessly is only exchanged, never wrong).
func nonZero(x []float32) bool {
	for len(x) >= 8 {
		w := unsafe.Slice((*uint64)(unsafe.Pointer(&x[0])), 4)
		if w[0]|w[1]|w[2]|w[3] != 0 {
			return true
		}
		x = x[8:]
	}
	for _, v := range x {
		if math.Float32bits(v) != 0 {
			return true
		}
	}
	return false
}

// Ready reports that the backward pass is done with grads[lo:hi]. Ranges
// must arrive in descending order, each ending where the previous began.
func (r *BucketReducer) Ready(lo, hi int) {
	r.check("Ready", lo, hi)
	r.pending[0] = lo
	if r.pending[1]-r.pending[0] >= r.bucketElems {
		r.flush()
	}
}

// ReadyRows reports, like Ready, that the backward pass is done with
// grads[lo:hi], a range of rows of rowLen elements most of which are zero
// on every rank (see BucketReducer): it is exchanged on its own, only the
// rows some rank has non-zero. rowLen must divide hi − lo.
func (r *BucketReducer) ReadyRows(lo, hi, rowLen int) { r.ReadyRowsWith(lo, hi, rowLen, nil) }

// ReadyRowsWith is ReadyRows that also averages mean over the group in
// place, in the same all-reduce as the rows' flags: a step's loss gets
// its mean over data-parallel ranks without a round trip of its own after
// the last bucket. mean must not be touched until Wait returns; it holds
// the mean then (each element's sum over the ranks divided by their
// number, the bits of AllReduce's Mean at 2 ranks).
func (r *BucketReducer) ReadyRowsWith(lo, hi, rowLen int, mean []float32) {
	if rowLen <= 0 || (hi-lo)%rowLen != 0 {
		panic(fmt.Sprintf("parallel: BucketReducer.ReadyRowsWith(%d, %d, %d): rows of %d elements do not tile the range", lo, hi, rowLen, rowLen))
	}
	r.check("ReadyRows", lo, hi)
	r.flush()
	r.queue <- bucket{lo: lo, hi: hi, rowLen: rowLen, mean: mean}
	r.pending = [2]int{lo, lo}
}

// check panics unless [lo, hi) continues the pending range.
func (r *BucketReducer) check(what string, lo, hi int) {
	if !r.started {
		panic("parallel: BucketReducer." + what + " before Start")
	}
	if hi != r.pending[0] || lo > hi {
		panic(fmt.Sprintf("parallel: BucketReducer.%s(%d, %d) does not continue the pending range %v", what, lo, hi, r.pending))
	}
}

func (r *BucketReducer) flush() {
	if r.pending[0] < r.pending[1] {
		r.queue <- bucket{lo: r.pending[0], hi: r.pending[1]}
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
		st.Sent += op.sent
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
