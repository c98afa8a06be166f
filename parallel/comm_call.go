package parallel

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Receiving. A call posts a receive (recvReq) for each frame it expects,
// naming where the payload goes and whether it is copied or reduced, and
// then waits for it. Whoever has the frame applies it: the link reader
// when the receive was posted before the frame arrived — a bulk link
// (tcp, shm) then moves the payload straight from the wire into the
// destination, or reduces it straight out of its receive buffer — or the
// poster when the frame arrived first and was queued (an eager frame, in
// a pooled buffer). Posting is what orders a receive after the sends it
// must not overtake (recursive doubling reduces into the buffer it sends,
// so it posts only once that send is out).

// reqState is where a posted receive is.
type reqState uint8

const (
	reqFree    reqState = iota // not posted
	reqPosted                  // waiting in its mailbox for the frame
	reqClaimed                 // someone is applying the frame to dst
	reqDone                    // applied, or failed (err)
)

// recvReq is one posted receive: the frame (kind, seq, tag) from one peer
// of one group goes into dst. Its fields are set by the poster; state, err
// and aborter are guarded by box.mu.
type recvReq struct {
	box    *mailbox
	kind   loomv1.FrameKind
	seq    uint64
	tag    uint32
	op     loomv1.CollectiveOp
	length uint64 // elements of the whole call's buffer, checked
	dst    []float32
	a      apply
	wake   chan struct{} // the waiting call's; poked when done

	state   reqState
	err     error
	aborter linkAborter // set while a link reader applies it
}

// linkAborter is a link whose reader can be made to give up on a frame it
// is applying (by breaking the link), so that a withdrawing call never
// waits on a stalled peer for longer than its timeout.
type linkAborter interface {
	abort(err error)
}

func (r *recvReq) matches(kind loomv1.FrameKind, seq uint64, tag uint32) bool {
	return r.kind == kind && r.seq == seq && r.tag == tag
}

// check returns nil if a frame of op on length elements with payBytes of
// payload may be applied to r.
func (r *recvReq) check(op loomv1.CollectiveOp, length uint64, payBytes int) error {
	if op != r.op || length != r.length {
		return fmt.Errorf("%w: call %d: peer runs %v on %d elements, this rank %v on %d", ErrMismatch, r.seq, op, length, r.op, r.length)
	}
	if payBytes != 4*len(r.dst) {
		return fmt.Errorf("%w: frame of %d bytes, want %d", ErrMismatch, payBytes, 4*len(r.dst))
	}
	return nil
}

// applyFrame applies a queued frame to r.
func (r *recvReq) applyFrame(f *wireFrame) error {
	if err := r.check(f.op, f.length, f.inLen); err != nil {
		return err
	}
	if len(r.dst) > 0 {
		applyBytes(r.a, r.dst, f.in, f.inSkip)
	}
	return nil
}

// mailbox holds, for one group and one sender, the frames that arrived
// before their receive was posted (in arrival order) and the receives
// posted before their frame arrived (in post order). Safe for concurrent
// use.
type mailbox struct {
	mu     sync.Mutex
	q      []*wireFrame
	posted []*recvReq // posted[ph:] wait, in post order
	ph     int
	gone   error // the sender departed; nothing more will come
	// polled: a reader that polls (shm) feeds this box; a waiting call
	// then yields to it a few times before it sleeps.
	polled atomic.Bool
	// feed, if set, is that reader's ring, which a waiting call may poll
	// itself (see ringPoller).
	feed atomic.Pointer[ringPoller]
}

// ringPoller lets a call that waits on a mailbox consume the frames of
// the shm ring feeding it itself, instead of yielding to the ring's
// reader goroutine and being handed the frame: poll takes one small
// frame that is wholly in the ring, if no one else is consuming it, and
// reports whether it did. Calls poll only while every linked process of
// this host has a core of its own (bellBoard.crowded is false): then the
// frame usually lands while the waiting call runs, and a frame it takes
// itself costs no switch to the reader and back. 2 ranks on 2 vCPUs,
// 4 KiB all-reduce over shm: see the package doc.
type ringPoller struct {
	poll func() bool
	// calls counts the calls polling the ring now: the reader then
	// yields to them instead of polling it too.
	calls atomic.Int32
}

// waitPolls is how many times a call waiting on a polled mailbox yields
// the processor before it sleeps on its channel: the reader it yields to
// is runnable (polling), so the frame is often in before the call would
// have parked. 4 KiB all-reduce over shm, 2 ranks: 8.1 → 7.1 µs; over tcp
// (a reader blocked in the network poller, which a yielding goroutine
// keeps from running) it cost 30%, so only polled boxes do it.
const waitPolls = 20

