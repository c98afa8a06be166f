// Package fast owns Loom's fast CPU implementation of tensor.Kernels: SGEMM
// through tensor/gemm, and fused, multi-threaded elementwise, normalization,
// attention and loss kernels, all on one worker pool (tensor/internal/par)
// that the GEMM engine shares.
//
// Every op partitions its work into tasks of a fixed size that depends only
// on the shapes, never on the thread count or on timing, and reduces partial
// results in task order, so outputs are bit-identical run to run and across
// thread counts.
package fast

import (
	"runtime"

	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/tensor/gemm"
)

// Kernels is the fast tensor.Kernels. It is NOT safe for concurrent use:
// calls must come from one goroutine at a time (the model's step is
// sequential), because ops share the worker pool and per-worker scratch.
type Kernels struct {
	eng  *gemm.Engine
	pool *pool

	// Per-op task descriptors, reused so that dispatching allocates nothing.
	rmsF     rmsFwdTask
	rmsB     rmsBwdTask
	ropeT    ropeTask
	swiF     swigluFwdTask
	swiB     swigluBwdTask
	adam     adamTask
	ssq      sumSqTask
	scal     scaleTask
	ce       ceTask
	attF     attnFwdTask
	attnMode attnMode // the attention forward's kernel (attention.go)
	attB     attnBwdTask
	parts    []float64 // per-task float64 partials (CE losses, sum of squares)
	pbuf     []float32 // per-chunk float32 partials (RMSNorm dw)
}

var _ tensor.Kernels = (*Kernels)(nil)

// New returns kernels that use threads threads (≤ 0: runtime.NumCPU()),
// float32 GEMMs and the derived cache blocking. Close releases the worker
// goroutines.
func New(threads int) *Kernels {
	k, err := NewWith(Options{Threads: threads})
	if err != nil {
		panic(err)
	}
	return k
}

// Options configure Kernels.
type Options struct {
	// Threads is the number of threads (≤ 0: runtime.NumCPU()).
	Threads int
	// Precision of the model's matrix multiplies (Sgemm): gemm.FP32, or
	// gemm.BF16 for bf16 mixed precision — A and B rounded to bfloat16
	// as they are packed, products accumulated in float32, outputs float32
	// (PyTorch's autocast(bfloat16) for matmuls, without rounding the
	// outputs). Attention's tile products, normalization, softmax, the
	// loss and the optimizer stay float32 either way.
	Precision gemm.Precision
	// Tune enables GEMM autotuning with an on-disk cache (gemm.TuneOptions);
	// nil uses the derived blocking.
	Tune *gemm.TuneOptions
}

// NewWith returns kernels configured by o.
func NewWith(o Options) (*Kernels, error) {
	threads := o.Threads
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	p := newPool(threads)
	eng, err := gemm.NewWith(gemm.Options{Precision: o.Precision, Tune: o.Tune, Pool: p.par})
	if err != nil {
		p.close()
		return nil, err
	}
	return &Kernels{eng: eng, pool: p}, nil
}

// GEMM returns the engine behind Sgemm (for its kernel, plans and tuning
// status in logs and benchmarks).
func (k *Kernels) GEMM() *gemm.Engine { return k.eng }

// Threads reports the number of threads the kernels use.
func (k *Kernels) Threads() int { return k.pool.n }

// Close stops the worker goroutines; k must not be used afterwards.
func (k *Kernels) Close() {
	k.eng.Close()
	k.pool.close()
}

// Sgemm implements tensor.Kernels.Sgemm with the packed, multi-threaded
// engine of tensor/gemm.
func (k *Kernels) Sgemm(transA, transB bool, m, n, kk int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	k.eng.Sgemm(transA, transB, m, n, kk, alpha, a, lda, b, ldb, beta, c, ldc)
}

// float64s returns k.parts resized to n (grown on demand, never shrunk).
func (k *Kernels) float64s(n int) []float64 {
	if cap(k.parts) < n {
		k.parts = make([]float64, n)
	}
	return k.parts[:n]
}

func (k *Kernels) float32s(n int) []float32 {
	if cap(k.pbuf) < n {
		k.pbuf = make([]float32, n)
	}
	return k.pbuf[:n]
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
