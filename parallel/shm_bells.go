package parallel

import (
	"slices"
	"sync"
	"sync/atomic"
)

// Bells: waking a sleeping shm waiter without the network poller.
//
// A shm waiter that sleeps (a reader on an empty ring, a sender waiting
// for room or an acknowledgement) sets its "asleep" flag in the ring's
// shared header; the peer that makes progress clears the flag and writes
// a doorbell byte on the link's Unix socket, which a goroutine of the
// sleeper reads from Go's network poller. But Go polls the network only
// when a P has nothing else to run (or every 10 ms, from sysmon): while
// any goroutine of the process polls (spinWait yields, so it is always
// runnable), a sleeper's doorbell sits unread. With more ranks than cores
// every hop then waited for the other polls to give up: 4 ranks on 2
// cores, 4 KiB all-reduce p50 287 µs polling 200 µs and 2.1 ms polling
// 2 ms, against 84 µs sleeping at once.
//
// So every polling loop of a transport also rings its bells: it looks at
// the flag of each waiter parked on its bell, and when the peer has
// cleared it, wakes the waiter on its channel, as the doorbell would.
// The doorbell stays for when nothing polls (then the poller runs at
// once) and for the peer's death (the socket ends).

// shmBell is how a shm waiter is woken: flag is its "asleep" flag in the
// ring's shared header (the peer clears it when it rings), ch its wake-up.
type shmBell struct {
	flag   *atomic.Uint32
	ch     chan struct{}
	parked atomic.Uint32 // 1 while the waiter sleeps on ch
	board  *bellBoard    // counts the parked bells; set by bellBoard.add
}

// park marks the waiter asleep on ch, after dropping a wake-up left over
// from an earlier sleep. Call it after the flag is set and the condition
// checked once more; it reports false, and the waiter must not sleep,
// when the peer has rung meanwhile.
func (b *shmBell) park() bool {
	select {
	case <-b.ch:
	default:
	}
	b.parked.Store(1)
	b.board.parked.Add(1)
	if b.flag.Load() == 0 {
		b.unpark()
		return false
	}
	return true
}

// unpark marks the waiter awake again.
func (b *shmBell) unpark() {
	if b.parked.CompareAndSwap(1, 0) {
		b.board.parked.Add(-1)
	}
}

// rung wakes the waiter if it is parked and its peer has rung. A ring
// seen with the flag set again belongs to a sleep already over: the
// waiter set the flag after the peer cleared it, and then saw what the
// peer had published before.
func (b *shmBell) rung() {
	if b.parked.Load() == 1 && b.flag.Load() == 0 && b.parked.CompareAndSwap(1, 0) {
		b.board.parked.Add(-1)
		select {
		case b.ch <- struct{}{}:
		default:
		}
	}
}

// sockBell marks a tcp reader parked in the network poller on socket fd.
// The same starvation holds for it, but Go's poller alone can wake it: a
// polling loop that finds such a socket readable (bellBoard.sockReady)
// sleeps a moment instead of yielding, so that its P, with nothing else
// to run, polls the network at once.
type sockBell struct {
	fd     atomic.Int32
	parked atomic.Uint32 // 1 while its reader is parked
}

// bellBoard holds a transport's bells. Safe for concurrent use.
type bellBoard struct {
	mu    sync.RWMutex // read-held while ringing: a bell's ring stays mapped
	bells []*shmBell
	// parked counts the bells whose waiter sleeps: a polling loop's ring
	// reads this one word, which changes only when a waiter parks or
	// wakes, instead of taking the lock (a shared counter every poll of
	// every goroutine writes) and reading each bell.
	parked atomic.Int32
	socks  []*sockBell
	nsocks atomic.Int32 // len(socks)
	// spinners counts the shm polling loops of the process
	// (shmSpinWait) and polls the polls since the process last gave its
	// core away: with two or more, the core is given up (sched_yield)
	// once every loop has had two polls, not at every second poll of
	// each (see spinWait).
	spinners atomic.Int32
	polls    atomic.Int32
	// crowded: this process and its peers on this host outnumber the
	// cores, the only case where the pacing helps (set by hostPeer).
	crowded atomic.Bool
}

// osYield reports whether a polling loop at its i-th poll should give
// the core to other processes now: at every second poll, as ever, unless
// the host is crowded and k ≥ 2 shm loops poll in this process; then once
// all of them have polled twice since the last time, which lets every one
// look at its ring before the process yields, instead of yielding after
// the first looked. (With a core per process, 2 ranks: a 256 KiB
// all-reduce, whose by-reference send waits for its acknowledgement
// beside the reader, measured 47–74 µs paced against 47–51.)
func (d *bellBoard) osYield(i int) bool {
	if d == nil {
		return i&1 == 1
	}
	k := d.spinners.Load()
	if k < 2 || !d.crowded.Load() {
		return i&1 == 1
	}
	if d.polls.Add(1) < 2*k {
		return false
	}
	d.polls.Store(0)
	return true
}

// add puts b on the board.
func (d *bellBoard) add(b *shmBell) {
	b.board = d
	d.edit(func() { d.bells = append(d.bells, b) })
}

// remove takes b off the board; once it returns, no ringing reads b's
// flag, so its ring may be unmapped.
func (d *bellBoard) remove(b *shmBell) { d.edit(func() { d.bells = without(d.bells, b) }) }

// addSock and removeSock put a tcp reader's bell on the board and take it off.
func (d *bellBoard) addSock(b *sockBell) { d.edit(func() { d.socks = append(d.socks, b) }) }

func (d *bellBoard) removeSock(b *sockBell) { d.edit(func() { d.socks = without(d.socks, b) }) }

// edit changes the board's lists under its lock and republishes the
// number of socks.
func (d *bellBoard) edit(change func()) {
	d.mu.Lock()
	change()
	d.nsocks.Store(int32(len(d.socks)))
	d.mu.Unlock()
}

// without returns list less its first x, if any.
func without[T comparable](list []T, x T) []T {
	if i := slices.Index(list, x); i >= 0 {
		return slices.Delete(list, i, i+1)
	}
	return list
}

// ring wakes every parked waiter whose peer has rung (cleared its flag).
// nil-safe: a board-less caller rings nothing.
func (d *bellBoard) ring() {
	if d == nil || d.parked.Load() == 0 {
		return
	}
	d.mu.RLock()
	for _, b := range d.bells {
		b.rung()
	}
	d.mu.RUnlock()
}
