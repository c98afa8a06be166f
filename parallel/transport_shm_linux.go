//go:build linux

package parallel

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// The shm transport: a ring in shared memory per peer and direction, for
// peers on one host. The sender creates the ring (a memfd), connects to
// the receiver's Unix socket and passes the memfd there with the secret
// (SCM_RIGHTS), so nothing is left in /dev/shm when either dies. Frames
// are written into the ring in the bulk layout, one copy from the
// caller's buffer; the receiver reduces or copies straight out of the
// ring into the destination.
//
// Waiting costs no CPU once idle: a reader that finds its ring empty polls
// it for PollSpin (yielding the core between polls), then sets a flag in
// the shared header and sleeps reading the Unix socket, and the sender
// writes one byte there when it sees the flag after publishing (a full
// ring works the same way the other way round). The socket is also how
// death is seen: when either process exits, the kernel closes its end and
// the other's read returns at once.

// Shared header layout: each field on its own cache line.
const (
	shmCtlBytes        = 4096
	shmOffMagic        = 0   // u64
	shmOffRing         = 8   // u64 ring bytes
	shmOffHead         = 64  // u64 bytes written, ever (the sender's)
	shmOffTail         = 128 // u64 bytes consumed, ever (the receiver's)
	shmOffReaderAsleep = 192 // u32 1: the receiver sleeps on the socket
	shmOffWriterAsleep = 256 // u32 1: the sender waits for room (or an acknowledgement)
	shmOffAcked        = 320 // u64 by-reference frames the receiver has read (the receiver's)
	shmOffCMA          = 384 // u32 1: the receiver can read the sender's memory (the receiver's)
	shmOffProbeAddr    = 448 // u64 address of a probe word in the sender (the sender's)
	shmOffProbeVal     = 456 // u64 its value
	shmOffAbandoned    = 512 // u32 1: the sender gave up waiting for a by-reference read (the sender's)
	shmMagic           = 0x314d48534d4f4f4c
	shmPiece           = 64 << 10 // a long payload is published in pieces of this size
)

// Single copy. A large payload is not copied into the ring when the
// receiver can read the sender's memory (process_vm_readv, "cross-memory
// attach", as OpenMPI's vader does): the ring carries the header and the
// payload's address and length, the receiver copies from the sender's
// buffer straight into the destination (or into a cache-sized buffer it
// reduces from), and the sender's send returns once the receiver says it
// has read it. One pass over the bytes instead of two. The receiver
// probes at the handshake whether it may (same user, no seccomp or Yama
// rule against it); if not, every payload goes through the ring.
//
// How large depends on whether the linked processes have a core each
// (see Transport.shmByRefFor). If they have, two passes on two cores at
// once (the sender copying into the ring in 64 KiB pieces, the receiver
// reducing or copying out of it behind) beat one pass by the receiver
// alone, whose process_vm_readv also pins the sender's pages on every
// call, for every frame the ring holds but its whole size: 2 ranks on
// the 2-vCPU Xeon, 2 alternating rounds, p50 of the slowest rank by
// reference from 256 KiB / from 1 MiB: 512 KiB all-reduce (256 KiB
// frames) 100–104 / 65–68 µs, 1 MiB (512 KiB frames) 200–203 / 130–148
// (OpenMPI vader 187), 4 MiB and up within noise (1 MiB frames by
// reference either way: the default ring is 1 MiB). The cost is on a
// loaded VM (a busy loop beside the 2 ranks): two passes need both
// processes on a core at once, which larger frames miss: 3 rounds,
// 512 KiB 73–74 / 89–96 µs, 1 MiB 197–223 / 283–285; 256 KiB the same
// either way (30 µs quiet, 49–52 loaded). Quiet is what the benchmarks
// against OpenMPI measure, and a DDP bucket (256 KiB) does not change,
// so 1 MiB (an earlier Zen 4 VM measured the same: 1 MiB 202–228 →
// 68–69 µs). If they have not a core each, the CPU is what is short and
// one pass wins: 4 ranks on 2 cores, 1 MiB 528–533 / 760–1,111 µs — for
// a lazy send (the ring's all-gather), which does not wait for the read.
// A send that waits (recursive doubling, the ring's reduce-scatter) waits
// for its peer to be scheduled and read it, and below 256 KiB the ring
// does better: 4 ranks on the 2-vCPU Xeon, 2–3 alternating rounds, rank
// 0's p50, every send by reference from 64 KiB / waiting ones from
// 256 KiB: Auto mode (recursive doubling to 128 KiB) 64 KiB 98–110 /
// 37–38 µs, 128 KiB 127–148 / 66–74; 3 ranks 64 KiB 41–57 / 22–24;
// --transport shm (the ring) 128 KiB 96–104 / 91–95, 512 KiB 321–343 /
// 274–322, 256 KiB and 1 MiB within noise.
const (
	shmByRefBytes  = 64 << 10  // oversubscribed, a lazy send
	shmByRefWaited = 256 << 10 // oversubscribed, a send that waits for the read
	shmByRefRoomy  = 1 << 20   // a core for each linked process
	shmFlagByRef   = 1         // bulk header flags (byte 3): the payload is by reference
	shmDescBytes   = 16
	shmScratchSize = 256 << 10
)

// shmByRefFor is the smallest shm payload sent by reference, for a host
// where this process has links to peers other processes on it: 1 MiB
// (at most the ring) while they and this one have a core each, else
// 64 KiB for a lazy send and 256 KiB for one that waits to be read (see
// above).
func (t *Transport) shmByRefFor(peers int, lazy bool) int {
	switch {
	case t.opts.shmByRefMin > 0:
		return t.opts.shmByRefMin
	case peers+1 <= runtime.NumCPU():
		return shmByRefRoomy
	case lazy:
		return shmByRefBytes
	}
	return shmByRefWaited
}

