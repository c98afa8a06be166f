package main

import (
	"fmt"
	"io"
	"sort"
	"syscall"
	"time"

	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/tensor/gemm"
)

// timedKernels wraps tensor.Kernels and accumulates the wall time and the
// process CPU time of every call per op and shape, for `loom bench step
// --breakdown`. Timing each call costs two clock reads and two getrusage
// calls (≈ 1 µs), small next to the ops it wraps. On a loaded machine the
// CPU time is the steadier figure: it leaves out the time the threads
// waited for a core (with several threads it is their sum).
type timedKernels struct {
	tensor.Kernels
	ops   map[opKey]*opTime
	order []opKey
}

// opKey names an op and, for GEMMs, its shape.
type opKey struct {
	op    string
	shape string
}

type opTime struct {
	calls int
	sec   float64 // wall
	cpu   float64 // process CPU (user + system), all threads
	flops float64
}

// mark is the wall and CPU clocks at the start of a call.
type mark struct {
	wall time.Time
	cpu  float64
}

func now() mark { return mark{time.Now(), processCPU()} }

// processCPU is the CPU time of the process so far, in seconds.
func processCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)*1e-6
}

func newTimedKernels(k tensor.Kernels) *timedKernels {
	return &timedKernels{Kernels: k, ops: map[opKey]*opTime{}}
}

func (t *timedKernels) add(op, shape string, start mark, flops float64) {
	d := time.Since(start.wall).Seconds()
	cpu := processCPU() - start.cpu
	key := opKey{op, shape}
	o := t.ops[key]
	if o == nil {
		o = &opTime{}
		t.ops[key] = o
		t.order = append(t.order, key)
	}
	o.calls++
	o.sec += d
	o.cpu += cpu
	o.flops += flops
}

// reset forgets what was timed so far (the warm-up steps).
func (t *timedKernels) reset() {
	clear(t.ops)
	t.order = t.order[:0]
}

// print writes one line per op (GEMMs per shape), largest total first, as a
// share of total step time over steps steps.
func (t *timedKernels) print(w io.Writer, steps int, stepSec float64) {
	keys := append([]opKey(nil), t.order...)
	sort.SliceStable(keys, func(i, j int) bool { return t.ops[keys[i]].sec > t.ops[keys[j]].sec })
	var total, totalCPU float64
	for _, k := range keys {
		total += t.ops[k].sec
		totalCPU += t.ops[k].cpu
	}
	n := float64(steps)
	fmt.Fprintf(w, "breakdown per step (%d steps; kernels %.1f ms wall, %.1f ms CPU, of a %.1f ms step):\n", steps, 1e3*total/n, 1e3*totalCPU/n, 1e3*stepSec)
	fmt.Fprintf(w, "  %-18s %-20s %5s %10s %6s %10s %6s %9s %9s\n", "op", "shape", "calls", "wall ms", "wall%", "CPU ms", "CPU%", "GFLOP/s", "/CPU s")
	for _, k := range keys {
		o := t.ops[k]
		rate, cpuRate := "", ""
		if o.flops > 0 && o.sec > 0 {
			rate = fmt.Sprintf("%.1f", o.flops/o.sec/1e9)
		}
		if o.flops > 0 && o.cpu > 0 {
			cpuRate = fmt.Sprintf("%.1f", o.flops/o.cpu/1e9)
		}
		fmt.Fprintf(w, "  %-18s %-20s %5d %10.2f %5.1f%% %10.2f %5.1f%% %9s %9s\n", k.op, k.shape, o.calls/steps,
			1e3*o.sec/n, 100*o.sec/total, 1e3*o.cpu/n, 100*o.cpu/max(totalCPU, 1e-9), rate, cpuRate)
	}
}

func (t *timedKernels) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	s := now()
	t.Kernels.Sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
	t.add("sgemm", gemm.Shape{TransA: transA, TransB: transB, M: m, N: n, K: k}.String(), s, 2*float64(m)*float64(n)*float64(k))
}

