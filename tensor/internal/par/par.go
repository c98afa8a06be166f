// Package par owns the worker threads of Loom's CPU kernels: one pool per
// tensor/fast.Kernels that every parallel op runs on — elementwise ops,
// attention and the GEMM engine's blocks alike — so two sets of helper
// goroutines never compete for the same cores.
//
// A step calls hundreds of short ops in a row (a `tiny` step: ~200, many
// under 100 µs). Waking a parked thread costs tens of microseconds on a
// VM (a futex wake, often an IPI to a halted vCPU), so between ops the
// helpers spin for a bounded while (spinWait, 1 ms) before they park, and the
// caller spins likewise while it waits for the last helper. Indices are
// handed out through an atomic counter: whichever thread is free takes
// the next one, so a helper that is slow to wake costs at most its share.
package par

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
)

// Task is one parallel op: Run is called once for every index in [0, n)
// given to Pool.Run, on some worker w in [0, Threads). Which worker runs
// an index depends on timing, so Run must write only outputs owned by the
// index; per-worker state (indexed by w) is scratch.
type Task interface {
	Run(w, i int)
}

// spinWait bounds the busy-wait of a helper for the next op, and of the
// caller for the helpers: long enough to bridge the gaps between a step's
// kernels, short enough that an idle pool soon parks. It was 2¹⁶ atomic
// loads (≈ 65 µs); `tiny` at 2 threads then lost a futex wake-up of a
// parked helper at op after op (the gaps between its ~200 short ops run
// past 65 µs): 1 ms took its step from MFU 29.0–34.2% to 38.4–42.2% in four
// paired rounds (`loom bench step examples/tiny.yaml --threads 2 --steps
// 30`, Sapphire-Rapids-class Xeon VM, 02:36 UTC), and 256 µs fell between;
// in three more rounds (02:39) 34.3–35.3% → 39.7–40.5%, and `small` at 2
// threads 900–936 → 977–990 tokens/s (2 rounds).
const spinWait = time.Millisecond

// spinClockEvery is how many spin iterations pass between clock reads.
const spinClockEvery = 256

// Pool runs Tasks on its threads: the caller of Run plus Threads()−1 helper
// goroutines that live until Close. It is not safe for concurrent use:
// one Run at a time.
//
// An op is claimed index by index through one atomic word, next =
// epoch<<40 | n<<20 | i: a thread takes index i of op epoch by a CAS that
// also checks the epoch, so a helper that wakes late (or is descheduled)
// finds the op finished or already moved on and takes nothing, and Run
// waits only for the indices actually taken (done == n), never for a
// helper that has not shown up.
type Pool struct {
	n       int
	spin    time.Duration // busy-wait bound: spinWait, or 0 when the threads outnumber GOMAXPROCS
	helpers []*helper     // index 0 unused: the caller is worker 0

	cur  Task          // written before the op is published; read after a claim
	next atomic.Uint64 // epoch<<40 | n<<20 | next index
	done atomic.Int64  // indices of the current op that have returned

	waiting atomic.Bool   // the caller is parked in Run
	wake    chan struct{} // wakes the caller (buffered 1)
	closed  atomic.Bool
}

type helper struct {
	parked atomic.Bool
	wake   chan struct{} // buffered 1
	exited chan struct{} // closed when the goroutine exits
}

const (
	maxThreads = 255
	// MaxTasks is the most indices one Run takes (20 bits of next).
	MaxTasks  = 1<<20 - 1
	fieldMask = 1<<20 - 1
)

// New returns a pool of threads threads (at least 1, at most 255).
func New(threads int) *Pool {
	threads = min(max(threads, 1), maxThreads)
	p := &Pool{n: threads, helpers: make([]*helper, threads), wake: make(chan struct{}, 1)}
	if runtime.GOMAXPROCS(0) >= threads {
		// A spinning helper holds a P: with fewer Ps than threads it
		// would keep the thread it waits for from running.
		p.spin = spinWait
	}
	for i := 1; i < threads; i++ {
		h := &helper{wake: make(chan struct{}, 1), exited: make(chan struct{})}
		p.helpers[i] = h
		go p.loop(i, h)
	}
	return p
}

// Threads reports the pool's thread count, the caller included.
func (p *Pool) Threads() int { return p.n }