// shmRing is one mapped ring: data is written at head and read at tail,
// both counting bytes since the start (positions are taken mod len(data)).
// Every position and length is a multiple of 4, so float32 payloads stay
// aligned and never split across the wrap.
//
// Sleeping and waking is Dekker's pattern: one side stores its "asleep"
// flag and then loads the other's position, the other stores its position
// and then loads the flag, and at least one of them must see the other's
// store. That needs a full fence between each store and the load after
// it. Those stores are Swaps (XCHG on amd64, a full barrier everywhere).
// atomic.Store is one too in a normal build, but under -race it is the
// race runtime's release store, a plain MOV on amd64, and for memory
// outside the Go heap (this mapping) the runtime skips the bookkeeping
// whose locks would fence it otherwise; the store could then still sit in
// the CPU's store buffer when the load ran, both sides missed each other,
// and a reader slept on data already in its ring until the group's
// timeout (3 ranks, 100 KiB; about one loaded run in 15, and once in CI).
type shmRing struct {
	mem          []byte
	data         []byte
	mask         uint64
	head, tail   *atomic.Uint64
	readerAsleep *atomic.Uint32
	writerAsleep *atomic.Uint32
	acked        *atomic.Uint64
	cma          *atomic.Uint32
	abandoned    *atomic.Uint32
}

func mapRing(mem []byte) shmRing {
	at := func(off int) unsafe.Pointer { return unsafe.Pointer(&mem[off]) }
	data := mem[shmCtlBytes:]
	return shmRing{
		mem: mem, data: data, mask: uint64(len(data) - 1),
		head: (*atomic.Uint64)(at(shmOffHead)), tail: (*atomic.Uint64)(at(shmOffTail)),
		readerAsleep: (*atomic.Uint32)(at(shmOffReaderAsleep)), writerAsleep: (*atomic.Uint32)(at(shmOffWriterAsleep)),
		acked: (*atomic.Uint64)(at(shmOffAcked)), cma: (*atomic.Uint32)(at(shmOffCMA)), abandoned: (*atomic.Uint32)(at(shmOffAbandoned)),
	}
}

// put copies b into the ring at position pos (wrapping).
func (r *shmRing) put(pos uint64, b []byte) {
	i := int(pos & r.mask)
	k := copy(r.data[i:], b)
	copy(r.data, b[k:])
}

// get copies len(b) bytes from position pos (wrapping) into b.
func (r *shmRing) get(pos uint64, b []byte) {
	i := int(pos & r.mask)
	k := copy(b, r.data[i:])
	copy(b[k:], r.data)
}

// span returns the contiguous bytes from position pos, at most n.
func (r *shmRing) span(pos uint64, n int) []byte {
	i := int(pos & r.mask)
	return r.data[i : i+min(n, len(r.data)-i)]
}

// spinWait polls ready for up to spin, yielding the processor between
// polls: to this process's goroutines every time, and every second poll
// to other processes too (sched_yield), which on a small machine are the
// peer we are waiting for. Measured on 2 vCPUs, 2 ranks, 4 KiB: without
// sched_yield the p50 swung between 3 and 120 µs from run to run (a
// spinning rank kept its vCPU from whatever else had to run there); with
// it on every poll 7.8–8.0 µs, every second 8.1–8.4 and 1 MiB 3–13%
// faster than every poll, every 16th 12.6 µs.
//
// Every poll also rings the transport's bells (d, may be nil): a waiter of
// this process that sleeps is woken here when its peer rings, since the
// network poller that would read its doorbell does not run while we poll
// (see bellBoard).
//
// With several shm loops polling in the process (a member with links to
// several peers: recursive doubling's partners at 3 and 4 ranks) on a
// host whose linked processes outnumber its cores, the core
// is given away once each of them has polled twice (bellBoard.osYield),
// not at every second poll of any: otherwise a process that gets its core
// back yields it again before it has looked at most of its rings.
// All-reduce over shm, rank 0's p50, 5 alternating rounds with OpenMPI's
// vader on the 2-vCPU Xeon, medians, before → after (vader): 4 ranks
// 4 KiB 19.2 → 15.1 µs (20.8; 5 of 5 rounds apart), 64 KiB 90.1 → 82.4
// (70.8); 3 ranks 4 KiB 15.8 → 12.2 (18.2), 64 KiB 40.9 → 40.1 (60.8).
// tcp's loops keep every second poll: at 4 ranks the pacing measured
// 64 → 72 µs on a loaded VM (within noise, so not taken).
func spinWait(d *bellBoard, spin time.Duration, ready func() bool) bool {
	if spin <= 0 {
		return ready()
	}
	start := time.Now()
	for i := 0; ; i++ {
		if ready() {
			return true
		}
		d.ring()
		if i&3 == 3 && d.sockReady() {
			time.Sleep(time.Microsecond) // let the network poller run (see sockBell)
		} else {
			runtime.Gosched()
		}
		if d.osYield(i) {
			unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0) // never blocks: see rawSock
		}
		if i&7 == 7 && time.Since(start) > spin {
			return ready()
		}
	}
}

// shmSpinWait is spinWait for a shm loop: it counts itself among the
// process's shm pollers while it polls (see bellBoard.osYield).
func shmSpinWait(d *bellBoard, spin time.Duration, ready func() bool) bool {
	if spin <= 0 || ready() {
		return ready()
	}
	d.spinners.Add(1)
	defer d.spinners.Add(-1)
	return spinWait(d, spin, ready)
}

// shmListener accepts shared-memory links on an abstract Unix socket
// (nothing on the file system to clean up).
type shmListener struct {
	t    *Transport
	ln   *net.UnixListener
	addr string
}