func (t *timedKernels) RMSNormForward(out, rstd, x, w []float32, rows, dim int, eps float32) {
	s := now()
	t.Kernels.RMSNormForward(out, rstd, x, w, rows, dim, eps)
	t.add("rmsnorm-fwd", "", s, 0)
}

func (t *timedKernels) RMSNormBackward(dx, dw, dout, x, w, rstd []float32, rows, dim int) {
	s := now()
	t.Kernels.RMSNormBackward(dx, dw, dout, x, w, rstd, rows, dim)
	t.add("rmsnorm-bwd", "", s, 0)
}

func (t *timedKernels) RoPEForward(x, cos, sin []float32, batch, seqLen, heads, headDim int) {
	s := now()
	t.Kernels.RoPEForward(x, cos, sin, batch, seqLen, heads, headDim)
	t.add("rope-fwd", "", s, 0)
}

func (t *timedKernels) RoPEBackward(dx, cos, sin []float32, batch, seqLen, heads, headDim int) {
	s := now()
	t.Kernels.RoPEBackward(dx, cos, sin, batch, seqLen, heads, headDim)
	t.add("rope-bwd", "", s, 0)
}

func (t *timedKernels) SwiGLUForward(out, gate, up []float32) {
	s := now()
	t.Kernels.SwiGLUForward(out, gate, up)
	t.add("swiglu-fwd", "", s, 0)
}

func (t *timedKernels) SwiGLUBackward(dgate, dup, dout, gate, up []float32) {
	s := now()
	t.Kernels.SwiGLUBackward(dgate, dup, dout, gate, up)
	t.add("swiglu-bwd", "", s, 0)
}

// attnFlops counts the causal attention's multiply FLOPs: QKᵀ and PV over
// the lower triangle (T(T+1)/2 pairs), 2 FLOPs per multiply-add.
func attnFlops(batch, seqLen, heads, headDim int, passes float64) float64 {
	return passes * 2 * float64(batch*heads*headDim) * float64(seqLen) * float64(seqLen+1) / 2
}

func (t *timedKernels) AttentionForward(out, lse, q, k, v []float32, batch, seqLen, heads, kvHeads, headDim int) {
	s := now()
	t.Kernels.AttentionForward(out, lse, q, k, v, batch, seqLen, heads, kvHeads, headDim)
	t.add("attention-fwd", fmt.Sprintf("b%d t%d h%d/%d d%d", batch, seqLen, heads, kvHeads, headDim), s, attnFlops(batch, seqLen, heads, headDim, 2))
}

func (t *timedKernels) AttentionBackward(dq, dk, dv, dout, out, lse, q, k, v []float32, batch, seqLen, heads, kvHeads, headDim int) {
	s := now()
	t.Kernels.AttentionBackward(dq, dk, dv, dout, out, lse, q, k, v, batch, seqLen, heads, kvHeads, headDim)
	// Recomputed QKᵀ, then dV, dP, dQ and dK.
	t.add("attention-bwd", fmt.Sprintf("b%d t%d h%d/%d d%d", batch, seqLen, heads, kvHeads, headDim), s, attnFlops(batch, seqLen, heads, headDim, 5))
}

func (t *timedKernels) CrossEntropy(dlogits, logits []float32, targets []int32, rows, vocab int, gradScale float32) float64 {
	s := now()
	l := t.Kernels.CrossEntropy(dlogits, logits, targets, rows, vocab, gradScale)
	t.add("cross-entropy", "", s, 0)
	return l
}

func (t *timedKernels) AdamW(p, g, m, v []float32, h tensor.AdamWHyper) {
	s := now()
	t.Kernels.AdamW(p, g, m, v, h)
	t.add("adamw", "", s, 0)
}

func (t *timedKernels) SumSquares(x []float32) float64 {
	s := now()
	r := t.Kernels.SumSquares(x)
	t.add("sum-squares", "", s, 0)
	return r
}

func (t *timedKernels) Scale(x []float32, alpha float32) {
	s := now()
	t.Kernels.Scale(x, alpha)
	t.add("scale", "", s, 0)
}
