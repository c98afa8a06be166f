package model

import (
	"context"
	"sync/atomic"
	"time"
)

// Backward overlap (Megatron-LM's asynchronous input-gradient all-reduce,
// Narayanan et al. 2021 §4): the input gradient of a column-parallel pair
// is reduced over the tensor-parallel group while the pair's weight
// gradients are computed, since neither needs the other. The reduction
// runs in a goroutine over a buffer nothing else touches until it is
// joined, and it is always joined before the pass returns, so at most one
// tensor-parallel collective is in flight per group and the group's call
// order is the same on every rank.

// pendingGrad is a reduceGrad in flight.
type pendingGrad struct {
	done       chan struct{} // nil: finished when started (no group)
	out        []float32
	err        error
	start, end time.Time
}

// startReduceGrad begins reduceGrad(partial) and returns at once; join
// gives its result. Without a tensor-parallel group there is nothing to
// reduce and partial is the result.
func (m *Model) startReduceGrad(ctx context.Context, partial []float32, sp bool, what site) *pendingGrad {
	if m.tp == nil {
		m.noGroup = pendingGrad{out: partial} // allocation-free without a group
		return &m.noGroup
	}
	return m.inFlight(func() ([]float32, error) { return m.reduceGrad(ctx, partial, sp, what) })
}

// startAllReduce begins allReduce(buf) (a group is required) and returns
// at once; join gives buf back.
func (m *Model) startAllReduce(ctx context.Context, buf []float32, what site) *pendingGrad {
	return m.inFlight(func() ([]float32, error) { return buf, m.allReduce(ctx, buf, what) })
}

// inFlight runs f in a goroutine, to be joined.
func (m *Model) inFlight(f func() ([]float32, error)) *pendingGrad {
	p := &pendingGrad{done: make(chan struct{}), start: time.Now()}
	go func() {
		defer close(p.done)
		p.out, p.err = f()
		p.end = time.Now()
	}()
	return p
}

// join waits for p and counts the part of its flight that the caller's
// compute hid (from its start to when the caller began to wait, or to
// its end if that came first).
func (m *Model) join(p *pendingGrad) ([]float32, error) {
	if p.done == nil {
		return p.out, p.err
	}
	waited := time.Now()
	<-p.done
	if p.end.Before(waited) {
		waited = p.end
	}
	m.tpHidden.Add(int64(waited.Sub(p.start)))
	return p.out, p.err
}

// tpOverlap accumulates the hidden time of joined reductions (ns).
type tpOverlap = atomic.Int64

// TakeTPOverlap returns how long tensor-parallel collectives ran hidden
// behind compute since the last call, and resets it. The
// trainer subtracts it from the tensor-parallel time to get what was
// exposed.
func (m *Model) TakeTPOverlap() time.Duration { return time.Duration(m.tpHidden.Swap(0)) }