func newShmListener(t *Transport) (*shmListener, error) {
	var name [8]byte
	if _, err := rand.Read(name[:]); err != nil {
		return nil, err
	}
	addr := "@loom-shm-" + hex.EncodeToString(name[:])
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	// A memfd must work too, or every link would fail later.
	fd, err := unix.MemfdCreate("loom-shm-probe", unix.MFD_CLOEXEC)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	unix.Close(fd)
	l := &shmListener{t: t, ln: ln, addr: addr}
	go l.loop()
	return l, nil
}

func (l *shmListener) loop() {
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			return
		}
		go l.t.acceptShmLink(c)
	}
}

func (l *shmListener) close() { l.ln.Close() }

// shmLink is the sending end of a shm link. Safe for concurrent use.
type shmLink struct {
	oc   *outConn
	ring shmRing
	conn *net.UnixConn
	sock *rawSock      // conn's doorbell writes (under sem) and reads (doorbells)
	spin *atomic.Int64 // the transport's pollSpin (ns)
	sem  chan struct{} // serializes frames; held while the mapping is in use
	room chan struct{} // the receiver made room (its doorbell)
	bell shmBell       // wakes a wait on room: writerAsleep's bell
	done chan struct{} // closed when the link fails
	// unmapped is closed once the ring is unmapped after a failure, and
	// the link marked abandoned if a by-reference payload was unread.
	unmapped chan struct{}
	timer    *time.Timer // guarded by sem

	head  uint64 // guarded by sem
	descs uint64 // by-reference frames sent; guarded by sem
	// refBytes counts by-reference payload bytes sent, refCum[k%len]
	// what it was after the k-th frame (for spinFor); guarded by sem.
	refBytes uint64
	refCum   [64]uint64
	hdr      [maxBulkHdr]byte // guarded by sem
	out      [1]byte          // a doorbell byte to write; guarded by sem
	byRef    bool             // the receiver reads large payloads from our memory

	mu  sync.Mutex
	err error
}

// dialShmLink creates a ring, passes it to the peer's shm listener at
// addr with the secret, and waits for the acknowledgement.
func dialShmLink(ctx context.Context, oc *outConn, addr string, sec []byte) (bulkSender, error) {
	if addr == "" {
		return nil, errors.New("the peer offered no shared-memory address")
	}
	ringBytes := oc.t.opts.ShmRingBytes
	fd, err := unix.MemfdCreate("loom-shm", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(shmCtlBytes+ringBytes)); err != nil {
		return nil, fmt.Errorf("sizing the ring: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, shmCtlBytes+ringBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping the ring: %w", err)
	}
	*(*uint64)(unsafe.Pointer(&mem[shmOffMagic])) = shmMagic
	*(*uint64)(unsafe.Pointer(&mem[shmOffRing])) = uint64(ringBytes)
	probe := new([2]uint64) // a word the receiver tries to read from here
	var pv [8]byte
	rand.Read(pv[:])
	probe[0] = *(*uint64)(unsafe.Pointer(&pv)) | 1
	if !oc.t.opts.ShmNoSingleCopy {
		*(*uint64)(unsafe.Pointer(&mem[shmOffProbeAddr])) = uint64(uintptr(unsafe.Pointer(probe)))
		*(*uint64)(unsafe.Pointer(&mem[shmOffProbeVal])) = probe[0]
	}
	d := net.Dialer{Timeout: bulkHandshake}
	c, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("dial %s: %w (the peer may be in another network namespace)", addr, err)
	}
	conn := c.(*net.UnixConn)
	hello := append(append(make([]byte, 0, len(shmPreamble)+secretBytes), shmPreamble[:]...), sec...)
	conn.SetDeadline(time.Now().Add(bulkHandshake))
	var ack [1]byte
	_, _, err = conn.WriteMsgUnix(hello, unix.UnixRights(fd), nil)
	if err == nil {
		_, err = io.ReadFull(conn, ack[:])
	}
	if err == nil && ack[0] != bulkAck {
		err = fmt.Errorf("unexpected answer %q", ack[0])
	}
	if err != nil {
		conn.Close()
		unix.Munmap(mem)
		return nil, fmt.Errorf("handshake: %w", err)
	}
	conn.SetDeadline(time.Time{})
	runtime.KeepAlive(probe) // read by the receiver before its acknowledgement
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	sock := newRawSock(conn)
	if sock == nil {
		conn.Close()
		unix.Munmap(mem)
		return nil, errors.New("handshake: the doorbell socket has no descriptor")
	}
	l := &shmLink{oc: oc, ring: mapRing(mem), conn: conn, sock: sock, spin: &oc.t.pollSpin, sem: make(chan struct{}, 1),
		room: make(chan struct{}, 1), done: make(chan struct{}), unmapped: make(chan struct{}), timer: timer}
	l.byRef = l.ring.cma.Load() == 1
	l.bell.flag, l.bell.ch = l.ring.writerAsleep, l.room
	oc.t.bells.add(&l.bell)
	oc.t.hostPeer(oc.addr, true)
	go l.doorbells()
	return l, nil
}

// doorbells reads the receiver's "room" doorbells; the socket ending is
// the receiver exiting (or closing the link).
func (l *shmLink) doorbells() {
	var b [64]byte
	for {
		if _, err := l.sock.read(b[:]); err != nil {
			l.fail(l.oc.broke("shm link", err))
			return
		}
		l.bell.rung()
	}
}

// fail breaks the link and fails its connection, unless that is closing
// anyway (see tcpLink.fail).
func (l *shmLink) fail(err error) {
	if l.stop(err) && !errors.Is(err, ErrClosed) {
		l.oc.fail(err)
	}
}

// stop marks the link failed, closes its socket and unmaps the ring once
// no send uses it. It reports whether this call stopped it.
func (l *shmLink) stop(err error) bool {
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return false
	}
	l.err = err
	close(l.done)
	l.mu.Unlock()
	l.oc.t.hostPeer(l.oc.addr, false)
	l.conn.Close()
	go func() {
		l.sem <- struct{}{} // a send in progress sees done and returns
		if l.ring.acked.Load() < l.descs {
			// A lazy send's payload may still be read (see abandon).
			l.ring.abandoned.Swap(1)
		}
		l.oc.t.bells.remove(&l.bell)
		unix.Munmap(l.ring.mem)
		close(l.unmapped)
	}()
	return true
}

