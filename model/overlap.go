package model

import (
	"context"
	"time"
)

// Communication overlap. A tensor-parallel collective whose result the
// next ops do not need runs in a goroutine while they compute:
//   - in backward, the input gradient of a column-parallel pair is reduced
//     while the pair's weight gradients are computed (Megatron-LM's
//     asynchronous all-reduce, Narayanan et al. 2021 §4);
//   - in forward, one half of the batch's row-parallel output is
//     all-reduced while the other half computes (blockForwardHalves).
//
// The collective's buffer is touched by nothing else until it is joined,
// and it is always joined before the pass returns and before the next
// collective on the group starts, so at most one is in flight per group
// and every rank calls the group in one order.

// pending is a collective in flight, or (fl nil) a result known at once.
type pending struct {
	fl  *flight
	out []float32
}

// flight is what the goroutine of a pending collective fills in.
type flight struct {
	done       chan struct{}
	out        []float32
	err        error
	start, end time.Time
}

// startReduceGrad begins reduceGrad(partial) and returns at once; join
// gives its result. Without a tensor-parallel group there is nothing to
// reduce and partial is the result (no goroutine, no allocation).
func (m *Model) startReduceGrad(ctx context.Context, partial []float32, sp bool, what site) pending {
	if m.tp == nil {
		return pending{out: partial}
	}
	return m.inFlight(func() ([]float32, error) { return m.reduceGrad(ctx, partial, sp, what) })
}

// startAllReduce begins allReduce(buf) (a group is required) and returns
// at once; join gives buf back.
func (m *Model) startAllReduce(ctx context.Context, buf []float32, what site) pending {
	return m.inFlight(func() ([]float32, error) { return buf, m.allReduce(ctx, buf, what) })
}

// inFlight runs f in a goroutine, to be joined.
func (m *Model) inFlight(f func() ([]float32, error)) pending {
	fl := &flight{done: make(chan struct{}), start: time.Now()}
	go func() {
		defer close(fl.done)
		fl.out, fl.err = f()
		fl.end = time.Now()
	}()
	return pending{fl: fl}
}

// join waits for p and counts the part of its flight that the caller's
// compute hid (from its start to when the caller began to wait, or to
// its end if that came first).
func (m *Model) join(p pending) ([]float32, error) {
	fl := p.fl
	if fl == nil {
		return p.out, nil
	}
	waited := time.Now()
	<-fl.done
	if fl.end.Before(waited) {
		waited = fl.end
	}
	m.tpHidden.Add(int64(waited.Sub(fl.start)))
	return fl.out, fl.err
}

// TakeTPOverlap returns how long tensor-parallel collectives ran hidden
// behind compute since the last call, and resets it. The trainer
// subtracts it from the tensor-parallel time to get what was exposed.
func (m *Model) TakeTPOverlap() time.Duration { return time.Duration(m.tpHidden.Swap(0)) }
