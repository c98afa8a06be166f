package inproc

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomtrain/loom/parallel"
)

// onAll runs f on every member concurrently and returns their errors.
func onAll(ms []*Member, f func(i int, m *Member) error) []error {
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i, m)
		}()
	}
	wg.Wait()
	return errs
}

func noErr(t *testing.T, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("member %d: %v", i, err)
		}
	}
}

// Collectives give the reduced, scattered and gathered values a
// parallel.Group gives, identical on every member, for odd lengths.
func TestCollectives(t *testing.T) {
	ctx := context.Background()
	const n = 7
	ms := NewGroup("g", []int{4, 9, 2}, Options{})
	bufs := make([][]float32, len(ms))
	for i := range ms {
		bufs[i] = make([]float32, n)
		for j := range bufs[i] {
			bufs[i][j] = float32(i*10 + j)
		}
	}
	noErr(t, onAll(ms, func(i int, m *Member) error { return m.AllReduce(ctx, bufs[i], parallel.Sum) }))
	for i := range ms {
		for j, v := range bufs[i] {
			if want := float32(30 + 3*j); v != want {
				t.Fatalf("member %d element %d: %v, want %v", i, j, v, want)
			}
		}
	}
	noErr(t, onAll(ms, func(i int, m *Member) error { return m.AllReduce(ctx, bufs[i], parallel.Max) }))
	shards := make([][]float32, len(ms))
	noErr(t, onAll(ms, func(i int, m *Member) error {
		var err error
		shards[i], err = m.ReduceScatter(ctx, bufs[i], parallel.Mean)
		return err
	}))
	for i, s := range shards {
		off, cnt := parallel.ShardRange(n, 3, i)
		if len(s) != cnt || &s[0] != &bufs[i][off] || s[0] != float32(30+3*off) {
			t.Fatalf("member %d shard %v, want elements [%d,+%d) of the mean", i, s, off, cnt)
		}
	}
	for i := range bufs {
		for j := range bufs[i] {
			if off, cnt := parallel.ShardRange(n, 3, i); j < off || j >= off+cnt {
				bufs[i][j] = -1
			}
		}
	}
	noErr(t, onAll(ms, func(i int, m *Member) error { return m.AllGather(ctx, bufs[i]) }))
	for i := range ms {
		for j, v := range bufs[i] {
			if v != float32(30+3*j) {
				t.Fatalf("all-gather member %d element %d: %v", i, j, v)
			}
		}
	}
	noErr(t, onAll(ms, func(i int, m *Member) error {
		b := []float32{float32(i)}
		if err := m.Broadcast(ctx, b, 9); err != nil {
			return err
		}
		if b[0] != 1 {
			return errors.New("broadcast from rank 9 (index 1) did not arrive")
		}
		return m.Barrier(ctx)
	}))
	if ms[1].Rank() != 9 || ms[1].Index() != 1 || ms[1].Size() != 3 || ms[1].Spec().MyRank != 9 {
		t.Fatalf("member 1: rank %d index %d size %d", ms[1].Rank(), ms[1].Index(), ms[1].Size())
	}
}

// Mismatched calls, a member that never arrives and a cancelled context
// fail the whole group with errors naming the member.
func TestFailures(t *testing.T) {
	ctx := context.Background()
	ms := New("g", 2)
	errs := onAll(ms, func(i int, m *Member) error { return m.AllReduce(ctx, make([]float32, 2+i), parallel.Sum) })
	if errs[0] == nil && errs[1] == nil || !strings.Contains(errors.Join(errs...).Error(), "out of order") {
		t.Fatalf("mismatched lengths: %v", errs)
	}
	if err := ms[0].Barrier(ctx); err == nil {
		t.Fatal("a failed group accepted another call")
	}
	ms = NewGroup("h", []int{0, 1}, Options{Timeout: 20 * time.Millisecond})
	if err := ms[0].AllReduce(ctx, []float32{1}, parallel.Sum); err == nil || !strings.Contains(err.Error(), "waited 20ms") {
		t.Fatalf("lone member: %v", err)
	}
	ms = New("c", 2)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := ms[0].Barrier(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

// Send and Recv match in order per pair; a length mismatch is an error.
func TestSendRecv(t *testing.T) {
	ctx := context.Background()
	ms := New("p", 2)
	for i := range 3 {
		if err := ms[0].Send(ctx, 1, []float32{float32(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		b := make([]float32, 1)
		if err := ms[1].Recv(ctx, 0, b); err != nil || b[0] != float32(i) {
			t.Fatalf("message %d: %v %v", i, b, err)
		}
	}
	ms[0].Send(ctx, 1, []float32{1, 2})
	if err := ms[1].Recv(ctx, 0, make([]float32, 1)); err == nil || !strings.Contains(err.Error(), "received 2 elements") {
		t.Fatalf("length mismatch: %v", err)
	}
}
