package fast

import (
	"github.com/loomtrain/loom/tensor/gemm"
	"github.com/loomtrain/loom/tensor/internal/par"
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

// pool runs tasks on the threads of a par.Pool (shared with the GEMM
// engine), giving each thread its worker scratch.
type pool struct {
	n       int
	par     *par.Pool
	workers []*worker
	adapt   adapter // reused so that dispatching allocates nothing
}

// adapter runs a task on the par.Pool with the thread's worker.
type adapter struct {
	t  task
	ws []*worker
}

func (a *adapter) Run(w, i int) { a.t.run(a.ws[w], i) }

func newPool(n int) *pool {
	p := &pool{n: n, par: par.New(n), workers: make([]*worker, n)}
	for i := range p.workers {
		p.workers[i] = &worker{tiles: gemm.NewTiles()}
	}
	p.adapt.ws = p.workers
	return p
}

// run calls t.run for every index in [0, n) and returns when all are done.
func (p *pool) run(t task, n int) {
	p.adapt.t = t
	p.par.Run(&p.adapt, n)
	p.adapt.t = nil
}

func (p *pool) close() { p.par.Close() }