// post makes r wait for its frame, or applies the frame at once if it is
// already here (in the caller's goroutine). A departed sender completes r
// with the departure.
func (b *mailbox) post(r *recvReq) {
	r.box = b
	b.mu.Lock()
	for i, f := range b.q {
		if r.matches(f.kind, f.seq, f.tag) {
			copy(b.q[i:], b.q[i+1:])
			b.q[len(b.q)-1] = nil
			b.q = b.q[:len(b.q)-1]
			r.state = reqClaimed
			b.mu.Unlock()
			err := r.applyFrame(f)
			f.release()
			b.mu.Lock()
			r.state, r.err = reqDone, err
			b.mu.Unlock()
			return
		}
	}
	if b.gone != nil {
		r.state, r.err = reqDone, b.gone
		b.mu.Unlock()
		return
	}
	r.state = reqPosted
	b.posted = append(b.posted, r)
	b.mu.Unlock()
}

// claim takes the posted receive for frame (kind, seq, tag), if any: the
// caller applies the frame to it and calls finish. ab, if not nil, can
// break the caller's link should the receive be withdrawn meanwhile.
func (b *mailbox) claim(kind loomv1.FrameKind, seq uint64, tag uint32, ab linkAborter) *recvReq {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, r := range b.posted[b.ph:] {
		if r.matches(kind, seq, tag) {
			b.removePosted(i)
			r.state, r.aborter = reqClaimed, ab
			return r
		}
	}
	return nil
}

// removePosted drops the i-th waiting receive, keeping the order;
// receives are matched in post order, so i is almost always 0. The queue's
// array is reused once it drains.
func (b *mailbox) removePosted(i int) {
	live := b.posted[b.ph:]
	if i == 0 {
		live[0] = nil
		b.ph++
	} else {
		copy(live[i:], live[i+1:])
		live[len(live)-1] = nil
		b.posted = b.posted[:len(b.posted)-1]
	}
	if b.ph == len(b.posted) {
		b.posted, b.ph = b.posted[:0], 0
	}
}

// finish completes a claimed receive and wakes its call.
func (b *mailbox) finish(r *recvReq, err error) {
	b.mu.Lock()
	r.state, r.err, r.aborter = reqDone, err, nil
	wake := r.wake
	b.mu.Unlock()
	select {
	case wake <- struct{}{}:
	default:
	}
}

// push delivers a whole frame: straight to its posted receive (applied in
// the caller's goroutine), else into the queue.
func (b *mailbox) push(f *wireFrame) {
	if r := b.claim(f.kind, f.seq, f.tag, nil); r != nil {
		err := r.applyFrame(f)
		f.release()
		b.finish(r, err)
		return
	}
	b.mu.Lock()
	// A receive posted between claim and here saw an empty queue: look
	// again under the lock before queueing.
	for i, r := range b.posted[b.ph:] {
		if r.matches(f.kind, f.seq, f.tag) {
			b.removePosted(i)
			r.state = reqClaimed
			b.mu.Unlock()
			err := r.applyFrame(f)
			f.release()
			b.finish(r, err)
			return
		}
	}
	b.q = append(b.q, f)
	b.mu.Unlock()
}

// departed reports whether the sender has left.
func (b *mailbox) departed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gone != nil
}