// Run calls t.Run(w, i) for every i in [0, n), spread over the threads,
// and returns when all calls have returned. The caller runs indices too
// (as worker 0). n must not exceed MaxTasks.
func (p *Pool) Run(t Task, n int) {
	if n <= 0 {
		return
	}
	if n > MaxTasks {
		panic(fmt.Sprintf("par: Run of %d indices; at most %d", n, MaxTasks))
	}
	if n == 1 || p.n == 1 {
		for i := 0; i < n; i++ {
			t.Run(0, i)
		}
		return
	}
	if p.closed.Load() {
		panic("par: Run on a closed Pool")
	}
	p.cur = t
	p.done.Store(0)
	epoch := p.next.Load()>>40 + 1
	p.next.Store(epoch<<40 | uint64(n)<<20) // publishes cur and done
	for i := 1; i < min(p.n, n); i++ {
		if h := p.helpers[i]; h.parked.Load() && h.parked.CompareAndSwap(true, false) {
			h.wake <- struct{}{}
		}
	}
	p.work(0, epoch)
	var since time.Time
	for spin := 0; p.done.Load() != int64(n); spin++ {
		if p.keepSpinning(&since, spin) {
			continue
		}
		p.waiting.Store(true)
		if p.done.Load() == int64(n) { // done meanwhile: take back the flag, or the wake-up sent for it
			if !p.waiting.CompareAndSwap(true, false) {
				<-p.wake
			}
			break
		}
		<-p.wake
		break
	}
	p.cur = nil
}

// work claims and runs indices of op epoch until none are left (or the
// op is no longer current).
func (p *Pool) work(w int, epoch uint64) {
	for {
		v := p.next.Load()
		i, n := int(v&fieldMask), int(v>>20&fieldMask)
		if v>>40 != epoch || i >= n {
			return
		}
		if !p.next.CompareAndSwap(v, v+1) {
			continue
		}
		p.cur.Run(w, i)
		if p.done.Add(1) == int64(n) && w != 0 && p.waiting.Load() && p.waiting.CompareAndSwap(true, false) {
			p.wake <- struct{}{}
		}
	}
}

// loop is helper w: wait for an op (spinning, then parked), take indices
// of it, repeat until Close.
func (p *Pool) loop(w int, h *helper) {
	defer close(h.exited)
	var seen uint64 // epoch 0: before the first Run (which may come before this goroutine starts)
	for {
		epoch := p.await(h, seen)
		if p.closed.Load() {
			return
		}
		p.work(w, epoch)
		seen = epoch
	}
}

// await returns the epoch of the latest op once it differs from seen (or
// anything once the pool is closed).
func (p *Pool) await(h *helper, seen uint64) uint64 {
	var since time.Time
	for spin := 0; ; spin++ {
		e := p.next.Load() >> 40
		if e != seen || p.closed.Load() {
			return e
		}
		if p.keepSpinning(&since, spin) {
			continue
		}
		h.parked.Store(true)
		if e := p.next.Load() >> 40; e != seen || p.closed.Load() {
			if !h.parked.CompareAndSwap(true, false) {
				<-h.wake // Run or Close is sending one: consume it
			}
			return e
		}
		<-h.wake
		spin = -1 // the next iteration is 0: a fresh spin clock
	}
}

// keepSpinning reports whether a busy-wait at iteration i should go on:
// iteration 0 starts its clock (*since), and every spinClockEvery-th
// iteration reads it against p.spin, so the bound is time, whatever an
// iteration costs (under -race an atomic load is tens of times slower).
func (p *Pool) keepSpinning(since *time.Time, i int) bool {
	switch {
	case p.spin <= 0:
		return false
	case i == 0:
		*since = time.Now()
		return true
	case i%spinClockEvery != 0:
		return true
	}
	return time.Since(*since) < p.spin
}

// Close stops the helper goroutines and waits for them to exit; the pool
// must not be used afterwards. Close is idempotent.
func (p *Pool) Close() {
	if p.closed.Swap(true) {
		return
	}
	for _, h := range p.helpers[1:] {
		if h.parked.Load() && h.parked.CompareAndSwap(true, false) {
			h.wake <- struct{}{}
		}
		<-h.exited
	}
}