func (l *shmLink) close(err error) { l.stop(err) }

func (l *shmLink) failure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// wait blocks until ready, the link fails, or the call gives up; it
// polls for spin (see spinFor) before it sleeps.
func (l *shmLink) wait(ctx context.Context, timeout time.Duration, abort <-chan struct{}, spin time.Duration, ready func() bool) error {
	if shmSpinWait(&l.oc.t.bells, spin, ready) {
		return nil
	}
	l.ring.writerAsleep.Swap(1) // a full fence: see shmRing
	defer l.ring.writerAsleep.Store(0)
	l.timer.Reset(timeout)
	defer l.timer.Stop()
	for !ready() {
		if !l.bell.park() { // rung since the flag was set
			l.ring.writerAsleep.Swap(1)
			continue
		}
		select {
		case <-l.room:
		case <-l.done:
			l.bell.unpark()
			return l.failure()
		case <-abort:
			l.bell.unpark()
			return errAborted
		case <-ctx.Done():
			l.bell.unpark()
			return ctx.Err()
		case <-l.timer.C:
			l.bell.unpark()
			return fmt.Errorf("%w: shm send found no room for %v", ErrPeerTimeout, timeout)
		}
		l.bell.unpark()
		l.ring.writerAsleep.Swap(1)
	}
	return nil
}

// publish makes the bytes up to head visible and wakes a sleeping reader.
func (l *shmLink) publish() {
	l.ring.head.Swap(l.head) // a full fence: see shmRing
	if l.ring.readerAsleep.Load() == 1 && l.ring.readerAsleep.CompareAndSwap(1, 0) {
		l.out[0] = 'D'
		l.sock.write(l.out[:])
	}
}

// acquire takes sem, which serializes frames and keeps the ring mapped.
func (l *shmLink) acquire(ctx context.Context, timeout time.Duration, abort <-chan struct{}) error {
	return acquireTurn(ctx, l.sem, l.done, l.failure, timeout, abort)
}

// send copies f into the ring: header, then the payload as room allows.
func (l *shmLink) send(ctx context.Context, f *wireFrame, timeout time.Duration, abort <-chan struct{}) error {
	if err := l.acquire(ctx, timeout, abort); err != nil {
		return err
	}
	defer func() { <-l.sem }()
	if err := l.failure(); err != nil {
		return err
	}
	pay := floatBytes(f.out)
	n := putBulkHeader(l.hdr[:], f, len(pay), 4)
	size := uint64(len(l.ring.data))
	free := func() uint64 { return size - (l.head - l.ring.tail.Load()) }
	byRefMin := &l.oc.t.shmByRefWait
	if f.lazy {
		byRefMin = &l.oc.t.shmByRef
	}
	if l.byRef && len(pay) >= min(int(byRefMin.Load()), len(l.ring.data)) {
		return l.sendByRef(ctx, f, n, timeout, abort)
	}
	if free() < uint64(n) {
		if err := l.wait(ctx, timeout, abort, time.Duration(l.spin.Load()), func() bool { return free() >= uint64(n) }); err != nil {
			return err
		}
	}
	l.ring.put(l.head, l.hdr[:n])
	l.head += uint64(n)
	for len(pay) > 0 {
		room := free()
		if room == 0 {
			l.publish()
			if err := l.wait(ctx, timeout, abort, time.Duration(l.spin.Load()), func() bool { return free() > 0 }); err != nil {
				return err
			}
			room = free()
		}
		k := int(min(room, uint64(len(pay)), shmPiece))
		l.ring.put(l.head, pay[:k])
		l.head += uint64(k)
		pay = pay[k:]
		if len(pay) > 0 {
			l.publish() // the reader starts on a long payload early
		}
	}
	l.publish()
	return nil
}

// sendByRef puts f's header (n bytes in l.hdr) and its payload's address
// into the ring and waits until the receiver has read the payload from
// our memory; a lazy send returns at once instead, naming the frame for
// settle in f.ack and f.ackWant. The caller holds sem.
func (l *shmLink) sendByRef(ctx context.Context, f *wireFrame, n int, timeout time.Duration, abort <-chan struct{}) error {
	pay := floatBytes(f.out)
	l.hdr[3] = shmFlagByRef
	binary.LittleEndian.PutUint64(l.hdr[n:], uint64(uintptr(unsafe.Pointer(unsafe.SliceData(pay)))))
	binary.LittleEndian.PutUint64(l.hdr[n+8:], uint64(len(pay)))
	n += shmDescBytes
	size := uint64(len(l.ring.data))
	free := func() bool { return size-(l.head-l.ring.tail.Load()) >= uint64(n) }
	if !free() {
		if err := l.wait(ctx, timeout, abort, time.Duration(l.spin.Load()), free); err != nil {
			return err
		}
	}
	l.ring.put(l.head, l.hdr[:n])
	l.head += uint64(n)
	l.descs++
	l.refBytes += uint64(len(pay))
	l.refCum[l.descs%uint64(len(l.refCum))] = l.refBytes
	l.publish()
	if f.lazy {
		f.ack, f.ackWant = l, l.descs
		return nil
	}
	err := l.awaitAck(ctx, l.descs, timeout, abort)
	runtime.KeepAlive(pay)
	return err
}