// depart records that nothing more will arrive: posted receives fail with
// err (queued frames stay available).
func (b *mailbox) depart(err error) {
	b.mu.Lock()
	if b.gone == nil {
		b.gone = err
	}
	posted := b.posted[b.ph:]
	b.posted, b.ph = nil, 0
	for _, r := range posted {
		r.state, r.err = reqDone, err
	}
	b.mu.Unlock()
	for _, r := range posted {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// drop releases every queued frame (the group is closed).
func (b *mailbox) drop() {
	b.mu.Lock()
	releaseAll(b.q)
	b.q = nil
	b.mu.Unlock()
}

// withdraw takes back r if it is still posted. It returns the link
// applying r, or nil, and whether r is still in progress (claimed).
func (b *mailbox) withdraw(r *recvReq) (ab linkAborter, busy bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch r.state {
	case reqPosted:
		for i, p := range b.posted[b.ph:] {
			if p == r {
				b.removePosted(i)
				break
			}
		}
		r.state, r.err = reqDone, errAborted
		return nil, false
	case reqClaimed:
		return r.aborter, true
	}
	return nil, false
}

// stateOf returns r's state and error.
func (b *mailbox) stateOf(r *recvReq) (reqState, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return r.state, r.err
}

// reqBlock is how many receives one slab block holds. Blocks never move,
// so a posted *recvReq stays valid while the slab grows.
const reqBlock = 64

// call is one operation in progress. A Group reuses one call for its
// collectives (they run one at a time) and pools those of Send and Recv,
// so that steady-state operations allocate nothing.
type call struct {
	g       *Group
	ctx     context.Context
	name    string
	kind    loomv1.FrameKind
	op      loomv1.CollectiveOp
	seq     uint64
	length  uint64
	sendTag []uint32 // next tag, by peer index
	recvTag []uint32

	slab  [][]recvReq // posted receives, in blocks of reqBlock
	nreq  int         // receives posted by this call
	wake  chan struct{}
	timer *time.Timer
	f     wireFrame    // the frame being sent (transports do not keep it)
	sends []*sendDone  // zero-copy sends still referencing the caller's memory
	acks  []pendingAck // lazy sends whose peer may still read the caller's memory
}

// pendingAck is a lazy send not yet known to be read: the link's want-th
// such frame (see wireFrame.lazy).
type pendingAck struct {
	link ackWaiter
	want uint64
	peer int // its index in the group
}

func newCall(g *Group) *call {
	t := time.NewTimer(time.Hour)
	t.Stop()
	n := len(g.ranks)
	return &call{g: g, sendTag: make([]uint32, n), recvTag: make([]uint32, n), wake: make(chan struct{}, 1), timer: t}
}

// reset prepares c for an operation.
func (c *call) reset(ctx context.Context, name string, kind loomv1.FrameKind, op loomv1.CollectiveOp, seq uint64, length int) {
	c.ctx, c.name, c.kind, c.op, c.seq, c.length = ctx, name, kind, op, seq, uint64(length)
	clear(c.sendTag)
	clear(c.recvTag)
	c.nreq = 0
	c.sends = c.sends[:0]
	c.acks = c.acks[:0]
	select { // a wake-up left over from the previous operation
	case <-c.wake:
	default:
	}
}

// req returns the k-th receive posted by this call.
func (c *call) req(k int) *recvReq { return &c.slab[k/reqBlock][k%reqBlock] }

// post posts the next receive from peer i: its frame goes into dst with a.
func (c *call) post(i int, dst []float32, a apply) *recvReq {
	if c.nreq == len(c.slab)*reqBlock {
		c.slab = append(c.slab, make([]recvReq, reqBlock))
	}
	r := c.req(c.nreq)
	c.nreq++
	*r = recvReq{kind: c.kind, seq: c.seq, tag: c.recvTag[i], op: c.op, length: c.length, dst: dst, a: a, wake: c.wake}
	c.recvTag[i]++
	c.g.boxes[i].post(r)
	return r
}

// wait waits until r is applied: at most the group's timeout (progress,
// not the whole call), and no longer than ctx or the group's failure.
func (c *call) wait(i int, r *recvReq) error {
	g := c.g
	armed := false
	spinsLeft := 0
	if r.box.polled.Load() {
		spinsLeft = waitPolls
	}
	feed := r.box.feed.Load()
	if feed != nil && !g.t.bells.crowded.Load() {
		feed.calls.Add(1)
	} else {
		feed = nil
	}
	defer func() {
		if feed != nil {
			feed.calls.Add(-1)
		}
		if armed {
			c.timer.Stop()
		}
	}()
	for {
		st, err := r.box.stateOf(r)
		if st == reqDone {
			if err != nil {
				if errors.Is(err, errAborted) {
					if ferr := g.failure(c.name); ferr != nil {
						return ferr
					}
				}
				return c.peerErr(i, err)
			}
			return nil
		}
		if err := g.failure(c.name); err != nil {
			return err
		}
		if spinsLeft > 0 {
			if feed != nil && feed.poll() {
				continue // took a frame: maybe ours
			}
			spinsLeft--
			if spinsLeft == 0 && feed != nil {
				feed.calls.Add(-1)
				feed = nil
			}
			g.t.bells.ring()
			runtime.Gosched()
			continue
		}
		if !armed {
			c.timer.Reset(g.timeout)
			armed = true
		}
		select {
		case <-c.wake:
		case <-g.failCh:
		case <-c.ctx.Done():
			return c.peerErr(i, c.ctx.Err())
		case <-c.timer.C:
			armed = false
			return c.peerErr(i, fmt.Errorf("%w: nothing received for %v", ErrPeerTimeout, g.timeout))
		}
	}
}

// withdraw takes back every receive of the call that has not completed,
// after a failure, so that nothing writes into the caller's buffers once
// the call returns. A receive that a link is applying right now is waited
// for; should that take longer than the group's timeout (a peer stalled in
// the middle of a frame), the link is broken.
func (c *call) withdraw() {
	for k := range c.nreq {
		r := c.req(k)
		ab, busy := r.box.withdraw(r)
		if !busy {
			continue
		}
		deadline := time.Now().Add(c.g.timeout)
		for {
			if st, _ := r.box.stateOf(r); st == reqDone {
				break
			}
			if ab != nil && time.Now().After(deadline) {
				ab.abort(fmt.Errorf("%w: a frame stayed incomplete for %v after its operation failed", ErrPeerTimeout, c.g.timeout))
				ab = nil
			}
			c.timer.Reset(10 * time.Millisecond)
			select {
			case <-c.wake:
			case <-c.timer.C:
			}
			c.timer.Stop()
		}
	}
	c.nreq = 0
}

// finish ends the call's use of the caller's buffers: on success it waits
// for zero-copy sends to be written and lazy sends to be read, on failure
// it releases lazy sends and withdraws receives.
func (c *call) finish(err error) error {
	if err == nil {
		if err = c.waitSends(); err == nil {
			return nil
		}
	}
	c.releaseAcks()
	c.withdraw()
	return err
}

// releaseAcks gives the peers of lazy sends not known to be read a moment
// to read them, and breaks the links of those that do not (see
// ackWaiter.release), so that nothing reads the caller's memory once the
// call returns.
func (c *call) releaseAcks() {
	grace := min(c.g.timeout, ackGrace)
	for _, p := range c.acks {
		p.link.release(p.want, grace)
	}
	c.acks = c.acks[:0]
}

// begin starts a collective: it takes the group's turn and sequence number.
// end must follow.
func (g *Group) begin(ctx context.Context, name string, op loomv1.CollectiveOp, length int) (*call, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := g.failure(name); err != nil {
		return nil, err
	}
	g.opMu.Lock()
	if err := g.failure(name); err != nil { // failed while we waited our turn
		g.opMu.Unlock()
		return nil, err
	}
	g.seq++
	c := g.coll
	c.reset(ctx, name, loomv1.FrameKind_FRAME_KIND_COLLECTIVE, op, g.seq, length)
	return c, nil
}

// end releases the group's turn; an error fails the group.
func (c *call) end(err error) error {
	err = c.finish(err)
	c.ctx = nil
	c.g.opMu.Unlock()
	return c.g.settle(c.name, err)
}

// p2pCall returns a pooled call for Send or Recv.
func (g *Group) p2pCall(ctx context.Context, name string, seq uint64, length int) *call {
	c, _ := g.p2pCalls.Get().(*call)
	if c == nil {
		c = newCall(g)
	}
	c.reset(ctx, name, loomv1.FrameKind_FRAME_KIND_P2P, loomv1.CollectiveOp_COLLECTIVE_OP_UNSPECIFIED, seq, length)
	return c
}

// endP2P finishes a Send or Recv and returns its call to the pool.
func (c *call) endP2P(err error) error {
	err = c.finish(err)
	g, name := c.g, c.name
	c.ctx = nil
	g.p2pCalls.Put(c)
	return g.settle(name, err)
}

// settle fails the group on err and returns the error to report.
func (g *Group) settle(op string, err error) error {
	if err == nil {
		return nil
	}
	g.fail(err, true)
	var pe *PeerError
	if errors.As(err, &pe) {
		return err
	}
	if ferr := g.failure(op); ferr != nil {
		return ferr
	}
	return err
}

// peerErr names peer i in err.
func (c *call) peerErr(i int, err error) error {
	var pe *PeerError
	if errors.As(err, &pe) {
		return err
	}
	return &PeerError{Rank: c.g.ranks[i], Addr: c.g.addrs[i], Op: c.name, Err: err}
}

// send sends data to peer i as one frame. Bulk transports have copied data
// out when it returns; gRPC may still reference it (zero-copy), which
// waitSends waits for.
func (c *call) send(i int, data []float32) error { return c.sendFrame(i, data, false) }

// sendLazy is send for a caller that does not write data again before the
// call ends, except with what arrives in a frame that causally follows
// the peer's read of it (as the ring's all-gather does): a shm link may
// then return before the peer has read data by reference, and waitSends
// waits for that, so that the sender moves on to its next frame at once
// instead of waiting for each acknowledgement in turn.
func (c *call) sendLazy(i int, data []float32) error { return c.sendFrame(i, data, true) }

func (c *call) sendFrame(i int, data []float32, lazy bool) error {
	g := c.g
	f := &c.f
	*f = wireFrame{
		kind: c.kind, job: g.spec.Job, generation: g.spec.Generation, group: g.spec.Name,
		seq: c.seq, tag: c.sendTag[i], srcRank: int32(g.ranks[g.me]), op: c.op, length: c.length,
		out: data, lazy: lazy,
	}
	c.sendTag[i]++
	if g.boxes[i].departed() {
		return c.peerErr(i, errDeparted)
	}
	oc, err := g.t.conn(g.connKey(i))
	if err == nil {
		err = oc.send(c.ctx, f, g.timeout, g.failCh)
	}
	if f.zeroCopy {
		if err != nil {
			f.sent.complete()
		} else {
			c.sends = append(c.sends, f.sent)
		}
	}
	if f.ack != nil { // set only when the send succeeded
		c.acks = append(c.acks, pendingAck{f.ack, f.ackWant, i})
		f.ack = nil
	}
	f.out = nil
	if errors.Is(err, errAborted) {
		return g.failure(c.name)
	}
	if err != nil {
		return c.peerErr(i, err)
	}
	return nil
}

// waitSends waits until no send of the call references the caller's
// memory any more (gRPC's zero-copy sends and lazy sends can).
func (c *call) waitSends() error {
	for k, p := range c.acks {
		if err := p.link.settle(c.ctx, p.want, c.g.timeout, c.g.failCh); err != nil {
			c.acks = c.acks[:copy(c.acks, c.acks[k:])] // for releaseAcks
			if errors.Is(err, errAborted) {
				if ferr := c.g.failure(c.name); ferr != nil {
					return ferr
				}
			}
			return c.peerErr(p.peer, err)
		}
	}
	c.acks = c.acks[:0]
	for _, d := range c.sends {
		select {
		case <-d.done:
			continue
		default:
		}
		c.timer.Reset(c.g.timeout)
		var err error
		select {
		case <-d.done:
		case <-c.g.failCh:
			err = c.g.failure(c.name)
		case <-c.ctx.Done():
			err = fmt.Errorf("%s on group %q: %w", c.name, c.g.spec.Name, c.ctx.Err())
		case <-c.timer.C:
			err = fmt.Errorf("%s on group %q: %w: send not written for %v", c.name, c.g.spec.Name, ErrPeerTimeout, c.g.timeout)
		}
		c.timer.Stop()
		if err != nil {
			return err
		}
	}
	c.sends = c.sends[:0]
	return nil
}

// chunks returns how many frames carry n elements (at least one when
// atLeastOne).
func (c *call) chunks(n int, atLeastOne bool) int {
	k := (n + c.g.chunk - 1) / c.g.chunk
	if k == 0 && atLeastOne {
		k = 1
	}
	return k
}

// chunkRange returns chunk j of a range [off, off+n).
func (c *call) chunkRange(off, n, j int) (int, int) {
	lo := j * c.g.chunk
	return off + lo, min(c.g.chunk, n-lo)
}

// sendAll sends buf to peer i in chunks and waits until the transport no
// longer reads it, so the caller may overwrite buf.
func (c *call) sendAll(i int, buf []float32) error {
	for j := range c.chunks(len(buf), true) {
		off, n := c.chunkRange(0, len(buf), j)
		if err := c.send(i, buf[off:off+n]); err != nil {
			return err
		}
	}
	return c.waitSends()
}

// recvAll receives len(buf) elements from peer i in chunks, applying them:
// every chunk's receive is posted first, so a bulk link can move each
// frame straight into place as it arrives.
func (c *call) recvAll(i int, buf []float32, a apply) error {
	k := c.chunks(len(buf), true)
	first := c.nreq
	for j := range k {
		off, n := c.chunkRange(0, len(buf), j)
		c.post(i, buf[off:off+n], a)
	}
	for j := range k {
		if err := c.wait(i, c.req(first+j)); err != nil {
			return err
		}
	}
	return nil
}
