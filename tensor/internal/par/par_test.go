package par

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// countTask records which indices ran and on which worker.
type countTask struct {
	hits    []atomic.Int32
	workers []atomic.Int32
	sleep   time.Duration
}

func (t *countTask) Run(w, i int) {
	if t.sleep > 0 {
		time.Sleep(t.sleep)
	}
	t.hits[i].Add(1)
	t.workers[w].Add(1)
}

func newCount(n, threads int) *countTask {
	return &countTask{hits: make([]atomic.Int32, n), workers: make([]atomic.Int32, threads)}
}

// TestRunEveryIndexOnce: every index runs exactly once per Run, on a
// worker in range, for op sizes below, at and above the thread count, in
// long sequences of back-to-back ops (the spinning hand-off) and after
// pauses long enough for every thread to park.
func TestRunEveryIndexOnce(t *testing.T) {
	for _, threads := range []int{1, 2, 3, 8} {
		p := New(threads)
		for round := range 300 {
			n := []int{1, 2, 3, 5, 17, 64}[round%6]
			c := newCount(n, threads)
			if round%50 == 49 {
				time.Sleep(2 * time.Millisecond) // past the spin: helpers park
			}
			p.Run(c, n)
			for i := range c.hits {
				if h := c.hits[i].Load(); h != 1 {
					t.Fatalf("threads %d round %d: index %d of %d ran %d times", threads, round, i, n, h)
				}
			}
		}
		p.Close()
		p.Close() // idempotent
	}
}

// TestHelpersShareWork: with slow tasks, the helpers take indices too.
func TestHelpersShareWork(t *testing.T) {
	p := New(2)
	defer p.Close()
	c := newCount(8, 2)
	c.sleep = time.Millisecond
	p.Run(c, 8)
	if c.workers[1].Load() == 0 {
		t.Fatalf("helper ran none of 8 slow indices (worker counts %d, %d)", c.workers[0].Load(), c.workers[1].Load())
	}
}

// TestCloseStopsHelpers: Close returns with the helper goroutines gone,
// whether they were spinning or parked.
func TestCloseStopsHelpers(t *testing.T) {
	before := runtime.NumGoroutine()
	for _, park := range []bool{false, true} {
		p := New(4)
		p.Run(newCount(4, 4), 4)
		if park {
			time.Sleep(5 * time.Millisecond)
		}
		p.Close()
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Fatalf("%d goroutines after Close, %d before", g, before)
	}
}

func TestRunOnClosedPanics(t *testing.T) {
	p := New(2)
	p.Close()
	defer func() {
		if recover() == nil {
			t.Fatal("Run on a closed pool did not panic")
		}
	}()
	p.Run(newCount(2, 2), 2)
}

type nop struct{}

func (nop) Run(w, i int) {}

// BenchmarkDispatch is one op with no work on 2 threads, back to back.
func BenchmarkDispatch(b *testing.B) {
	p := New(2)
	defer p.Close()
	for b.Loop() {
		p.Run(nop{}, 2)
	}
}

// TestKeepSpinning checks the busy-wait's bound: off when the pool does not
// spin, the clock started at iteration 0 and read every spinClockEvery
// iterations, and the wait over once that clock passes the bound.
func TestKeepSpinning(t *testing.T) {
	p := &Pool{}
	var since time.Time
	if p.keepSpinning(&since, 0) {
		t.Fatal("a pool with no spin bound spun")
	}
	p.spin = time.Hour
	if !p.keepSpinning(&since, 0) || since.IsZero() {
		t.Fatal("iteration 0 did not start the spin clock")
	}
	if !p.keepSpinning(&since, spinClockEvery) {
		t.Fatal("stopped spinning within the bound")
	}
	since = time.Now().Add(-2 * time.Hour)
	if !p.keepSpinning(&since, spinClockEvery+1) {
		t.Fatal("read the clock between clock iterations")
	}
	if p.keepSpinning(&since, 2*spinClockEvery) {
		t.Fatal("kept spinning past the bound")
	}
}