// awaitAck waits until the receiver has read the want-th by-reference
// payload; should the wait fail first, it keeps the receiver from using
// what it reads. The caller holds sem.
func (l *shmLink) awaitAck(ctx context.Context, want uint64, timeout time.Duration, abort <-chan struct{}) error {
	err := l.waitAck(ctx, want, timeout, abort)
	if err != nil && l.ring.acked.Load() < want {
		// The receiver may still be reading our buffer, which the caller
		// gets back now: mark the link abandoned first (the receiver
		// checks that after reading and drops what it read) and break it.
		l.ring.abandoned.Swap(1)
		l.fail(fmt.Errorf("%w: shm send by reference not acknowledged: %v", ErrPeerTimeout, err))
	}
	return err
}

// waitAck waits until the receiver has read the want-th by-reference
// payload, polling for about as long as reading what is unread takes.
// The caller holds sem.
func (l *shmLink) waitAck(ctx context.Context, want uint64, timeout time.Duration, abort <-chan struct{}) error {
	read := func() bool { return l.ring.acked.Load() >= want }
	acked := l.ring.acked.Load()
	if acked >= want {
		return nil
	}
	unread := uint64(math.MaxUint64) // more frames outstanding than refCum remembers
	if k := uint64(len(l.refCum)); l.descs-acked < k {
		unread = l.refCum[want%k] - l.refCum[acked%k]
	}
	return l.wait(ctx, timeout, abort, spinFor(l.spin.Load(), unread), read)
}

// settle waits until the receiver has read the want-th by-reference
// payload, which a lazy send left unacknowledged (see ackWaiter).
func (l *shmLink) settle(ctx context.Context, want uint64, timeout time.Duration, abort <-chan struct{}) error {
	if err := l.acquire(ctx, timeout, abort); err != nil {
		return err
	}
	defer func() { <-l.sem }()
	if l.ring.acked.Load() >= want {
		return nil
	}
	if err := l.failure(); err != nil {
		return err
	}
	return l.waitAck(ctx, want, timeout, abort)
}

// release waits up to grace for the receiver to read the want-th
// by-reference payload, and otherwise makes sure it drops it: it marks the
// link abandoned and breaks it (see ackWaiter).
func (l *shmLink) release(want uint64, grace time.Duration) {
	if l.acquire(context.Background(), grace, nil) != nil {
		l.abandon(want)
		return
	}
	defer func() { <-l.sem }()
	if l.ring.acked.Load() >= want {
		return
	}
	if l.failure() == nil && l.waitAck(context.Background(), want, grace, nil) == nil {
		return
	}
	if l.ring.acked.Load() < want { // mapped while we hold sem
		l.ring.abandoned.Swap(1)
		l.fail(fmt.Errorf("%w: a by-reference payload was left unread for %v after its operation failed", ErrPeerTimeout, grace))
	}
}

// abandon makes sure the receiver drops the want-th by-reference payload
// unless it has read it already, without sem: it marks the link abandoned
// and breaks it, or, when the link is broken already, waits until stop
// has marked it.
func (l *shmLink) abandon(want uint64) {
	l.mu.Lock()
	stopped := l.err != nil
	if !stopped { // stop has not begun, so the ring is mapped
		if l.ring.acked.Load() >= want {
			l.mu.Unlock()
			return
		}
		l.ring.abandoned.Swap(1)
	}
	l.mu.Unlock()
	if stopped {
		<-l.unmapped
		return
	}
	l.fail(fmt.Errorf("%w: a by-reference payload was abandoned unread (its operation failed)", ErrPeerTimeout))
}

// closeSend writes GOODBYE after every frame already sent.
func (l *shmLink) closeSend(ctx context.Context) {
	f := wireFrame{kind: loomv1.FrameKind_FRAME_KIND_GOODBYE}
	l.send(ctx, &f, bulkHandshake, nil)
}

// acceptShmLink serves a shared-memory link: it takes the ring passed with
// the secret, acknowledges, and reads frames until the link ends.
func (t *Transport) acceptShmLink(conn *net.UnixConn) {
	mem, o, err := t.takeRing(conn)
	if err != nil {
		t.log.Warn("refused a shared-memory link", "err", err)
		conn.Close()
		return
	}
	if !t.trackLink(conn) {
		conn.Close()
		unix.Munmap(mem)
		return
	}
	defer t.untrackLink(conn)
	l := newInLink(t, o, "shm", conn) // bound before the acknowledgement, as for tcp
	o.in.bind(l)
	pid := probeCMA(conn, mem)
	if pid != 0 {
		mapRing(mem).cma.Store(1)
	}
	if _, err := conn.Write([]byte{bulkAck}); err != nil {
		conn.Close()
		unix.Munmap(mem)
		l.finish(err)
		return
	}
	conn.SetDeadline(time.Time{})
	sock := newRawSock(conn)
	if sock == nil {
		conn.Close()
		unix.Munmap(mem)
		l.finish(errors.New("the doorbell socket has no descriptor"))
		return
	}
	r := &shmReader{inLink: l, ring: mapRing(mem), conn: conn, sock: sock, spin: &t.pollSpin, maxPay: t.opts.MaxFrameBytes, pid: pid,
		gone: make(chan struct{})}
	r.bell.flag, r.bell.ch = r.ring.readerAsleep, make(chan struct{}, 1)
	r.poller.poll = r.pollFrame
	t.bells.add(&r.bell)
	go r.doorbells()
	t.hostPeer(o.from, true)
	err = r.run()
	t.hostPeer(o.from, false)
	conn.Close()
	<-r.gone // the doorbell reader is done with the ring
	t.bells.remove(&r.bell)
	unix.Munmap(mem)
	l.finish(err)
}

