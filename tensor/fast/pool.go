package fast

import (
	"sync"
	"sync/atomic"

	"github.com/loomtrain/loom/tensor/gemm"
)

// task is one parallel op: run is called once for every index in [0, n),
// on some worker. Which worker runs an index depends on timing, so run must
// write only to outputs owned by the index (per-worker state is scratch).
type task interface {
	run(w *worker, i int)
}

// worker is one thread's scratch: float32 buffers grown on demand and a
// single-threaded tile multiplier for the products inside fused kernels
// (attention).
type worker struct {
	tiles *gemm.Tiles
	buf   []float32
}

// scratch returns the worker's buffer resized to n, growing it if needed.
// Callers carve it into sub-slices; contents are unspecified.
func (w *worker) scratch(n int) []float32 {
	if cap(w.buf) < n {
		w.buf = make([]float32, n+n/4)
	}
	return w.buf[:n]
}

// pool runs tasks on n threads: the caller plus n-1 goroutines that live
// until close. Indices are handed out through an atomic counter, so load
// balances dynamically while each index's result stays the same.
type pool struct {
	n       int
	workers []*worker
	wake    []chan struct{} // one per helper goroutine (index ≥ 1)
	wg      sync.WaitGroup

	cur    task
	ntasks int64
	next   atomic.Int64
}

func newPool(n int) *pool {
	p := &pool{n: n, workers: make([]*worker, n), wake: make([]chan struct{}, n)}
	for i := range p.workers {
		p.workers[i] = &worker{tiles: gemm.NewTiles()}
	}
	for i := 1; i < n; i++ {
		p.wake[i] = make(chan struct{})
		go p.helper(i)
	}
	return p
}

func (p *pool) helper(i int) {
	w := p.workers[i]
	for range p.wake[i] {
		p.work(w)
		p.wg.Done()
	}
}

func (p *pool) work(w *worker) {
	for {
		i := p.next.Add(1) - 1
		if i >= p.ntasks {
			return
		}
		p.cur.run(w, int(i))
	}
}

// run calls t.run for every index in [0, n) and returns when all are done.
func (p *pool) run(t task, n int) {
	if n <= 0 {
		return
	}
	if n == 1 || p.n == 1 {
		w := p.workers[0]
		for i := 0; i < n; i++ {
			t.run(w, i)
		}
		return
	}
	p.cur, p.ntasks = t, int64(n)
	p.next.Store(0)
	helpers := min(p.n, n) - 1
	p.wg.Add(helpers)
	for i := 1; i <= helpers; i++ {
		p.wake[i] <- struct{}{}
	}
	p.work(p.workers[0])
	p.wg.Wait()
	p.cur = nil
}

func (p *pool) close() {
	for _, ch := range p.wake[1:] {
		close(ch)
	}
}
