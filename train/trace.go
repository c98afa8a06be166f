package train

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/schedule"
	"github.com/loomtrain/loom/timeline"
)

// span is one timed event of a step (timeline.Event).
type span = timeline.Event

// actionSpan is the span of a schedule action.
func actionSpan(cat string, a schedule.Action, start, end time.Time) span {
	return span{Name: a.String(), Cat: cat, Kind: a.Kind.String(), Stage: a.Stage, Micro: a.MB, Start: start, End: end}
}

// recorder collects a step's spans; safe for concurrent use (collectives
// run on the ZeRO queue's goroutine).
type recorder struct {
	mu    sync.Mutex
	spans []span
}

func (r *recorder) add(s span) {
	r.mu.Lock()
	r.spans = append(r.spans, s)
	r.mu.Unlock()
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.spans = r.spans[:0]
	r.mu.Unlock()
}

func (r *recorder) take() []span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]span(nil), r.spans...)
}

// tracedComm records every collective of a group in the step's timeline.
// Send and Recv pass through (the pipeline records its own transfers).
type tracedComm struct {
	parallel.Comm
	rec *recorder
}

func traced(c parallel.Comm, rec *recorder) parallel.Comm {
	if c == nil {
		return nil
	}
	return &tracedComm{Comm: c, rec: rec}
}

func (t *tracedComm) span(op string, n int, start time.Time) {
	t.rec.add(span{Name: fmt.Sprintf("%s %s (%d)", op, t.Spec().Name, n), Cat: timeline.Collective, Kind: op, Stage: -1, Micro: -1,
		Start: start, End: time.Now()})
}

func (t *tracedComm) AllReduce(ctx context.Context, buf []float32, op parallel.ReduceOp) error {
	defer t.span("all-reduce", len(buf), time.Now())
	return t.Comm.AllReduce(ctx, buf, op)
}

func (t *tracedComm) ReduceScatter(ctx context.Context, buf []float32, op parallel.ReduceOp) ([]float32, error) {
	defer t.span("reduce-scatter", len(buf), time.Now())
	return t.Comm.ReduceScatter(ctx, buf, op)
}

func (t *tracedComm) AllGather(ctx context.Context, buf []float32) error {
	defer t.span("all-gather", len(buf), time.Now())
	return t.Comm.AllGather(ctx, buf)
}

func (t *tracedComm) Broadcast(ctx context.Context, buf []float32, root int) error {
	defer t.span("broadcast", len(buf), time.Now())
	return t.Comm.Broadcast(ctx, buf, root)
}

func (t *tracedComm) Barrier(ctx context.Context) error {
	defer t.span("barrier", 0, time.Now())
	return t.Comm.Barrier(ctx)
}