// takeRing reads the preamble, the secret and the ring's memfd, redeems
// the secret and maps the ring.
func (t *Transport) takeRing(conn *net.UnixConn) ([]byte, *bulkOffer, error) {
	conn.SetDeadline(time.Now().Add(bulkHandshake))
	var msg [len(shmPreamble) + secretBytes]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(msg[:], oob)
	var fds []int
	if err == nil {
		if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for i := range msgs {
				if f, rerr := unix.ParseUnixRights(&msgs[i]); rerr == nil {
					fds = append(fds, f...)
				}
			}
		}
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if err == nil && n < len(msg) {
		_, err = io.ReadFull(conn, msg[n:])
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading the link hello: %w", err)
	}
	if [8]byte(msg[:8]) != shmPreamble {
		return nil, nil, errors.New("not a shared-memory link hello")
	}
	if len(fds) != 1 {
		return nil, nil, fmt.Errorf("the hello carried %d file descriptors, want 1", len(fds))
	}
	o, err := t.redeemFrom(bytes.NewReader(msg[8:]), loomv1.DataTransport_DATA_TRANSPORT_SHM)
	if err != nil {
		return nil, nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil {
		return nil, nil, fmt.Errorf("fstat of the ring: %w", err)
	}
	size := int(st.Size) - shmCtlBytes
	if size < 64<<10 || size > 1<<30 || size&(size-1) != 0 {
		return nil, nil, fmt.Errorf("ring of %d bytes (want a power of two from 64 KiB to 1 GiB)", size)
	}
	mem, err := unix.Mmap(fds[0], 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("mapping the ring: %w", err)
	}
	if *(*uint64)(unsafe.Pointer(&mem[shmOffMagic])) != shmMagic || *(*uint64)(unsafe.Pointer(&mem[shmOffRing])) != uint64(size) {
		unix.Munmap(mem)
		return nil, nil, errors.New("the ring's header is not Loom's")
	}
	return mem, o, nil
}

// probeCMA finds the sender's process (the socket's peer) and tries to
// read its probe word; on success large payloads come by reference and it
// returns the sender's pid, else 0.
func probeCMA(conn *net.UnixConn, mem []byte) int {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0
	}
	var cred *unix.Ucred
	rc.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if err != nil || cred == nil || cred.Pid <= 0 {
		return 0
	}
	addr := *(*uint64)(unsafe.Pointer(&mem[shmOffProbeAddr]))
	want := *(*uint64)(unsafe.Pointer(&mem[shmOffProbeVal]))
	var got uint64
	local := []unix.Iovec{{Base: (*byte)(unsafe.Pointer(&got))}}
	local[0].SetLen(8)
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: 8}}
	if n, err := unix.ProcessVMReadv(int(cred.Pid), local, remote, 0); err != nil || n != 8 || got != want || want == 0 {
		return 0
	}
	return int(cred.Pid)
}

// shmReader is the receiving end of a shm link; only its goroutine uses it.
type shmReader struct {
	*inLink
	ring    shmRing
	conn    *net.UnixConn
	sock    *rawSock      // conn's doorbell reads and writes
	spin    *atomic.Int64 // the transport's pollSpin (ns)
	maxPay  int
	tail    uint64 // bytes consumed
	head    uint64 // bytes known written
	hdr     [maxBulkHdr]byte
	out     [1]byte       // a doorbell byte to write
	bell    shmBell       // wakes a sleeping wait: readerAsleep's
	gone    chan struct{} // closed when the doorbell socket ends
	sockErr error         // how it ended; set before gone closes
	expect  uint64        // by-reference bytes of the last frame (see spinFor)
	pid     int           // the sender's, for by-reference payloads (0: none)
	ref     uintptr       // the by-reference payload being read: its address in the sender
	scratch []byte        // where a by-reference payload is reduced from
	liov    [1]unix.Iovec
	riov    [1]unix.RemoteIovec
	// cons is held by whoever consumes from the ring: the reader, except
	// while it waits for a frame, or a call that takes one (pollFrame).
	// The fields above are guarded by it (ring, conn, sock, spin and
	// maxPay are set once); dead too: the reader has stopped and the ring
	// may be unmapped.
	cons   sync.Mutex
	dead   bool
	poller ringPoller // pollFrame, for the mailboxes this ring feeds
}

// shmRawPiece is the most one process_vm_readv copies (see
// processVMReadv): ~30 µs of copying, like a Go copy of as much, between
// which the goroutine can be preempted.
const shmRawPiece = 256 << 10

// processVMReadv is process_vm_readv(2) as a raw system call, outside the
// scheduler's system-call path: it is a memory copy that never waits. As
// an ordinary system call, a copy longer than sysmon's 20 µs tick had its
// P handed to another thread, which woke (futex), spun (nanosleep) and
// slept again, and the copying thread then had to win a P back — once per
// 256 KiB piece, and with more ranks than cores every such thread wants a
// core too.
func processVMReadv(pid int, local []unix.Iovec, remote []unix.RemoteIovec) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_PROCESS_VM_READV, uintptr(pid),
		uintptr(unsafe.Pointer(unsafe.SliceData(local))), uintptr(len(local)),
		uintptr(unsafe.Pointer(unsafe.SliceData(remote))), uintptr(len(remote)), 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// readRemote copies len(b) bytes from the sender's address r.ref on.
func (r *shmReader) readRemote(b []byte) error {
	for len(b) > 0 {
		k := min(len(b), shmRawPiece)
		r.liov[0].Base = unsafe.SliceData(b)
		r.liov[0].SetLen(k)
		r.riov[0] = unix.RemoteIovec{Base: r.ref, Len: k}
		n, err := processVMReadv(r.pid, r.liov[:], r.riov[:])
		if err != nil {
			return fmt.Errorf("reading the sender's payload: %w", err)
		}
		if n <= 0 {
			return errors.New("reading the sender's payload: no progress")
		}
		b = b[n:]
		r.ref += uintptr(n)
	}
	return nil
}

// applyRemote moves a by-reference payload into dst: straight in for a
// copy, through the scratch buffer for a reduction.
func (r *shmReader) applyRemote(dst []float32, a apply) error {
	if a == applyCopy {
		return r.readRemote(floatBytes(dst))
	}
	if r.scratch == nil {
		r.scratch = make([]byte, shmScratchSize)
	}
	for len(dst) > 0 {
		n := min(len(dst), len(r.scratch)/4)
		if err := r.readRemote(r.scratch[:4*n]); err != nil {
			return err
		}
		applyFloats(a, dst[:n], unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(r.scratch))), n))
		dst = dst[n:]
	}
	return nil
}

