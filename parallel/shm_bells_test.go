package parallel

import (
	"sync/atomic"
	"testing"
)

// TestBellBoardRing checks that ringing wakes exactly the parked waiters
// whose peer cleared their flag, once each, and that park refuses to
// sleep when the peer rang before it.
func TestBellBoardRing(t *testing.T) {
	var d bellBoard
	var flags [3]atomic.Uint32
	bells := make([]*shmBell, len(flags))
	for i := range bells {
		bells[i] = &shmBell{flag: &flags[i], ch: make(chan struct{}, 1)}
		d.add(bells[i])
	}
	woken := func(b *shmBell) bool {
		select {
		case <-b.ch:
			return true
		default:
			return false
		}
	}
	for i := range flags {
		flags[i].Store(1) // asleep
	}
	// 0 parks and is rung; 1 parks and is not rung; 2 is rung but not parked.
	if !bells[0].park() || !bells[1].park() {
		t.Fatal("park refused with the flag set")
	}
	if got := d.parked.Load(); got != 2 {
		t.Errorf("%d bells counted parked, want 2", got)
	}
	flags[0].Store(0)
	flags[2].Store(0)
	d.ring()
	d.ring()
	if got := d.parked.Load(); got != 1 {
		t.Errorf("after the ring: %d bells counted parked, want 1", got)
	}
	if !woken(bells[0]) {
		t.Error("a parked waiter whose peer rang was not woken")
	}
	if woken(bells[0]) {
		t.Error("a waiter was woken twice for one ring")
	}
	if woken(bells[1]) {
		t.Error("a parked waiter whose peer did not ring was woken")
	}
	if woken(bells[2]) {
		t.Error("a waiter that was not parked was woken")
	}
	if bells[0].parked.Load() != 0 {
		t.Error("a woken waiter is still marked parked")
	}
	bells[1].unpark()
	bells[1].unpark()
	if got := d.parked.Load(); got != 0 {
		t.Errorf("after unparking: %d bells counted parked, want 0", got)
	}
	// A ring between setting the flag and parking: park says so.
	bells[2].ch <- struct{}{} // a wake-up left over from an earlier sleep
	if bells[2].park() {
		t.Error("park agreed to sleep although the peer had rung")
	}
	if woken(bells[2]) {
		t.Error("park kept a wake-up left over from an earlier sleep")
	}
	d.remove(bells[0])
	flags[0].Store(0)
	bells[0].parked.Store(1)
	d.ring()
	if woken(bells[0]) {
		t.Error("a removed bell was rung")
	}
	var none *bellBoard
	none.ring() // a board-less poller rings nothing
}

// TestOSYield: a polling loop gives its core away at every second poll,
// unless the host is crowded and k ≥ 2 shm loops poll: then once per 2k
// polls of them all.
func TestOSYield(t *testing.T) {
	count := func(d *bellBoard, polls int) int {
		n := 0
		for i := range polls {
			if d.osYield(i) {
				n++
			}
		}
		return n
	}
	if got := count(nil, 60); got != 30 {
		t.Errorf("no board: %d yields in 60 polls, want 30", got)
	}
	var d bellBoard
	d.spinners.Store(3)
	if got := count(&d, 60); got != 30 {
		t.Errorf("3 loops, host not crowded: %d yields in 60 polls, want 30", got)
	}
	d.crowded.Store(true)
	if got := count(&d, 60); got != 10 {
		t.Errorf("3 loops, crowded host: %d yields in 60 polls, want 10", got)
	}
	d.spinners.Store(1)
	if got := count(&d, 60); got != 30 {
		t.Errorf("1 loop, crowded host: %d yields in 60 polls, want 30", got)
	}
}