// ackRef tells the sender its by-reference payload is read (or dropped),
// and reports an error if the sender gave up meanwhile: what was read may
// then have changed under us.
func (r *shmReader) ackRef() error {
	abandoned := r.ring.abandoned.Load() == 1
	r.ring.acked.Add(1)
	if r.ring.writerAsleep.Load() == 1 && r.ring.writerAsleep.CompareAndSwap(1, 0) {
		r.out[0] = 'S'
		r.sock.write(r.out[:])
	}
	if abandoned {
		return errors.New("the sender gave up on a by-reference payload")
	}
	return nil
}

// waitFor waits until at least k bytes past tail are written and returns
// how many are. The writer's exit ends the wait with an error, once what
// it wrote before is consumed. The caller holds cons.
func (r *shmReader) waitFor(k int) (int, error) {
	if int(r.head-r.tail) >= k {
		return int(r.head - r.tail), nil
	}
	err := r.waitUntil(spinFor(r.spin.Load(), r.expect), func() bool {
		r.head = r.ring.head.Load()
		return int(r.head-r.tail) >= k
	})
	return int(r.head - r.tail), err
}

// waitUntil polls have for spin, then sleeps until the writer rings and
// have holds. The writer's exit ends the wait with an error unless have
// holds.
func (r *shmReader) waitUntil(spin time.Duration, have func() bool) error {
	for {
		if shmSpinWait(&r.t.bells, spin, have) {
			return nil
		}
		r.ring.readerAsleep.Swap(1) // a full fence: see shmRing
		if have() {
			r.ring.readerAsleep.CompareAndSwap(1, 0)
			continue
		}
		if !r.bell.park() { // rung since the flag was set
			continue
		}
		select {
		case <-r.bell.ch:
			r.bell.unpark()
		case <-r.gone:
			r.bell.unpark()
			if !have() {
				return r.sockErr
			}
		}
	}
}

// doorbells reads the writer's doorbell bytes and wakes a sleeping wait
// (see shmBell.rung); the socket ending is the writer exiting (or the
// link closing), which it tells by closing gone.
func (r *shmReader) doorbells() {
	var b [64]byte
	for {
		if _, err := r.sock.read(b[:]); err != nil {
			r.sockErr = err
			close(r.gone)
			return
		}
		r.bell.rung()
	}
}

// release gives n consumed bytes back to the writer and wakes it if it
// waits for room.
func (r *shmReader) release(n int) {
	r.tail += uint64(n)
	r.ring.tail.Swap(r.tail) // a full fence: see shmRing
	if r.ring.writerAsleep.Load() == 1 && r.ring.writerAsleep.CompareAndSwap(1, 0) {
		r.out[0] = 'S'
		r.sock.write(r.out[:])
	}
}

// consume hands the next n bytes to fn in contiguous pieces (multiples
// of 4 bytes), releasing each.
func (r *shmReader) consume(n int, fn func([]byte)) error {
	for n > 0 {
		a, err := r.waitFor(1)
		if err != nil {
			return err
		}
		b := r.ring.span(r.tail, min(a, n))
		fn(b)
		n -= len(b)
		r.release(len(b))
	}
	return nil
}

// readHeader copies the next header out of the ring and consumes it.
func (r *shmReader) readHeader() (bulkHeader, error) {
	need := bulkHdrFixed
	for {
		if _, err := r.waitFor(need); err != nil {
			return bulkHeader{}, err
		}
		r.ring.get(r.tail, r.hdr[:need])
		h, n, err := parseBulkHeader(r.hdr[:need], r.maxPay)
		if err != nil {
			return h, err
		}
		if n <= need {
			r.release(h.hdrLen)
			return h, nil
		}
		need = n
	}
}

// run reads frames until the link ends. It holds cons except while it
// waits for the next frame, when a waiting call may take frames itself
// (see pollFrame).
func (r *shmReader) run() error {
	r.cons.Lock()
	defer func() {
		r.dead = true
		r.cons.Unlock()
	}()
	nonEmpty := func() bool { return r.ring.head.Load() != r.ring.tail.Load() }
	for {
		if r.ring.head.Load() == r.tail {
			spin := spinFor(r.spin.Load(), r.expect)
			r.cons.Unlock()
			for r.poller.calls.Load() > 0 && !nonEmpty() {
				runtime.Gosched() // a call polls the ring: let it
			}
			err := r.waitUntil(spin, nonEmpty)
			r.cons.Lock()
			if err != nil {
				return err
			}
			continue // a polling call may have taken it meanwhile
		}
		h, err := r.readHeader()
		if err != nil {
			return err
		}
		switch h.kind {
		case loomv1.FrameKind_FRAME_KIND_GOODBYE:
			r.ended.Store(true)
			return nil
		case loomv1.FrameKind_FRAME_KIND_COLLECTIVE, loomv1.FrameKind_FRAME_KIND_P2P:
		default:
			return fmt.Errorf("%w: frame kind %v", errBulkProtocol, h.kind)
		}
		if h.flags&shmFlagByRef != 0 {
			r.expect = uint64(h.payLen)
			if err := r.runByRef(&h); err != nil {
				return err
			}
			continue
		}
		r.expect = 0
		// h.group aliases r.hdr, which only the next header overwrites.
		box, reason := r.route(h.group, h.srcRank)
		r.feeds(box)
		if reason != "" {
			r.reject(&h, string(h.group), reason)
			if err := r.consume(h.payLen, func([]byte) {}); err != nil {
				return err
			}
			continue
		}
		var q *recvReq
		if box != nil {
			if q = box.claim(h.kind, h.seq, h.tag, r); q == nil {
				q = awaitPost(box, &h, r)
			}
		}
		if err := r.deliver(&h, box, q); err != nil {
			return err
		}
	}
}

// feeds marks box as fed by this ring.
func (r *shmReader) feeds(box *mailbox) {
	if box == nil {
		return
	}
	if !box.polled.Load() {
		box.polled.Store(true)
	}
	if box.feed.Load() != &r.poller {
		box.feed.Store(&r.poller)
	}
}

// deliver consumes the payload of the frame h (its header consumed) into
// q, the posted receive claimed for it, or else into an eager frame for
// box (nil: for the transport). The caller holds cons.
func (r *shmReader) deliver(h *bulkHeader, box *mailbox, q *recvReq) error {
	if q != nil {
		var err error
		cerr := q.check(h.op, h.length, h.payLen)
		if cerr != nil {
			err = r.consume(h.payLen, func([]byte) {})
		} else {
			err = r.apply(q.dst, q.a)
		}
		if err != nil {
			box.finish(q, fmt.Errorf("%w: shm link: %v", ErrPeerGone, err))
			return err
		}
		box.finish(q, cerr)
		return nil
	}
	f, b := r.t.eagerFrame(h)
	k := 0
	if err := r.consume(h.payLen, func(p []byte) { k += copy(b[k:], p) }); err != nil {
		f.release()
		return err
	}
	r.handFrame(box, h, f)
	return nil
}

// pollFrameMax is the largest payload a waiting call takes from the
// ring itself (pollFrame); larger frames are left to the reader.
const pollFrameMax = 64 << 10

// pollFrame is the ring's ringPoller: unless the reader (or another
// call) is consuming, it takes the frame at the ring's tail if the whole
// frame is there, by value, with at most pollFrameMax bytes of payload,
// for a group this link has routed to before and a member of it, and
// delivers it as the reader would; it reports whether it took one. It
// never waits (but for a mailbox's lock).
func (r *shmReader) pollFrame() bool {
	if !r.cons.TryLock() {
		return false
	}
	defer r.cons.Unlock()
	if r.dead { // the ring may be unmapped
		return false
	}
	head := r.ring.head.Load()
	avail := int(head - r.tail)
	if avail < bulkHdrFixed {
		return false
	}
	r.ring.get(r.tail, r.hdr[:bulkHdrFixed])
	h, need, err := parseBulkHeader(r.hdr[:bulkHdrFixed], r.maxPay)
	if err != nil || need > avail {
		return false // the reader reports a bad header
	}
	if need > bulkHdrFixed {
		r.ring.get(r.tail, r.hdr[:need])
		if h, _, err = parseBulkHeader(r.hdr[:need], r.maxPay); err != nil {
			return false
		}
	}
	switch {
	case h.kind != loomv1.FrameKind_FRAME_KIND_COLLECTIVE && h.kind != loomv1.FrameKind_FRAME_KIND_P2P,
		h.flags&shmFlagByRef != 0, h.payLen > pollFrameMax, h.hdrLen+h.payLen > avail:
		return false
	}
	box, reason, ok := r.routeCached(h.group, h.srcRank)
	if !ok || box == nil || reason != "" {
		return false // a group's first frame, a rejection, a hand-over: the reader's
	}
	q := box.claim(h.kind, h.seq, h.tag, r)
	if q == nil && h.payLen >= latePostBytes {
		return false // the reader waits a moment for its receive
	}
	r.head = head
	r.release(h.hdrLen)
	r.expect = 0
	// All of the payload is in the ring, so consuming it cannot fail.
	r.deliver(&h, box, q)
	r.t.callFrames.Add(1)
	return true
}

// runByRef handles a frame whose payload is in the sender's memory: its
// descriptor follows the header in the ring.
func (r *shmReader) runByRef(h *bulkHeader) error {
	if r.pid == 0 {
		return fmt.Errorf("%w: a by-reference payload on a link without single copy", errBulkProtocol)
	}
	var desc [shmDescBytes]byte
	if _, err := r.waitFor(shmDescBytes); err != nil {
		return err
	}
	r.ring.get(r.tail, desc[:])
	r.release(shmDescBytes)
	r.ref = uintptr(binary.LittleEndian.Uint64(desc[:]))
	if binary.LittleEndian.Uint64(desc[8:]) != uint64(h.payLen) {
		return fmt.Errorf("%w: by-reference payload of %d bytes for a header of %d", errBulkProtocol, binary.LittleEndian.Uint64(desc[8:]), h.payLen)
	}
	box, reason := r.route(h.group, h.srcRank)
	r.feeds(box)
	if reason != "" {
		r.reject(h, string(h.group), reason)
		return r.ackRef()
	}
	if box != nil {
		q := box.claim(h.kind, h.seq, h.tag, r)
		if q == nil {
			q = awaitPost(box, h, r)
		}
		if q != nil {
			cerr := q.check(h.op, h.length, h.payLen)
			var err error
			if cerr == nil {
				err = r.applyRemote(q.dst, q.a)
			}
			if aerr := r.ackRef(); err == nil {
				err = aerr
			}
			if err != nil {
				box.finish(q, fmt.Errorf("%w: shm link: %v", ErrPeerGone, err))
				return err
			}
			box.finish(q, cerr)
			return nil
		}
	}
	f, b := r.t.eagerFrame(h)
	err := r.readRemote(b)
	if aerr := r.ackRef(); err == nil {
		err = aerr
	}
	if err != nil {
		f.release()
		return err
	}
	r.handFrame(box, h, f)
	return nil
}

// apply moves the payload from the ring into dst, reducing or copying.
func (r *shmReader) apply(dst []float32, a apply) error {
	di := 0
	return r.consume(4*len(dst), func(p []byte) {
		n := len(p) / 4
		src := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(p))), n)
		applyFloats(a, dst[di:di+n], src)
		di += n
	})
}
